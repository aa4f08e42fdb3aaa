//! The WebSocket endpoints over a real socket (the listener serving the router): stream places
//! of tokenless GraphQL connections, the rate limit of `/v1/ws` operations, and the close frames
//! and pings of graphql-transport-ws.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::Config;
use common::config::Secret;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use supervisors::Node;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &str = "websocket-test-secret-0123456789abcdef";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A node configured by `configure`, served on a free port.
async fn serve(configure: impl FnOnce(&mut Config)) -> (SocketAddr, Arc<Node>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = testkit::tiny_config(dir.path());
    config.auth.hs256_secret = Some(Secret(SECRET.into()));
    configure(&mut config);
    let limits = api::listener::Limits::try_from(&config).expect("limits");
    let node = Node::start(config).await.expect("node");
    let router = api::router(node.clone()).expect("router");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(api::listener::serve(
        listener,
        router,
        None,
        limits,
        std::future::pending(),
    ));
    (addr, node, dir)
}

fn token(sub: &str, roles: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": sub, "roles": roles, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

/// Opens a WebSocket (graphql-transport-ws on `/graphql`), or the HTTP status that refused it.
async fn connect(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<Ws, u16> {
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    if path == "/graphql" {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().expect("header"),
        );
    }
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(error) => panic!("handshake failed: {error}"),
    }
}

async fn send(ws: &mut Ws, message: Value) {
    ws.send(Message::Text(message.to_string().into()))
        .await
        .expect("send");
}

/// The next text message, parsed; or how the connection ended (`{"closed": code, "reason"}`).
async fn next(ws: &mut Ws) -> Value {
    let message = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).expect("json");
                }
                Some(Ok(Message::Close(frame))) => {
                    return json!({
                        "closed": frame.as_ref().map(|f| u16::from(f.code)),
                        "reason": frame.map(|f| f.reason.to_string()),
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => return json!({ "error": error.to_string() }),
                None => return json!({ "closed": null }),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), message)
        .await
        .expect("a message within 15 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokenless_graphql_websocket_holds_a_stream_place_before_connection_init() {
    let (addr, _node, _dir) = serve(|config| config.server.max_streams_per_caller = 1).await;
    // Tokenless, the connection takes its address's place at the upgrade...
    let mut first = connect(addr, "/graphql", None).await.expect("upgraded");
    assert_eq!(
        connect(addr, "/graphql", None).await.err(),
        Some(429),
        "a second tokenless connection from the same address got in"
    );
    // ...and moves it to its subject at `connection_init`.
    let bearer = format!("Bearer {}", token("alice", &["user"]));
    send(
        &mut first,
        json!({"type": "connection_init", "payload": {"Authorization": bearer}}),
    )
    .await;
    assert_eq!(next(&mut first).await["type"], "connection_ack");
    let second = connect(addr, "/graphql", None).await;
    assert!(second.is_ok(), "the address's place was not given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_ws_subscriptions_spend_the_callers_rate_limit() {
    let (addr, _node, _dir) = serve(|config| {
        config.auth.rate_limit_per_second = 0.001;
        config.auth.rate_limit_burst = 3;
    })
    .await;
    let token = token("svc", &["service"]);
    // The upgrade spends one unit, each subscription one more.
    let mut ws = connect(addr, "/v1/ws", Some(&token))
        .await
        .expect("upgraded");
    for user in ["u1", "u2"] {
        send(&mut ws, json!({"type": "subscribe", "user_id": user})).await;
        assert_eq!(next(&mut ws).await["type"], "subscribed");
        assert_eq!(next(&mut ws).await["type"], "recommendations");
    }
    send(&mut ws, json!({"type": "subscribe", "user_id": "u3"})).await;
    let refused = next(&mut ws).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["error"]["code"], "rate_limited", "{refused}");
    // The connection stays open.
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next(&mut ws).await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_ws_subscribe_takes_a_diversity() {
    let (addr, node, _dir) = serve(|_| {}).await;
    // Four alpha items everyone is clicking now, one beta item a single user is.
    for (id, category) in [
        ("a0", "alpha"),
        ("a1", "alpha"),
        ("a2", "alpha"),
        ("a3", "alpha"),
        ("b0", "beta"),
    ] {
        node.upsert_item(common::Item {
            item_id: id.into(),
            title: format!("Item {id}"),
            categories: vec![category.into()],
            tags: vec![],
            attributes: Default::default(),
            available: true,
            updated_at: 0,
        })
        .await
        .expect("upsert");
    }
    let now = common::now_millis();
    let click = |user: String, item: String| common::Event {
        event_id: format!("{user}-{item}"),
        user_id: user,
        item_id: item,
        kind: common::EventKind::Click,
        value: None,
        ts: now,
    };
    let mut events: Vec<common::Event> = (0..4)
        .flat_map(|u| (0..4).map(move |i| (format!("t{u}"), format!("a{i}"))))
        .map(|(u, i)| click(u, i))
        .collect();
    events.push(click("t4".into(), "b0".into()));
    node.post_events(events).await.expect("events");
    assert!(node.wait_caught_up(Duration::from_secs(10)).await);

    let token = token("svc", &["service"]);
    let mut ws = connect(addr, "/v1/ws", Some(&token))
        .await
        .expect("upgraded");
    let ids = |recs: &Value| -> Vec<String> {
        recs["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["item_id"].as_str().map(str::to_owned))
            .collect()
    };
    let mut subscribe = async |user: &str, diversity: Value| {
        send(
            &mut ws,
            json!({"type": "subscribe", "user_id": user, "k": 3, "diversity": diversity}),
        )
        .await;
        let first = next(&mut ws).await;
        if first["type"] != "subscribed" {
            return first;
        }
        next(&mut ws).await
    };
    let diverse = subscribe("newcomer", json!(0.7)).await;
    assert_eq!(diverse["type"], "recommendations", "{diverse}");
    assert_eq!(ids(&diverse).len(), 3, "{diverse}");
    assert_eq!(ids(&diverse)[1], "b0", "{diverse}");
    let plain = subscribe("other", Value::Null).await;
    assert!(ids(&plain).iter().all(|id| id.starts_with('a')), "{plain}");
    for bad in [json!(1.5), json!(-1), json!("lots")] {
        let refused = subscribe("newcomer", bad).await;
        assert_eq!(refused["type"], "error", "{refused}");
        assert_eq!(refused["error"]["code"], "invalid_argument", "{refused}");
    }
    // The URL form: a bad diversity is refused at the upgrade.
    let refused = connect(addr, "/v1/ws?user_id=newcomer&diversity=2", Some(&token)).await;
    assert_eq!(refused.err(), Some(400));
    let mut ws = connect(
        addr,
        "/v1/ws?user_id=newcomer&k=3&diversity=0.7",
        Some(&token),
    )
    .await
    .expect("upgraded");
    let first = next(&mut ws).await;
    assert_eq!(ids(&first), ids(&diverse), "{first}");
}

/// The close code and reason of the connection, past any other message (juniper's pongs).
async fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        let message = next(ws).await;
        if message.get("closed").is_some() || message.get("error").is_some() {
            let code = message["closed"]
                .as_u64()
                .unwrap_or_else(|| panic!("{message}"));
            let reason = message["reason"].as_str().unwrap_or_default().to_owned();
            return (code as u16, reason);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_ws_close_reasons_fit_in_a_close_frame_and_never_echo_the_client() {
    let (addr, _node, _dir) = serve(|_| {}).await;
    let echo = "x".repeat(300);
    // A malformed first frame (serde's message would quote the payload).
    let mut ws = connect(addr, "/graphql", None).await.expect("upgraded");
    send(&mut ws, json!({"type": "connection_init", "payload": echo})).await;
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, 4400);
    assert!(reason.len() <= 123 && !reason.contains("xxx"), "{reason}");
    // A malformed frame once admitted (juniper closes with what it was told).
    let bearer = format!("Bearer {}", token("alice", &["user"]));
    let init = json!({"type": "connection_init", "payload": {"Authorization": bearer}});
    let mut ws = connect(addr, "/graphql", None).await.expect("upgraded");
    send(&mut ws, init.clone()).await;
    assert_eq!(next(&mut ws).await["type"], "connection_ack");
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "1", "payload": echo}),
    )
    .await;
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, 4400);
    assert!(reason.len() <= 123 && !reason.contains("xxx"), "{reason}");
    // A reason of juniper's that names the client's operation id is cut to fit.
    let mut ws = connect(addr, "/graphql", None).await.expect("upgraded");
    send(&mut ws, init).await;
    assert_eq!(next(&mut ws).await["type"], "connection_ack");
    let subscribe = json!({"type": "subscribe", "id": echo, "payload": {
        "query": "subscription { recommendationsUpdated(userId: \"alice\") { userId } }"
    }});
    send(&mut ws, subscribe.clone()).await;
    send(&mut ws, subscribe).await;
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, 4409, "{reason}");
    assert_eq!(reason.len(), 123, "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graphql_ws_ping_before_connection_init_gets_a_pong() {
    let (addr, _node, _dir) = serve(|_| {}).await;
    let mut ws = connect(addr, "/graphql", None).await.expect("upgraded");
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next(&mut ws).await["type"], "pong");
    send(&mut ws, json!({"type": "pong"})).await;
    let bearer = format!("Bearer {}", token("alice", &["user"]));
    send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"Authorization": bearer}}),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "connection_ack");
}
