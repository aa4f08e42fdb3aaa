//! `[objects]`: where model artifacts and the event archive are kept.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::values::{InvalidValue, Lenient, string_choice};

/// Where model artifacts are kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectsConfig {
    /// Which store: `embedded` (files under `data_dir/objects`) or `s3://bucket[/prefix]`.
    /// Default `embedded`.
    #[serde(default)]
    pub url: ObjectsBackend,
    /// Endpoint of an S3-compatible store (path-style addressing); unset for AWS S3. Default unset.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// How often the event log is archived to the store; `0s` turns archiving off. Default 1h.
    #[serde(default = "archive_interval", with = "humantime_serde")]
    pub archive_interval: Duration,
    /// How often a snapshot of the node's database (sessions, embedded catalogue, profiles,
    /// erasures, id sets and the offsets they cover) goes to the store, under
    /// `snapshots/node=<node id>/`; `streamrec restore` rebuilds a data dir from one. `0s` turns
    /// snapshots off. Default 1h.
    #[serde(default = "snapshot_interval", with = "humantime_serde")]
    pub snapshot_interval: Duration,
}

fn archive_interval() -> Duration {
    Duration::from_secs(3600)
}

fn snapshot_interval() -> Duration {
    Duration::from_secs(3600)
}

impl Default for ObjectsConfig {
    fn default() -> Self {
        super::defaults()
    }
}

impl ObjectsConfig {
    /// Nothing beyond what the types hold: the URL was checked when it was read.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Which object store, parsed once from `objects.url`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Lenient", into = "String")]
pub enum ObjectsBackend {
    /// Files under `data_dir/objects`.
    #[default]
    Embedded,
    /// An S3 bucket, every key under `prefix` (no slash at either end; may be empty).
    S3 { bucket: String, prefix: String },
}

impl std::str::FromStr for ObjectsBackend {
    type Err = InvalidValue;
    fn from_str(url: &str) -> Result<Self, InvalidValue> {
        if url == super::EMBEDDED {
            return Ok(Self::Embedded);
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(InvalidValue(format!(
                "objects.url = {url:?} is not supported; use one of embedded, s3://"
            )));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(InvalidValue(format!(
                "objects.url = {url:?} names no bucket"
            )));
        }
        Ok(Self::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        })
    }
}

impl std::fmt::Display for ObjectsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str(super::EMBEDDED),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

string_choice!(ObjectsBackend);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_split_into_bucket_and_prefix() {
        assert!(ObjectsConfig::default().validate().is_ok());
        let s3 = |bucket: &str, prefix: &str| ObjectsBackend::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        };
        assert_eq!("s3://b".parse(), Ok(s3("b", "")));
        assert_eq!("s3://b/models/prod/".parse(), Ok(s3("b", "models/prod")));
        assert_eq!(s3("b", "models/prod").to_string(), "s3://b/models/prod");
        assert!("s3:///x".parse::<ObjectsBackend>().is_err());
        assert!("http://b".parse::<ObjectsBackend>().is_err());
    }
}
