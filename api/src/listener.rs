//! The one listener, plain or TLS: HTTP/1.1 and HTTP/2 (ALPN, or h2c by prior knowledge for
//! gRPC) through hyper-util's auto builder, WebSocket upgrades included, and graceful shutdown.
//!
//! Not `axum::serve`: it runs hyper without a timer, so hyper's header-read timeout never fires,
//! and it has no connection cap; a client that opens connections and sends nothing, or half a
//! header, would hold them for ever. Here:
//! - at most `server.max_connections` connections are open at once (an upgraded WebSocket keeps
//!   its slot while it lives); past it, new connections wait in the listen backlog;
//! - a connection must complete its TLS handshake and deliver its first request within
//!   `server.header_read_timeout` (whatever the protocol: the auto builder's own protocol
//!   sniffing has no limit), and every later HTTP/1 request head too (hyper's
//!   `header_read_timeout`, which also closes idle keep-alive connections); HTTP/2 connections
//!   are pinged and closed when the peer stops answering.
//!
//! Every request carries the peer address as `ConnectInfo<SocketAddr>` (for rate-limit keys) and
//! its connection's [`ConnectionSlot`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use common::config::ServerConfig;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::tls::Reloader;

/// How often an HTTP/2 connection is pinged, and how long the answer may take.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What bounds the listener (from `server.*`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl From<&ServerConfig> for Limits {
    fn from(server: &ServerConfig) -> Self {
        Self {
            header_read_timeout: server.header_read_timeout,
            max_connections: server.max_connections,
        }
    }
}

/// A connection's place under `server.max_connections`, freed when the connection and every
/// request or stream holding a clone of it are gone.
#[derive(Clone)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// Serves `app` until `shutdown` resolves, then lets open connections finish; over TLS when
/// `tls` is given.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<Reloader>>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = Connection {
            app: app.clone(),
            builder: builder.clone(),
            peer,
            slot: ConnectionSlot(Arc::new(slot)),
            deadline: tokio::time::Instant::now() + limits.header_read_timeout,
            watcher: graceful.watcher(),
        };
        match &tls {
            None => {
                tokio::spawn(connection.serve(stream));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout_at(connection.deadline, handshake).await {
                        Ok(Ok(stream)) => connection.serve(stream).await,
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    graceful.shutdown().await;
    Ok(())
}

/// One accepted connection.
struct Connection {
    app: Router,
    builder: auto::Builder<TokioExecutor>,
    peer: SocketAddr,
    slot: ConnectionSlot,
    /// When the first request must have arrived.
    deadline: tokio::time::Instant,
    watcher: hyper_util::server::graceful::Watcher,
}

impl Connection {
    async fn serve<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            app,
            builder,
            peer,
            slot,
            deadline,
            watcher,
        } = self;
        let started = Arc::new(AtomicBool::new(false));
        let seen = started.clone();
        let service = app.map_request(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                seen.store(true, Ordering::Relaxed);
                request.extensions_mut().insert(ConnectInfo(peer));
                request.extensions_mut().insert(slot.clone());
                request.map(axum::body::Body::new)
            },
        );
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = watcher.watch(connection);
        // Until a first request arrives, nothing but this deadline bounds the connection.
        let first_request = async {
            tokio::time::sleep_until(deadline).await;
            if started.load(Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = connection => if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection closed with an error");
            },
            () = first_request => tracing::debug!(%peer, "no request within server.header_read_timeout"),
        }
    }
}
