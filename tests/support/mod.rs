//! What the end-to-end tests share: the real `streamrec` binary on a free port with a temp data
//! dir, an HTTP client for it, and the real servers `scripts/services.sh` starts. What every
//! crate's tests share (the test node's settings, polling, a fresh database) is in `testkit`.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
// Re-exported for the test binaries, each of which uses some of them.
#[allow(unused_imports)]
pub use testkit::{fresh_database, test_env, unique, wait_for, wait_until};

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// A client that sends the admin token (and trusts the test CA for TLS nodes).
    pub http: reqwest::Client,
    /// `http`, or `https` for a node serving TLS.
    pub scheme: &'static str,
}

/// A client sending `token`, optionally trusting `ca_pem`.
pub fn client(token: &str, ca_pem: Option<&str>) -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    let mut builder = reqwest::Client::builder().default_headers(headers);
    if let Some(ca) = ca_pem {
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("pem"));
    }
    builder
}

/// The HS256 secret test nodes accept tokens signed with.
pub const JWT_SECRET: &str = "streamrec-test-secret-0123456789abcdef";

/// A token signed with [`JWT_SECRET`], valid for an hour, for `sub` with `roles`.
pub fn token(sub: &str, roles: &[&str]) -> String {
    token_with(json!({ "sub": sub, "roles": roles, "exp": now_secs() + 3600 }))
}

/// A token with exactly these claims, signed with [`JWT_SECRET`].
pub fn token_with(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token")
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// What the tests act as unless they test access control: everything allowed.
pub fn admin_token() -> String {
    token("test-admin", &["admin"])
}

/// The binary under test, with settings that keep tests small and fast. It accepts tokens signed
/// with [`JWT_SECRET`]; `inspect` runs with an admin token.
pub fn streamrec() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_streamrec"));
    command
        .env("STREAMREC__AUTH__HS256_SECRET", JWT_SECRET)
        .env("STREAMREC__AUTH__RATE_LIMIT_PER_SECOND", "100000")
        .env("STREAMREC_TOKEN", admin_token())
        .envs(testkit::env());
    command
}

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

impl Server {
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, &dir.join("data"), &[]).await
    }

    /// Starts a node on `data` with extra `STREAMREC__*` settings.
    pub async fn start_with(dir: &Path, data: &Path, settings: &[(&str, String)]) -> Self {
        let http = client(&admin_token(), None).build().expect("client");
        Self::launch(dir, data, settings, http, "http").await
    }

    /// [`Server::start_with`] on `addr`, for a node whose settings must name its own address
    /// (`STREAMREC__CLUSTER__ADVERTISE`), or that restarts where it was.
    pub async fn start_at(
        dir: &Path,
        data: &Path,
        settings: &[(&str, String)],
        addr: SocketAddr,
    ) -> Self {
        let http = client(&admin_token(), None).build().expect("client");
        Self::launch_at(dir, data, settings, http, "http", addr).await
    }

    /// Starts a node serving TLS with `cert`/`key` files (PEM), for clients trusting `ca_pem`.
    pub async fn start_tls(dir: &Path, settings: &[(&str, String)], ca_pem: &str) -> Self {
        let http = client(&admin_token(), Some(ca_pem))
            .build()
            .expect("client");
        Self::start_tls_with(dir, settings, http).await
    }

    /// The same, with the HTTP client to use (one that presents a client certificate, say).
    pub async fn start_tls_with(
        dir: &Path,
        settings: &[(&str, String)],
        http: reqwest::Client,
    ) -> Self {
        Self::launch(dir, &dir.join("data"), settings, http, "https").await
    }

    async fn launch(
        dir: &Path,
        data: &Path,
        settings: &[(&str, String)],
        http: reqwest::Client,
        scheme: &'static str,
    ) -> Self {
        Self::launch_at(dir, data, settings, http, scheme, free_addr()).await
    }

    async fn launch_at(
        dir: &Path,
        data: &Path,
        settings: &[(&str, String)],
        http: reqwest::Client,
        scheme: &'static str,
        addr: SocketAddr,
    ) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))
            .expect("log file");
        let child = streamrec()
            .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["serve", "--data-dir"])
            .arg(data)
            .args(["--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("streamrec starts");
        let server = Self {
            child,
            addr,
            http,
            scheme,
        };
        let ready = async || {
            let probe = server.http.get(server.url("/readyz")).send().await;
            probe.is_ok_and(|r| r.status() == 200)
        };
        assert!(
            wait_until(ready, Duration::from_secs(60)).await,
            "node not ready; log:\n{}",
            std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
        );
        server
    }

    pub fn url(&self, path: &str) -> String {
        let host = if self.scheme == "https" {
            format!("localhost:{}", self.addr.port())
        } else {
            self.addr.to_string()
        };
        format!("{}://{host}{path}", self.scheme)
    }

    /// An upgrade request to `/graphql` asking for the graphql-transport-ws protocol (no
    /// token: it goes in `connection_init`).
    pub fn graphql_ws_request(&self) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{}/graphql", self.addr)
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().expect("header"),
        );
        request
    }

    /// A WebSocket URL carrying the admin token (`?access_token=`, as browsers must).
    pub fn ws_url(&self, path_and_query: &str) -> String {
        let sep = if path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "ws://{}{path_and_query}{sep}access_token={}",
            self.addr,
            admin_token()
        )
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post_events(&self, events: Vec<Value>) -> (u16, Value) {
        self.send(
            reqwest::Method::POST,
            "/v1/events",
            Some(json!({ "events": events })),
        )
        .await
    }

    /// Puts `ids` in the catalog (title only): only catalogued items are recommended.
    pub async fn catalog<S: AsRef<str>>(&self, ids: impl IntoIterator<Item = S>) {
        for id in ids {
            let id = id.as_ref();
            let (status, body) = self
                .send(
                    reqwest::Method::PUT,
                    &format!("/v1/items/{id}"),
                    Some(json!({"title": format!("Item {id}")})),
                )
                .await;
            assert_eq!(status, 200, "{id}: {body}");
        }
    }

    /// Starts a training run and waits for the new version to be active; returns it.
    /// Trains a version and waits until the run has ended, its version activated (or rejected)
    /// and swapped into every model actor; returns the active version.
    pub async fn train(&self) -> String {
        // A run already in progress (the start-up one, say) answers 409: wait for it.
        let mut refused = (0, Value::Null);
        let started = wait_until(
            async || {
                let (status, body) = self
                    .send(reqwest::Method::POST, "/v1/admin/train", None)
                    .await;
                assert!(matches!(status, 202 | 409), "{status} {body}");
                refused = (status, body);
                status == 202
            },
            Duration::from_secs(60),
        )
        .await;
        assert!(started, "{} {}", refused.0, refused.1);
        eventually(self, "/v1/admin/train", |s, b| {
            s == 200 && b["running"] == false
        })
        .await;
        let (_, models) = self.get("/v1/admin/models").await;
        models["active"]
            .as_str()
            .expect("an active version")
            .to_owned()
    }

    pub fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// Sends SIGTERM and returns whether the process exited successfully within `timeout`.
    pub fn terminate(mut self, timeout: Duration) -> bool {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `GET path` until `cond` holds on the answer; returns the body.
pub async fn eventually(server: &Server, path: &str, cond: impl Fn(u16, &Value) -> bool) -> Value {
    let mut last = (0, Value::Null);
    let held = wait_for(
        async || {
            let (status, body) = server.get(path).await;
            if cond(status, &body) {
                return Some(body);
            }
            last = (status, body);
            None
        },
        Duration::from_secs(20),
    )
    .await;
    held.unwrap_or_else(|| panic!("condition never held on {path}: {} {}", last.0, last.1))
}

/// The observable state of the first actor of `kind` in the node's tree (`GET
/// /v1/admin/actors`), or `Null`.
pub async fn actor_state(server: &Server, kind: &str) -> Value {
    fn find(v: &Value, kind: &str) -> Option<Value> {
        if v["kind"] == kind {
            return Some(v["state"].clone());
        }
        v["children"].as_array()?.iter().find_map(|c| find(c, kind))
    }
    let (_, tree) = server.get("/v1/admin/actors").await;
    find(&tree, kind).unwrap_or_default()
}

pub type WsRead = futures::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;

/// The next text message as JSON, failing the test after 15 s.
pub async fn next_json(rx: &mut WsRead) -> Value {
    let message = async {
        loop {
            match rx.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                    return serde_json::from_str::<Value>(&text).expect("json");
                }
                Some(Ok(_)) => continue,
                other => panic!("websocket ended: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), message)
        .await
        .expect("a push within 15 s")
}

pub fn click(id: &str, user: &str, item: &str) -> Value {
    json!({"event_id": id, "user_id": user, "item_id": item, "kind": "click"})
}

pub fn workdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    (dir, path)
}

/// Runs `scripts/services.sh ACTION SERVICE` with the service on its own `port`, so that a test
/// can stop and restart a server that no other test uses.
pub fn service(action: &str, service: &str, port: u16) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh");
    let var = match service {
        "postgres" => "STREAMREC_PG_PORT",
        "kafka" => "STREAMREC_KAFKA_PORT",
        "redis" => "STREAMREC_REDIS_PORT",
        other => panic!("no private instances of {other}"),
    };
    let status = Command::new("bash")
        .arg(script)
        .args([action, service])
        .env(var, port.to_string())
        .stdout(Stdio::null())
        .status()
        .expect("services.sh runs");
    assert!(status.success(), "services.sh {action} {service} failed");
}

/// A TCP proxy in front of a real server that a test can cut and restore: while cut, it drops
/// every open connection and refuses new ones, as a server that went away would.
pub struct Proxy {
    pub addr: SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns2.lock().expect("lock").push(task.abort_handle());
            }
        });
        Self {
            addr,
            up,
            conns,
            accept,
        }
    }

    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for conn in self.conns.lock().expect("lock").drain(..) {
            conn.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Adds a bearer token to every gRPC call.
#[derive(Clone)]
pub struct Bearer(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type GrpcClient = api::grpc::pb::recommender_client::RecommenderClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// A gRPC client of the node on its HTTP port, calling with `token`.
pub async fn grpc_client(server: &Server, token: &str) -> GrpcClient {
    let channel = tonic::transport::Channel::from_shared(server.url(""))
        .expect("uri")
        .connect()
        .await
        .expect("gRPC connects to the HTTP port");
    let bearer = format!("Bearer {token}").parse().expect("ascii token");
    api::grpc::pb::recommender_client::RecommenderClient::with_interceptor(channel, Bearer(bearer))
}
