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
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if renewed
            .get(server.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new certificate not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    // Let the archiver copy the events out before the erasure.
    tokio::time::sleep(Duration::from_secs(2)).await;
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
