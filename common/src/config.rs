//! Node configuration: typed, documented, with a named default for every key.
//!
//! Layers, later wins: built-in defaults → a TOML file (`--config`) → environment variables
//! `STREAMREC__<SECTION>__<KEY>` (e.g. `STREAMREC__SESSIONS__IDLE_TIMEOUT=30s`) → command-line
//! flags. The result is validated once at start-up and passed down; there is no global.
//! Durations are written the human way: `"250ms"`, `"30s"`, `"6h"`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything a node needs to start.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where RocksDB, the embedded event log and local artifacts live. Default `./data`.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub events: EventsConfig,
    pub catalog: CatalogConfig,
    pub cache: CacheConfig,
    pub objects: ObjectsConfig,
    pub sessions: SessionsConfig,
    pub model: ModelConfig,
    pub trending: TrendingConfig,
    pub telemetry: TelemetryConfig,
    pub auth: AuthConfig,
    pub pii: PiiConfig,
}

/// A secret from configuration: never printed by `Debug` (configs are logged in places).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(#[serde(deserialize_with = "lenient_string")] pub String);

/// A string that an environment variable may have made look like a number or a boolean
/// (`STREAMREC__SERVER__TLS__MIN_VERSION=1.2` arrives as the float 1.2): taken as written.
fn lenient_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Str(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    Ok(match Raw::deserialize(deserializer)? {
        Raw::Str(s) => s,
        Raw::Int(i) => i.to_string(),
        Raw::Float(f) => f.to_string(),
        Raw::Bool(b) => b.to_string(),
    })
}

fn lenient_opt_string<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap(#[serde(deserialize_with = "lenient_string")] String);
    Ok(Option::<Wrap>::deserialize(deserializer)?.map(|w| w.0))
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Who may call the APIs: OAuth 2.0 bearer tokens (JWT) issued by an external provider.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require `Authorization: Bearer <JWT>` on every API but `/healthz` and `/readyz`.
    /// Default `true`; `streamrec demo` turns it off. Off, the node logs a warning at start.
    pub enabled: bool,
    /// Accept HS256 tokens signed with this shared secret (simple setups). Default none.
    pub hs256_secret: Option<Secret>,
    /// Accept RS256/ES256 tokens signed by a key of this JWKS (the provider's `jwks_uri`),
    /// fetched at start and every `jwks_refresh`, and again when a token names an unknown key.
    pub jwks_url: Option<String>,
    /// The same, from a JWKS file (re-read every `jwks_refresh`).
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`, when set. Default none.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub issuer: Option<String>,
    /// Required `aud`, when set. Default none.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`. Default 30s.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// How often keys are re-read. Default 10m.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// The claim holding the caller's roles (an array of strings, or a space-separated string
    /// like `scope`). Default `roles`.
    pub roles_claim: String,
    /// Require the `operator` role for `/metrics` too. Default `false` (scrapers stay simple).
    pub protect_metrics: bool,
    /// Requests per second each caller (token subject, or client address without a token) may
    /// make; beyond it, 429 with `Retry-After`. 0 turns the limit off. Default 200.
    pub rate_limit_per_second: f64,
    /// Requests a caller may make at once above that rate. Default 400.
    pub rate_limit_burst: u32,
    /// Proxies (IP addresses or CIDR blocks, e.g. `10.0.0.0/8`) whose `X-Forwarded-For` is
    /// believed: a request from one of them is keyed (rate limit, per-caller stream cap) by the
    /// right-most address in the header that is not itself a trusted proxy. From any other peer
    /// the header is ignored. Default none.
    pub trusted_proxies: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            hs256_secret: None,
            jwks_url: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            jwks_refresh: Duration::from_secs(600),
            roles_claim: "roles".into(),
            protect_metrics: false,
            rate_limit_per_second: 200.0,
            rate_limit_burst: 400,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Personal data at rest: profile fields encrypted with AES-256-GCM.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PiiConfig {
    /// Profile fields that are personal. Default `email`, `name`, `phone`, `address`, `notes`.
    pub fields: Vec<String>,
    /// Keys by id, each 32 bytes in base64 (`STREAMREC__PII__KEYS__<ID>=...`). The key id is
    /// stored with every ciphertext, so old keys keep decrypting after a rotation. When empty, a
    /// key is generated once into `data_dir/pii.key` (fine for one node, not for a cluster).
    pub keys: std::collections::BTreeMap<String, Secret>,
    /// The key new values are encrypted with. Default: the only key, or the last id in order.
    pub active_key: Option<String>,
}

impl Default for PiiConfig {
    fn default() -> Self {
        Self {
            fields: ["email", "name", "phone", "address", "notes"]
                .map(String::from)
                .to_vec(),
            keys: Default::default(),
            active_key: None,
        }
    }
}

/// The HTTP server.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Largest request body accepted; larger ones get 413. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Most events in one `POST /v1/events`. Default 1000.
    pub max_batch_events: usize,
    /// Most operations in one batched `POST /graphql` (a JSON array of requests); each is costed
    /// and spends one unit of the caller's rate limit. Larger batches get 400. Default 10.
    pub graphql_max_batch: usize,
    /// Longest a request may take before it fails with 503. Default 10s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests before closing. Default 30s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Serve HTTP, WebSocket and gRPC over TLS. Default off.
    pub tls: TlsConfig,
    /// One budget from accept for the TLS handshake plus the first request head: past it, the
    /// connection is closed. Every later HTTP/1 request head must arrive within it too, and a
    /// connection (HTTP/1 keep-alive or HTTP/2) with no request in flight for this long is shut
    /// down gracefully (upgraded WebSockets are not affected). Default 10s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Most connections open at once (WebSockets included); past it, new connections wait in
    /// the listen backlog. Default 4096.
    pub max_connections: usize,
    /// Most connections one client may hold open at once (WebSockets included), counted by peer
    /// address (an IPv6 peer by its /64); past it, a new connection from that client is closed
    /// at once. Peers in `auth.trusted_proxies` are exempt. Default 256.
    pub max_connections_per_ip: usize,
    /// Most long-lived streams (WebSocket, GraphQL WebSocket, gRPC `WatchRecommendations`, the
    /// console's event stream) one caller (token subject, or client address without a token)
    /// may hold open at once; past it, 429 `rate_limited` (WebSocket close code 4429 once
    /// upgraded). Default 16.
    pub max_streams_per_caller: usize,
    /// How long a new WebSocket may stay silent before its first message: `connection_init` on
    /// GraphQL (closed with 4408, as graphql-transport-ws says), the first subscription on
    /// `/v1/ws` when the URL names no user. Default 10s.
    #[serde(with = "humantime_serde")]
    pub stream_init_timeout: Duration,
    /// How long `/readyz` reuses its dependency probes (database, cache, object store, broker)
    /// before probing again; concurrent callers share one probe. Default 2s.
    #[serde(with = "humantime_serde")]
    pub readyz_cache_ttl: Duration,
}

/// TLS for the listener (rustls). On when `cert` and `key` are set.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; re-read when the file changes.
    pub cert: Option<PathBuf>,
    /// PEM private key; re-read when the file changes.
    pub key: Option<PathBuf>,
    /// Lowest protocol version accepted: `1.3` (default) or `1.2`.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub min_version: Option<String>,
    /// PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS, for
    /// node-to-node traffic).
    pub client_ca: Option<PathBuf>,
}

/// The event log that feeds sessions.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Where events come from: `embedded` (the node's own log under `data_dir/events`), or
    /// `kafka://host:port[,host:port...]` (topics `user-events`, `transaction-stream` and
    /// `product-updates`, consumed in a group; the node's log then journals what it consumed).
    /// Default `embedded`.
    pub url: String,
    /// Partitions of the log, and of the Kafka topics streamrec creates; a user always maps to
    /// one. Fixed once data exists. Default 12.
    pub num_partitions: u32,
    /// fsync every append before acknowledging it (group-committed). Default true.
    pub fsync: bool,
    /// Most records an ingest actor applies per batch (also the most Kafka messages the
    /// consumer takes per batch). Default 512.
    pub consume_batch: usize,
    /// Kafka consumer group of the nodes. Default `streamrec`.
    pub group: String,
    /// Prepended to every topic name (`<prefix>user-events`, ...), to share a cluster between
    /// deployments. Default empty.
    pub topic_prefix: String,
    /// Replication factor of the topics streamrec creates. Default 1 (use 3 on a real cluster).
    pub replication_factor: i32,
    /// Longest `POST /v1/events` waits for the broker's acknowledgement before answering 503.
    /// Default 5s.
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// Kafka consumer-group session timeout: how soon a dead node's partitions move. Default 10s.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Extra librdkafka client properties, e.g. `"security.protocol" = "SASL_SSL"`,
    /// `"sasl.mechanism"`, `"sasl.username"`, `"sasl.password"` for a managed cluster. Default none.
    pub kafka_options: std::collections::BTreeMap<String, String>,
}

/// The item catalog and user profiles.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// Which store: `embedded` (RocksDB in `data_dir`) or `postgres://user[:password]@host[:port]/db`.
    /// Default `embedded`.
    pub url: String,
    /// Most PostgreSQL connections in the pool. Default 8.
    pub max_connections: u32,
    /// Longest wait for a PostgreSQL connection before a write fails with 503. Default 2s.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

/// The recommendation cache.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Which cache: `memory` (in-process only) or `redis://[user:password@]host[:port]` (in-process
    /// L1 in front of Redis L2, invalidated across nodes). Default `memory`.
    pub url: String,
    /// Longest wait for Redis before a lookup counts as a miss. Default 100ms.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Most users with cached recommendations. Default 100000.
    pub max_users: u64,
    /// How long a cached entry lives if nothing invalidates it. Default 5m.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

/// Where model artifacts are kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectsConfig {
    /// Which store: `embedded` (files under `data_dir/objects`) or `s3://bucket[/prefix]`.
    /// Default `embedded`.
    pub url: String,
    /// Endpoint of an S3-compatible store (path-style addressing); unset for AWS S3. Default unset.
    pub endpoint: Option<String>,
    /// How often the event log is archived to the store; `0s` turns archiving off. Default 1h.
    #[serde(with = "humantime_serde")]
    pub archive_interval: Duration,
}

/// Per-user session actors.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// A session with no message for this long is written out and stopped. Default 5m.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most live sessions; past it the least recently used is passivated. Default 100000.
    pub max_live: usize,
    /// Recent interactions kept per user. Default 50.
    pub max_recent: usize,
}

/// Real-time activity windows.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrendingConfig {
    /// Length of one tumbling window. Default 5m.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Windows kept; older activity no longer counts. Default 12 (an hour of 5-minute windows).
    pub windows: usize,
    /// Lift given to trending items within the model's ranking: the top trending item gains
    /// this much (in standard deviations of the blended score), others in proportion to their
    /// trending score. `0` turns it off. Default 0.1.
    pub boost: f32,
}

impl Default for TrendingConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(300),
            windows: 12,
            boost: 0.1,
        }
    }
}

/// The recommendation model: training and serving.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Model actors serving inference in parallel. Default 2.
    pub num_workers: usize,
    /// ONNX Runtime intra-op threads per model actor. Default 1.
    pub intra_threads: usize,
    /// Latent factors per user and item. Default 32.
    pub dim: usize,
    /// ALS sweeps per training run. Default 12.
    pub iterations: usize,
    /// L2 regularisation of the factors. Default 0.1.
    pub regularization: f32,
    /// Confidence scale of implicit feedback (c = 1 + alpha * weight). Default 4.0.
    pub alpha: f32,
    /// Seed of the factor initialisation; the same data and seed give the same model. Default 42.
    pub seed: u64,
    /// Time between scheduled retrainings; `0s` turns the schedule off. Default 6h.
    #[serde(with = "humantime_serde")]
    pub retrain_interval: Duration,
    /// Path of `libonnxruntime.so`; found automatically when unset (see README). Default unset.
    pub onnxruntime_path: Option<PathBuf>,
    /// Weight of collaborative filtering in the hybrid score; the rest goes to sequential
    /// transitions (what tends to come next after the user's recent items). Default 0.5 (what
    /// `streamrec eval` chooses on MovieLens-100k validation splits).
    pub cf_weight: f32,
    /// How many later items count as successors of an item in the transition model. Default 50.
    pub transition_window: usize,
    /// Half-life, in interactions back from the latest, of a history item's weight in the
    /// transition score. Default 3.
    pub transition_half_life: f32,
    /// Successors kept per item in the transition table. The graph holds items × this many
    /// (row, weight) pairs, 8 bytes each: lower it for very large catalogues. Default 300.
    pub transition_top_k: usize,
    /// How far a new version's hold-out NDCG@10 may fall below the active version's before it is
    /// kept out (stored, not activated). Default 0.05 (5%).
    pub max_regression: f64,
    /// What training reads: `log` (this node's event log) or `archive` (the event archive in the
    /// object store, written by every node, plus this node's not yet archived tail). Default `log`.
    pub train_source: String,
}

/// Logs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `text` or `json`. Default `text`.
    pub log_format: String,
    /// A `tracing` filter such as `info` or `actors=debug,info`; `RUST_LOG` wins. Default `info,ort=warn`.
    pub log_level: String,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default of `server.graphql_max_batch`.
pub const DEFAULT_GRAPHQL_MAX_BATCH: usize = 10;
/// Default of `server.max_connections_per_ip`.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            max_body_bytes: 1 << 20,
            max_batch_events: 1000,
            graphql_max_batch: DEFAULT_GRAPHQL_MAX_BATCH,
            request_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            tls: TlsConfig::default(),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_streams_per_caller: 16,
            stream_init_timeout: Duration::from_secs(10),
            readyz_cache_ttl: Duration::from_secs(2),
        }
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            url: EMBEDDED.into(),
            num_partitions: 12,
            fsync: true,
            consume_batch: 512,
            group: "streamrec".into(),
            topic_prefix: String::new(),
            replication_factor: 1,
            produce_timeout: Duration::from_secs(5),
            session_timeout: Duration::from_secs(10),
            kafka_options: Default::default(),
        }
    }
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            url: EMBEDDED.into(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(2),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            url: "memory".into(),
            timeout: Duration::from_millis(100),
            max_users: 100_000,
            ttl: Duration::from_secs(300),
        }
    }
}

impl Default for ObjectsConfig {
    fn default() -> Self {
        Self {
            url: EMBEDDED.into(),
            endpoint: None,
            archive_interval: Duration::from_secs(3600),
        }
    }
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            max_live: 100_000,
            max_recent: 50,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            num_workers: 2,
            intra_threads: 1,
            dim: 32,
            iterations: 12,
            regularization: 0.1,
            alpha: 4.0,
            seed: 42,
            retrain_interval: Duration::from_secs(6 * 3600),
            onnxruntime_path: None,
            train_source: "log".into(),
            max_regression: 0.05,
            cf_weight: 0.5,
            transition_window: 50,
            transition_half_life: 3.0,
            transition_top_k: 300,
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: "text".into(),
            log_level: "info,ort=warn".into(),
        }
    }
}

/// The backend name of the built-in stores.
pub const EMBEDDED: &str = "embedded";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to load configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads defaults, then `file` if given, then `STREAMREC__*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        let config: Config = figment
            .merge(Env::prefixed("STREAMREC__").split("__"))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if !(1..=1024).contains(&self.events.num_partitions) {
            return invalid("events.num_partitions must be between 1 and 1024");
        }
        if self.model.num_workers == 0 || self.model.intra_threads == 0 {
            return invalid("model.num_workers and model.intra_threads must be at least 1");
        }
        if !(2..=512).contains(&self.model.dim) {
            return invalid("model.dim must be between 2 and 512");
        }
        if self.sessions.max_live == 0 || self.sessions.max_recent == 0 {
            return invalid("sessions.max_live and sessions.max_recent must be at least 1");
        }
        let tls = &self.server.tls;
        if tls.cert.is_some() != tls.key.is_some() {
            return invalid("server.tls.cert and server.tls.key must be set together");
        }
        if !matches!(tls.min_version.as_deref(), None | Some("1.2" | "1.3")) {
            return invalid("server.tls.min_version must be \"1.2\" or \"1.3\"");
        }
        if self.server.max_connections == 0 || self.server.max_streams_per_caller == 0 {
            return invalid(
                "server.max_connections and server.max_streams_per_caller must be at least 1",
            );
        }
        if self.server.header_read_timeout.is_zero() || self.server.stream_init_timeout.is_zero() {
            return invalid(
                "server.header_read_timeout and server.stream_init_timeout must be more than 0",
            );
        }
        let rate = self.auth.rate_limit_per_second;
        if rate.is_nan() || rate < 0.0 {
            return invalid("auth.rate_limit_per_second must be 0 (off) or more");
        }
        if self.server.graphql_max_batch == 0 {
            return invalid("server.graphql_max_batch must be at least 1");
        }
        if self.server.max_batch_events == 0 || self.events.consume_batch == 0 {
            return invalid("server.max_batch_events and events.consume_batch must be at least 1");
        }
        for (key, url, allowed) in [
            ("events.url", &self.events.url, &[EMBEDDED, "kafka://"][..]),
            (
                "catalog.url",
                &self.catalog.url,
                &[EMBEDDED, "postgres://", "postgresql://"][..],
            ),
            (
                "cache.url",
                &self.cache.url,
                &["memory", "redis://", "rediss://"][..],
            ),
            ("objects.url", &self.objects.url, &[EMBEDDED, "s3://"][..]),
        ] {
            if !allowed.iter().any(|a| {
                if a.ends_with("://") {
                    url.starts_with(a)
                } else {
                    url == a
                }
            }) {
                return Err(ConfigError::Invalid(format!(
                    "{key} = {url:?} is not supported; use one of {}",
                    allowed.join(", ")
                )));
            }
        }
        if self.events.url.starts_with("kafka://") {
            let brokers = self.events.url.trim_start_matches("kafka://");
            if brokers.split(',').any(|b| {
                b.rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            }) {
                return invalid("events.url must be kafka://host:port[,host:port...]");
            }
            if self.events.group.is_empty() || self.events.replication_factor < 1 {
                return invalid(
                    "events.group must not be empty and events.replication_factor must be at least 1",
                );
            }
        }
        if !(0.0..=1.0).contains(&self.model.cf_weight)
            || self.model.transition_window == 0
            || self.model.transition_top_k == 0
            || self.model.transition_half_life.is_nan()
            || self.model.transition_half_life <= 0.0
        {
            return invalid(
                "model.cf_weight must be in [0, 1], model.transition_window and model.transition_half_life above 0",
            );
        }
        if self.trending.window.is_zero() || self.trending.windows == 0 {
            return invalid("trending.window and trending.windows must be above 0");
        }
        if !(0.0..=10.0).contains(&self.trending.boost) {
            return invalid("trending.boost must be between 0 and 10");
        }
        if !(0.0..=1.0).contains(&self.model.max_regression) {
            return invalid("model.max_regression must be in [0, 1]");
        }
        if !matches!(self.model.train_source.as_str(), "log" | "archive") {
            return invalid("model.train_source must be `log` or `archive`");
        }
        if !matches!(self.telemetry.log_format.as_str(), "text" | "json") {
            return invalid("telemetry.log_format must be `text` or `json`");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../streamrec.example.toml");
        let text = std::fs::read_to_string(&path).expect("example file");
        let example: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(&text))
            .extract()
            .expect("every key in the example exists");
        let defaults = serde_json::to_value(Config::default()).expect("json");
        let example = serde_json::to_value(example).expect("json");
        // `data_dir` is empty in the defaults and becomes `data` at start-up, as the file says.
        assert_eq!(example["data_dir"], "data");
        for (section, value) in defaults.as_object().expect("object") {
            if section == "data_dir" {
                continue;
            }
            assert_eq!(
                &example[section], value,
                "[{section}] differs from the defaults"
            );
        }
    }

    #[test]
    fn secrets_never_print() {
        let mut config = Config::default();
        config.auth.hs256_secret = Some(Secret("hunter2-hunter2".into()));
        config
            .pii
            .keys
            .insert("k1".into(), Secret("c2VjcmV0".into()));
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2") && !printed.contains("c2VjcmV0"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's `Jail` fixes the closure's error type
    fn file_then_environment_override_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("streamrec.toml");
        std::fs::write(
            &file,
            "[sessions]\nidle_timeout = \"90s\"\nmax_recent = 7\n",
        )
        .expect("write");
        figment::Jail::expect_with(|jail| {
            jail.set_env("STREAMREC__SESSIONS__MAX_RECENT", "9");
            let config = Config::load(Some(&file)).expect("loads");
            assert_eq!(config.sessions.idle_timeout, Duration::from_secs(90));
            assert_eq!(config.sessions.max_recent, 9);
            assert_eq!(config.events.num_partitions, 12);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn strings_that_look_like_numbers_stay_strings() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("STREAMREC__SERVER__TLS__MIN_VERSION", "1.2");
            jail.set_env("STREAMREC__AUTH__HS256_SECRET", "987654321987654321");
            jail.set_env("STREAMREC__AUTH__AUDIENCE", "42");
            jail.set_env("STREAMREC__PII__KEYS__K1", "true");
            let config = Config::load(None).expect("loads");
            assert_eq!(config.server.tls.min_version.as_deref(), Some("1.2"));
            assert_eq!(
                config.auth.hs256_secret,
                Some(Secret("987654321987654321".into()))
            );
            assert_eq!(config.auth.audience.as_deref(), Some("42"));
            assert_eq!(config.pii.keys["k1"], Secret("true".into()));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[sessions]\nidle_timout = \"90s\"\n").expect("write");
        assert!(Config::load(Some(&file)).is_err());
        let mut config = Config::default();
        config.events.num_partitions = 0;
        assert!(config.validate().is_err());
    }

    #[test]
    fn kafka_urls_name_host_and_port_of_every_broker() {
        let with_url = |url: &str| {
            let mut config = Config::default();
            config.events.url = url.into();
            config.validate()
        };
        assert!(with_url("kafka://127.0.0.1:9092").is_ok());
        assert!(with_url("kafka://b1:9092,b2.example.com:9093").is_ok());
        for bad in [
            "kafka://",
            "kafka://host",
            "kafka://host:port",
            "kafka://:9092",
            "nats://x:1",
        ] {
            assert!(with_url(bad).is_err(), "{bad}");
        }
    }
}
