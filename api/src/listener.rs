//! The one listener, plain or TLS: HTTP/1.1 and HTTP/2 (ALPN, or h2c by prior knowledge for
//! gRPC) through hyper-util's auto builder, WebSocket upgrades included, and graceful shutdown.
//!
//! Not `axum::serve`: it runs hyper without a timer, so hyper's header-read timeout never fires,
//! and it has no connection cap; a client that opens connections and sends nothing, or half a
//! header, or keeps them idle, would hold them for ever. Here slow and greedy clients cannot
//! hold the node's connections:
//! - at most `server.max_connections` connections are open at once (an upgraded WebSocket keeps
//!   its slot while it lives); past it, new connections wait in the listen backlog;
//! - at most `server.max_connections_per_ip` of them come from one client (its address, an IPv6
//!   one by its /64; `auth.trusted_proxies` exempt); past it, a new connection from that client
//!   is closed at once, so one client cannot take every slot;
//! - a connection gets one budget of `server.header_read_timeout` from accept for its TLS
//!   handshake and its first request head (whatever the protocol: the auto builder's own
//!   protocol sniffing has no limit); every later HTTP/1 request head has the same limit
//!   (hyper's `header_read_timeout`, which also closes idle keep-alive connections);
//! - a connection (HTTP/2 in particular, whose streams hyper does not time) with no request in
//!   flight for `server.header_read_timeout` is shut down gracefully; a response still streaming
//!   counts as in flight, and an upgraded WebSocket has left the connection and lives on.
//!   HTTP/2 connections are also pinged and closed when the peer stops answering.
//!
//! Every request carries the peer address as `ConnectInfo<SocketAddr>` (for rate-limit keys) and
//! its connection's [`ConnectionSlot`]; over TLS with `server.tls.client_ca`, also
//! [`ClientCertified`] (mutual TLS: how nodes authenticate each other).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use common::Config;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt;

pub use crate::client::{BadProxy, TrustedProxies};
use crate::tls::Reloader;

/// How often an HTTP/2 connection is pinged, and how long the answer may take.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What bounds the listener (from `server.*`, and `auth.trusted_proxies` for the exemption).
#[derive(Clone, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Peers exempt from `max_connections_per_ip` (the proxies many clients come through).
    pub trusted_proxies: TrustedProxies,
}

impl TryFrom<&Config> for Limits {
    type Error = BadProxy;

    fn try_from(config: &Config) -> Result<Self, BadProxy> {
        Ok(Self {
            header_read_timeout: config.server.header_read_timeout,
            max_connections: config.server.max_connections,
            max_connections_per_ip: config.server.max_connections_per_ip,
            trusted_proxies: TrustedProxies::parse(&config.auth.trusted_proxies)?,
        })
    }
}

/// A connection's place under `server.max_connections` (and its client's under
/// `server.max_connections_per_ip`), freed when the connection and every request or stream
/// holding a clone of it are gone.
#[derive(Clone)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<(OwnedSemaphorePermit, Option<PeerPlace>)>);

/// On a request whose connection presented a client certificate that `server.tls.client_ca`
/// verified during the handshake (the TLS config refuses any other).
#[derive(Clone, Copy, Debug)]
pub struct ClientCertified;

/// Open connections per client network.
#[derive(Default)]
struct Peers(Mutex<HashMap<IpAddr, usize>>);

/// One connection of a client, counted until dropped.
struct PeerPlace {
    peers: Arc<Peers>,
    network: IpAddr,
}

impl Peers {
    /// A place for one more connection of `network`, unless it holds `max` already.
    fn enter(self: &Arc<Self>, network: IpAddr, max: usize) -> Option<PeerPlace> {
        let mut open = self.0.lock();
        let count = open.entry(network).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PeerPlace {
            peers: self.clone(),
            network,
        })
    }
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut open = self.peers.0.lock();
        if let Some(count) = open.get_mut(&self.network) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.network);
            }
        }
    }
}

/// Serves `app` until `shutdown` resolves, then lets open connections finish; over TLS when
/// `tls` is given.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<Reloader>>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    // Connections watch `stop`; shutdown waits until every one has dropped its receiver.
    let (stop, _) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let peers = Arc::new(Peers::default());
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
        let place = if limits.trusted_proxies.contains(peer.ip()) {
            None
        } else {
            let network = crate::client::network(peer.ip());
            match peers.enter(network, limits.max_connections_per_ip) {
                Some(place) => Some(place),
                None => {
                    tracing::debug!(%peer, "over server.max_connections_per_ip; closed");
                    continue;
                }
            }
        };
        let mut connection = Connection {
            app: app.clone(),
            builder: builder.clone(),
            peer,
            certified: false,
            slot: ConnectionSlot(Arc::new((slot, place))),
            deadline: tokio::time::Instant::now() + limits.header_read_timeout,
            idle_timeout: limits.header_read_timeout,
            stop: stop.subscribe(),
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
                        Ok(Ok(stream)) => {
                            connection.certified = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .is_some_and(|chain| !chain.is_empty());
                            connection.serve(stream).await
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    stop.send_replace(true);
    stop.closed().await;
    Ok(())
}

/// One accepted connection.
struct Connection {
    app: Router,
    builder: auto::Builder<TokioExecutor>,
    peer: SocketAddr,
    /// The peer presented a verified client certificate.
    certified: bool,
    slot: ConnectionSlot,
    /// When the first request must have arrived.
    deadline: tokio::time::Instant,
    /// How long the connection may go without a request in flight.
    idle_timeout: Duration,
    /// Becomes true when the server shuts down.
    stop: watch::Receiver<bool>,
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
            certified,
            slot,
            deadline,
            idle_timeout,
            mut stop,
        } = self;
        let started = Arc::new(AtomicBool::new(false));
        let (in_flight, mut activity) = watch::channel(0usize);
        let in_flight = Arc::new(in_flight);
        let seen = started.clone();
        let service = tower::service_fn(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                seen.store(true, Ordering::Relaxed);
                let guard = InFlight::new(in_flight.clone());
                request.extensions_mut().insert(ConnectInfo(peer));
                request.extensions_mut().insert(slot.clone());
                if certified {
                    request.extensions_mut().insert(ClientCertified);
                }
                let app = app.clone();
                async move {
                    let response = app.oneshot(request.map(Body::new)).await?;
                    Ok::<_, Infallible>(response.map(|body| {
                        Body::new(Tracked {
                            body,
                            _guard: guard,
                        })
                    }))
                }
            },
        );
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        tokio::pin!(connection);
        // Until a first request arrives, nothing but this deadline bounds the connection.
        let first_request = async {
            tokio::time::sleep_until(deadline).await;
            if started.load(Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
        };
        let idle = idle(&mut activity, idle_timeout);
        tokio::pin!(first_request, idle);
        let mut closing = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection closed with an error");
                    }
                    return;
                }
                () = &mut first_request => {
                    tracing::debug!(%peer, "no request within server.header_read_timeout");
                    return;
                }
                _ = stop.wait_for(|stop| *stop), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = &mut idle, if !closing => {
                    tracing::debug!(%peer, "no request in flight for server.header_read_timeout");
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Resolves once no request has been in flight for `timeout`.
async fn idle(activity: &mut watch::Receiver<usize>, timeout: Duration) {
    loop {
        let busy = *activity.borrow_and_update() > 0;
        let changed = activity.changed();
        let ended = if busy {
            changed.await.is_err()
        } else {
            match tokio::time::timeout(timeout, changed).await {
                Err(_) => return,
                Ok(result) => result.is_err(),
            }
        };
        if ended {
            // The connection's service is gone: nothing more will start.
            return std::future::pending().await;
        }
    }
}

/// One request of a connection, from its head until its response body is done (or dropped).
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn new(count: Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A response body that keeps its request counted as in flight while it streams.
struct Tracked {
    body: Body,
    _guard: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
