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
//!
//! The reading is split by concern: [`lexer`] turns the text into tokens exactly as juniper's
//! lexer delimits them (comments, strings, block strings), and counts brackets; this module
//! holds the limits, the schema's list sizes ([`Sizes`]), the one pass over the tokens and the
//! expansion of fragments. The tests live in `tests` (examples) and `properties` (property
//! tests against a naive expansion). Outside the tests, which build the real schema, nothing
//! here imports the rest of `graphql`: it reads only juniper's schema metadata.

mod lexer;

use std::collections::{HashMap, HashSet};

use juniper::meta::{InterfaceMeta, MetaType, ObjectMeta};
use juniper::{InputValue, ScalarValue, SchemaType};

use lexer::{Lexer, Token};

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
mod properties;
#[cfg(test)]
mod tests;
