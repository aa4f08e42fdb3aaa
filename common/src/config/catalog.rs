//! `[catalog]`: where items and user profiles are stored.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::values::{InvalidValue, Lenient, redacted_url, string_choice};

/// The item catalog and user profiles.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// Which store: `embedded` (RocksDB in `data_dir`) or `postgres://user[:password]@host[:port]/db`.
    /// Default `embedded`.
    #[serde(default)]
    pub url: CatalogBackend,
    /// Most PostgreSQL connections in the pool. Default 8.
    #[serde(default = "max_connections")]
    pub max_connections: u32,
    /// Longest wait for a PostgreSQL connection before a write fails with 503. Default 2s.
    #[serde(default = "acquire_timeout", with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

fn max_connections() -> u32 {
    8
}
fn acquire_timeout() -> Duration {
    Duration::from_secs(2)
}

impl Default for CatalogConfig {
    fn default() -> Self {
        super::defaults()
    }
}

impl CatalogConfig {
    /// Nothing beyond what the types hold: the URL was checked when it was read.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Which catalog store, parsed once from `catalog.url`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Lenient", into = "String")]
pub enum CatalogBackend {
    /// RocksDB in `data_dir`.
    #[default]
    Embedded,
    /// PostgreSQL at this `postgres://` or `postgresql://` URL, as its client takes it.
    Postgres(String),
}

impl std::str::FromStr for CatalogBackend {
    type Err = InvalidValue;
    fn from_str(url: &str) -> Result<Self, InvalidValue> {
        if url == super::EMBEDDED {
            Ok(Self::Embedded)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(url.to_owned()))
        } else {
            Err(InvalidValue(format!(
                "catalog.url = {url:?} is not supported; use one of embedded, postgres://, postgresql://"
            )))
        }
    }
}

impl std::fmt::Display for CatalogBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str(super::EMBEDDED),
            Self::Postgres(url) => f.write_str(url),
        }
    }
}

impl std::fmt::Debug for CatalogBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("Embedded"),
            Self::Postgres(url) => f.debug_tuple("Postgres").field(&redacted_url(url)).finish(),
        }
    }
}

string_choice!(CatalogBackend);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_urls_pick_a_store_and_its_password_never_prints() {
        assert!(CatalogConfig::default().validate().is_ok());
        let pg: CatalogBackend = "postgres://app:hunter2@db:5432/recs".parse().expect("url");
        assert_eq!(
            pg,
            CatalogBackend::Postgres("postgres://app:hunter2@db:5432/recs".into())
        );
        assert!(!format!("{pg:?}").contains("hunter2"));
        assert!("postgresql://db/recs".parse::<CatalogBackend>().is_ok());
        assert!("mysql://db/recs".parse::<CatalogBackend>().is_err());
    }
}
