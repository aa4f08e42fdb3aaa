//! Tokens of a GraphQL document, on demand and without recursion, delimited exactly as
//! juniper's lexer delimits them: a comment ends at `\n` or `\r`, a string at an unescaped `"` or
//! a line terminator, a block string at a `"""` not escaped by the backslash right before it.
//! Anything read differently would let a document hide from the cost what juniper runs. Only
//! what costing needs is kept (names, integers, punctuation, spreads); open brackets are counted
//! and the input ends at the first past [`MAX_NESTING`].

use super::MAX_NESTING;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Token<'a> {
    Name(&'a str),
    Int(u64),
    Punct(char),
    Spread,
    /// A string, float or anything else that carries no structure.
    Other,
}

/// Tokens on demand, so that reading stops where the document is refused. Counts open brackets
/// and ends the input at the first past [`MAX_NESTING`].
pub(super) struct Lexer<'a> {
    pub(super) source: &'a str,
    pub(super) i: usize,
    pub(super) nesting: usize,
    pub(super) too_nested: bool,
}

impl<'a> Lexer<'a> {
    pub(super) fn next_token(&mut self) -> Option<Token<'a>> {
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
