//! Examples of costs and refusals, through [`check`] with the real schema's sizes.

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
    let mut q = String::from("{ ...F20 } fragment F0 on Query { item(itemId: \"i\") { title } }");
    for i in 1..=20 {
        q.push_str(&format!(
            " fragment F{i} on Query {{ ...F{j} ...F{j} }}",
            j = i - 1
        ));
    }
    assert_eq!(cost(&q), Err(Refusal::TooDeep));
    // Within the depth limit, the doubling is costed in full: F5 holds 2^5 items.
    let mut q = String::from("{ ...F5 } fragment F0 on Query { item(itemId: \"i\") { title } }");
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
    let spreads = |n: usize| q.replace("{ ...F5 }", &format!("{{ ...F5 {} }}", "...G ".repeat(n)));
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
