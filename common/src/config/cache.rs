//! `[cache]`: the recommendation cache, in-process or in front of Redis.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{InvalidValue, Lenient, redacted_url, string_choice};
use super::{ConfigError, invalid};

/// The recommendation cache.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Which cache: `memory` (in-process only) or `redis://[user:password@]host[:port]` (in-process
    /// L1 in front of Redis L2, invalidated across nodes). Default `memory`.
    #[serde(default)]
    pub url: CacheBackend,
    /// Longest wait for Redis before a lookup counts as a miss. Default 100ms.
    #[serde(default = "timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Most users with cached recommendations. Default 100000.
    #[serde(default = "max_users")]
    pub max_users: u64,
    /// How long a cached entry lives if nothing invalidates it. Default 5m.
    #[serde(default = "ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Most cached results per user (one per model version, `k` and category); past it the
    /// oldest goes. Default 16.
    #[serde(default = "max_variants_per_user")]
    pub max_variants_per_user: usize,
}

fn timeout() -> Duration {
    Duration::from_millis(100)
}
fn max_users() -> u64 {
    100_000
}
fn ttl() -> Duration {
    Duration::from_secs(300)
}
fn max_variants_per_user() -> usize {
    16
}

impl Default for CacheConfig {
    fn default() -> Self {
        super::defaults()
    }
}

impl CacheConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_variants_per_user == 0 {
            return invalid(
                "sessions.max_items and cache.max_variants_per_user must be at least 1",
            );
        }
        Ok(())
    }
}

/// Which cache, parsed once from `cache.url`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Lenient", into = "String")]
pub enum CacheBackend {
    /// In-process only.
    #[default]
    Memory,
    /// In-process L1 in front of Redis at this `redis://` or `rediss://` URL, as its client
    /// takes it.
    Redis(String),
}

const MEMORY: &str = "memory";

impl std::str::FromStr for CacheBackend {
    type Err = InvalidValue;
    fn from_str(url: &str) -> Result<Self, InvalidValue> {
        if url == MEMORY {
            Ok(Self::Memory)
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            Ok(Self::Redis(url.to_owned()))
        } else {
            Err(InvalidValue(format!(
                "cache.url = {url:?} is not supported; use one of memory, redis://, rediss://"
            )))
        }
    }
}

impl std::fmt::Display for CacheBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str(MEMORY),
            Self::Redis(url) => f.write_str(url),
        }
    }
}

impl std::fmt::Debug for CacheBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Redis(url) => f.debug_tuple("Redis").field(&redacted_url(url)).finish(),
        }
    }
}

string_choice!(CacheBackend);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_urls_pick_a_cache_and_variants_must_be_positive() {
        assert!(CacheConfig::default().validate().is_ok());
        assert_eq!("memory".parse(), Ok(CacheBackend::Memory));
        let redis: CacheBackend = "rediss://u:hunter2@r:6380".parse().expect("url");
        assert_eq!(redis.to_string(), "rediss://u:hunter2@r:6380");
        assert!(!format!("{redis:?}").contains("hunter2"));
        assert!("memcached://m:11211".parse::<CacheBackend>().is_err());
        let none = CacheConfig {
            max_variants_per_user: 0,
            ..Default::default()
        };
        assert!(none.validate().is_err());
    }
}
