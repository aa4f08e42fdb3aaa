//! Node configuration: typed, documented, with a named default beside every key.
//!
//! Layers, later wins: built-in defaults → a TOML file (`--config`) → environment variables
//! `STREAMREC__<SECTION>__<KEY>` (e.g. `STREAMREC__SESSIONS__IDLE_TIMEOUT=30s`) → command-line
//! flags. The result is validated once at start-up and passed down; there is no global.
//! Durations are written the human way: `"250ms"`, `"30s"`, `"6h"`.
//!
//! One file per section. A section's `Default` is what serde fills in for an empty section, so
//! each default is written once, in a named function beside its field. Choices are enums, and
//! backend URLs are parsed into typed values when the file is read: `storage::backends` and
//! `kafka` match on those and never look at a URL scheme again.

mod auth;
mod cache;
mod catalog;
mod cluster;
mod events;
mod model;
mod objects;
mod pii;
mod server;
mod sessions;
mod supervision;
mod telemetry;
mod trending;
mod values;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use auth::AuthConfig;
pub use cache::{CacheBackend, CacheConfig};
pub use catalog::{CatalogBackend, CatalogConfig};
pub use cluster::ClusterConfig;
pub use events::{EventsBackend, EventsConfig};
pub use model::{ModelConfig, TrainSource};
pub use objects::{ObjectsBackend, ObjectsConfig};
pub use pii::PiiConfig;
pub use server::{DEFAULT_GRAPHQL_MAX_BATCH, DEFAULT_LISTEN, ServerConfig, TlsConfig, TlsVersion};
pub use sessions::SessionsConfig;
pub use supervision::{StuckLimits, SupervisionConfig};
pub use telemetry::{LogFormat, OtlpProtocol, TelemetryConfig};
pub use trending::{DEFAULT_MAX_USER_WEIGHT, TrendingConfig};
pub use values::{InvalidValue, Secret};

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
    pub supervision: SupervisionConfig,
    pub model: ModelConfig,
    pub trending: TrendingConfig,
    pub telemetry: TelemetryConfig,
    pub auth: AuthConfig,
    pub pii: PiiConfig,
    pub cluster: ClusterConfig,
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

impl From<InvalidValue> for ConfigError {
    fn from(value: InvalidValue) -> Self {
        Self::Invalid(value.0)
    }
}

fn invalid(message: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid(message.to_owned()))
}

/// A section as serde fills it in from nothing: every field's named default.
fn defaults<T: DeserializeOwned>() -> T {
    let empty = serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(
        std::iter::empty::<(&str, &str)>(),
    );
    T::deserialize(empty).expect("every field of a config section has a default")
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
            .map_err(|e| match e.kind {
                // A choice or a URL that its section refused: its message names the key.
                figment::error::Kind::Message(ref m)
                    if !e.path.is_empty() && m.starts_with(&e.path.join(".")) =>
                {
                    ConfigError::Invalid(m.clone())
                }
                _ => ConfigError::Load(Box::new(e)),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types cannot express, section by section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.events.validate()?;
        self.catalog.validate()?;
        self.cache.validate()?;
        self.objects.validate()?;
        self.sessions.validate()?;
        self.supervision.validate()?;
        self.model.validate()?;
        self.trending.validate()?;
        self.telemetry.validate()?;
        self.auth.validate()?;
        self.pii.validate()?;
        self.cluster.validate()?;
        let kafka = matches!(self.events.url, EventsBackend::Kafka { .. });
        if kafka && self.cluster.secret.is_none() && self.server.tls.client_ca.is_none() {
            return invalid(
                "with events.url = kafka://... nodes forward requests to each other: set \
                 cluster.secret (or server.tls.client_ca for mutual TLS)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        let with_url = |url: &str| -> Result<(), ConfigError> {
            let mut config = Config::default();
            config.events.url = url.parse()?;
            config.cluster.secret = Some(Secret("a-secret-of-16-chars".into()));
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

    #[test]
    fn nodes_of_a_kafka_cluster_must_authenticate_each_other() {
        let mut config = Config::default();
        config.events.url = "kafka://127.0.0.1:9092".parse().expect("url");
        let error = config.validate().expect_err("no secret, no mutual TLS");
        assert!(error.to_string().contains("cluster.secret"), "{error}");
        config.server.tls.client_ca = Some("ca.pem".into());
        assert!(config.validate().is_ok(), "mutual TLS authenticates nodes");
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn a_bad_choice_or_backend_url_is_refused_when_read_with_its_own_message() {
        figment::Jail::expect_with(|jail| {
            for (key, value, message) in [
                (
                    "MODEL__TRAIN_SOURCE",
                    "kafka",
                    "model.train_source must be `log` or `archive`",
                ),
                (
                    "TELEMETRY__LOG_FORMAT",
                    "yaml",
                    "telemetry.log_format must be `text` or `json`",
                ),
                (
                    "SERVER__TLS__MIN_VERSION",
                    "1.1",
                    "server.tls.min_version must be \"1.2\" or \"1.3\"",
                ),
                (
                    "CATALOG__URL",
                    "mysql://db",
                    "catalog.url = \"mysql://db\" is not supported; use one of embedded, postgres://, postgresql://",
                ),
                (
                    "EVENTS__URL",
                    "kafka://host",
                    "events.url must be kafka://host:port[,host:port...]",
                ),
            ] {
                jail.clear_env();
                jail.set_env(format!("STREAMREC__{key}"), value);
                match Config::load(None) {
                    Err(ConfigError::Invalid(m)) => assert_eq!(m, message),
                    other => panic!("{key}={value}: {other:?}"),
                }
            }
            jail.clear_env();
            jail.set_env("STREAMREC__MODEL__TRAIN_SOURCE", "archive");
            jail.set_env("STREAMREC__OBJECTS__URL", "s3://bucket/models/");
            let config = Config::load(None).expect("loads");
            assert_eq!(config.model.train_source, TrainSource::Archive);
            assert_eq!(
                config.objects.url,
                ObjectsBackend::S3 {
                    bucket: "bucket".into(),
                    prefix: "models".into()
                }
            );
            Ok(())
        });
    }
}
