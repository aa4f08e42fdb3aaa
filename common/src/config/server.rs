//! `[server]` and `[server.tls]`: the listener, its limits and TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{InvalidValue, Lenient, string_choice};
use super::{ConfigError, invalid};

/// The HTTP server.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    #[serde(default = "listen")]
    pub listen: SocketAddr,
    /// Largest request body accepted; larger ones get 413. Default 1 MiB.
    #[serde(default = "max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most events in one `POST /v1/events`. Default 1000.
    #[serde(default = "max_batch_events")]
    pub max_batch_events: usize,
    /// Most operations in one batched `POST /graphql` (a JSON array of requests); each is costed
    /// and spends one unit of the caller's rate limit. Larger batches get 400. Default 10.
    #[serde(default = "graphql_max_batch")]
    pub graphql_max_batch: usize,
    /// Longest a request may take before it fails with 503. Default 10s.
    #[serde(default = "request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests before closing. Default 30s.
    #[serde(default = "shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Serve HTTP, WebSocket and gRPC over TLS. Default off.
    #[serde(default)]
    pub tls: TlsConfig,
    /// One budget from accept for the TLS handshake plus the first request head: past it, the
    /// connection is closed. Every later HTTP/1 request head must arrive within it too, and a
    /// connection (HTTP/1 keep-alive or HTTP/2) with no request in flight for this long is shut
    /// down gracefully (upgraded WebSockets are not affected). Default 10s.
    #[serde(default = "header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Most connections open at once (WebSockets included); past it, new connections wait in
    /// the listen backlog. Default 4096.
    #[serde(default = "max_connections")]
    pub max_connections: usize,
    /// Most connections one client may hold open at once (WebSockets included), counted by peer
    /// address (an IPv6 peer by its /64); past it, a new connection from that client is closed
    /// at once. Peers in `auth.trusted_proxies` are exempt. Default 256.
    #[serde(default = "max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Most long-lived streams (WebSocket, GraphQL WebSocket, gRPC `WatchRecommendations`, the
    /// console's event stream) one caller (token subject, or client address without a token)
    /// may hold open at once; past it, 429 `rate_limited` (WebSocket close code 4429 once
    /// upgraded). Default 16.
    #[serde(default = "max_streams_per_caller")]
    pub max_streams_per_caller: usize,
    /// How long a new WebSocket may stay silent before its first message: `connection_init` on
    /// GraphQL (closed with 4408, as graphql-transport-ws says), the first subscription on
    /// `/v1/ws` when the URL names no user. Default 10s.
    #[serde(default = "stream_init_timeout", with = "humantime_serde")]
    pub stream_init_timeout: Duration,
    /// How long `/readyz` reuses its dependency probes (database, cache, object store, broker)
    /// before probing again; concurrent callers share one probe. Default 2s.
    #[serde(default = "readyz_cache_ttl", with = "humantime_serde")]
    pub readyz_cache_ttl: Duration,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default of `server.graphql_max_batch`.
pub const DEFAULT_GRAPHQL_MAX_BATCH: usize = 10;

fn listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("valid default address")
}
fn max_body_bytes() -> usize {
    1 << 20
}
fn max_batch_events() -> usize {
    1000
}
fn graphql_max_batch() -> usize {
    DEFAULT_GRAPHQL_MAX_BATCH
}
fn request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn max_connections() -> usize {
    4096
}
fn max_connections_per_ip() -> usize {
    256
}
fn max_streams_per_caller() -> usize {
    16
}
fn stream_init_timeout() -> Duration {
    Duration::from_secs(10)
}
fn readyz_cache_ttl() -> Duration {
    Duration::from_secs(2)
}

impl Default for ServerConfig {
    fn default() -> Self {
        super::defaults()
    }
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.tls.validate()?;
        if self.max_connections == 0
            || self.max_connections_per_ip == 0
            || self.max_streams_per_caller == 0
        {
            return invalid(
                "server.max_connections, server.max_connections_per_ip and \
                 server.max_streams_per_caller must be at least 1",
            );
        }
        if self.header_read_timeout.is_zero() || self.stream_init_timeout.is_zero() {
            return invalid(
                "server.header_read_timeout and server.stream_init_timeout must be more than 0",
            );
        }
        if self.graphql_max_batch == 0 {
            return invalid("server.graphql_max_batch must be at least 1");
        }
        if self.max_batch_events == 0 {
            return invalid("server.max_batch_events and events.consume_batch must be at least 1");
        }
        Ok(())
    }
}

/// TLS for the listener (rustls). On when `cert` and `key` are set.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; re-read when the file changes.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key; re-read when the file changes.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Lowest protocol version accepted: `1.3` (default) or `1.2`.
    #[serde(default)]
    pub min_version: Option<TlsVersion>,
    /// PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS, for
    /// node-to-node traffic).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl TlsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cert.is_some() != self.key.is_some() {
            return invalid("server.tls.cert and server.tls.key must be set together");
        }
        Ok(())
    }
}

/// A TLS protocol version, written `"1.2"` or `"1.3"`. Derefs to that spelling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Lenient", into = "String")]
pub enum TlsVersion {
    V1_2,
    #[default]
    V1_3,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1_2 => "1.2",
            Self::V1_3 => "1.3",
        }
    }
}

impl std::ops::Deref for TlsVersion {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TlsVersion {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "1.2" => Ok(Self::V1_2),
            "1.3" => Ok(Self::V1_3),
            _ => Err(InvalidValue(
                "server.tls.min_version must be \"1.2\" or \"1.3\"".into(),
            )),
        }
    }
}

string_choice!(TlsVersion);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_limits_must_be_positive_and_tls_needs_cert_and_key() {
        assert!(ServerConfig::default().validate().is_ok());
        for bad in [
            |s: &mut ServerConfig| s.max_streams_per_caller = 0,
            |s: &mut ServerConfig| s.header_read_timeout = Duration::ZERO,
            |s: &mut ServerConfig| s.graphql_max_batch = 0,
            |s: &mut ServerConfig| s.tls.cert = Some("tls.crt".into()),
        ] {
            let mut server = ServerConfig::default();
            bad(&mut server);
            assert!(server.validate().is_err());
        }
        assert_eq!("1.2".parse(), Ok(TlsVersion::V1_2));
        assert!("1.1".parse::<TlsVersion>().is_err());
    }
}
