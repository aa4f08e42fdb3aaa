//! `/readyz` is public: it must not turn each call into a round of dependency probes, nor tell
//! anyone but operators why a dependency is down. (Its own binary: it counts a process-wide
//! metric, which no other test may move meanwhile.)

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::config::Secret;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use supervisors::Node;
use tower::ServiceExt;

const SECRET: &str = "readyz-test-secret-0123456789abcdefghij";

/// `streamrec_readyz_probes_total` for `dependency`.
fn probes(dependency: &str) -> u64 {
    let wanted = format!("streamrec_readyz_probes_total{{dependency=\"{dependency}\"}} ");
    common::telemetry::render_metrics()
        .lines()
        .find_map(|line| line.strip_prefix(&wanted))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

fn token(roles: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "someone", "roles": roles, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_probes_once_per_ttl_and_shows_why_only_to_operators() {
    // A cache on a port nothing listens on: the node runs (from its L1), the probe says down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = testkit::tiny_config(dir.path());
    config.cache.url = format!("redis://{closed}").parse().expect("redis url");
    config.auth.hs256_secret = Some(Secret(SECRET.into()));
    config.auth.rate_limit_per_second = 0.0;
    config.server.readyz_cache_ttl = std::time::Duration::from_secs(600);
    let node = Node::start(config).await.expect("node");
    let router = api::router(node).expect("router");
    let readyz = |token: Option<String>| {
        let router = router.clone();
        async move {
            let mut request = Request::get("/readyz");
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            let response = router
                .oneshot(request.body(Body::empty()).expect("request"))
                .await
                .expect("infallible");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("body");
            (
                status,
                serde_json::from_slice::<Value>(&body).expect("json"),
            )
        }
    };

    let before: Vec<u64> = ["events", "cache"].map(probes).to_vec();
    let answers = futures::future::join_all((0..50).map(|_| readyz(None))).await;
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        // Anyone learns what is down, not why.
        assert_eq!(body["dependencies"]["cache"], "down", "{body}");
        assert_eq!(body["dependencies"]["events"], "up", "{body}");
    }
    let after: Vec<u64> = ["events", "cache"].map(probes).to_vec();
    assert_eq!(
        (after[0] - before[0], after[1] - before[1]),
        (1, 1),
        "50 calls within the TTL share one probe"
    );

    // Operators see the reason; other roles and bad tokens do not.
    let (_, body) = readyz(Some(token(&["operator"]))).await;
    let why = body["dependencies"]["cache"].as_str().unwrap_or_default();
    assert!(why.starts_with("down: redis"), "{body}");
    for token in [
        token(&["user"]),
        token(&["service"]),
        "not-a-token".to_owned(),
    ] {
        let (status, body) = readyz(Some(token)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["dependencies"]["cache"], "down", "{body}");
    }
    assert_eq!(probes("cache"), after[1], "still within the TTL");
}
