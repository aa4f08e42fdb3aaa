//! The REST surface through `router(node).oneshot(request)`: status codes, error bodies and the
//! rule that a rejected request stores nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use supervisors::Node;
use tower::ServiceExt;

struct Api {
    node: Arc<Node>,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = testkit::config(dir.path());
        // Behaviour, not access control (tests/authz.rs covers that): no token needed.
        config.auth.enabled = false;
        config.server.max_body_bytes = 64 * 1024;
        config.server.max_batch_events = 50;
        Self {
            node: Node::start(config).await.expect("node starts"),
            _dir: dir,
        }
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        self.raw(
            Request::builder()
                .method(method)
                .uri(uri)
                .header("content-type", "application/json")
                .body(body)
                .expect("request"),
        )
        .await
    }

    async fn raw(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = api::router(self.node.clone())
            .expect("router")
            .oneshot(request)
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

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, None).await
    }

    async fn settle(&self) {
        assert!(self.node.wait_caught_up(Duration::from_secs(10)).await);
    }

    async fn put_item(&self, id: &str, category: &str, available: bool) {
        let body = json!({"title": format!("Item {id}"), "categories": [category], "tags": ["t"], "available": available});
        let (status, _) = self
            .call(Method::PUT, &format!("/v1/items/{id}"), Some(body))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_accepted_deduplicated_and_validated_as_a_batch() {
    let api = Api::start().await;
    let events = json!({"events": [
        {"event_id": "e1", "user_id": "u1", "item_id": "i1", "kind": "view"},
        {"event_id": "e2", "user_id": "u1", "item_id": "i2", "kind": "rating", "value": 5, "ts": 1700000000000i64},
        {"user_id": "u2", "item_id": "i1", "kind": "purchase"}
    ]});
    let (status, body) = api
        .call(Method::POST, "/v1/events", Some(events.clone()))
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::ACCEPTED,
            json!({"accepted": 3, "duplicates": 0})
        )
    );
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/events",
            Some(json!({"events": [events["events"][0]]})),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::ACCEPTED,
            json!({"accepted": 0, "duplicates": 1})
        )
    );
    api.settle().await;
    let (status, user) = api.get("/v1/users/u1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["num_events"], 2);
    assert_eq!(user["recent"][0]["item_id"], "i2");
    assert_eq!(user["recent"][0]["kind"], "rating");

    // One bad event rejects the whole batch, naming its index; nothing of it is stored.
    let bad = json!({"events": [
        {"event_id": "x1", "user_id": "fresh", "item_id": "i1", "kind": "view"},
        {"event_id": "x2", "user_id": "fresh", "item_id": "i1", "kind": "teleport"}
    ]});
    let (status, body) = api.call(Method::POST, "/v1/events", Some(bad)).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
    assert_eq!(body["error"]["index"], 1);
    for (body, index) in [
        (
            json!({"events": [{"user_id": "fresh", "item_id": "i1"}]}),
            0,
        ),
        (
            json!({"events": [{"user_id": "fresh", "item_id": "", "kind": "view"}]}),
            0,
        ),
        (
            json!({"events": [{"user_id": "fresh", "item_id": "i", "kind": "view", "ts": -5}]}),
            0,
        ),
        (
            json!({"events": [{"user_id": "fresh", "item_id": "i", "kind": "view"}, {"user_id": 7, "item_id": "i", "kind": "view"}]}),
            1,
        ),
    ] {
        let (status, body) = api.call(Method::POST, "/v1/events", Some(body)).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
        assert_eq!(body["error"]["index"], index);
    }
    for body in [
        json!({}),
        json!({"events": []}),
        json!({"events": "nope"}),
        json!([1, 2]),
    ] {
        let (status, body) = api.call(Method::POST, "/v1/events", Some(body)).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
    }
    let (status, body) = api
        .raw(
            Request::post("/v1/events")
                .body(Body::from("{not json"))
                .expect("request"),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");

    // Over the size limits: 413, nothing stored.
    let one = json!({"user_id": "fresh", "item_id": "x".repeat(200), "kind": "view", "event_id": "y".repeat(100)});
    let big = json!({"events": vec![one; 300]});
    let (status, body) = api.call(Method::POST, "/v1/events", Some(big)).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    let many =
        json!({"events": vec![json!({"user_id": "fresh", "item_id": "i", "kind": "view"}); 51]});
    let (status, body) = api.call(Method::POST, "/v1/events", Some(many)).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    api.settle().await;
    let (status, body) = api.get("/v1/users/fresh").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_round_trip_and_reject_bad_bodies() {
    let api = Api::start().await;
    let body = json!({"title": "Heat", "categories": ["crime"], "tags": ["1995"], "attributes": {"year": 1995}});
    let (status, item) = api.call(Method::PUT, "/v1/items/heat", Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(item["available"], true);
    let (status, got) = api.get("/v1/items/heat").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (got["title"].clone(), got["attributes"]["year"].clone()),
        (json!("Heat"), json!(1995))
    );

    for bad in [
        json!({"categories": []}),
        json!({"title": ""}),
        json!({"title": "x", "colour": "red"}),
        json!({"title": 5}),
    ] {
        let (status, body) = api.call(Method::PUT, "/v1/items/heat", Some(bad)).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
    }
    let (_, still) = api.get("/v1/items/heat").await;
    assert_eq!(still["title"], "Heat", "a rejected write changed the item");

    let (status, _) = api.call(Method::DELETE, "/v1/items/heat", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api.get("/v1/items/heat").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_character_in_a_title_attribute_or_profile_is_refused_with_400() {
    let api = Api::start().await;
    for bad in [
        json!({"title": "Lamp\u{0}"}),
        json!({"title": "Lamp\u{7}"}),
        json!({"title": "Lamp", "attributes": {"colour": "red\u{0}"}}),
        json!({"title": "Lamp", "attributes": {"spec": {"parts": [{"name\u{0}": 1}]}}}),
        json!({"title": "Lamp", "attributes": {"spec": [["\u{1b}[31m"]]}}),
    ] {
        let (status, body) = api
            .call(Method::PUT, "/v1/items/lamp", Some(bad.clone()))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("control characters")),
            "{bad}: {body}"
        );
    }
    let (status, body) = api.get("/v1/items/lamp").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    // GraphQL takes the same rule from the same function.
    let (status, body) = api
        .call(
            Method::POST,
            "/graphql",
            Some(json!({"query": "mutation($t: String!) { upsertItem(itemId: \"lamp\", item: {title: $t}) { itemId } }", "variables": {"t": "Lamp\u{0}"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "invalid_argument",
        "{body}"
    );
    // Profiles reach the same stores: the same rule.
    let (status, body) = api
        .call(
            Method::PUT,
            "/v1/users/u1/profile",
            Some(json!({"bio": "hi\u{0}"})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
    // Free text keeps tabs and line breaks.
    let ok = json!({"title": "Lamp", "attributes": {"description": "Bright.\r\n\tWarm."}});
    let (status, body) = api.call(Method::PUT, "/v1/items/lamp", Some(ok)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// `n` purchases by `user` of `item`, as event bodies with ids unique to `tag`.
fn purchases(tag: &str, user: &str, item: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"event_id": format!("{tag}-{i}"), "user_id": user, "item_id": item, "kind": "purchase"}))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncatalogued_or_one_users_purchases_never_make_an_item_popular_or_trending() {
    let api = Api::start().await;
    for id in ["crowd", "hyped", "plain"] {
        api.put_item(id, "shop", true).await;
    }
    let mut events = Vec::new();
    // Many users buy "crowd" once each, and "plain" once or twice.
    for u in 0..12 {
        events.extend(purchases(
            &format!("c{u}"),
            &format!("buyer{u}"),
            "crowd",
            1,
        ));
        events.extend(purchases(
            &format!("p{u}"),
            &format!("buyer{u}"),
            "plain",
            1 + u % 2,
        ));
    }
    // One user buys "hyped" a thousand times, and made-up ids that nobody catalogued, together
    // with "crowd" (so that the model would put them next to it).
    let mallory = "mallory";
    events.extend(purchases("h", mallory, "hyped", 1_000));
    for i in 0..40 {
        events.extend(purchases(
            &format!("f{i}"),
            mallory,
            &format!("fake-{i}"),
            5,
        ));
        for u in 0..3 {
            events.extend(purchases(
                &format!("f{i}-{u}"),
                &format!("buyer{u}"),
                &format!("fake-{i}"),
                1,
            ));
        }
    }
    events.extend(purchases("mc", mallory, "crowd", 1));
    for chunk in events.chunks(50) {
        let (status, body) = api
            .call(Method::POST, "/v1/events", Some(json!({ "events": chunk })))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    api.settle().await;
    api.node.train(true).await.expect("trained");

    let ids = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["item_id"].as_str().map(str::to_owned))
            .collect()
    };
    // Trending: catalogued items only, the many buyers' item first.
    let (status, trending) = api.get("/v1/trending?k=100").await;
    assert_eq!(status, StatusCode::OK, "{trending}");
    assert_eq!(ids(&trending)[0], "crowd", "{trending}");
    assert!(
        ids(&trending).iter().all(|id| !id.starts_with("fake-")),
        "{trending}"
    );
    // Popularity: the same, and no larger than the catalogue.
    let popularity = &api.node.services().popularity;
    popularity.refresh();
    let popular = popularity.ranked();
    assert_eq!(popular[0].0, "crowd", "{popular:?}");
    assert!(popular.len() <= 3, "{popular:?}");
    // Nobody is recommended an uncatalogued id: not a newcomer (trending, popular), not a user
    // whose history sits next to them in the model.
    for user in ["newcomer", "buyer5", "buyer0"] {
        let (status, recs) = api
            .get(&format!("/v1/users/{user}/recommendations?k=50"))
            .await;
        assert_eq!(status, StatusCode::OK, "{recs}");
        assert!(
            ids(&recs).iter().all(|id| !id.starts_with("fake-")),
            "{user}: {recs}"
        );
    }
    let (_, newcomer) = api.get("/v1/users/newcomer/recommendations?k=3").await;
    assert_eq!(ids(&newcomer), ["crowd", "plain", "hyped"], "{newcomer}");
    // The poster's own history still records what it did.
    let (status, own) = api.get("/v1/users/mallory").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(own["num_events"], 1_000 + 40 * 5 + 1, "{own}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommendations_follow_tastes_and_never_return_excluded_items() {
    let api = Api::start().await;
    // Two taste groups over two categories; "gone" is deleted, "off" unavailable.
    for i in 0..10 {
        api.put_item(&format!("a{i}"), "alpha", true).await;
        api.put_item(&format!("b{i}"), "beta", true).await;
    }
    let mut events = Vec::new();
    for u in 0..30 {
        let group = if u % 2 == 0 { "a" } else { "b" };
        for i in 0..10 {
            if (u + i) % 4 != 0 {
                events.push(json!({"event_id": format!("h{u}-{i}"), "user_id": format!("u{u}"), "item_id": format!("{group}{i}"), "kind": "click"}));
            }
        }
    }
    let (status, _) = api
        .call(
            Method::POST,
            "/v1/events",
            Some(json!({"events": events[..50]})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for chunk in events[50..].chunks(50) {
        api.call(Method::POST, "/v1/events", Some(json!({"events": chunk})))
            .await;
    }
    api.settle().await;
    let (status, body) = api.call(Method::POST, "/v1/admin/train", None).await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::ACCEPTED, json!("started"))
    );
    let models = testkit::wait_for(
        async || {
            let (_, models) = api.get("/v1/admin/models").await;
            let trained = models["versions"].as_array().is_some_and(|v| v.len() >= 2);
            trained.then_some(models)
        },
        Duration::from_secs(30),
    )
    .await
    .expect("training finishes");
    let active = models["active"]
        .as_str()
        .expect("active version")
        .to_owned();

    // A new user who clicked two alpha items gets alpha items, none of those two.
    api.call(Method::POST, "/v1/events", Some(json!({"events": [
        {"user_id": "new", "item_id": "a1", "kind": "click"}, {"user_id": "new", "item_id": "a2", "kind": "purchase"}
    ]})))
    .await;
    api.call(Method::DELETE, "/v1/items/a3", None).await;
    api.put_item("a4", "alpha", false).await;
    api.settle().await;
    let (status, recs) = api.get("/v1/users/new/recommendations?k=5").await;
    assert_eq!(status, StatusCode::OK, "{recs}");
    assert_eq!(recs["user_id"], "new");
    assert_eq!(recs["model_version"], active);
    let ids: Vec<String> = recs["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["item_id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 5, "{recs}");
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "duplicates in {ids:?}");
    for excluded in ["a1", "a2", "a3", "a4"] {
        assert!(!ids.contains(&excluded.to_owned()), "{excluded} in {ids:?}");
    }
    let alpha = ids.iter().filter(|id| id.starts_with('a')).count();
    assert!(alpha >= 4, "expected mostly alpha items, got {ids:?}");
    assert!(
        recs["items"][0]["reasons"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );
    let scores: Vec<f64> = recs["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["score"].as_f64().expect("score"))
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "scores not sorted: {scores:?}"
    );

    // Category filter.
    let (_, beta) = api
        .get("/v1/users/new/recommendations?k=3&category=beta")
        .await;
    assert!(
        beta["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["item_id"].as_str().is_some_and(|id| id.starts_with('b'))),
        "{beta}"
    );

    // A user never seen gets what is active now (all events here are recent: trending).
    let (status, cold) = api.get("/v1/users/nobody/recommendations?k=3").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cold["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(cold["items"][0]["reasons"], json!(["trending"]));

    for bad in ["k=0", "k=101", "k=ten", "k=-1", "k=2.5"] {
        let (status, body) = api
            .get(&format!("/v1/users/new/recommendations?{bad}"))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
    }
}

/// Four alpha items everyone is clicking now and one beta item a single user is: a user never
/// seen gets trending alpha items, unless they ask for diversity.
async fn trending_alpha_and_one_beta(api: &Api) {
    for i in 0..4 {
        api.put_item(&format!("a{i}"), "alpha", true).await;
    }
    api.put_item("b0", "beta", true).await;
    let mut events: Vec<Value> = (0..4)
        .flat_map(|u| (0..4).map(move |i| json!({"event_id": format!("t{u}-{i}"), "user_id": format!("t{u}"), "item_id": format!("a{i}"), "kind": "click"})))
        .collect();
    events.push(json!({"event_id": "t4-b0", "user_id": "t4", "item_id": "b0", "kind": "click"}));
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/events",
            Some(json!({ "events": events })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    api.settle().await;
}

fn item_ids(recs: &Value) -> Vec<String> {
    recs["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["item_id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommendations_take_a_diversity_that_brings_another_category_up() {
    let api = Api::start().await;
    trending_alpha_and_one_beta(&api).await;
    // Diversity first: the plain list asked next must not be the one cached for it.
    let (status, diverse) = api
        .get("/v1/users/newcomer/recommendations?k=3&diversity=0.7")
        .await;
    assert_eq!(status, StatusCode::OK, "{diverse}");
    let ids = item_ids(&diverse);
    assert_eq!(ids.len(), 3, "{diverse}");
    assert_eq!(ids[1], "b0", "{diverse}");
    assert!(
        ids[0].starts_with('a') && ids[2].starts_with('a'),
        "{diverse}"
    );
    let scores: Vec<f64> = diverse["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["score"].as_f64().expect("score"))
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{diverse}");
    let (_, plain) = api.get("/v1/users/newcomer/recommendations?k=3").await;
    assert!(
        item_ids(&plain).iter().all(|id| id.starts_with('a')),
        "{plain}"
    );
    let (_, zero) = api
        .get("/v1/users/newcomer/recommendations?k=3&diversity=0")
        .await;
    assert_eq!(zero, plain, "diversity 0 is the plain ranking");
    // A user's own items stay out, whatever the diversity.
    api.call(
        Method::POST,
        "/v1/events",
        Some(json!({"events": [{"user_id": "picky", "item_id": "b0", "kind": "click"}]})),
    )
    .await;
    api.settle().await;
    for diversity in ["0.3", "0.7", "1"] {
        let (status, picky) = api
            .get(&format!(
                "/v1/users/picky/recommendations?k=4&diversity={diversity}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{picky}");
        let ids = item_ids(&picky);
        assert_eq!(ids.len(), 4, "{picky}");
        assert!(!ids.contains(&"b0".to_owned()), "{picky}");
    }
    for bad in [
        "diversity=-0.1",
        "diversity=1.5",
        "diversity=abc",
        "diversity=NaN",
        "diversity=inf",
        "diversity=",
    ] {
        let (status, body) = api
            .get(&format!("/v1/users/newcomer/recommendations?k=3&{bad}"))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disliked_item_leaves_the_users_recommendations_and_what_goes_with_it_goes_down() {
    let api = Api::start().await;
    for i in 0..6 {
        api.put_item(&format!("a{i}"), "alpha", true).await;
        api.put_item(&format!("b{i}"), "beta", true).await;
    }
    // Two taste groups; alpha is the more popular kind.
    let mut events = Vec::new();
    for u in 0..30 {
        let group = if u < 20 { "a" } else { "b" };
        for i in (0..6).filter(|i| (u + i) % 4 != 0) {
            events.push(json!({"event_id": format!("d{u}-{i}"), "user_id": format!("u{u}"), "item_id": format!("{group}{i}"), "kind": "click"}));
        }
    }
    for chunk in events.chunks(50) {
        let (status, _) = api
            .call(Method::POST, "/v1/events", Some(json!({"events": chunk})))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    api.settle().await;
    api.call(Method::POST, "/v1/admin/train", None).await;
    let models = testkit::wait_for(
        async || {
            let (_, models) = api.get("/v1/admin/models").await;
            let trained = models["versions"].as_array().is_some_and(|v| v.len() >= 2);
            trained.then_some(models)
        },
        Duration::from_secs(30),
    )
    .await
    .expect("training finishes");
    let recommended = async || {
        let (status, recs) = api.get("/v1/users/grumpy/recommendations?k=4").await;
        assert_eq!(status, StatusCode::OK, "{recs}");
        assert_eq!(recs["model_version"], models["active"], "{recs}");
        let items = recs["items"].as_array().expect("items").iter();
        items
            .map(|i| i["item_id"].as_str().expect("id").to_owned())
            .collect::<Vec<_>>()
    };

    // A user with nothing yet gets what is popular: alpha items.
    let before = recommended().await;
    let disliked = before[0].clone();
    assert!(disliked.starts_with('a'), "{before:?}");
    let dislike =
        json!({"events": [{"user_id": "grumpy", "item_id": disliked, "kind": "dislike"}]});
    let (status, _) = api.call(Method::POST, "/v1/events", Some(dislike)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    api.settle().await;
    // Gone, and the kind it belongs to goes after the other.
    let after = recommended().await;
    assert!(!after.contains(&disliked), "{disliked} in {after:?}");
    assert!(after.iter().all(|id| id.starts_with('b')), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_user_forgets_everything() {
    let api = Api::start().await;
    api.call(Method::POST, "/v1/events", Some(json!({"events": [{"event_id": "z", "user_id": "gdpr", "item_id": "i1", "kind": "view"}]}))).await;
    api.settle().await;
    assert_eq!(api.get("/v1/users/gdpr").await.0, StatusCode::OK);
    let (status, _) = api.call(Method::DELETE, "/v1/users/gdpr", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api.get("/v1/users/gdpr").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_endpoints() {
    let api = Api::start().await;
    assert_eq!(
        api.get("/healthz").await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let (status, ready) = api.get("/readyz").await;
    assert_eq!(
        (status, ready["ready"].clone()),
        (StatusCode::OK, json!(true))
    );
    let (status, tree) = api.get("/v1/admin/actors").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tree["kind"], "root_supervisor");
    let kinds: Vec<&str> = tree["children"]
        .as_array()
        .expect("children")
        .iter()
        .filter_map(|c| c["kind"].as_str())
        .collect();
    for kind in [
        "push_hub",
        "session_manager",
        "model_supervisor",
        "ingest_supervisor",
        "trainer",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let (status, models) = api.get("/v1/admin/models").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        models["active"].is_string() && models["versions"].is_array(),
        "{models}"
    );

    let response = api::router(api.node.clone())
        .expect("router")
        .oneshot(
            Request::get("/metrics")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let text = String::from_utf8(
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body")
            .to_vec(),
    )
    .expect("utf8");
    assert!(text.contains("streamrec_http_requests_total"), "{text}");

    // Rejections made by the framework itself carry the same JSON shape.
    for uri in [
        "/v1/users/u1/recommendations?k=%ZZ",
        "/v1/items/%FF%FE",
        "/v1/ws?user_id=u1",
    ] {
        let (status, body) = api.get(uri).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_argument");
    }
    let (status, body) = api.get("/v1/nope").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = api.call(Method::PATCH, "/v1/events", None).await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trending_ranks_current_activity_and_greets_new_users_with_it() {
    let api = Api::start().await;
    for (id, category) in [
        ("a", "music"),
        ("b", "music"),
        ("c", "books"),
        ("gone", "books"),
    ] {
        api.put_item(id, category, true).await;
    }
    let now = common::now_millis();
    // Popular long ago ("c", outside the windows) versus active now ("b" most, then "a").
    let mut events = Vec::new();
    for i in 0..30 {
        events.push(json!({"event_id": format!("old{i}"), "user_id": format!("o{i}"), "item_id": "c", "kind": "purchase", "ts": now - 3 * 3_600_000}));
    }
    for i in 0..6 {
        events.push(json!({"event_id": format!("b{i}"), "user_id": format!("n{i}"), "item_id": "b", "kind": "click"}));
    }
    for i in 0..2 {
        events.push(json!({"event_id": format!("a{i}"), "user_id": format!("n{i}"), "item_id": "a", "kind": "click"}));
        events.push(json!({"event_id": format!("g{i}"), "user_id": format!("n{i}"), "item_id": "gone", "kind": "click"}));
    }
    let (status, _) = api
        .call(
            Method::POST,
            "/v1/events",
            Some(json!({ "events": events })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    api.settle().await;
    let (status, _) = api.call(Method::DELETE, "/v1/items/gone", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let (status, body) = api.get("/v1/trending?k=5").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["window_secs"], 300);
    let ids: Vec<&str> = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["item_id"].as_str())
        .collect();
    assert_eq!(ids, vec!["b", "a"], "{body}");
    // 6 clicks of weight 2, halved if the test straddled a window boundary.
    let score = body["items"][0]["score"].as_f64();
    assert!(score == Some(12.0) || score == Some(6.0), "{body}");
    assert_eq!(body["categories"][0]["category"], "music");
    let (_, books) = api.get("/v1/trending?category=books").await;
    assert_eq!(books["items"], json!([]), "{books}");

    // Session features over the current window: n0 clicked b, a (music) and gone (deleted since).
    let (status, user) = api.get("/v1/users/n0").await;
    assert_eq!(status, StatusCode::OK);
    let window = &user["current_window"];
    assert_eq!(window["window_secs"], 300, "{user}");
    let same_window = now / 300_000 == common::now_millis() / 300_000;
    if same_window {
        assert_eq!(
            (window["events"].clone(), window["categories"].clone()),
            (json!(3), json!({"music": 2})),
            "{user}"
        );
    }

    // A user with no history gets what is trending first, then what is popular.
    let (status, recs) = api.get("/v1/users/newcomer/recommendations?k=3").await;
    assert_eq!(status, StatusCode::OK);
    let got: Vec<(&str, &str)> = recs["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["item_id"].as_str().unwrap_or(""),
                i["reasons"][0].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![("b", "trending"), ("a", "trending"), ("c", "popular")],
        "{recs}"
    );

    for bad in [
        "/v1/trending?k=0",
        "/v1/trending?k=x",
        "/v1/trending?category=",
    ] {
        let (status, body) = api.get(bad).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_argument")),
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_added_after_training_is_recommended_from_its_content() {
    let api = Api::start().await;
    let put = |id: String, category: &str, title: String| {
        let body =
            json!({"title": title, "categories": [category], "tags": [format!("{category}-tag")]});
        (id, body)
    };
    let mut catalog = Vec::new();
    for i in 0..12 {
        catalog.push(put(format!("m{i}"), "music", format!("Song number {i}")));
        catalog.push(put(format!("b{i}"), "books", format!("Novel volume {i}")));
    }
    for (id, body) in &catalog {
        let (status, _) = api
            .call(Method::PUT, &format!("/v1/items/{id}"), Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    // Music fans and book fans, each touching half of their kind.
    let mut events = Vec::new();
    for u in 0..30 {
        let kind = if u % 2 == 0 { "m" } else { "b" };
        for i in (0..12).filter(|i| (i + u) % 2 == 0) {
            events.push(json!({"event_id": format!("e{u}-{i}"), "user_id": format!("u{u}"), "item_id": format!("{kind}{i}"), "kind": "click"}));
        }
    }
    for chunk in events.chunks(50) {
        let (status, _) = api
            .call(Method::POST, "/v1/events", Some(json!({ "events": chunk })))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    api.settle().await;
    api.node.train(true).await.expect("trained");

    // After training: a new song, never interacted with.
    let (status, _) = api
        .call(
            Method::PUT,
            "/v1/items/new-song",
            Some(
                json!({"title": "Song number 99", "categories": ["music"], "tags": ["music-tag"]}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let ranked = |recs: &Value| -> Vec<String> {
        recs["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["item_id"].as_str().map(str::to_owned))
            .collect()
    };
    let (_, fan) = api.get("/v1/users/u0/recommendations?k=20").await;
    let ids = ranked(&fan);
    let new_at = ids
        .iter()
        .position(|i| i == "new-song")
        .unwrap_or_else(|| panic!("new item missing: {fan}"));
    let first_book = ids
        .iter()
        .position(|i| i.starts_with('b'))
        .unwrap_or(ids.len());
    assert!(
        new_at < first_book,
        "a music fan should get the new song before any book: {ids:?}"
    );
    assert_eq!(
        fan["items"][new_at]["reasons"][0], "new_item_by_content",
        "{fan}"
    );
    let (_, reader) = api.get("/v1/users/u1/recommendations?k=20").await;
    let ids = ranked(&reader);
    let new_at = ids
        .iter()
        .position(|i| i == "new-song")
        .unwrap_or(ids.len());
    let last_book = ids.iter().rposition(|i| i.starts_with('b')).expect("books");
    assert!(
        new_at > last_book,
        "a reader gets every book before the new song: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_only_a_profile_gets_what_users_like_them_like() {
    let api = Api::start().await;
    for i in 0..10 {
        api.put_item(&format!("m{i}"), "music", true).await;
        api.put_item(&format!("b{i}"), "books", true).await;
    }
    // Musicians click music, writers click books; each user's profile says which they are.
    let mut events = Vec::new();
    for u in 0..30 {
        let (job, kind) = if u % 2 == 0 {
            ("musician", "m")
        } else {
            ("writer", "b")
        };
        api.node
            .put_profile(&format!("u{u}"), &json!({"occupation": job, "age": 20 + u}))
            .await
            .expect("profile");
        for i in (0..10).filter(|i| (i + u) % 3 != 0) {
            events.push(json!({"event_id": format!("e{u}-{i}"), "user_id": format!("u{u}"), "item_id": format!("{kind}{i}"), "kind": "click"}));
        }
    }
    for chunk in events.chunks(50) {
        let (status, _) = api
            .call(Method::POST, "/v1/events", Some(json!({ "events": chunk })))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    api.settle().await;
    api.node.train(true).await.expect("trained");

    let top = |recs: &Value| -> Vec<String> {
        recs["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["item_id"].as_str().map(str::to_owned))
            .collect()
    };
    for (user, job, kind) in [
        ("new-musician", "musician", 'm'),
        ("new-writer", "writer", 'b'),
    ] {
        api.node
            .put_profile(user, &json!({"occupation": job, "age": 30}))
            .await
            .expect("profile");
        let (status, recs) = api
            .get(&format!("/v1/users/{user}/recommendations?k=5"))
            .await;
        assert_eq!(status, StatusCode::OK, "{recs}");
        let ids = top(&recs);
        assert!(ids.iter().all(|i| i.starts_with(kind)), "{user}: {ids:?}");
        assert!(
            recs["items"][0]["reasons"]
                .as_array()
                .expect("reasons")
                .contains(&json!("matches_profile")),
            "{recs}"
        );
    }
}

/// The first actor named `name` in the tree, as JSON.
fn find_actor<'a>(tree: &'a Value, name: &str) -> Option<&'a Value> {
    if tree["name"] == name {
        return Some(tree);
    }
    tree["children"]
        .as_array()?
        .iter()
        .find_map(|c| find_actor(c, name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_restart_stop_and_passivate_actors_by_id() {
    let api = Api::start().await;
    let (_, tree) = api.get("/v1/admin/actors").await;
    let worker = find_actor(&tree, "model-0").expect("model-0").clone();
    let id = worker["id"].as_str().expect("id").to_owned();
    let (status, one) = api.get(&format!("/v1/admin/actors/{id}")).await;
    assert_eq!(
        (status, one["name"].clone()),
        (StatusCode::OK, json!("model-0"))
    );

    let (status, body) = api
        .call(
            Method::POST,
            &format!("/v1/admin/actors/{id}/restart"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, tree) = api.get("/v1/admin/actors").await;
    let restarted = find_actor(&tree, "model-0").expect("model-0 again");
    assert_ne!(restarted["id"], worker["id"], "a new actor took its place");
    let new_id = restarted["id"].as_str().expect("id").to_owned();
    let models = find_actor(&tree, "models").expect("models supervisor");
    let child = models["state"]["children"]
        .as_array()
        .expect("children")
        .iter()
        .find(|c| c["name"] == "model-0")
        .expect("model-0 in its supervisor");
    assert_eq!(child["num_restarts"], 1, "{models}");
    // Recommendations still work across the restart.
    assert_eq!(
        api.get("/v1/users/x/recommendations").await.0,
        StatusCode::OK
    );

    // A session can be passivated, and wakes on the next request.
    let event = json!({"events": [{"event_id": "p1", "user_id": "sleepy", "item_id": "i", "kind": "click"}]});
    assert_eq!(
        api.call(Method::POST, "/v1/events", Some(event)).await.0,
        StatusCode::ACCEPTED
    );
    api.settle().await;
    let (_, tree) = api.get("/v1/admin/actors").await;
    let session = find_actor(&tree, "sleepy").expect("live session")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/v1/admin/actors/{session}/passivate"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, user) = api.get("/v1/users/sleepy").await;
    assert_eq!(
        (status, user["num_events"].clone()),
        (StatusCode::OK, json!(1))
    );

    // Stopping takes an actor out for good; its supervisor notes the exit.
    let trainer = find_actor(&tree, "trainer").expect("trainer")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/v1/admin/actors/{trainer}/stop"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let root = tree["id"].as_str().expect("root id");
    for (uri, expected, code) in [
        (
            format!("/v1/admin/actors/{root}/stop"),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            format!("/v1/admin/actors/{root}/restart"),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            format!("/v1/admin/actors/{new_id}/passivate"),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            format!("/v1/admin/actors/{id}/restart"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            format!("/v1/admin/actors/{root}/explode"),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/v1/admin/actors/0.999999/restart".to_owned(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ] {
        let (status, body) = api.call(Method::POST, &uri, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (expected, Some(code)),
            "{uri}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_page_and_its_live_stream() {
    use futures::StreamExt;
    let api = Api::start().await;
    let response = api::router(api.node.clone())
        .expect("router")
        .oneshot(
            Request::get("/console")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let html = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let html = String::from_utf8_lossy(&html);
    for needle in [
        "<title>streamrec console</title>",
        "EventSource(`/v1/admin/stream",
        "/v1/admin/actors/",
        "/v1/admin/models/rollback",
    ] {
        assert!(html.contains(needle), "{needle}");
    }
    // The SVG namespace is a name, not an address: nothing is fetched from it.
    let fetched = html.replace("\"http://www.w3.org/2000/svg\"", "");
    assert!(
        !fetched.contains("http://") && !fetched.contains("https://"),
        "the page must work offline"
    );

    let response = api::router(api.node.clone())
        .expect("router")
        .oneshot(
            Request::get("/v1/admin/stream")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("a snapshot within 5 s")
            .expect("stream open")
            .expect("chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("event: snapshot\n"), "{text}");
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("data line");
    let snapshot: Value = serde_json::from_str(data).expect("json");
    assert_eq!(snapshot["tree"]["kind"], "root_supervisor");
    assert!(snapshot["models"]["active"].is_string(), "{snapshot}");
    assert_eq!(
        snapshot["ingest"]["partitions"].as_array().map(Vec::len),
        Some(4)
    );
    assert!(snapshot["cache"]["hits"].is_u64());
}
