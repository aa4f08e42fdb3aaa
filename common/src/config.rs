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
    /// Longest a request may take before it fails with 503. Default 10s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests before closing. Default 30s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
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

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            max_body_bytes: 1 << 20,
            max_batch_events: 1000,
            request_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
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
