//! What a GraphQL document would cost, measured before anything else reads it: its nesting
//! depth and its complexity, an upper bound of the fields it would resolve. Documents too deep,
//! too nested or too costly are refused with 400 before juniper parses them.
//!
//! **Bounded work on hostile input.** Documents come from anyone (a request body holds a
//! document nested hundreds of thousands of levels deep), so nothing here recurses on the
//! input: a lazy tokenizer and one pass with an explicit stack, which stop at the first
//! selection set deeper than [`MAX_DEPTH`] or bracket deeper than [`MAX_NESTING`]. Named
//! fragments are read once each and expanded with a memo, in a recursion that each spread
//! deepens by one level and that therefore stops at [`MAX_DEPTH`]. What this check lets through
//! nests less than juniper's own parser limit (64 levels), which keeps juniper's recursive
//! parser, validation and execution within their stacks.
//!
//! **Worst case.** Every field counts once per item of every list above it whose size the query
//! chooses: a size argument (`k`, `first`) counts at its value when it is an integer literal, at
//! [`MAX_K`] when it is a variable (or anything else), and at the schema's default when it is
//! left out; so `recommendations(k: 100) { items { item { title } } }` costs what it may really
//! cost. A named fragment counts at each of its spreads, multiplied like the fields around it; a
//! fragment that spreads itself is refused. Inline fragments and spreads nest one level, as
//! juniper counts them. Only one operation of a document runs: the costliest counts.
//!
//! This is not a validator: malformed input gets a finite cost, and juniper then rejects it with
//! its own message.

use std::collections::{HashMap, HashSet};

use juniper::meta::{InterfaceMeta, MetaType, ObjectMeta};
use juniper::{InputValue, ScalarValue, SchemaType};

/// Deepest selection nesting a query may have, fragments expanded.
pub const MAX_DEPTH: usize = 8;
/// Most fields a query may resolve, lists multiplied out.
pub const MAX_COMPLEXITY: u64 = 2_000;
/// Deepest nesting of brackets of any kind (selection sets, arguments, list and object values,
/// list types) a document may have: far above what real documents need, far below what a
/// recursive parser can take.
pub const MAX_NESTING: usize = 32;
/// The largest `k` a query may ask for: what a size argument counts when its value is unknown.
const MAX_K: u64 = common::recs::MAX_K as u64;

/// Arguments that size a list result.
const SIZE_ARGS: [&str; 2] = ["k", "first"];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub depth: usize,
    pub complexity: u64,
}

/// Why a document is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the query nests more than {MAX_DEPTH} levels deep (fragments expanded); at most \
         {MAX_DEPTH} are allowed"
    )]
    TooDeep,
    #[error("the query nests brackets more than {MAX_NESTING} levels deep")]
    TooNested,
    #[error("the query would resolve {0} fields; at most {MAX_COMPLEXITY} are allowed (lower `k`)")]
    TooCostly(u64),
    #[error("fragment `{0}` spreads itself")]
    FragmentCycle(String),
    #[error("fragment `{0}` is defined more than once")]
    DuplicateFragment(String),
}

/// How many items a field returns when the query leaves its size argument out: the argument's
/// default in the schema (or [`MAX_K`] without one), by field name, the largest where types
/// share a name. Fields without a size argument return one value or a list the query cannot size.
#[derive(Clone, Debug, Default)]
pub struct Sizes(HashMap<String, u64>);

impl Sizes {
    pub fn of<S: ScalarValue>(schema: &SchemaType<S>) -> Self {
        let mut sizes = HashMap::new();
        for meta in schema.concrete_type_list() {
            let fields = match meta {
                MetaType::Object(ObjectMeta { fields, .. })
                | MetaType::Interface(InterfaceMeta { fields, .. }) => fields,
                _ => continue,
            };
            for field in fields {
                let defaults = field
                    .arguments
                    .iter()
                    .flatten()
                    .filter(|a| SIZE_ARGS.contains(&a.name.as_str()))
                    .map(|a| {
                        a.default_value
                            .as_ref()
                            .and_then(InputValue::as_scalar)
                            .and_then(ScalarValue::try_to_int)
                            .and_then(|n| u64::try_from(n).ok())
                            .unwrap_or(MAX_K)
                    });
                if let Some(size) = defaults.max() {
                    let entry = sizes.entry(field.name.to_string()).or_insert(0);
                    *entry = size.max(*entry);
                }
            }
        }
        Self(sizes)
    }

    fn absent(&self, field: &str) -> u64 {
        self.0.get(field).copied().unwrap_or(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Token<'a> {
    Name(&'a str),
    Int(u64),
    Punct(char),
    Spread,
    /// A string, float or anything else that carries no structure.
    Other,
}

/// Tokens on demand, so that reading stops where the document is refused. Counts open brackets
/// and ends the input at the first past [`MAX_NESTING`].
struct Lexer<'a> {
    source: &'a str,
    i: usize,
    nesting: usize,
    too_nested: bool,
}

impl<'a> Lexer<'a> {
    fn next_token(&mut self) -> Option<Token<'a>> {
        if self.too_nested {
            return None;
        }
        let bytes = self.source.as_bytes();
        while let Some(&c) = bytes.get(self.i) {
            let start = self.i;
            self.i += 1;
            match c {
                // A comment ends at a line terminator, `\r` as well as `\n` (as juniper's
                // lexer ends it: anything else would hide from the cost what juniper runs).
                b'#' => {
                    while self.i < bytes.len() && !matches!(bytes[self.i], b'\n' | b'\r') {
                        self.i += 1;
                    }
                }
                b'"' => {
                    self.i = if bytes[start..].starts_with(b"\"\"\"") {
                        block_string_end(bytes, start + 3)
                    } else {
                        string_end(bytes, self.i)
                    };
                    return Some(Token::Other);
                }
                b'.' if bytes[start..].starts_with(b"...") => {
                    self.i = start + 3;
                    return Some(Token::Spread);
                }
                b'{' | b'(' | b'[' => {
                    self.nesting += 1;
                    if self.nesting > MAX_NESTING {
                        self.too_nested = true;
                        return None;
                    }
                    return Some(Token::Punct(c as char));
                }
                b'}' | b')' | b']' => {
                    self.nesting = self.nesting.saturating_sub(1);
                    return Some(Token::Punct(c as char));
                }
                b':' | b'@' | b'=' | b'$' | b'!' => return Some(Token::Punct(c as char)),
                b'-' | b'0'..=b'9' => {
                    while self.i < bytes.len()
                        && (bytes[self.i].is_ascii_alphanumeric() || bytes[self.i] == b'.')
                    {
                        self.i += 1;
                    }
                    let text = self.source.get(start..self.i).unwrap_or_default();
                    return Some(text.parse().map_or(Token::Other, Token::Int));
                }
                b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                    while self.i < bytes.len()
                        && (bytes[self.i].is_ascii_alphanumeric() || bytes[self.i] == b'_')
                    {
                        self.i += 1;
                    }
                    return Some(Token::Name(
                        self.source.get(start..self.i).unwrap_or_default(),
                    ));
                }
                _ => {}
            }
        }
        None
    }
}

/// Where a string whose body starts at `i` ends (past its closing quote), as juniper's lexer
/// reads it: at an unescaped `"`, or at a line terminator (where juniper refuses the document).
fn string_end(bytes: &[u8], mut i: usize) -> usize {
    while let Some(&c) = bytes.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' | b'\n' | b'\r' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Where a block string whose body starts at `i` ends (past its closing `"""`), exactly as
/// juniper's lexer reads it: a backslash escapes the quote right after it (`\\"""` does not
/// end the string), and nothing else.
fn block_string_end(bytes: &[u8], mut i: usize) -> usize {
    let (mut quotes, mut escaped) = (0, false);
    while let Some(&c) = bytes.get(i) {
        i += 1;
        match c {
            b'\\' => (quotes, escaped) = (0, true),
            b'"' if escaped => (quotes, escaped) = (0, false),
            b'"' if quotes < 2 => quotes += 1,
            b'"' => return i,
            _ => (quotes, escaped) = (0, false),
        }
    }
    i
}

/// A definition (operation or fragment) as read, spreads not yet expanded.
#[derive(Debug, Default)]
struct Summary<'a> {
    /// Deepest selection set; the definition's own is 1.
    depth: usize,
    /// Its fields, multiplied by the lists above them.
    complexity: u64,
    spreads: Vec<Spread<'a>>,
}

/// `...Name` inside a definition: the fragment's fields count `weight` times, one level below the
/// selection set at `depth`.
#[derive(Debug)]
struct Spread<'a> {
    name: &'a str,
    depth: usize,
    weight: u64,
}

#[derive(Debug, Default)]
struct Document<'a> {
    operations: Vec<Summary<'a>>,
    fragments: HashMap<&'a str, Summary<'a>>,
    /// Fragment names in document order.
    order: Vec<&'a str>,
}

struct Parser<'a, 's> {
    lexer: Lexer<'a>,
    peeked: Option<Token<'a>>,
    sizes: &'s Sizes,
}

impl<'a> Parser<'a, '_> {
    fn peek(&mut self) -> Option<Token<'a>> {
        if self.peeked.is_none() {
            self.peeked = self.lexer.next_token();
        }
        self.peeked
    }

    fn next(&mut self) -> Option<Token<'a>> {
        self.peek();
        self.peeked.take()
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.peek() == Some(Token::Punct(c));
        if found {
            self.peeked = None;
        }
        found
    }

    /// The rest of a `(...)` whose `(` was read: the largest size argument, if there is one
    /// (an integer literal at its value, anything else at [`MAX_K`]).
    fn arguments(&mut self) -> Option<u64> {
        let mut size: Option<u64> = None;
        let mut nesting = 1usize;
        while let Some(token) = self.next() {
            match token {
                Token::Punct('(' | '[' | '{') => nesting += 1,
                Token::Punct(')' | ']' | '}') => {
                    nesting -= 1;
                    if nesting == 0 {
                        break;
                    }
                }
                Token::Name(name) if nesting == 1 && SIZE_ARGS.contains(&name) && self.eat(':') => {
                    let this = match self.peek() {
                        Some(Token::Int(n)) => n,
                        _ => MAX_K,
                    };
                    size = size.max(Some(this));
                }
                _ => {}
            }
        }
        size
    }

    fn directives(&mut self) {
        while self.eat('@') {
            if let Some(Token::Name(_)) = self.peek() {
                self.next();
            }
            if self.eat('(') {
                self.arguments();
            }
        }
    }

    /// A selection set whose `{` was read, to its matching `}`.
    fn selection_set(&mut self) -> Result<Summary<'a>, Refusal> {
        let mut summary = Summary {
            depth: 1,
            ..Summary::default()
        };
        // The weight of each open selection set, innermost last: its length is the depth.
        let mut open: Vec<u64> = vec![1];
        while let Some(&weight) = open.last() {
            let depth = open.len();
            let Some(token) = self.next() else { break };
            let inner = match token {
                Token::Punct('}') => {
                    open.pop();
                    continue;
                }
                Token::Spread => match self.peek() {
                    Some(Token::Name(name)) if name != "on" => {
                        self.next();
                        self.directives();
                        summary.spreads.push(Spread {
                            name,
                            depth,
                            weight,
                        });
                        continue;
                    }
                    // `... on Type @dir { }` or `... @dir { }`.
                    _ => {
                        if self.peek() == Some(Token::Name("on")) {
                            self.next();
                            if let Some(Token::Name(_)) = self.peek() {
                                self.next();
                            }
                        }
                        self.directives();
                        weight
                    }
                },
                Token::Name(mut field) => {
                    if self.eat(':')
                        && let Some(Token::Name(name)) = self.peek()
                    {
                        self.next();
                        field = name;
                    }
                    let size = if self.eat('(') {
                        self.arguments()
                    } else {
                        None
                    };
                    self.directives();
                    summary.complexity = summary.complexity.saturating_add(weight);
                    let size = size.unwrap_or_else(|| self.sizes.absent(field));
                    weight.saturating_mul(size.max(1))
                }
                _ => continue,
            };
            if self.eat('{') {
                if depth >= MAX_DEPTH {
                    return Err(Refusal::TooDeep);
                }
                open.push(inner);
                summary.depth = summary.depth.max(depth + 1);
            }
        }
        Ok(summary)
    }

    /// Every operation and fragment definition, read once.
    fn document(&mut self) -> Result<Document<'a>, Refusal> {
        let mut document = Document::default();
        // The fragment whose selection set comes next.
        let mut fragment = None;
        while let Some(token) = self.next() {
            match token {
                Token::Name("fragment") => {
                    if let Some(Token::Name(name)) = self.peek() {
                        self.next();
                        fragment = Some(name);
                    }
                }
                Token::Punct('{') => {
                    let summary = self.selection_set()?;
                    match fragment.take() {
                        Some(name) => {
                            if document.fragments.insert(name, summary).is_some() {
                                return Err(Refusal::DuplicateFragment(name.to_owned()));
                            }
                            document.order.push(name);
                        }
                        None => document.operations.push(summary),
                    }
                }
                // Variable definitions, directive arguments: skipped, default values included.
                Token::Punct('(') => {
                    self.arguments();
                }
                _ => {}
            }
        }
        Ok(document)
    }
}

/// Expands spreads, each fragment once.
struct Expander<'d, 'a> {
    fragments: &'d HashMap<&'a str, Summary<'a>>,
    /// Expanded fragments: depth below the spread's selection set, fields at weight 1.
    done: HashMap<&'a str, Cost>,
    /// Fragments being expanded, outermost first.
    open: HashSet<&'a str>,
}

impl<'d, 'a> Expander<'d, 'a> {
    /// Fragment `name`, spread inside `chain` other fragments.
    fn fragment(&mut self, name: &'a str, chain: usize) -> Result<Cost, Refusal> {
        if let Some(cost) = self.done.get(name) {
            return Ok(*cost);
        }
        // An unknown fragment: juniper refuses the document.
        let Some(summary) = self.fragments.get(name) else {
            return Ok(Cost::default());
        };
        // Each spread nests a level: a longer chain is too deep, whatever it holds.
        if chain > MAX_DEPTH {
            return Err(Refusal::TooDeep);
        }
        if !self.open.insert(name) {
            return Err(Refusal::FragmentCycle(name.to_owned()));
        }
        let cost = self.expand(summary, chain)?;
        self.open.remove(name);
        self.done.insert(name, cost);
        Ok(cost)
    }

    fn expand(&mut self, summary: &Summary<'a>, chain: usize) -> Result<Cost, Refusal> {
        let mut cost = Cost {
            depth: summary.depth,
            complexity: summary.complexity,
        };
        for spread in &summary.spreads {
            let inner = self.fragment(spread.name, chain + 1)?;
            cost.depth = cost.depth.max(spread.depth + inner.depth);
            cost.complexity = cost
                .complexity
                .saturating_add(spread.weight.saturating_mul(inner.complexity));
        }
        if cost.depth > MAX_DEPTH {
            return Err(Refusal::TooDeep);
        }
        Ok(cost)
    }
}

/// The cost of a GraphQL document, or why it is refused.
pub fn check(query: &str, sizes: &Sizes) -> Result<Cost, Refusal> {
    let mut parser = Parser {
        lexer: Lexer {
            source: query,
            i: 0,
            nesting: 0,
            too_nested: false,
        },
        peeked: None,
        sizes,
    };
    let document = parser.document();
    if parser.lexer.too_nested {
        return Err(Refusal::TooNested);
    }
    let document = document?;
    let mut expander = Expander {
        fragments: &document.fragments,
        done: HashMap::new(),
        open: HashSet::new(),
    };
    let mut cost = Cost::default();
    // Fragments that no operation spreads count for depth too: validation follows their spreads.
    for name in &document.order {
        cost.depth = cost.depth.max(expander.fragment(name, 0)?.depth);
    }
    for operation in &document.operations {
        let this = expander.expand(operation, 0)?;
        cost.depth = cost.depth.max(this.depth);
        cost.complexity = cost.complexity.max(this.complexity);
    }
    if cost.complexity > MAX_COMPLEXITY {
        return Err(Refusal::TooCostly(cost.complexity));
    }
    Ok(cost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> Sizes {
        Sizes::of(&crate::graphql::schema().schema)
    }

    fn cost(query: &str) -> Result<Cost, Refusal> {
        check(query, &sizes())
    }

    fn complexity(query: &str) -> u64 {
        cost(query).expect("accepted").complexity
    }

    #[test]
    fn counts_fields_and_multiplies_lists_by_k() {
        let c = cost(
            r#"{ recommendations(userId: "u", k: 5) { userId items { itemId item { title } } } }"#,
        )
        .expect("accepted");
        // recommendations once; everything under it (userId, items, itemId, item, title) 5 times:
        // an upper bound of what resolving it costs.
        assert_eq!(c.complexity, 1 + 5 * 5);
        assert_eq!(c.depth, 4);
    }

    #[test]
    fn the_schema_sizes_fields_whose_k_is_left_out() {
        let sizes = sizes();
        for field in ["recommendations", "trending", "recommendationsUpdated"] {
            assert_eq!(sizes.absent(field), 10, "{field}");
        }
        assert_eq!(sizes.absent("items"), 1);
        assert_eq!(complexity("{ trending { itemId title } }"), 1 + 2 * 10);
    }

    #[test]
    fn ignores_braces_in_strings_comments_and_arguments() {
        let c = cost("{ a(s: \"{{{{ k: 900\", o: {k: 9}) { b } } # {{{{\n").expect("accepted");
        assert_eq!(
            c,
            Cost {
                depth: 2,
                complexity: 2
            }
        );
    }

    #[test]
    fn a_variable_k_counts_at_the_largest_k() {
        let q = "query Q($k: Int = 5) { trending(k: $k) { itemId } }";
        assert_eq!(complexity(q), 1 + MAX_K);
        // Also when the default hides a larger value, or the literal is not an integer.
        assert_eq!(complexity("{ trending(k: null) { itemId } }"), 1 + MAX_K);
        assert_eq!(complexity("{ trending(first: 3, k: 7) { itemId } }"), 1 + 7);
    }

    #[test]
    fn fragments_count_at_every_spread_with_its_multiplier() {
        let q = "{ x: trending(k: 10) { ...F ... on Item { title } } y: trending(k: 2) { ...F } } \
                 fragment F on Item { tags categories }";
        // x once, F's two fields and the inline title ten times; y once, F's fields twice.
        assert_eq!(complexity(q), 1 + 10 * 3 + 1 + 2 * 2);
        // A spread nests a level, as an inline fragment does.
        assert_eq!(cost(q).expect("accepted").depth, 3);
    }

    #[test]
    fn fragment_bombs_are_costed_without_expanding_them() {
        // F20 expands to 2^20 fields: costed in linear time, refused for depth (each spread nests).
        let mut q =
            String::from("{ ...F20 } fragment F0 on Query { item(itemId: \"i\") { title } }");
        for i in 1..=20 {
            q.push_str(&format!(
                " fragment F{i} on Query {{ ...F{j} ...F{j} }}",
                j = i - 1
            ));
        }
        assert_eq!(cost(&q), Err(Refusal::TooDeep));
        // Within the depth limit, the doubling is costed in full: F5 holds 2^5 items.
        let mut q =
            String::from("{ ...F5 } fragment F0 on Query { item(itemId: \"i\") { title } }");
        for i in 1..=5 {
            q.push_str(&format!(
                " fragment F{i} on Query {{ ...F{j} ...F{j} }}",
                j = i - 1
            ));
        }
        assert_eq!(complexity(&q), 2 * 32);
        // G costs 1 + 100 x 5: three spreads pass, four do not.
        q.push_str(
            " fragment G on Query { a: trending(k: 100) { ...H } } \
             fragment H on Item { itemId title tags categories itemId }",
        );
        let spreads =
            |n: usize| q.replace("{ ...F5 }", &format!("{{ ...F5 {} }}", "...G ".repeat(n)));
        assert_eq!(complexity(&spreads(3)), 64 + 3 * 501);
        assert_eq!(cost(&spreads(4)), Err(Refusal::TooCostly(64 + 4 * 501)));
    }

    #[test]
    fn fragment_cycles_are_refused() {
        assert_eq!(
            cost("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }"),
            Err(Refusal::FragmentCycle("A".into()))
        );
        assert_eq!(
            cost("fragment A on Query { item(itemId: \"i\") { ...A } }"),
            Err(Refusal::FragmentCycle("A".into()))
        );
        assert_eq!(
            cost("{ ...A } fragment A on Query { a } fragment A on Query { b }"),
            Err(Refusal::DuplicateFragment("A".into()))
        );
    }

    #[test]
    fn refuses_too_deep_or_too_costly() {
        assert!(cost("{ a { b { c } } }").is_ok());
        let deep = format!("{}{}", "{ a ".repeat(9), "}".repeat(9));
        assert!(
            cost(&deep)
                .expect_err("too deep")
                .to_string()
                .contains("levels deep")
        );
        let costly = r#"{ a: trending(k: 100) { itemId title tags categories } b: trending(k: 100) { itemId title tags categories } c: trending(k: 100) { itemId title tags categories } d: trending(k: 100) { itemId title tags categories } e: trending(k: 100) { itemId title tags categories } f: trending(k: 100) { itemId title tags categories } }"#;
        assert!(
            cost(costly)
                .expect_err("too costly")
                .to_string()
                .contains("fields")
        );
        // Only one operation of a document runs.
        let two = "query A { t: trending(k: 100) { itemId title } } \
                   query B { t: trending(k: 100) { itemId title } }";
        assert_eq!(complexity(two), 1 + 2 * 100);
    }

    #[test]
    fn a_document_nested_300000_levels_deep_is_refused_at_the_limit() {
        let deep = "{a".repeat(300_000);
        assert_eq!(cost(&deep), Err(Refusal::TooDeep));
        for (open, close) in [("[", "]"), ("(a:", ")"), ("{a:", "}")] {
            let value = format!(
                "{{ a(x: {}1{}) }}",
                open.repeat(300_000),
                close.repeat(300_000)
            );
            assert_eq!(cost(&value), Err(Refusal::TooNested), "{open}");
        }
        let types = format!(
            "query($v: {}Int{}) {{ a }}",
            "[".repeat(300_000),
            "]".repeat(300_000)
        );
        assert_eq!(cost(&types), Err(Refusal::TooNested));
        // Spreads nest too: a long chain of fragments is as deep as a long chain of fields.
        let mut chain = String::from("{ ...F0 }");
        for i in 0..100_000 {
            chain.push_str(&format!(" fragment F{i} on Query {{ ...F{} }}", i + 1));
        }
        assert_eq!(cost(&chain), Err(Refusal::TooDeep));
    }

    #[test]
    fn a_comment_ended_by_a_carriage_return_does_not_hide_the_query() {
        let costly = (1..=6)
            .map(|i| format!("a{i}: trending(k: 100) {{ itemId title tags categories }}"))
            .collect::<Vec<_>>()
            .join(" ");
        for end in ["\r", "\r\n", "\n"] {
            let document = format!("# hidden?{end}{{ {costly} }}");
            assert!(
                matches!(cost(&document), Err(Refusal::TooCostly(_))),
                "comment ended by {end:?}"
            );
        }
        // Strings end where juniper ends them too: `\\"""` does not close a block string, so
        // the `"""` after it does, and what follows is the query.
        let document = format!("{{ t(x: \"\"\"\\\\\"\"\" \"\"\") {{ {costly} }} }}");
        assert!(
            matches!(cost(&document), Err(Refusal::TooCostly(_))),
            "{document}"
        );
    }

    #[test]
    fn malformed_input_has_a_finite_cost() {
        for junk in [
            "{",
            "}}}",
            "{ a(",
            "\"",
            "...",
            "{ ... on",
            "{ a @",
            "((((",
            "{ x: }",
            "\"\"\"\\é",
            "é...",
            "fragment",
            "fragment F",
            "{ ...F }",
            "{ a(k: ",
            "-",
            "{ a(k: 99999999999999999999999) { b } }",
        ] {
            let _ = cost(junk);
        }
    }
}

/// Property tests: random documents from a small grammar, costed here and by a naive expansion
/// of the same tree; the same documents mutated, and arbitrary text, never panic nor pass deeper
/// than the limits.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Arg {
        Literal(u64),
        Variable,
    }

    #[derive(Clone, Debug)]
    enum Sel {
        /// A field; a leaf when `children` is empty.
        Field {
            alias: bool,
            k: Option<Arg>,
            children: Vec<Sel>,
        },
        Inline(Vec<Sel>),
        /// A spread of a fragment defined after the one it is in (so there is no cycle): the
        /// number picks which; none left makes it a spread of an undefined fragment.
        Spread(usize),
    }

    #[derive(Clone, Debug)]
    struct Doc {
        operation: Vec<Sel>,
        fragments: Vec<Vec<Sel>>,
    }

    impl Doc {
        fn target(&self, owner: Option<usize>, pick: usize) -> Option<usize> {
            let first = owner.map_or(0, |i| i + 1);
            let left = self.fragments.len().checked_sub(first).filter(|n| *n > 0)?;
            Some(first + pick % left)
        }

        fn render(&self) -> String {
            let mut out = String::from("query Q($k: Int) ");
            self.render_set(&self.operation, None, &mut out);
            for (i, fragment) in self.fragments.iter().enumerate() {
                out.push_str(&format!(" fragment F{i} on T "));
                self.render_set(fragment, Some(i), &mut out);
            }
            out
        }

        fn render_set(&self, set: &[Sel], owner: Option<usize>, out: &mut String) {
            out.push_str("{ ");
            for sel in set {
                match sel {
                    Sel::Field { alias, k, children } => {
                        out.push_str(if *alias { "a: f" } else { "f" });
                        match k {
                            Some(Arg::Literal(n)) => out.push_str(&format!("(x: 1, k: {n})")),
                            Some(Arg::Variable) => out.push_str("(k: $k)"),
                            None => {}
                        }
                        out.push(' ');
                        if !children.is_empty() {
                            self.render_set(children, owner, out);
                        }
                    }
                    Sel::Inline(children) => {
                        out.push_str("... on T ");
                        self.render_set(children, owner, out);
                    }
                    Sel::Spread(pick) => match self.target(owner, *pick) {
                        Some(t) => out.push_str(&format!("...F{t} ")),
                        None => out.push_str("...Missing "),
                    },
                }
            }
            out.push_str("} ");
        }

        /// The cost by expanding every spread, the way the definition reads.
        fn walk(
            &self,
            set: &[Sel],
            owner: Option<usize>,
            depth: usize,
            weight: u64,
            acc: &mut Cost,
        ) {
            acc.depth = acc.depth.max(depth);
            for sel in set {
                match sel {
                    Sel::Field { k, children, .. } => {
                        acc.complexity = acc.complexity.saturating_add(weight);
                        if !children.is_empty() {
                            let size = match k {
                                Some(Arg::Literal(n)) => (*n).max(1),
                                Some(Arg::Variable) => MAX_K,
                                None => 1,
                            };
                            self.walk(children, owner, depth + 1, weight.saturating_mul(size), acc);
                        }
                    }
                    Sel::Inline(children) => self.walk(children, owner, depth + 1, weight, acc),
                    Sel::Spread(pick) => {
                        if let Some(t) = self.target(owner, *pick) {
                            self.walk(&self.fragments[t], Some(t), depth + 1, weight, acc);
                        }
                    }
                }
            }
        }

        fn expected(&self) -> Result<Cost, Refusal> {
            let mut depth = 0;
            for (i, fragment) in self.fragments.iter().enumerate() {
                let mut c = Cost::default();
                self.walk(fragment, Some(i), 1, 1, &mut c);
                depth = depth.max(c.depth);
            }
            let mut c = Cost::default();
            self.walk(&self.operation, None, 1, 1, &mut c);
            if depth.max(c.depth) > MAX_DEPTH {
                return Err(Refusal::TooDeep);
            }
            if c.complexity > MAX_COMPLEXITY {
                return Err(Refusal::TooCostly(c.complexity));
            }
            Ok(Cost {
                depth: depth.max(c.depth),
                complexity: c.complexity,
            })
        }

        /// The same document with every literal `k` larger by `by`.
        fn bump(&self, by: u64) -> Self {
            fn set(sels: &[Sel], by: u64) -> Vec<Sel> {
                sels.iter()
                    .map(|sel| match sel {
                        Sel::Field { alias, k, children } => Sel::Field {
                            alias: *alias,
                            k: match k {
                                Some(Arg::Literal(n)) => Some(Arg::Literal(n + by)),
                                other => other.clone(),
                            },
                            children: set(children, by),
                        },
                        Sel::Inline(children) => Sel::Inline(set(children, by)),
                        spread => spread.clone(),
                    })
                    .collect()
            }
            Self {
                operation: set(&self.operation, by),
                fragments: self.fragments.iter().map(|f| set(f, by)).collect(),
            }
        }
    }

    fn arg() -> impl Strategy<Value = Option<Arg>> {
        prop_oneof![
            Just(None),
            (0u64..=100).prop_map(|n| Some(Arg::Literal(n))),
            Just(Some(Arg::Variable)),
        ]
    }

    fn selection() -> impl Strategy<Value = Sel> {
        let leaf = prop_oneof![
            (any::<bool>(), arg()).prop_map(|(alias, k)| Sel::Field {
                alias,
                k,
                children: Vec::new()
            }),
            (0usize..4).prop_map(Sel::Spread),
        ];
        leaf.prop_recursive(11, 48, 4, |inner| {
            prop_oneof![
                3 => (any::<bool>(), arg(), prop::collection::vec(inner.clone(), 1..4)).prop_map(
                    |(alias, k, children)| Sel::Field {
                        alias,
                        k,
                        children
                    }
                ),
                1 => prop::collection::vec(inner, 0..3).prop_map(Sel::Inline),
            ]
        })
    }

    fn document() -> impl Strategy<Value = Doc> {
        (
            prop::collection::vec(selection(), 1..4),
            prop::collection::vec(prop::collection::vec(selection(), 1..3), 0..4),
        )
            .prop_map(|(operation, fragments)| Doc {
                operation,
                fragments,
            })
    }

    /// The deepest bracket nesting of a text without strings or comments.
    fn nesting(text: &str) -> usize {
        let (mut depth, mut deepest) = (0usize, 0usize);
        for c in text.chars() {
            match c {
                '{' | '[' | '(' => depth += 1,
                '}' | ']' | ')' => depth = depth.saturating_sub(1),
                _ => {}
            }
            deepest = deepest.max(depth);
        }
        deepest
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn the_cost_is_the_cost_of_the_expanded_document(doc in document()) {
            let sizes = Sizes::default();
            let got = check(&doc.render(), &sizes);
            match (doc.expected(), &got) {
                // Saturated sums may differ in the number; both are far over the limit.
                (Err(Refusal::TooCostly(_)), Err(Refusal::TooCostly(_))) => {}
                (expected, got) => prop_assert_eq!(&expected, got, "{}", doc.render()),
            }
        }

        #[test]
        fn the_cost_grows_with_k(doc in document(), by in 1u64..200) {
            let sizes = Sizes::default();
            let small = check(&doc.render(), &sizes);
            let large = check(&doc.bump(by).render(), &sizes);
            match (small, large) {
                (Ok(small), Ok(large)) => prop_assert!(small.complexity <= large.complexity),
                (Err(_), Ok(large)) => prop_assert!(false, "refused with smaller k, accepted {large:?}"),
                (_, Err(_)) => {}
            }
        }

        #[test]
        fn mutated_documents_never_pass_deeper_than_the_limits(
            doc in document(),
            edits in prop::collection::vec(
                (any::<prop::sample::Index>(), 0u8..3, prop::sample::select(
                    vec!["{", "}", "[", "]", "(", ")", ":", "$", ".", "@", " ", "a", "k", "5", "\r", "\r\n"],
                )),
                0..12,
            ),
        ) {
            let mut text: Vec<char> = doc.render().chars().collect();
            for (at, op, c) in edits {
                let i = at.index(text.len() + 1);
                match op {
                    0 => {
                        text.splice(i..i, c.chars());
                    }
                    1 if i < text.len() => {
                        text.remove(i);
                    }
                    _ => {
                        let end = (i + 20).min(text.len());
                        let slice: Vec<char> = text[i..end].to_vec();
                        text.splice(i..i, slice);
                    }
                }
            }
            let text: String = text.into_iter().collect();
            if let Ok(cost) = check(&text, &Sizes::default()) {
                prop_assert!(cost.depth <= MAX_DEPTH, "{text}");
                prop_assert!(cost.complexity <= MAX_COMPLEXITY, "{text}");
                prop_assert!(nesting(&text) <= MAX_NESTING, "{text}");
            }
        }

        #[test]
        fn any_text_has_a_finite_cost(text in "[{}()\\[\\]a-z:.$@ \"#0-9\r\n\\\\-]{0,400}") {
            let _ = check(&text, &Sizes::default());
        }
    }
}
