//! GraphQL through `router(node).oneshot(request)`: the schema's names, queries, mutations and
//! errors with the REST codes; the subscription is tested end to end in `tests/e2e.rs`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use supervisors::Node;
use tower::ServiceExt;

async fn node() -> (Arc<Node>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = testkit::config(dir.path());
    // Behaviour, not access control (tests/authz.rs covers that): no token needed.
    config.auth.enabled = false;
    config.model.iterations = 4;
    (Node::start(config).await.expect("node"), dir)
}

async fn gql(node: &Arc<Node>, query: &str, variables: Value) -> (StatusCode, Value) {
    post(node, json!({ "query": query, "variables": variables })).await
}

/// `POST /graphql` with this JSON body (a request, or an array of them).
async fn post(node: &Arc<Node>, body: Value) -> (StatusCode, Value) {
    post_to(api::router(node.clone()).expect("router"), body).await
}

/// The same, to this router (and its rate limiter).
async fn post_to(router: axum::Router, body: Value) -> (StatusCode, Value) {
    let body = body.to_string();
    let response = router
        .oneshot(
            Request::post("/graphql")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .expect("request"),
        )
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_and_mutations_follow_the_schema() {
    let (node, _dir) = node().await;
    for i in 0..6 {
        let (status, body) = gql(
            &node,
            "mutation($id: String!, $item: ItemInput!) { upsertItem(itemId: $id, item: $item) { itemId title categories tags } }",
            json!({"id": format!("i{i}"), "item": {"title": format!("Item {i}"), "categories": ["c"], "tags": ["t"]}}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["data"]["upsertItem"]["title"],
            format!("Item {i}"),
            "{body}"
        );
    }
    let events: Vec<Value> = (0..20)
        .map(|n| json!({"eventId": format!("e{n}"), "userId": format!("u{}", n % 4), "itemId": format!("i{}", n % 6), "kind": "click"}))
        .collect();
    let (_, body) = gql(
        &node,
        "mutation($events: [EventInput!]!) { trackEvents(events: $events) { accepted duplicates } }",
        json!({ "events": events }),
    )
    .await;
    assert_eq!(
        body["data"]["trackEvents"],
        json!({"accepted": 20, "duplicates": 0}),
        "{body}"
    );
    assert!(node.wait_caught_up(Duration::from_secs(10)).await);

    let (_, body) = gql(
        &node,
        r#"{ recommendations(userId: "u1", k: 2) { userId modelVersion items { itemId score reasons item { itemId title categories tags } } }
            user(userId: "u1") { userId numEvents recent { itemId kind ts } }
            item(itemId: "i3") { itemId title }
            missing: item(itemId: "nope") { itemId }
            trending(k: 3) { itemId } }"#,
        json!({}),
    )
    .await;
    let data = &body["data"];
    assert_eq!(data["recommendations"]["userId"], "u1", "{body}");
    let items = data["recommendations"]["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{body}");
    assert!(
        items.iter().all(|i| i["item"]["itemId"] == i["itemId"]),
        "{body}"
    );
    assert_eq!(data["user"]["numEvents"], 5);
    assert_eq!(data["item"], json!({"itemId": "i3", "title": "Item 3"}));
    assert_eq!(data["missing"], Value::Null);
    assert_eq!(data["trending"].as_array().map(Vec::len), Some(3), "{body}");

    let (_, body) = gql(&node, r#"mutation { deleteItem(itemId: "i3") }"#, json!({})).await;
    assert_eq!(body["data"]["deleteItem"], true);
    let (_, body) = gql(&node, r#"{ item(itemId: "i3") { itemId } }"#, json!({})).await;
    assert_eq!(body["data"]["item"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_rest_codes_and_deep_queries_are_refused() {
    let (node, _dir) = node().await;
    for (query, code) in [
        (
            r#"{ recommendations(userId: "u", k: 0) { userId } }"#,
            "invalid_argument",
        ),
        (
            r#"{ recommendations(userId: "") { userId } }"#,
            "invalid_argument",
        ),
        (
            r#"mutation { trackEvents(events: [{userId: "u", itemId: "i", kind: "teleport"}]) { accepted } }"#,
            "invalid_argument",
        ),
        (
            r#"mutation { upsertItem(itemId: "x", item: {title: ""}) { itemId } }"#,
            "invalid_argument",
        ),
    ] {
        let (_, body) = gql(&node, query, json!({})).await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], code,
            "{query}: {body}"
        );
    }
    // Nothing was stored by the rejected mutations.
    let (_, body) = gql(
        &node,
        r#"{ item(itemId: "x") { itemId } user(userId: "u") { numEvents } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        (body["data"]["item"].clone(), body["data"]["user"].clone()),
        (Value::Null, Value::Null)
    );

    let shallow = r#"{ recommendations(userId: "u") { userId items { item { itemId } } } }"#;
    let nested = "{ a { b { c { d { e { f { g { h { i { j } } } } } } } } } }";
    let (status, body) = gql(&node, nested, json!({})).await;
    assert_eq!(
        (status, body["errors"][0]["extensions"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument")),
        "{body}"
    );
    let (status, _) = gql(&node, shallow, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    // Shallow but costly: six aliases of the largest trending list with item details.
    let fields = "itemId title tags categories";
    let costly = format!(
        "{{ {} }}",
        (0..6)
            .map(|i| format!("t{i}: trending(k: 100) {{ {fields} }}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let (status, body) = gql(&node, &costly, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("fields")),
        "{body}"
    );
    let (status, _) = gql(
        &node,
        &format!("{{ trending(k: 100) {{ {fields} }} }}"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Braces in strings and comments do not nest.
    let braces = "{{{{{{{{{{";
    let (status, body) = gql(
        &node,
        &format!("{{ item(itemId: \"{braces}\") {{ itemId }} }} # {braces}\n"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommendations_and_their_subscription_take_a_diversity() {
    let (node, _dir) = node().await;
    // Four alpha items everyone is clicking now, one beta item a single user is.
    for (id, category) in [
        ("a0", "alpha"),
        ("a1", "alpha"),
        ("a2", "alpha"),
        ("a3", "alpha"),
        ("b0", "beta"),
    ] {
        let (status, body) = gql(
            &node,
            "mutation($id: String!, $item: ItemInput!) { upsertItem(itemId: $id, item: $item) { itemId } }",
            json!({"id": id, "item": {"title": format!("Item {id}"), "categories": [category]}}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let mut events: Vec<Value> = (0..4)
        .flat_map(|u| (0..4).map(move |i| json!({"eventId": format!("t{u}-{i}"), "userId": format!("t{u}"), "itemId": format!("a{i}"), "kind": "click"})))
        .collect();
    events.push(json!({"eventId": "t4-b0", "userId": "t4", "itemId": "b0", "kind": "click"}));
    let (_, body) = gql(
        &node,
        "mutation($events: [EventInput!]!) { trackEvents(events: $events) { accepted } }",
        json!({ "events": events }),
    )
    .await;
    assert_eq!(body["data"]["trackEvents"]["accepted"], 17, "{body}");
    assert!(node.wait_caught_up(Duration::from_secs(10)).await);
    let recommend = async |diversity: Value| {
        gql(
            &node,
            "query($d: Float) { recommendations(userId: \"newcomer\", k: 3, diversity: $d) { items { itemId score } } }",
            json!({ "d": diversity }),
        )
        .await
    };
    let ids = |body: &Value| -> Vec<String> {
        body["data"]["recommendations"]["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i["itemId"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (status, diverse) = recommend(json!(0.7)).await;
    assert_eq!(status, StatusCode::OK, "{diverse}");
    let diverse_ids = ids(&diverse);
    assert_eq!(diverse_ids.len(), 3, "{diverse}");
    assert_eq!(diverse_ids[1], "b0", "{diverse}");
    let (_, plain) = recommend(Value::Null).await;
    let plain_ids = ids(&plain);
    assert_eq!(plain_ids.len(), 3, "{plain}");
    assert!(plain_ids.iter().all(|id| id.starts_with('a')), "{plain}");
    assert_eq!(ids(&recommend(json!(0)).await.1), plain_ids);
    // Out of range: the REST code; not a number: refused by the schema.
    for bad in [json!(-0.5), json!(1.01)] {
        let (_, body) = recommend(bad).await;
        assert_eq!(code(&body), Some("invalid_argument"), "{body}");
        assert_eq!(body["data"], Value::Null, "{body}");
    }
    let (_, body) = recommend(json!("lots")).await;
    assert!(body["errors"][0]["message"].is_string(), "{body}");
    assert!(ids(&body).is_empty(), "{body}");
    // The subscription takes the same argument.
    let (_, schema) = gql(
        &node,
        "{ __type(name: \"Subscription\") { fields { name args { name type { name } } } } }",
        json!({}),
    )
    .await;
    let fields = schema["data"]["__type"]["fields"]
        .as_array()
        .expect("fields");
    let updated = fields
        .iter()
        .find(|f| f["name"] == "recommendationsUpdated")
        .expect("recommendationsUpdated");
    assert!(
        updated["args"]
            .as_array()
            .expect("args")
            .iter()
            .any(|a| a["name"] == "diversity" && a["type"]["name"] == "Float"),
        "{updated}"
    );
}

fn code(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["code"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_nested_300000_levels_deep_is_refused_without_overflowing_the_stack() {
    let (node, _dir) = node().await;
    // 900 kB: under the 1 MiB body limit, and far deeper than any stack takes by recursion.
    let levels = 300_000;
    let deep = [
        format!("{}{}", "{a".repeat(levels), "}".repeat(levels)),
        format!(
            "{{ trending(category: {}\"c\"{}) {{ itemId }} }}",
            "[".repeat(levels),
            "]".repeat(levels)
        ),
        format!(
            "query($c: {}String{}) {{ trending {{ itemId }} }}",
            "[".repeat(levels),
            "]".repeat(levels)
        ),
    ];
    for query in &deep {
        let (status, body) = gql(&node, query, json!({})).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, Some("invalid_argument")),
            "{body}"
        );
    }
    // The node is still up.
    let (status, body) = gql(&node, "{ trending(k: 3) { itemId } }", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Six lists of `k` items with four fields each: 6 x (1 + 4k) fields.
fn six_lists(k: &str, selection: &str) -> String {
    let lists: Vec<String> = (0..6)
        .map(|i| format!("t{i}: trending(k: {k}) {{ {selection} }}"))
        .collect();
    format!("{{ {} }}", lists.join(" "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variable_k_is_costed_at_its_maximum() {
    let (node, _dir) = node().await;
    let fields = "itemId title tags categories";
    let query = format!("query($k: Int!) {}", six_lists("$k", fields));
    // Whatever value the variable has, it may have 100: 6 x 401 fields.
    for k in [1, 100] {
        let (status, body) = gql(&node, &query, json!({ "k": k })).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, Some("invalid_argument")),
            "{body}"
        );
    }
    // Within the limit, a variable k is fine.
    let (status, body) = gql(
        &node,
        &format!("query($k: Int!) {{ trending(k: $k) {{ {fields} }} }}"),
        json!({ "k": 3 }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["errors"].is_null(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_is_costed_at_every_spread_with_its_multiplier() {
    let (node, _dir) = node().await;
    let fragment = "fragment F on Item { itemId title tags categories }";
    // Costed once, F would make this 6 x 1 + 4 fields; it is 6 x (1 + 100 x 4).
    let (status, body) = gql(
        &node,
        &format!("{} {fragment}", six_lists("100", "...F")),
        json!({}),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, Some("invalid_argument")),
        "{body}"
    );
    // A fragment that spreads itself is refused before anything expands it.
    let (status, body) = gql(
        &node,
        "{ trending { ...A } } fragment A on Item { ...B } fragment B on Item { itemId ...A }",
        json!({}),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, Some("invalid_argument")),
        "{body}"
    );
    // Fragments within the limits run.
    let (status, body) = gql(
        &node,
        &format!("{} {fragment}", six_lists("10", "...F")),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["errors"].is_null(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_longer_than_graphql_max_batch_is_refused() {
    let (node, _dir) = node().await;
    let max = node.config.server.graphql_max_batch;
    let batch = |n: usize| {
        Value::Array(
            (0..n)
                .map(|_| json!({ "query": "{ trending(k: 2) { itemId } }" }))
                .collect(),
        )
    };
    let (status, body) = post(&node, batch(max + 1)).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, Some("invalid_argument")),
        "{body}"
    );
    let (status, body) = post(&node, batch(max)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(max), "{body}");
    // Each operation is costed: one costly member refuses the batch.
    let mut mixed = batch(2);
    if let Value::Array(requests) = &mut mixed {
        requests.push(json!({ "query": six_lists("100", "itemId title tags categories") }));
    }
    let (status, body) = post(&node, mixed).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, Some("invalid_argument")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_spends_the_rate_limit_once_per_operation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = testkit::tiny_config(dir.path());
    config.auth.enabled = false;
    config.auth.rate_limit_per_second = 0.001;
    config.auth.rate_limit_burst = 6;
    let node = Node::start(config).await.expect("node");
    let batch = |n: usize| {
        Value::Array(
            (0..n)
                .map(|_| json!({ "query": "{ trending(k: 2) { itemId } }" }))
                .collect(),
        )
    };
    let router = api::router(node).expect("router");
    // Six operations: the whole burst.
    let (status, body) = post_to(router.clone(), batch(6)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = post_to(router, batch(1)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
}
