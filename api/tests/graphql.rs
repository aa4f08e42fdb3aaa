//! GraphQL through `router(node).oneshot(request)`: the schema's names, queries, mutations and
//! errors with the REST codes; the subscription is tested end to end in `tests/e2e.rs`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::Config;
use serde_json::{Value, json};
use supervisors::Node;
use tower::ServiceExt;

async fn node() -> (Arc<Node>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    // Behaviour, not access control (tests/authz.rs covers that): no token needed.
    config.auth.enabled = false;
    config.events.num_partitions = 4;
    config.model.dim = 8;
    config.model.iterations = 4;
    (Node::start(config).await.expect("node"), dir)
}

async fn gql(node: &Arc<Node>, query: &str, variables: Value) -> (StatusCode, Value) {
    let body = json!({ "query": query, "variables": variables }).to_string();
    let response = api::router(node.clone())
        .expect("router")
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
    assert_eq!(api::graphql::depth(r#"{ a(s: "{{{{") { b } } # {{{{"#), 2);
}
