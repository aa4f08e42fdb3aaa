//! The listener against slow and greedy clients, plain and TLS: a connection that does not
//! deliver a request's headers in time is closed, connections past the cap wait, one client's
//! past its own cap are closed, idle HTTP/2 connections are shut down, and every request carries
//! its peer address. A small router stands in for the node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use api::listener::Limits;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HEADER_TIMEOUT: Duration = Duration::from_millis(500);

fn limits(max_connections: usize) -> Limits {
    Limits {
        header_read_timeout: HEADER_TIMEOUT,
        max_connections,
        max_connections_per_ip: 64,
        trusted_proxies: Default::default(),
    }
}

/// A listener serving `/peer` (the address the request came from) and `/slow` (a body that
/// streams for three header timeouts); TLS with a localhost certificate when `tls`. Returns its
/// address and the client TLS config trusting it.
async fn start(
    tls: bool,
    max_connections: usize,
) -> (SocketAddr, Option<Arc<rustls::ClientConfig>>) {
    start_with(tls, limits(max_connections)).await
}

async fn start_with(tls: bool, limits: Limits) -> (SocketAddr, Option<Arc<rustls::ClientConfig>>) {
    let app = Router::new()
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .route(
            "/slow",
            get(|| async {
                let chunks = futures::stream::iter(0..3).then(|i| async move {
                    tokio::time::sleep(HEADER_TIMEOUT).await;
                    Ok::<_, std::convert::Infallible>(format!("chunk {i}\n"))
                });
                axum::body::Body::from_stream(chunks)
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (reloader, client) = if tls {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).expect("write");
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write");
        let settings = common::config::TlsConfig {
            cert: Some(cert_path),
            key: Some(key_path),
            ..Default::default()
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).expect("root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (
            Some(api::tls::Reloader::new(&settings).expect("tls")),
            Some(Arc::new(client)),
        )
    } else {
        (None, None)
    };
    tokio::spawn(api::listener::serve(
        listener,
        app,
        reloader,
        limits,
        std::future::pending(),
    ));
    (addr, client)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(addr: SocketAddr, tls: &Option<Arc<rustls::ClientConfig>>) -> Box<dyn Io> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    match tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let stream = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .expect("handshake");
            Box::new(stream)
        }
    }
}

/// Reads until the server closes; how long that took, or `None` if it stayed open for `wait`.
async fn closed_within(io: &mut Box<dyn Io>, wait: Duration) -> Option<Duration> {
    let started = tokio::time::Instant::now();
    let mut buf = vec![0; 4096];
    tokio::time::timeout(wait, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => continue,
            }
        }
    })
    .await
    .ok()
}

async fn get_peer(io: &mut Box<dyn Io>) -> String {
    io.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    io.read_to_string(&mut response).await.expect("read");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_disconnected_after_the_header_read_timeout() {
    for tls in [false, true] {
        let (addr, client) = start(tls, 64).await;
        // Connected, and silent (after the handshake, for TLS).
        let mut silent = connect(addr, &client).await;
        // Half a request head, then nothing.
        let mut half = connect(addr, &client).await;
        half.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n")
            .await
            .expect("write");
        // Half the HTTP/2 preface: the protocol cannot even be told yet.
        let mut preface = connect(addr, &client).await;
        preface
            .write_all(b"PRI * HTTP/2.0\r\n")
            .await
            .expect("write");
        for (what, io) in [
            ("silent", &mut silent),
            ("half a header", &mut half),
            ("half a preface", &mut preface),
        ] {
            let took = closed_within(io, HEADER_TIMEOUT * 8).await;
            assert!(took.is_some(), "tls={tls}: a {what} connection stayed open");
        }
        if tls {
            // Not even a handshake.
            let mut raw: Box<dyn Io> = Box::new(TcpStream::connect(addr).await.expect("tcp"));
            assert!(closed_within(&mut raw, HEADER_TIMEOUT * 8).await.is_some());
        }
        // A prompt client is served, with its address.
        let mut prompt = connect(addr, &client).await;
        let response = get_peer(&mut prompt).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("127.0.0.1:"), "{response}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    for tls in [false, true] {
        let (addr, client) = start(tls, 2).await;
        let mut held = vec![connect(addr, &None).await, connect(addr, &None).await];
        // Both slots taken: a third connection is not served meanwhile.
        let mut third = tokio::spawn({
            let client = client.clone();
            async move {
                let mut io = connect(addr, &client).await;
                get_peer(&mut io).await
            }
        });
        let early = tokio::time::timeout(HEADER_TIMEOUT / 5, &mut third).await;
        assert!(early.is_err(), "tls={tls}: served past the cap");
        // A slot frees up (here: the holder leaves); the waiting client is served.
        held.pop();
        let response = tokio::time::timeout(Duration::from_secs(10), third)
            .await
            .expect("served once a slot is free")
            .expect("task");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
}

/// Sends a request and reads until the server closes: the response, or what came before the
/// connection was closed (nothing, for a connection refused at accept).
async fn try_get_peer(io: &mut TcpStream) -> String {
    let request = b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    if io.write_all(request).await.is_err() {
        return String::new();
    }
    let mut response = Vec::new();
    let _ = io.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

async fn connect_from(local: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{local}:0").parse().expect("addr"))
        .expect("bind");
    socket.connect(addr).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hold_every_connection_slot() {
    let (addr, _) = start_with(
        false,
        Limits {
            max_connections_per_ip: 2,
            ..limits(8)
        },
    )
    .await;
    let _held = [
        connect_from("127.0.0.1", addr).await,
        connect_from("127.0.0.1", addr).await,
    ];
    // Past its cap, the client's next connection is closed without being served...
    let mut third = connect_from("127.0.0.1", addr).await;
    let response = tokio::time::timeout(Duration::from_secs(10), try_get_peer(&mut third))
        .await
        .expect("closed at once");
    assert_eq!(response, "", "served past the per-client cap");
    // ...while another client still is.
    let mut other = connect_from("127.0.0.2", addr).await;
    let response = try_get_peer(&mut other).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // Trusted proxies speak for many clients: not capped.
    let (addr, _) = start_with(
        false,
        Limits {
            max_connections_per_ip: 1,
            trusted_proxies: api::listener::TrustedProxies::parse(&["127.0.0.1".into()])
                .expect("proxies"),
            ..limits(8)
        },
    )
    .await;
    let _held = connect_from("127.0.0.1", addr).await;
    let mut proxied = connect_from("127.0.0.1", addr).await;
    let response = try_get_peer(&mut proxied).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_after_the_header_read_timeout() {
    let (addr, _) = start(false, 8).await;
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c handshake");
    let connection = tokio::spawn(connection);
    let get = |path: &str| {
        axum::http::Request::get(format!("http://{addr}{path}"))
            .body(axum::body::Body::empty())
            .expect("request")
    };
    // A response that streams for longer than the timeout keeps the connection busy: a new
    // request on it is still served meanwhile.
    let slow = sender.send_request(get("/slow")).await.expect("slow");
    let slow = tokio::spawn(axum::body::to_bytes(
        axum::body::Body::new(slow.into_body()),
        usize::MAX,
    ));
    tokio::time::sleep(HEADER_TIMEOUT * 2).await;
    let response = sender
        .send_request(get("/peer"))
        .await
        .expect("served while busy");
    assert_eq!(response.status(), 200);
    let body = slow
        .await
        .expect("task")
        .expect("the slow body is complete");
    assert_eq!(body.as_ref(), b"chunk 0\nchunk 1\nchunk 2\n");
    // Then nothing in flight: the server closes the connection.
    let closed = tokio::time::timeout(HEADER_TIMEOUT * 8, connection).await;
    assert!(closed.is_ok(), "an idle HTTP/2 connection stayed open");
}
