//! The authorization matrix over REST and GraphQL: every endpoint × every role, and every kind
//! of bad token, gets the expected status. Expectations are written out here, independently of
//! the policy table they check. (WebSocket and gRPC: `tests/security.rs`, against the binary.)

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::config::Secret;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use supervisors::Node;
use tower::ServiceExt;

const SECRET: &str = "authz-test-secret-0123456789abcdefghij";
const ISSUER: &str = "https://idp.example.test";
const AUDIENCE: &str = "streamrec";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({ "sub": sub, "roles": roles, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600 })
}

/// Who calls.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Caller {
    NoToken,
    Expired,
    NotYetValid,
    WrongAudience,
    WrongIssuer,
    WrongSignature,
    AlgNone,
    NoSub,
    /// Role `user`, sub `alice`: the owner of the resources below.
    Alice,
    /// Role `user`, sub `bob`.
    Bob,
    Service,
    CatalogAdmin,
    Operator,
    Admin,
}

use Caller::*;

const BAD: [Caller; 8] = [
    NoToken,
    Expired,
    NotYetValid,
    WrongAudience,
    WrongIssuer,
    WrongSignature,
    AlgNone,
    NoSub,
];
const ROLES: [Caller; 6] = [Alice, Bob, Service, CatalogAdmin, Operator, Admin];

fn token(caller: Caller) -> Option<String> {
    let base = |sub: &str, roles: &[&str]| sign(&claims(sub, roles), SECRET);
    // A valid admin token but for one claim.
    let admin_with = |claim: &str, value: Value| {
        let mut c = claims("alice", &["admin"]);
        c[claim] = value;
        sign(&c, SECRET)
    };
    Some(match caller {
        NoToken => return None,
        Expired => admin_with("exp", json!(now() - 3600)),
        NotYetValid => admin_with("nbf", json!(now() + 3600)),
        WrongAudience => admin_with("aud", json!("another-api")),
        WrongIssuer => admin_with("iss", json!("https://evil.example")),
        WrongSignature => sign(
            &claims("alice", &["admin"]),
            "some-other-secret-of-enough-length",
        ),
        AlgNone => {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
            let payload = b64.encode(claims("alice", &["admin"]).to_string());
            format!("{header}.{payload}.")
        }
        NoSub => {
            let mut c = claims("alice", &["admin"]);
            c.as_object_mut().expect("object").remove("sub");
            sign(&c, SECRET)
        }
        Alice => base("alice", &["user"]),
        Bob => base("bob", &["user"]),
        Service => base("svc", &["service"]),
        CatalogAdmin => base("cat", &["catalog-admin"]),
        Operator => base("ops", &["operator"]),
        Admin => base("root", &["admin"]),
    })
}

async fn node() -> (Arc<Node>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = testkit::tiny_config(dir.path());
    config.auth.hs256_secret = Some(Secret(SECRET.into()));
    config.auth.issuer = Some(ISSUER.into());
    config.auth.audience = Some(AUDIENCE.into());
    config.auth.leeway = std::time::Duration::from_secs(5);
    config.auth.rate_limit_per_second = 0.0;
    (Node::start(config).await.expect("node"), dir)
}

async fn call(
    node: &Arc<Node>,
    caller: Caller,
    method: &Method,
    uri: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method.clone())
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(token) = token(caller) {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = if body.is_null() {
        Body::empty()
    } else {
        Body::from(body.to_string())
    };
    let response = api::router(node.clone())
        .expect("router")
        .oneshot(request.body(body).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let json = if response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
    {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    (status, json)
}

/// Checks one request for every caller: `allowed` get anything but 401/403, the other roles 403,
/// every bad token 401; error bodies carry the stable codes.
async fn check(node: &Arc<Node>, method: Method, uri: &str, body: Value, allowed: &[Caller]) {
    for caller in BAD.into_iter().chain(ROLES) {
        let (status, json) = call(node, caller, &method, uri, &body).await;
        let what = format!("{caller:?} {method} {uri}: {status} {json}");
        if BAD.contains(&caller) {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
            assert_eq!(json["error"]["code"], "unauthenticated", "{what}");
        } else if allowed.contains(&caller) {
            assert!(
                status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                "{what}"
            );
        } else {
            assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
            let code = json["error"]["code"]
                .as_str()
                .or_else(|| json["errors"][0]["extensions"]["code"].as_str());
            assert_eq!(code, Some("permission_denied"), "{what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_endpoints_by_role() {
    let (node, _dir) = node().await;
    let readers = [Alice, Service, Operator, Admin];
    let everyone = ROLES;
    let operators = [Operator, Admin];
    let alice_event = json!({"events": [{"user_id": "alice", "item_id": "i1", "kind": "click"}]});
    let item = json!({"title": "An item", "categories": ["c"]});
    let cases: Vec<(Method, &str, Value, &[Caller])> = vec![
        (
            Method::GET,
            "/v1/users/alice/recommendations",
            Value::Null,
            &readers,
        ),
        (Method::GET, "/v1/users/alice", Value::Null, &readers),
        (
            Method::POST,
            "/v1/events",
            alice_event,
            &[Alice, Service, Admin],
        ),
        (Method::PUT, "/v1/items/i1", item, &[CatalogAdmin, Admin]),
        (Method::GET, "/v1/items/i1", Value::Null, &everyone),
        (Method::GET, "/v1/trending", Value::Null, &everyone),
        (
            Method::DELETE,
            "/v1/items/gone",
            Value::Null,
            &[CatalogAdmin, Admin],
        ),
        (Method::GET, "/v1/admin/models", Value::Null, &operators),
        (Method::GET, "/v1/admin/train", Value::Null, &operators),
        (Method::GET, "/v1/admin/actors", Value::Null, &operators),
        (Method::GET, "/v1/admin/cluster", Value::Null, &operators),
        (
            Method::GET,
            "/v1/admin/actors/nope",
            Value::Null,
            &operators,
        ),
        (
            Method::POST,
            "/v1/admin/actors/nope/restart",
            Value::Null,
            &operators,
        ),
        (
            Method::POST,
            "/v1/admin/models/rollback",
            Value::Null,
            &operators,
        ),
        (
            Method::POST,
            "/v1/admin/models/v0/activate",
            Value::Null,
            &operators,
        ),
        (Method::GET, "/v1/users/alice/export", Value::Null, &[Admin]),
        (Method::DELETE, "/v1/users/alice", Value::Null, &[Admin]),
    ];
    for (method, uri, body, allowed) in cases {
        check(&node, method, uri, body, allowed).await;
    }
    // Bob may post events as himself, never as alice.
    let bobs = json!({"events": [{"user_id": "bob", "item_id": "i1", "kind": "view"}]});
    let (status, _) = call(&node, Bob, &Method::POST, "/v1/events", &bobs).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mixed = json!({"events": [
        {"user_id": "bob", "item_id": "i1", "kind": "view"},
        {"user_id": "alice", "item_id": "i1", "kind": "view"}
    ]});
    let (status, _) = call(&node, Bob, &Method::POST, "/v1/events", &mixed).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "one foreign event refuses the batch"
    );

    // Probes and static pages need no token; a 401 says how to authenticate.
    for uri in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/console",
    ] {
        let (status, _) = call(&node, NoToken, &Method::GET, uri, &Value::Null).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
    }
    let response = api::router(node.clone())
        .expect("router")
        .oneshot(
            Request::get("/v1/trending")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_operations_by_role() {
    let (node, _dir) = node().await;
    let gql = |query: &str| json!({ "query": query });
    let cases: Vec<(Value, &[Caller])> = vec![
        (
            gql(r#"{ recommendations(userId: "alice") { userId } }"#),
            &[Alice, Service, Operator, Admin],
        ),
        (
            gql(r#"{ user(userId: "alice") { numEvents } }"#),
            &[Alice, Service, Operator, Admin],
        ),
        (gql(r#"{ item(itemId: "i1") { title } }"#), &ROLES),
        (gql("{ trending { itemId } }"), &ROLES),
        (
            gql(
                r#"mutation { trackEvents(events: [{userId: "alice", itemId: "i1", kind: "click"}]) { accepted } }"#,
            ),
            &[Alice, Service, Admin],
        ),
        (
            gql(r#"mutation { upsertItem(itemId: "g1", item: {title: "G"}) { itemId } }"#),
            &[CatalogAdmin, Admin],
        ),
        (
            gql(r#"mutation { deleteItem(itemId: "g1") }"#),
            &[CatalogAdmin, Admin],
        ),
    ];
    for (body, allowed) in cases {
        check(&node, Method::POST, "/graphql", body, allowed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_rate_limited_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = testkit::tiny_config(dir.path());
    config.auth.hs256_secret = Some(Secret(SECRET.into()));
    config.auth.rate_limit_per_second = 1.0;
    config.auth.rate_limit_burst = 3;
    let node = Node::start(config).await.expect("node");
    let router = api::router(node.clone()).expect("router");
    let get = |token: String| {
        Request::get("/v1/trending")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request")
    };
    let alice = sign(
        &json!({"sub": "alice", "roles": ["user"], "exp": now() + 600}),
        SECRET,
    );
    let bob = sign(
        &json!({"sub": "bob", "roles": ["user"], "exp": now() + 600}),
        SECRET,
    );
    for _ in 0..3 {
        let response = router
            .clone()
            .oneshot(get(alice.clone()))
            .await
            .expect("ok");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let limited = router
        .clone()
        .oneshot(get(alice.clone()))
        .await
        .expect("ok");
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    let body = axum::body::to_bytes(limited.into_body(), usize::MAX)
        .await
        .expect("body");
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another caller is not affected.
    let other = router.oneshot(get(bob)).await.expect("ok");
    assert_eq!(other.status(), StatusCode::OK);
}

#[tokio::test]
async fn auth_on_without_keys_refuses_to_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(testkit::tiny_config(dir.path()))
        .await
        .expect("node");
    let error = api::router(node).expect_err("no keys");
    assert!(error.to_string().contains("auth.hs256_secret"), "{error}");
}

/// An ES256 key as a JWK (public) and a signing key (private).
fn es256_key(kid: &str) -> (Value, EncodingKey) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let point = pair.public_key_raw();
    assert_eq!((point.len(), point[0]), (65, 4), "uncompressed P-256 point");
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": b64.encode(&point[1..33]), "y": b64.encode(&point[33..]),
    });
    let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("pem");
    (jwk, signing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_verify_and_rotate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = dir.path().join("jwks.json");
    let (k1, sign1) = es256_key("k1");
    std::fs::write(&jwks, json!({ "keys": [k1] }).to_string()).expect("write");
    let mut config = testkit::tiny_config(&dir.path().join("data"));
    config.auth.jwks_file = Some(jwks.clone());
    let node = Node::start(config).await.expect("node");
    let es256 = |kid: &str, key: &EncodingKey| {
        let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.into());
        let claims = json!({"sub": "svc", "roles": ["service"], "exp": now() + 600});
        jsonwebtoken::encode(&header, &claims, key).expect("token")
    };
    // One router: the same authenticator must pick up the rotated keys.
    let router = api::router(node).expect("router");
    let status = |token: String| {
        let router = router.clone();
        async move {
            router
                .oneshot(
                    Request::get("/v1/trending")
                        .header("authorization", format!("Bearer {token}"))
                        .body(Body::empty())
                        .expect("request"),
                )
                .await
                .expect("infallible")
                .status()
        }
    };
    assert_eq!(status(es256("k1", &sign1)).await, StatusCode::OK);
    // An HS256 token is refused: no secret is configured, and the JWKS key is not a secret.
    assert_eq!(
        status(sign(
            &json!({"sub": "x", "roles": ["admin"], "exp": now() + 60}),
            SECRET
        ))
        .await,
        StatusCode::UNAUTHORIZED
    );
    // The provider rotates to k2: a token naming the new key makes the node re-read the keys.
    let (k2, sign2) = es256_key("k2");
    std::fs::write(&jwks, json!({ "keys": [k2] }).to_string()).expect("write");
    assert_eq!(status(es256("k2", &sign2)).await, StatusCode::OK);
    // A token signed with another key under a known id fails its signature check.
    let (_, forged) = es256_key("k2");
    assert_eq!(status(es256("k2", &forged)).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_from_a_url() {
    let (jwk, signing) = es256_key("url-key");
    let body = json!({ "keys": [jwk] }).to_string();
    let provider = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, provider).await });

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = testkit::tiny_config(dir.path());
    config.auth.jwks_url = Some(format!("http://{addr}/.well-known/jwks.json"));
    let node = Node::start(config).await.expect("node");
    let router = api::router(node).expect("router");
    let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("url-key".into());
    let claims = json!({"sub": "svc", "roles": ["service"], "exp": now() + 600});
    let token = jsonwebtoken::encode(&header, &claims, &signing).expect("token");
    let response = router
        .oneshot(
            Request::get("/v1/users/anyone/recommendations")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
}

/// The status of one request on `router`, with `headers`, from `peer` (what the listener's
/// `ConnectInfo` would say) when given.
async fn status_of(
    router: &axum::Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    peer: Option<&str>,
    body: Body,
) -> StatusCode {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(body).expect("request");
    if let Some(peer) = peer {
        let addr = std::net::SocketAddr::new(peer.parse().expect("ip"), 40000);
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
    }
    router
        .clone()
        .oneshot(request)
        .await
        .expect("infallible")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_upgrade_header_does_not_skip_the_token_check() {
    let (node, _dir) = node().await;
    let router = api::router(node).expect("router");
    let deep = format!("{}{}", "{a".repeat(200), "}".repeat(200));
    let query = || Body::from(json!({ "query": deep }).to_string());
    let json = ("content-type", "application/json");
    // Not a WebSocket handshake: a POST, a GET without `Connection: upgrade`, another protocol.
    let cases: [(Method, &[(&str, &str)]); 4] = [
        (
            Method::POST,
            &[json, ("upgrade", "websocket"), ("connection", "upgrade")],
        ),
        (Method::POST, &[json, ("upgrade", "h2c")]),
        (Method::GET, &[("upgrade", "websocket")]),
        (
            Method::GET,
            &[("upgrade", "h2c"), ("connection", "upgrade")],
        ),
    ];
    for (method, headers) in cases {
        let status = status_of(&router, method.clone(), "/graphql", headers, None, query()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {headers:?}");
    }
    // A real handshake passes the gate without a token (it authenticates in `connection_init`;
    // `tests/security.rs`); in-process it cannot upgrade, and the handler runs no query without
    // a token either.
    let handshake = [
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let status = status_of(
        &router,
        Method::GET,
        "/graphql",
        &handshake,
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Elsewhere an upgrade needs its token like anything else.
    let status = status_of(
        &router,
        Method::GET,
        "/v1/ws",
        &handshake,
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_websocket_upgrade_runs_no_graphql_query_without_a_token() {
    let (node, _dir) = node().await;
    let router = api::router(node).expect("router");
    let upgrade = [("connection", "Upgrade"), ("upgrade", "websocket")];
    let key = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    let version = ("sec-websocket-version", "13");
    // Without the handshake's key and version the gate asks for a token; with them (in-process
    // the connection cannot upgrade) the GraphQL handler does.
    let cases: [&[(&str, &str)]; 3] = [
        &upgrade,
        &[upgrade[0], upgrade[1], key],
        &[upgrade[0], upgrade[1], key, version],
    ];
    for headers in cases {
        let mut request = Request::get("/graphql?query=%7Btrending%7Btitle%7D%7D");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = router
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}: {body}");
        assert_eq!(
            body["error"]["code"], "unauthenticated",
            "{headers:?}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_iss_or_aud_is_refused_when_they_are_configured() {
    let (node, _dir) = node().await;
    let router = api::router(node).expect("router");
    let without = |claim: &str| {
        let mut c = claims("svc", &["service"]);
        c.as_object_mut().expect("object").remove(claim);
        sign(&c, SECRET)
    };
    let call = |token: String| {
        let router = router.clone();
        async move {
            let response = router
                .oneshot(
                    Request::get("/v1/trending")
                        .header("authorization", format!("Bearer {token}"))
                        .body(Body::empty())
                        .expect("request"),
                )
                .await
                .expect("infallible");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("body");
            (
                status,
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            )
        }
    };
    for claim in ["iss", "aud"] {
        let (status, body) = call(without(claim)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "no {claim}: {body}");
        assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(claim)),
            "{body}"
        );
    }
    let (status, _) = call(sign(&claims("svc", &["service"]), SECRET)).await;
    assert_eq!(status, StatusCode::OK, "both present and right");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iss_and_aud_are_optional_when_not_configured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = testkit::tiny_config(dir.path());
    config.auth.hs256_secret = Some(Secret(SECRET.into()));
    let node = Node::start(config).await.expect("node");
    let router = api::router(node).expect("router");
    let token = sign(
        &json!({"sub": "svc", "roles": ["service"], "exp": now() + 600}),
        SECRET,
    );
    let bearer = format!("Bearer {token}");
    let status = status_of(
        &router,
        Method::GET,
        "/v1/trending",
        &[("authorization", &bearer)],
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_callers_are_rate_limited_by_client_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = testkit::tiny_config(dir.path());
    config.auth.enabled = false;
    config.auth.rate_limit_per_second = 0.001;
    config.auth.rate_limit_burst = 2;
    config.auth.trusted_proxies = vec!["192.0.2.0/24".into(), "2001:db8::/32".into()];
    let node = Node::start(config).await.expect("node");
    let router = api::router(node).expect("router");
    let get = |peer: &'static str, xff: Option<&'static str>| {
        let router = router.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                xff.map(|v| ("x-forwarded-for", v)).into_iter().collect();
            status_of(
                &router,
                Method::GET,
                "/v1/trending",
                &headers,
                Some(peer),
                Body::empty(),
            )
            .await
        }
    };
    let (ok, limited) = (StatusCode::OK, StatusCode::TOO_MANY_REQUESTS);
    // Each client address has its own bucket.
    assert_eq!(get("198.51.100.1", None).await, ok);
    assert_eq!(get("198.51.100.1", None).await, ok);
    assert_eq!(get("198.51.100.1", None).await, limited);
    assert_eq!(get("198.51.100.2", None).await, ok);
    assert_eq!(get("198.51.100.2", None).await, ok);
    // From an untrusted peer, X-Forwarded-For is ignored: no fresh bucket by claiming one.
    assert_eq!(get("198.51.100.2", Some("203.0.113.7")).await, limited);
    // From a trusted proxy it names the client: the right-most address that is not a proxy.
    let via_proxy = Some("6.6.6.6, 203.0.113.7, 192.0.2.99");
    assert_eq!(get("192.0.2.10", via_proxy).await, ok);
    assert_eq!(get("192.0.2.11", Some("203.0.113.7")).await, ok);
    assert_eq!(get("192.0.2.10", via_proxy).await, limited);
    assert_eq!(get("192.0.2.10", Some("203.0.113.8")).await, ok);
    assert_eq!(get("2001:db8::1", Some("198.51.100.1")).await, limited);
    // Probes are limited by address too.
    let probe = |peer: &'static str| {
        let router = router.clone();
        async move {
            status_of(
                &router,
                Method::GET,
                "/healthz",
                &[],
                Some(peer),
                Body::empty(),
            )
            .await
        }
    };
    assert_eq!(probe("198.51.100.9").await, ok);
    assert_eq!(probe("198.51.100.9").await, ok);
    assert_eq!(probe("198.51.100.9").await, limited);
}
