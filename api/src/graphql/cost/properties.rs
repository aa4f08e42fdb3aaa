//! Property tests: random documents from a small grammar, costed here and by a naive expansion
//! of the same tree; the same documents mutated, and arbitrary text, never panic nor pass deeper
//! than the limits.

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
    fn walk(&self, set: &[Sel], owner: Option<usize>, depth: usize, weight: u64, acc: &mut Cost) {
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
