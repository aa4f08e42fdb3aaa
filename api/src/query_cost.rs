//! What a GraphQL document would cost, measured before it runs: its nesting depth and its
//! complexity, an upper bound of the fields it would resolve: every field under a field whose
//! result size the query chooses (`k: n`) counts n times, so
//! `recommendations(k: 100) { items { item { title } } }` costs what it may really cost. Documents
//! too deep or too costly are refused with 400.
//!
//! This is a small tokenizer and recursive descent over selection sets, not a validator: juniper
//! validates the document afterwards. Malformed input yields a finite cost and is then rejected
//! by juniper with its own message.

/// Deepest selection nesting a query may have.
pub const MAX_DEPTH: usize = 8;
/// Most fields a query may resolve, lists multiplied out.
pub const MAX_COMPLEXITY: u64 = 2_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub depth: usize,
    pub complexity: u64,
}

#[derive(Clone, Debug, PartialEq)]
enum Token<'a> {
    Name(&'a str),
    Int(u64),
    Punct(char),
    Spread,
    /// A string, float or anything else that carries no structure.
    Other,
}

fn tokenize(source: &str) -> Vec<Token<'_>> {
    let bytes = source.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                if bytes[i..].starts_with(b"\"\"\"") {
                    i += 3;
                    while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 3;
                } else {
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                }
                tokens.push(Token::Other);
                continue;
            }
            b'.' if bytes[i..].starts_with(b"...") => {
                tokens.push(Token::Spread);
                i += 3;
                continue;
            }
            b'{' | b'}' | b'(' | b')' | b':' | b'@' | b'[' | b']' | b'=' | b'$' | b'!' => {
                tokens.push(Token::Punct(c as char));
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                    i += 1;
                }
                tokens.push(source[start..i].parse().map_or(Token::Other, Token::Int));
                continue;
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                tokens.push(Token::Name(&source[start..i]));
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    tokens
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    pos: usize,
    cost: Cost,
}

/// Arguments that size a list result.
const SIZE_ARGS: [&str; 2] = ["k", "first"];

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Token<'a>> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token<'a>> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Token::Punct(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Skips a balanced `(...)`, returning the value of a size argument if one is a literal.
    fn arguments(&mut self) -> Option<u64> {
        let mut size = None;
        let mut nesting = 0usize;
        while let Some(token) = self.next() {
            match token {
                Token::Punct('(' | '[' | '{') => nesting += 1,
                Token::Punct(')' | ']' | '}') => {
                    nesting = nesting.saturating_sub(1);
                    if nesting == 0 {
                        break;
                    }
                }
                Token::Name(name) if nesting == 1 && SIZE_ARGS.contains(&name) => {
                    if self.eat(':')
                        && let Some(Token::Int(n)) = self.peek()
                    {
                        size = Some(*n);
                    }
                }
                _ => {}
            }
        }
        size
    }

    fn directives(&mut self) {
        while self.eat('@') {
            self.next();
            if self.peek() == Some(&Token::Punct('(')) {
                self.arguments();
            }
        }
    }

    /// A selection set after its `{`; every field in it counts `weight` times.
    fn selection_set(&mut self, depth: usize, weight: u64) {
        self.cost.depth = self.cost.depth.max(depth);
        while let Some(token) = self.next() {
            match token {
                Token::Punct('}') => return,
                Token::Spread => {
                    // `... on Type @dir { }` or `...Fragment @dir`.
                    if self.peek() == Some(&Token::Name("on")) {
                        self.pos += 2;
                    } else if matches!(self.peek(), Some(Token::Name(_))) {
                        self.pos += 1;
                    }
                    self.directives();
                    if self.eat('{') {
                        self.selection_set(depth + 1, weight);
                    }
                }
                Token::Name(_) => {
                    if self.eat(':') {
                        self.next();
                    }
                    let size = if self.peek() == Some(&Token::Punct('(')) {
                        self.arguments()
                    } else {
                        None
                    };
                    self.directives();
                    self.cost.complexity = self.cost.complexity.saturating_add(weight);
                    if self.eat('{') {
                        let inner = weight.saturating_mul(size.unwrap_or(1).max(1));
                        self.selection_set(depth + 1, inner);
                    }
                }
                _ => {}
            }
        }
    }

    /// Every operation and fragment definition in the document.
    fn document(&mut self) {
        while let Some(token) = self.next() {
            match token {
                Token::Punct('{') => self.selection_set(1, 1),
                Token::Punct('(') => {
                    // Variable definitions: skip, with their default values.
                    self.pos -= 1;
                    self.arguments();
                }
                _ => {}
            }
        }
    }
}

/// The cost of a GraphQL document.
pub fn cost(query: &str) -> Cost {
    let mut parser = Parser {
        tokens: tokenize(query),
        pos: 0,
        cost: Cost::default(),
    };
    parser.document();
    parser.cost
}

/// Why a document is refused, if it is.
pub fn check(query: &str) -> Result<Cost, String> {
    let cost = cost(query);
    if cost.depth > MAX_DEPTH {
        return Err(format!(
            "the query nests {} levels deep; at most {MAX_DEPTH} are allowed",
            cost.depth
        ));
    }
    if cost.complexity > MAX_COMPLEXITY {
        return Err(format!(
            "the query would resolve {} fields; at most {MAX_COMPLEXITY} are allowed (lower `k`)",
            cost.complexity
        ));
    }
    Ok(cost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fields_and_multiplies_lists_by_k() {
        let c = cost(
            r#"{ recommendations(userId: "u", k: 5) { userId items { itemId item { title } } } }"#,
        );
        // recommendations once; everything under it (userId, items, itemId, item, title) 5 times:
        // an upper bound of what resolving it costs.
        assert_eq!(c.complexity, 1 + 5 * 5);
        assert_eq!(c.depth, 4);
    }

    #[test]
    fn ignores_braces_in_strings_comments_and_arguments() {
        let c = cost("{ a(s: \"{{{{ k: 900\", o: {k: 9}) { b } } # {{{{\n");
        assert_eq!(
            c,
            Cost {
                depth: 2,
                complexity: 2
            }
        );
        let c = cost("query Q($k: Int = 50) { a(k: $k) { b } }");
        assert_eq!(
            c.complexity, 2,
            "a variable size is not known, counted once"
        );
    }

    #[test]
    fn fragments_and_aliases_count() {
        let c = cost(
            "{ x: trending(k: 10) { ...F ... on Item { title } } } fragment F on Item { tags categories }",
        );
        assert_eq!(c.complexity, 1 + 10 + 2);
    }

    #[test]
    fn refuses_too_deep_or_too_costly() {
        assert!(check("{ a { b { c } } }").is_ok());
        let deep = format!("{}{}", "{ a ".repeat(9), "}".repeat(9));
        assert!(check(&deep).expect_err("too deep").contains("levels deep"));
        let costly = r#"{ a: trending(k: 100) { itemId title tags categories } b: trending(k: 100) { itemId title tags categories } c: trending(k: 100) { itemId title tags categories } d: trending(k: 100) { itemId title tags categories } e: trending(k: 100) { itemId title tags categories } f: trending(k: 100) { itemId title tags categories } }"#;
        assert!(check(costly).expect_err("too costly").contains("fields"));
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
        ] {
            let _ = cost(junk);
        }
    }
}
