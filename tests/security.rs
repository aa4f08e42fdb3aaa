//! Security against the real binary: the authorization matrix over WebSocket, GraphQL-WS and
//! gRPC; TLS 1.3 (and 1.2 refused by default, certificates reloaded on change); personal data
//! encrypted at rest and absent from logs; GDPR erase, export, and a replay of archived events
//! that does not bring an erased user back.

mod support;

use std::time::Duration;

use api::grpc::pb;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tonic::Code;

fn expired() -> String {
    token_with(json!({"sub": "alice", "roles": ["admin"], "exp": now_secs() - 3600}))
}

fn wrong_signature() -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice", "roles": ["admin"], "exp": now_secs() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-node-secret-0123456789"),
    )
    .expect("token")
}

fn alg_none() -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = json!({"sub": "alice", "roles": ["admin"], "exp": now_secs() + 600});
    format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    )
}

/// The HTTP status a WebSocket upgrade got, or 101.
async fn ws_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{url}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_grpc_apply_the_same_policy() {
    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;
    let ws = |query: &str, token: &str| {
        format!("ws://{}/v1/ws?{query}&access_token={token}", server.addr)
    };
    let alice = token("alice", &["user"]);
    let service = token("svc", &["service"]);

    // Upgrades: authenticated first, then authorized for the user in the URL.
    assert_eq!(
        ws_status(&format!("ws://{}/v1/ws?user_id=alice", server.addr)).await,
        401
    );
    for bad in [expired(), wrong_signature(), alg_none()] {
        assert_eq!(ws_status(&ws("user_id=alice", &bad)).await, 401);
    }
    assert_eq!(ws_status(&ws("user_id=bob", &alice)).await, 403);
    assert_eq!(ws_status(&ws("user_id=alice", &alice)).await, 101);

    // Subscriptions on an open connection: alice may watch only herself.
    let (socket, _) = tokio_tungstenite::connect_async(ws("x=1", &alice))
        .await
        .expect("connects");
    let (mut tx, mut rx) = socket.split();
    let send = |v: Value| Message::Text(v.to_string().into());
    tx.send(send(json!({"type": "subscribe", "user_id": "bob"})))
        .await
        .expect("send");
    let refused = next_json(&mut rx).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["error"]["code"], "permission_denied");
    tx.send(send(json!({"type": "subscribe", "user_id": "alice"})))
        .await
        .expect("send");
    assert_eq!(next_json(&mut rx).await["type"], "subscribed");
    // A service may watch anyone.
    let (socket, _) = tokio_tungstenite::connect_async(ws("user_id=bob", &service))
        .await
        .expect("service connects");
    let (_, mut rx) = socket.split();
    assert_eq!(next_json(&mut rx).await["type"], "recommendations");

    // GraphQL over WebSocket: the token in connection_init decides.
    for (init_token, ack) in [(wrong_signature(), false), (alice.clone(), true)] {
        let (socket, _) = tokio_tungstenite::connect_async(server.graphql_ws_request())
            .await
            .expect("upgrade");
        let (mut tx, mut rx) = socket.split();
        let payload = json!({"Authorization": format!("Bearer {init_token}")});
        tx.send(send(json!({"type": "connection_init", "payload": payload})))
            .await
            .expect("send");
        let reply = tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .expect("an answer");
        let acked = matches!(&reply, Some(Ok(Message::Text(t))) if t.contains("connection_ack"));
        assert_eq!(acked, ack, "{reply:?}");
        if !ack {
            continue;
        }
        tx.send(send(json!({"id": "1", "type": "subscribe", "payload": {
            "query": "subscription { recommendationsUpdated(userId: \"bob\") { userId } }"
        }})))
        .await
        .expect("send");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), rx.next())
                .await
                .expect("an answer")
                .expect("open")
                .expect("ok");
            let Message::Text(text) = message else {
                continue;
            };
            let v: Value = serde_json::from_str(&text).expect("json");
            if v["type"] == "ping" || v["type"] == "pong" {
                continue;
            }
            // A refused subscription yields no data, only the error, with the shared code.
            assert_eq!(v["payload"]["data"], Value::Null, "{v}");
            assert_eq!(
                v["payload"]["errors"][0]["extensions"]["code"], "permission_denied",
                "{v}"
            );
            break;
        }
    }

    // gRPC: the same table, as status codes.
    let recommend = |user: &str| pb::RecommendRequest {
        user_id: user.into(),
        k: 3,
        category: None,
        diversity: None,
    };
    let item = || pb::UpsertItemRequest {
        item_id: "sec-1".into(),
        title: "Secure".into(),
        ..Default::default()
    };
    let watch = |user: &str| pb::WatchRequest {
        user_id: user.into(),
        k: 3,
        category: None,
        diversity: None,
    };
    let events = |user: &str| pb::TrackEventsRequest {
        events: vec![pb::Event {
            user_id: user.into(),
            item_id: "sec-1".into(),
            kind: "view".into(),
            ..Default::default()
        }],
    };
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    for bad in [String::new(), expired(), wrong_signature(), alg_none()] {
        let mut client = grpc_client(&server, &bad).await;
        let result = client.recommend(recommend("alice")).await.map(drop);
        assert_eq!(code(result), Code::Unauthenticated);
    }
    // (caller, recommend alice, recommend bob, upsert item, watch bob, track alice's events)
    let table = [
        (
            alice.clone(),
            Code::Ok,
            Code::PermissionDenied,
            Code::PermissionDenied,
            Code::PermissionDenied,
            Code::Ok,
        ),
        (
            service.clone(),
            Code::Ok,
            Code::Ok,
            Code::PermissionDenied,
            Code::Ok,
            Code::Ok,
        ),
        (
            token("cat", &["catalog-admin"]),
            Code::PermissionDenied,
            Code::PermissionDenied,
            Code::Ok,
            Code::PermissionDenied,
            Code::PermissionDenied,
        ),
        (
            token("ops", &["operator"]),
            Code::Ok,
            Code::Ok,
            Code::PermissionDenied,
            Code::Ok,
            Code::PermissionDenied,
        ),
        (
            admin_token(),
            Code::Ok,
            Code::Ok,
            Code::Ok,
            Code::Ok,
            Code::Ok,
        ),
    ];
    for (who, rec_alice, rec_bob, upsert, watch_bob, track) in table {
        let mut client = grpc_client(&server, &who).await;
        let got = (
            code(client.recommend(recommend("alice")).await.map(drop)),
            code(client.recommend(recommend("bob")).await.map(drop)),
            code(client.upsert_item(item()).await.map(drop)),
            code(client.watch_recommendations(watch("bob")).await.map(drop)),
            code(client.track_events(events("alice")).await.map(drop)),
        );
        assert_eq!(got, (rec_alice, rec_bob, upsert, watch_bob, track), "{who}");
    }
    let denied = grpc_client(&server, &alice)
        .await
        .upsert_item(item())
        .await
        .expect_err("denied");
    assert_eq!(
        denied
            .metadata()
            .get(api::grpc::ERROR_CODE_KEY)
            .and_then(|v| v.to_str().ok()),
        Some("permission_denied")
    );

    // Every denial left an audit line.
    let log = std::fs::read_to_string(dir.join("node.log")).expect("log");
    let denials = log
        .lines()
        .filter(|l| l.contains("audit") && l.contains("deny"))
        .count();
    assert!(denials >= 10, "{denials} audit lines for denials");
}

/// How a WebSocket ended, or what it sent instead: the close code, if any.
async fn close_code(rx: &mut WsRead) -> Option<u16> {
    let ended = async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(Message::Text(text))) => panic!("answered instead of closing: {text}"),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), ended)
        .await
        .expect("closed within 15 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graphql_document_300000_levels_deep_leaves_the_node_up() {
    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;
    // 900 kB, under the body limit.
    let levels = 300_000;
    let deep = format!("{}{}", "{a".repeat(levels), "}".repeat(levels));
    let body = json!({ "query": deep });

    // With a token: refused as too deep.
    let (status, refused) = server
        .send(reqwest::Method::POST, "/graphql", Some(body.clone()))
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        refused["errors"][0]["extensions"]["code"],
        "invalid_argument"
    );

    // Without a token, posing as an upgrade: refused, whether by the gate or by the cost check.
    let response = reqwest::Client::new()
        .post(server.url("/graphql"))
        .header("upgrade", "websocket")
        .json(&body)
        .send()
        .await
        .expect("an answer");
    assert!(
        matches!(response.status().as_u16(), 400 | 401),
        "{}",
        response.status()
    );

    // A tokenless GraphQL WebSocket whose first frame is the document: closed unread, 4401.
    let (socket, _) = tokio_tungstenite::connect_async(server.graphql_ws_request())
        .await
        .expect("upgrade");
    let (mut tx, mut rx) = socket.split();
    let subscribe = json!({"id": "1", "type": "subscribe", "payload": {"query": deep}});
    tx.send(Message::Text(subscribe.to_string().into()))
        .await
        .expect("send");
    assert_eq!(close_code(&mut rx).await, Some(4401));

    // The node is up and answers.
    let (status, body) = server.get("/v1/trending").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .send(
            reqwest::Method::POST,
            "/graphql",
            Some(json!({"query": "{ trending(k: 2) { itemId } }"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_ws_operations_spend_the_callers_rate_limit() {
    let (_guard, dir) = workdir();
    // Three requests per caller, refilled too slowly to matter here.
    let settings = [
        ("STREAMREC__AUTH__RATE_LIMIT_PER_SECOND", "0.001".to_owned()),
        ("STREAMREC__AUTH__RATE_LIMIT_BURST", "3".to_owned()),
    ];
    let server = Server::start_with(&dir, &dir.join("data"), &settings).await;
    let (socket, _) = tokio_tungstenite::connect_async(server.graphql_ws_request())
        .await
        .expect("upgrade");
    let (mut tx, mut rx) = socket.split();
    let send = |v: Value| Message::Text(v.to_string().into());
    let bearer = format!("Bearer {}", token("flood", &["service"]));
    tx.send(send(
        json!({"type": "connection_init", "payload": {"Authorization": bearer}}),
    ))
    .await
    .expect("send");
    let ack = loop {
        let message = next_json(&mut rx).await;
        if message["type"] != "pong" {
            break message;
        }
    };
    assert_eq!(ack["type"], "connection_ack", "{ack}");

    let query = "{ trending(k: 1) { itemId } }";
    for id in 1..=4 {
        tx.send(send(
            json!({"id": id.to_string(), "type": "subscribe", "payload": {"query": query}}),
        ))
        .await
        .expect("send");
    }
    // The first three run to completion; the fourth is over the rate.
    let (mut completed, mut limited) = (Vec::new(), Vec::new());
    while completed.len() + limited.len() < 4 {
        let message = next_json(&mut rx).await;
        let id = message["id"].as_str().unwrap_or_default().to_owned();
        match message["type"].as_str() {
            Some("complete") => completed.push(id),
            Some("error") => {
                assert_eq!(
                    message["payload"][0]["extensions"]["code"], "rate_limited",
                    "{message}"
                );
                limited.push(id);
            }
            _ => {}
        }
    }
    completed.sort();
    assert_eq!(
        (completed, limited),
        (
            vec!["1".to_owned(), "2".into(), "3".into()],
            vec!["4".to_owned()]
        )
    );
}

/// A TLS handshake with the node trusting `ca_pem` and offering `alpn`: the negotiated version
/// and protocol.
async fn handshake(
    server: &Server,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> (Option<rustls::ProtocolVersion>, Option<Vec<u8>>) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("pem"))
        .expect("root");
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    let (_, connection) = tls.get_ref();
    (
        connection.protocol_version(),
        connection.alpn_protocol().map(<[u8]>::to_vec),
    )
}

/// A self-signed certificate for localhost: (certificate PEM, key PEM).
fn certificate() -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    (cert.cert.pem(), cert.signing_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_13_only_by_default_and_certificates_reload() {
    let (_guard, dir) = workdir();
    let (cert, key) = certificate();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, &cert).expect("write");
    std::fs::write(&key_path, &key).expect("write");
    let settings = [
        (
            "STREAMREC__SERVER__TLS__CERT",
            cert_path.display().to_string(),
        ),
        (
            "STREAMREC__SERVER__TLS__KEY",
            key_path.display().to_string(),
        ),
    ];
    let server = Server::start_tls(&dir, &settings, &cert).await;

    // TLS 1.3 works, for REST and for gRPC's HTTP/2.
    let (status, body) = server.get("/v1/trending").await;
    assert_eq!(status, 200, "{body}");
    let (version, alpn) = handshake(&server, &cert, &[b"h2"]).await;
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(
        alpn.as_deref(),
        Some(&b"h2"[..]),
        "HTTP/2 (gRPC) is offered over TLS"
    );
    // A client limited to TLS 1.2 is refused at the handshake.
    let old = client(&admin_token(), Some(&cert))
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .expect("client");
    assert!(
        old.get(server.url("/healthz")).send().await.is_err(),
        "TLS 1.2 accepted"
    );
    // Plain HTTP on the TLS port gets nowhere.
    assert!(
        reqwest::get(format!("http://{}/healthz", server.addr))
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
    );

    // A renewed certificate is served without a restart.
    let (new_cert, new_key) = certificate();
    std::fs::write(&key_path, &new_key).expect("write");
    std::fs::write(&cert_path, &new_cert).expect("write");
    let renewed = client(&admin_token(), Some(&new_cert))
        .build()
        .expect("client");
    let served = wait_until(
        async || {
            let health = renewed.get(server.url("/healthz")).send().await;
            health.is_ok_and(|r| r.status() == 200)
        },
        Duration::from_secs(30),
    )
    .await;
    assert!(served, "new certificate not served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_12_when_allowed() {
    let (_guard, dir) = workdir();
    let (cert, key) = certificate();
    std::fs::write(dir.join("cert.pem"), &cert).expect("write");
    std::fs::write(dir.join("key.pem"), &key).expect("write");
    let settings = [
        (
            "STREAMREC__SERVER__TLS__CERT",
            dir.join("cert.pem").display().to_string(),
        ),
        (
            "STREAMREC__SERVER__TLS__KEY",
            dir.join("key.pem").display().to_string(),
        ),
        ("STREAMREC__SERVER__TLS__MIN_VERSION", "1.2".to_owned()),
    ];
    let server = Server::start_tls(&dir, &settings, &cert).await;
    let old = client(&admin_token(), Some(&cert))
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .expect("client");
    let response = old
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("TLS 1.2");
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_is_encrypted_at_rest_and_never_logged() {
    let (_guard, dir) = workdir();
    let email = "ada.lovelace.pii@example.org";
    let name = "Augusta Ada Secretname";
    let settings = [(
        "STREAMREC__TELEMETRY__LOG_LEVEL",
        "debug,ort=warn".to_owned(),
    )];
    let server = Server::start_with(&dir, &dir.join("data"), &settings).await;
    let profile = json!({"email": email, "name": name, "age": 36, "occupation": "mathematician"});
    let (status, _) = server
        .send(reqwest::Method::PUT, "/v1/users/ada/profile", Some(profile))
        .await;
    assert_eq!(status, 204);
    // Requests that fail on the way, carrying the same values, are not logged with them either.
    let (status, _) = server
        .send(
            reqwest::Method::PUT,
            "/v1/users/ada/profile",
            Some(json!([email, name])),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        server
            .post_events(vec![click("pii-1", "ada", "i1")])
            .await
            .0,
        202
    );
    eventually(&server, "/v1/users/ada", |s, _| s == 200).await;

    // The owner's export shows the values.
    let (status, export) = server.get("/v1/users/ada/export").await;
    assert_eq!(status, 200);
    assert_eq!(export["profile"]["email"], email);
    assert_eq!(export["profile"]["age"], 36);

    // Nothing on disk holds them in clear, and the log never saw them.
    server.terminate(Duration::from_secs(30));
    let mut found = Vec::new();
    for entry in walk(&dir.join("data")) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        for needle in [email, name] {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(format!("{needle} in {}", entry.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "personal data in clear at rest: {found:?}"
    );
    let log = std::fs::read_to_string(dir.join("node.log")).expect("log");
    assert!(
        log.contains("DEBUG") || log.contains("INFO"),
        "the log was written"
    );
    assert!(
        !log.contains(email) && !log.contains("Secretname"),
        "personal data in the log"
    );
}

/// A version as the trainer wrote it before profiles were filtered: its profile map learned
/// from every profile field, personal ones included.
fn version_with_personal_features(profile: impl Fn(usize) -> Value) -> models::ModelArtifact {
    let mut data = models::Interactions::default();
    let mut users = Vec::new();
    for u in 0..10usize {
        for i in (0..6usize).filter(|i| (u + i) % 3 != 0) {
            data.add(&format!("u{u}"), &format!("p{i}"), 2.0, (u * 10 + i) as i64);
        }
    }
    for user in &data.users {
        let n: usize = user[1..].parse().expect("u<n>");
        let attributes = profile(n).as_object().cloned().expect("an object");
        users.push(models::content::tokens(models::content::ItemContent {
            title: "",
            categories: &[],
            tags: &[],
            attributes: &attributes,
        }));
    }
    let content = models::training::Content {
        items: vec![Vec::new(); data.items.len()],
        users,
    };
    let params = models::TrainParams {
        dim: 4,
        iterations: 3,
        regularization: 0.1,
        alpha: 4.0,
        seed: 1,
    };
    models::training::train(
        data,
        content,
        None,
        params,
        models::HybridParams::default(),
        5.0,
        |_, _| {},
    )
}

/// Objects under `store` whose bytes hold any of `needles` (compared in lower case).
async fn objects_holding(store: &dyn storage::ObjectStore, needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for key in store.list("").await.expect("list") {
        let bytes = store.get(&key).await.expect("get").unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).to_lowercase();
        for needle in needles {
            if text.contains(&needle.to_lowercase()) {
                found.push(format!("{needle} in {key}"));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_profile_fields_never_reach_model_artifacts_and_old_versions_are_rewritten() {
    use storage::ObjectStore as _;
    let (_guard, dir) = workdir();
    let endpoint = test_env("STREAMREC_TEST_S3_ENDPOINT");
    let prefix = unique("t");
    let url = format!("s3://streamrec/{prefix}");
    let s3 = std::sync::Arc::new(
        storage::S3ObjectStore::new("streamrec", &prefix, Some(&endpoint))
            .await
            .expect("s3"),
    );
    // Shared by several users, so that each would be a feature of the profile map.
    let old_secrets = ["oldsecretname", "oldpiimail"];
    {
        let registry = actors::ModelRegistry::open(s3.clone())
            .await
            .expect("registry");
        let old = version_with_personal_features(
            |n| json!({"Name": "Oldsecretname", "email": format!("u{n}@oldpiimail.example"), "age": 30}),
        );
        assert!(
            old.user_content
                .features
                .iter()
                .any(|f| f.contains("oldsecretname")),
            "the old version must hold what the migration removes: {:?}",
            old.user_content.features
        );
        registry.publish(old, 0.05).await.expect("old version");
    }

    let settings = [
        ("STREAMREC__OBJECTS__URL", url.clone()),
        ("STREAMREC__OBJECTS__ENDPOINT", endpoint.clone()),
        ("STREAMREC__CATALOG__URL", fresh_database().await),
        (
            "STREAMREC__TELEMETRY__LOG_LEVEL",
            "debug,ort=warn".to_owned(),
        ),
    ];
    let server = Server::start_with(&dir, &dir.join("data"), &settings).await;
    server.catalog((0..6).map(|i| format!("p{i}"))).await;
    let secrets = [
        "qqvzz",
        "piimail",
        "zyxwquo",
        "pemberton",
        "xylophonic",
        "quokkas",
        "5550199",
    ];
    let mut events = Vec::new();
    for u in 0..10 {
        let likes = if u % 2 == 0 { "music" } else { "books" };
        let profile = json!({
            "email": format!("u{u}.qqvzz@piimail.example"),
            "name": "Zyxwquo Pemberton",
            "Notes": "likes xylophonic quokkas",
            "PHONE": "+44 5550199",
            "contact": {"email": "qqvzz@piimail.example"},
            "likes": likes,
        });
        let (status, body) = server
            .send(
                reqwest::Method::PUT,
                &format!("/v1/users/u{u}/profile"),
                Some(profile),
            )
            .await;
        assert_eq!(status, 204, "{body}");
        let first = if u % 2 == 0 { 0 } else { 3 };
        for i in first..first + 3 {
            events.push(click(
                &format!("e{u}-{i}"),
                &format!("u{u}"),
                &format!("p{i}"),
            ));
        }
    }
    assert_eq!(server.post_events(events).await.0, 202);
    eventually(&server, "/v1/users/u9", |s, b| {
        s == 200 && b["num_events"] == 3
    })
    .await;
    let version = server.train().await;

    // No object in the store holds a personal value, in any case, old version or new.
    let all: Vec<&str> = secrets.iter().chain(&old_secrets).copied().collect();
    let found = objects_holding(s3.as_ref(), &all).await;
    assert!(
        found.is_empty(),
        "personal data in model artifacts: {found:?}"
    );
    // The harmless field is still a feature of the new version's profile map.
    let user_content = s3
        .get(&format!("models/{version}/user_content.json"))
        .await
        .expect("get")
        .expect("the new version's profile map");
    let map: models::content::ContentModel =
        serde_json::from_slice(&user_content).expect("profile map");
    assert!(
        map.features.iter().any(|f| f == "a:likes=music"),
        "{:?}",
        map.features
    );
    // The migration is recorded, so it runs once.
    let (_, models) = server.get("/v1/admin/models").await;
    assert!(
        models["personal_fields_scrubbed"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("name"))),
        "{models}"
    );
    server.terminate(Duration::from_secs(30));
    let log = std::fs::read_to_string(dir.join("node.log")).expect("log");
    for secret in all {
        assert!(!log.to_lowercase().contains(secret), "{secret} in the log");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_leaves_nothing_and_a_replay_of_the_archive_does_not_resurrect() {
    let (_guard, dir) = workdir();
    let settings = [
        ("STREAMREC__OBJECTS__ARCHIVE_INTERVAL", "300ms".to_owned()),
        ("STREAMREC__MODEL__TRAIN_SOURCE", "archive".to_owned()),
    ];
    let server = Server::start_with(&dir, &dir.join("data"), &settings).await;
    let mut history: Vec<Value> = (0..6)
        .flat_map(|u| {
            (0..6).map(move |i| click(&format!("h{u}-{i}"), &format!("u{u}"), &format!("m{i}")))
        })
        .collect();
    history.extend((0..4).map(|i| click(&format!("g{i}"), "gone", &format!("m{i}"))));
    assert_eq!(server.post_events(history).await.0, 202);
    let (status, _) = server
        .send(
            reqwest::Method::PUT,
            "/v1/users/gone/profile",
            Some(json!({"email": "gone@example.org", "age": 40})),
        )
        .await;
    assert_eq!(status, 204);
    eventually(&server, "/v1/users/gone", |s, b| {
        s == 200 && b["num_events"] == 4
    })
    .await;
    let (_, export) = server.get("/v1/users/gone/export").await;
    assert_eq!(
        export["events"].as_array().map(Vec::len),
        Some(4),
        "{export}"
    );
    assert_eq!(export["profile"]["email"], "gone@example.org");
    let past = export["events"].as_array().expect("events").clone();
    // The archiver copies the events out before the erasure.
    let archived = wait_until(
        async || actor_state(&server, "archiver").await["num_records"].as_u64() >= Some(40),
        Duration::from_secs(20),
    )
    .await;
    assert!(archived, "{}", actor_state(&server, "archiver").await);
    server.train().await;
    let users_with = trained_users(&server).await;

    let (status, _) = server
        .send(reqwest::Method::DELETE, "/v1/users/gone", None)
        .await;
    assert_eq!(status, 204);
    let (status, export) = server.get("/v1/users/gone/export").await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            &export["session"],
            &export["profile"],
            export["events"].as_array().map(Vec::len),
            export["interactions"].as_object().map(serde_json::Map::len),
        ),
        (&Value::Null, &Value::Null, Some(0), Some(0)),
        "{export}"
    );
    // Training replays the archive, which still holds the user's events: the tombstone keeps
    // them out.
    server.train().await;
    assert_eq!(trained_users(&server).await, users_with - 1);
    // And a restart does not bring the user back.
    let data = dir.join("data");
    server.terminate(Duration::from_secs(30));
    let server = Server::start_with(&dir, &data, &settings).await;
    let (status, _) = server.get("/v1/users/gone").await;
    assert_eq!(status, 404);
    let (_, export) = server.get("/v1/users/gone/export").await;
    assert_eq!(
        export["events"].as_array().map(Vec::len),
        Some(0),
        "{export}"
    );

    // The same events delivered again (a client retrying an old batch, a topic consumed again by
    // a reset consumer group) are recognised by their ids, which the node keeps (hashed) for the
    // dedupe window after the erasure. A new event counts.
    let mut again = past;
    again.push(click("new", "gone", "m5"));
    let (status, body) = server.post_events(again).await;
    assert_eq!(status, 202, "{body}");
    eventually(&server, "/v1/users/gone", |s, b| {
        s == 200 && b["num_events"] == 1
    })
    .await;
    let (_, export) = server.get("/v1/users/gone/export").await;
    let ids: Vec<&str> = export["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(ids, ["new"], "{export}");
}

async fn trained_users(server: &Server) -> u64 {
    let (_, models) = server.get("/v1/admin/models").await;
    let active = models["active"].as_str().expect("active").to_owned();
    models["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .find(|v| v["version"] == active.as_str())
        .and_then(|v| v["features"]["num_users"].as_u64())
        .expect("num_users")
}

/// A CA, and a client certificate it signed: (CA PEM, client certificate and key PEM).
fn client_ca() -> (String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).expect("ca").pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let client_key = rcgen::KeyPair::generate().expect("key");
    let mut client = rcgen::CertificateParams::new(vec!["node-b".to_owned()]).expect("params");
    client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_pem = client
        .signed_by(&client_key, &issuer)
        .expect("signed")
        .pem();
    (
        ca_pem,
        format!("{client_pem}{}", client_key.serialize_pem()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let (_guard, dir) = workdir();
    let (cert, key) = certificate();
    let (ca, identity) = client_ca();
    for (name, text) in [("cert.pem", &cert), ("key.pem", &key), ("ca.pem", &ca)] {
        std::fs::write(dir.join(name), text).expect("write");
    }
    let path = |name: &str| dir.join(name).display().to_string();
    let settings = [
        ("STREAMREC__SERVER__TLS__CERT", path("cert.pem")),
        ("STREAMREC__SERVER__TLS__KEY", path("key.pem")),
        ("STREAMREC__SERVER__TLS__CLIENT_CA", path("ca.pem")),
    ];
    // The harness's own client presents the certificate, or it would never see the node ready.
    let with_identity = client(&admin_token(), Some(&cert))
        .identity(reqwest::Identity::from_pem(identity.as_bytes()).expect("identity"))
        .build()
        .expect("client");
    let server = Server::start_tls_with(&dir, &settings, with_identity).await;
    let (status, _) = server.get("/v1/trending").await;
    assert_eq!(status, 200);
    let anonymous = client(&admin_token(), Some(&cert)).build().expect("client");
    assert!(
        anonymous.get(server.url("/healthz")).send().await.is_err(),
        "a client without a certificate got through"
    );
}

/// Whether the WebSocket ends (closed, reset, or a close frame) within 15 s; messages before
/// that are skipped. The close code, when the server sent one.
async fn ends(rx: &mut WsRead) -> Option<Option<u16>> {
    let end = async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return None,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), end)
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_websocket_messages_are_refused_and_the_node_stays_up() {
    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;
    // A 20 MiB frame, and a 2 MiB message: both past server.max_body_bytes (1 MiB).
    for size in [20 << 20, 2 << 20] {
        for graphql in [false, true] {
            let socket = if graphql {
                tokio_tungstenite::connect_async(server.graphql_ws_request()).await
            } else {
                tokio_tungstenite::connect_async(server.ws_url("/v1/ws")).await
            };
            let (mut tx, mut rx) = socket.expect("upgrade").0.split();
            // The server may hang up mid-send: that is the point.
            let _ = tx.send(Message::Text("x".repeat(size).into())).await;
            assert!(
                ends(&mut rx).await.is_some(),
                "a {size}-byte message left the connection open (graphql: {graphql})"
            );
        }
    }
    assert_eq!(server.get("/healthz").await.0, 200);
    let (socket, _) = tokio_tungstenite::connect_async(server.ws_url("/v1/ws?user_id=u1"))
        .await
        .expect("a new connection");
    let (_, mut rx) = socket.split();
    assert_eq!(next_json(&mut rx).await["type"], "recommendations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_disconnected_after_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_guard, dir) = workdir();
    let settings = [("STREAMREC__SERVER__HEADER_READ_TIMEOUT", "1s".to_owned())];
    let server = Server::start_with(&dir, &dir.join("data"), &settings).await;
    let connect = || tokio::net::TcpStream::connect(server.addr);
    let mut silent = connect().await.expect("connect");
    let mut half = connect().await.expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nhost: streamrec\r\n")
        .await
        .expect("write");
    for (what, stream) in [("silent", &mut silent), ("half a header", &mut half)] {
        let mut buf = [0; 1024];
        let read = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf)).await;
        // Closed (0 bytes, or a reset), or at most an error response before closing.
        let closed = match read {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) => {
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut Vec::new()))
                    .await
                    .is_ok()
            }
            Err(_) => false,
        };
        assert!(closed, "a {what} connection was still open after 15 s");
    }
    assert_eq!(
        server.get("/healthz").await.0,
        200,
        "the node serves others"
    );
}

/// The HTTP status of an event-stream request with `token`, and the open response.
async fn event_stream(server: &Server, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(server.url("/v1/admin/stream"))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_hold_more_than_its_share_of_streams() {
    let (_guard, dir) = workdir();
    let settings = [
        ("STREAMREC__SERVER__MAX_STREAMS_PER_CALLER", "2".to_owned()),
        ("STREAMREC__SERVER__STREAM_INIT_TIMEOUT", "1s".to_owned()),
    ];
    let server = Server::start_with(&dir, &dir.join("data"), &settings).await;
    let (alice, bob, ops) = (
        token("alice", &["user"]),
        token("bob", &["user"]),
        token("ops", &["operator"]),
    );
    let ws = |user: &str, token: &str| {
        format!(
            "ws://{}/v1/ws?user_id={user}&access_token={token}",
            server.addr
        )
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        let (socket, _) = tokio_tungstenite::connect_async(ws("alice", &alice))
            .await
            .expect("within the cap");
        held.push(socket);
    }
    assert_eq!(ws_status(&ws("alice", &alice)).await, 429);
    assert_eq!(
        ws_status(&ws("bob", &bob)).await,
        101,
        "bob has his own share"
    );
    // The same share over gRPC and GraphQL WebSocket.
    let refused = grpc_client(&server, &alice)
        .await
        .watch_recommendations(pb::WatchRequest {
            user_id: "alice".into(),
            k: 3,
            category: None,
            diversity: None,
        })
        .await
        .map(drop)
        .expect_err("over the cap");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let (socket, _) = tokio_tungstenite::connect_async(server.graphql_ws_request())
        .await
        .expect("upgrade");
    let (mut tx, mut rx) = socket.split();
    let init =
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {alice}")}});
    tx.send(Message::Text(init.to_string().into()))
        .await
        .expect("send");
    assert_eq!(ends(&mut rx).await, Some(Some(4429)));
    // A place comes back when a stream closes.
    drop(held.pop());
    let back = wait_until(
        async || ws_status(&ws("alice", &alice)).await == 101,
        Duration::from_secs(10),
    )
    .await;
    assert!(back, "the place never came back");
    // The console's event stream counts too.
    let streams = [
        event_stream(&server, &ops).await,
        event_stream(&server, &ops).await,
    ];
    assert!(streams.iter().all(|s| s.status() == 200));
    assert_eq!(event_stream(&server, &ops).await.status(), 429);

    // A WebSocket that says nothing is closed after server.stream_init_timeout.
    let (socket, _) = tokio_tungstenite::connect_async(server.graphql_ws_request())
        .await
        .expect("upgrade");
    assert_eq!(ends(&mut socket.split().1).await, Some(Some(4408)));
    let (socket, _) = tokio_tungstenite::connect_async(ws("", &bob).replace("user_id=&", ""))
        .await
        .expect("upgrade");
    assert_eq!(ends(&mut socket.split().1).await, Some(Some(4408)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_when_their_token_expires() {
    let (_guard, dir) = workdir();
    let settings = [("STREAMREC__AUTH__LEEWAY", "0s".to_owned())];
    let server = Server::start_with(&dir, &dir.join("data"), &settings).await;
    let exp = now_secs() + 4;
    let alice = token_with(json!({"sub": "alice", "roles": ["user"], "exp": exp}));
    let ops = token_with(json!({"sub": "ops", "roles": ["operator"], "exp": exp}));
    let started = std::time::Instant::now();

    let (socket, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/ws?user_id=alice&access_token={alice}",
        server.addr
    ))
    .await
    .expect("upgrade");
    let (_ws_tx, mut ws) = socket.split();
    let (socket, _) = tokio_tungstenite::connect_async(server.graphql_ws_request())
        .await
        .expect("upgrade");
    let (mut tx, mut gql) = socket.split();
    let init =
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {alice}")}});
    tx.send(Message::Text(init.to_string().into()))
        .await
        .expect("send");
    let mut grpc = grpc_client(&server, &alice)
        .await
        .watch_recommendations(pb::WatchRequest {
            user_id: "alice".into(),
            k: 3,
            category: None,
            diversity: None,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut sse = event_stream(&server, &ops).await;
    assert_eq!(sse.status(), 200);

    assert_eq!(ends(&mut ws).await, Some(Some(4401)), "/v1/ws");
    assert_eq!(ends(&mut gql).await, Some(Some(4401)), "graphql-ws");
    let status = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match grpc.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await
    .expect("the gRPC stream ends");
    assert_eq!(status, Some(Code::Unauthenticated));
    tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(_)) = sse.chunk().await {}
    })
    .await
    .expect("the event stream ends");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before the token expired"
    );
}
