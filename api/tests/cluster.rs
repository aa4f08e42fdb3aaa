//! The cluster surface of one embedded node, which owns every partition: every user-scoped
//! answer names it in `x-streamrec-owner` (REST, GraphQL, gRPC), `GET /v1/admin/cluster` shows it
//! as the one member serving everything, and the internal node-to-node service admits only
//! nodes, and only for what the carried caller may do. Three real nodes: `tests/cluster.rs` at
//! the workspace root.

use std::sync::Arc;
use std::time::Duration;

use actors::users::{Peer, Remote};
use api::internal::pb::users_client::UsersClient;
use api::internal::pb::{RecommendRequest, UserRequest};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::config::Secret;
use common::{Config, ErrorCode, RecQuery, Recommendations};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use supervisors::Node;
use tower::ServiceExt;

const JWT_SECRET: &str = "cluster-test-secret-0123456789abcdefghij";
const CLUSTER_SECRET: &str = "cluster-secret-of-the-nodes";
const NODE_ID: &str = "node-a";
const PARTITIONS: u32 = 4;

fn config(dir: &tempfile::TempDir) -> Config {
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.events.num_partitions = PARTITIONS;
    config.model.dim = 4;
    config.model.iterations = 2;
    config.auth.hs256_secret = Some(Secret(JWT_SECRET.into()));
    config.auth.rate_limit_per_second = 0.0;
    config.cluster.node_id = NODE_ID.into();
    config.cluster.secret = Some(Secret(CLUSTER_SECRET.into()));
    config
}

async fn node() -> (Arc<Node>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(config(&dir)).await.expect("node");
    (node, dir)
}

fn token(sub: &str, roles: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
        + 600;
    jsonwebtoken::encode(
        &Header::default(),
        &json!({ "sub": sub, "roles": roles, "exp": exp }),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token")
}

/// The status, the owner header and the JSON body of one request.
async fn call(
    node: &Arc<Node>,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .header(
            "authorization",
            format!("Bearer {}", token("root", &["admin"])),
        )
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request");
    let response = api::router(node.clone())
        .expect("router")
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let owner = response
        .headers()
        .get(api::OWNER_HEADER)
        .map(|v| v.to_str().expect("ascii").to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        owner,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_user_scoped_answer_names_the_node_that_owns_the_user() {
    let (node, _dir) = node().await;
    let event = json!({"events": [{"user_id": "alice", "item_id": "i1", "kind": "click"}]});
    let (status, owner, _) = call(&node, Method::POST, "/v1/events", Some(event)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(owner, None, "a write is not served by an owner");
    assert!(node.wait_caught_up(Duration::from_secs(10)).await);

    let me = Some(NODE_ID.to_owned());
    for (method, uri, expected) in [
        (
            Method::GET,
            "/v1/users/alice/recommendations",
            StatusCode::OK,
        ),
        (Method::GET, "/v1/users/alice", StatusCode::OK),
        // The owner answered that it holds nothing: still its answer.
        (Method::GET, "/v1/users/nobody", StatusCode::NOT_FOUND),
        (Method::GET, "/v1/users/alice/export", StatusCode::OK),
        (Method::DELETE, "/v1/users/alice", StatusCode::NO_CONTENT),
    ] {
        let (status, owner, body) = call(&node, method.clone(), uri, None).await;
        assert_eq!(status, expected, "{method} {uri}: {body}");
        assert_eq!(owner, me, "{method} {uri}");
    }
    for query in [
        r#"{ recommendations(userId: "bob") { userId } }"#,
        r#"{ user(userId: "alice") { numEvents } }"#,
    ] {
        let (status, owner, body) = call(
            &node,
            Method::POST,
            "/graphql",
            Some(json!({ "query": query })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["errors"].is_null(), "{body}");
        assert_eq!(owner, me, "{query}");
    }
    // Not about a user: no owner.
    let (status, owner, _) = call(&node, Method::GET, "/v1/trending", None).await;
    assert_eq!((status, owner), (StatusCode::OK, None));

    // gRPC: the same key, as response metadata.
    let mut grpc = api::grpc::pb::recommender_client::RecommenderClient::new(
        api::router(node.clone()).expect("router"),
    );
    let mut request = tonic::Request::new(api::grpc::pb::RecommendRequest {
        user_id: "carol".into(),
        k: 3,
        category: None,
        diversity: None,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token("svc", &["service"]))
            .parse()
            .expect("ascii"),
    );
    let response = grpc.recommend(request).await.expect("recommends");
    assert_eq!(
        response
            .metadata()
            .get(api::OWNER_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some(NODE_ID)
    );
    assert_eq!(response.get_ref().user_id, "carol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_is_the_one_member_and_serves_every_partition() {
    let (node, _dir) = node().await;
    let (status, _, view) = call(&node, Method::GET, "/v1/admin/cluster", None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let all: Vec<u32> = (0..PARTITIONS).collect();
    let address = node.config.cluster.advertised(node.config.server.listen);
    assert_eq!(view["node_id"], NODE_ID);
    assert_eq!(
        view["members"],
        json!([{ "node_id": NODE_ID, "address": address, "partitions": all }])
    );
    let partitions: Vec<Value> = all
        .iter()
        .map(|p| json!({ "partition": p, "owner": NODE_ID, "state": "active" }))
        .collect();
    assert_eq!(view["partitions"], Value::Array(partitions));
    // The console's snapshot carries the same map.
    assert_eq!(node.snapshot().await["cluster"], view);
}

/// A request to the internal service with the given node secret and carried principal.
fn internal<T>(message: T, secret: Option<&str>, principal: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(secret) = secret {
        request
            .metadata_mut()
            .insert("x-streamrec-node-secret", secret.parse().expect("ascii"));
    }
    if let Some(principal) = principal {
        request
            .metadata_mut()
            .insert("x-streamrec-principal", principal.parse().expect("ascii"));
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_service_admits_nodes_only_for_what_their_caller_may_do() {
    let (node, _dir) = node().await;
    let mut users = UsersClient::new(api::router(node.clone()).expect("router"));
    let recommend = |secret, principal| {
        internal(
            RecommendRequest {
                user_id: "alice".into(),
                k: 3,
                category: None,
                diversity_thousandths: 0,
            },
            secret,
            principal,
        )
    };
    let alice = Some(r#"{"sub":"alice","roles":["user"]}"#);
    let bob = Some(r#"{"sub":"bob","roles":["user"]}"#);
    let node_principal = Some(r#"{"sub":"node:node-b","roles":["node"]}"#);
    let admin = Some(r#"{"sub":"root","roles":["admin"]}"#);

    // Not a node: no secret, a wrong one, or no caller carried.
    for (secret, principal) in [
        (None, alice),
        (Some("wrong-secret-of-some-length"), alice),
        (Some(""), alice),
        (Some(CLUSTER_SECRET), None),
    ] {
        let status = users
            .recommend(recommend(secret, principal))
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{secret:?} {principal:?}"
        );
    }
    // A node, for a caller the policy refuses.
    let status = users
        .recommend(recommend(Some(CLUSTER_SECRET), bob))
        .await
        .expect_err("bob may not read alice");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    for principal in [alice, node_principal] {
        let status = users
            .erase_user(internal(
                UserRequest {
                    user_id: "alice".into(),
                },
                Some(CLUSTER_SECRET),
                principal,
            ))
            .await
            .expect_err("only an admin erases");
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "{principal:?}"
        );
    }
    // A node, for callers the policy allows: the owner serves.
    for principal in [alice, node_principal, admin] {
        let reply = users
            .recommend(recommend(Some(CLUSTER_SECRET), principal))
            .await
            .expect("served")
            .into_inner();
        let recs: Recommendations = serde_json::from_slice(&reply.json).expect("json");
        assert_eq!(recs.user_id, "alice");
    }
    let reply = users
        .get_user(internal(
            UserRequest {
                user_id: "nobody".into(),
            },
            Some(CLUSTER_SECRET),
            admin,
        ))
        .await
        .expect("served")
        .into_inner();
    assert_eq!(reply.json, b"null");
    let status = users
        .get_user(internal(
            UserRequest {
                user_id: "bad\u{1}id".into(),
            },
            Some(CLUSTER_SECRET),
            admin,
        ))
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // No token can make its bearer a node.
    let request = Request::get("/v1/users/alice/recommendations")
        .header("authorization", format!("Bearer {}", token("x", &["node"])))
        .body(Body::empty())
        .expect("request");
    let response = api::router(node.clone())
        .expect("router")
        .oneshot(request)
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

/// Serves `node` on a loopback port; the address.
async fn serve(node: &Arc<Node>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let limits = api::listener::Limits::try_from(node.config.as_ref()).expect("limits");
    let app = api::router(node.clone()).expect("router");
    tokio::spawn(api::listener::serve(
        listener,
        app,
        None,
        limits,
        std::future::pending(),
    ));
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reaches_the_owner_over_the_network_and_maps_its_answers() {
    let (node, dir) = node().await;
    let peer = Peer {
        node_id: NODE_ID.into(),
        address: serve(&node).await,
    };
    let query = RecQuery::new(3, None).expect("query");
    let client = api::internal::Client::new(&config(&dir));
    // Without a caller on this task, it speaks as its node: reads yes, erasure no.
    let recs = client
        .recommend(&peer, "dave", &query)
        .await
        .expect("recommends");
    assert_eq!(recs.user_id, "dave");
    assert_eq!(client.get(&peer, "dave").await, Ok(None));
    let refused = client.erase(&peer, "dave").await.expect_err("refused");
    assert_eq!(refused.code, ErrorCode::PermissionDenied);

    // Wrong cluster credentials are this node's problem, not the caller's: unavailable.
    let mut wrong = config(&dir);
    wrong.cluster.secret = Some(Secret("not-the-cluster-secret".into()));
    let error = api::internal::Client::new(&wrong)
        .recommend(&peer, "dave", &query)
        .await
        .expect_err("refused");
    assert_eq!(error.code, ErrorCode::Unavailable);

    // Nobody listening: unavailable, which `Users` routes again.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let gone = Peer {
        node_id: "node-z".into(),
        address: closed.local_addr().expect("addr").to_string(),
    };
    drop(closed);
    let error = client
        .recommend(&gone, "dave", &query)
        .await
        .expect_err("nobody there");
    assert_eq!(error.code, ErrorCode::Unavailable, "{error:?}");
    assert!(error.message.contains("node-z"), "{}", error.message);
}

/// A CA and a node certificate it signed for `127.0.0.1` (server and client use): the files
/// `ca.pem`, `node.pem` and `node.key` in `dir`.
fn node_certificates(dir: &std::path::Path) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).expect("ca").pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut node = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    node.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let node_pem = node.signed_by(&key, &issuer).expect("signed").pem();
    for (name, text) in [
        ("ca.pem", ca_pem),
        ("node.pem", node_pem),
        ("node.key", key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), text).expect("write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_nodes_call_each_other_over_https_with_their_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    node_certificates(dir.path());
    let mut config = config(&dir);
    // The certificate is the node's whole proof here: no shared secret.
    config.cluster.secret = None;
    config.server.tls.cert = Some(dir.path().join("node.pem"));
    config.server.tls.key = Some(dir.path().join("node.key"));
    config.server.tls.client_ca = Some(dir.path().join("ca.pem"));
    let node = Node::start(config.clone()).await.expect("node");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let peer = Peer {
        node_id: NODE_ID.into(),
        address: listener.local_addr().expect("addr").to_string(),
    };
    let tls = api::tls::Reloader::new(&config.server.tls).expect("tls");
    let limits = api::listener::Limits::try_from(&config).expect("limits");
    let app = api::router(node.clone()).expect("router");
    tokio::spawn(api::listener::serve(
        listener,
        app,
        Some(tls),
        limits,
        std::future::pending(),
    ));

    let query = RecQuery::new(3, None).expect("query");
    let recs = api::internal::Client::new(&config)
        .recommend(&peer, "erin", &query)
        .await
        .expect("served over mutual TLS");
    assert_eq!(recs.user_id, "erin");

    // A node whose certificate the CA did not sign is refused at the handshake: unavailable.
    let stranger = tempfile::tempdir().expect("tempdir");
    node_certificates(stranger.path());
    let mut other = config.clone();
    other.server.tls.cert = Some(stranger.path().join("node.pem"));
    other.server.tls.key = Some(stranger.path().join("node.key"));
    other.server.tls.client_ca = Some(stranger.path().join("ca.pem"));
    let error = api::internal::Client::new(&other)
        .recommend(&peer, "erin", &query)
        .await
        .expect_err("refused");
    assert_eq!(error.code, ErrorCode::Unavailable, "{error:?}");
}
