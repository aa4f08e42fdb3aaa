//! `[cache]`: the recommendation cache, in-process or in front of Redis (one server or a
//! Redis Cluster).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{InvalidValue, Lenient, lenient_string, redacted_url, string_choice};
use super::{ConfigError, invalid};

/// The recommendation cache.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Which cache: `memory` (in-process only), `redis://[user:password@]host[:port]` (in-process
    /// L1 in front of Redis L2, invalidated across nodes) or
    /// `redis+cluster://[user:password@]host:port[,host:port...]` (the same in front of a Redis
    /// Cluster, given by some of its nodes). Default `memory`.
    #[serde(default)]
    pub url: CacheBackend,
    /// Prepended to every Redis key and to the invalidation channel, so that several deployments
    /// (or tests) can share one Redis. Letters, digits and `:_.-` only: a `{` would make it a
    /// hash tag and put every key of a Redis Cluster in one slot. Default `streamrec:`.
    #[serde(default = "key_prefix", deserialize_with = "lenient_string")]
    pub key_prefix: String,
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

fn key_prefix() -> String {
    "streamrec:".into()
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
        if !self
            .key_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.-".contains(c))
        {
            return invalid("cache.key_prefix may hold only letters, digits and `:_.-`");
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
    /// In-process L1 in front of a Redis Cluster, `url` as written.
    RedisCluster {
        url: String,
        /// The seed nodes the client learns the cluster from, each as a
        /// `redis://[user:password@]host:port` URL (`rediss://` with TLS) with the credentials
        /// of `url`.
        nodes: Vec<String>,
    },
}

const MEMORY: &str = "memory";
const CLUSTER_SCHEMES: [(&str, &str); 2] = [
    ("redis+cluster://", "redis://"),
    ("rediss+cluster://", "rediss://"),
];

impl CacheBackend {
    /// `redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://` for TLS)
    /// into one URL per seed node.
    fn cluster(url: &str, node_scheme: &str, rest: &str) -> Result<Self, InvalidValue> {
        let (credentials, hosts) = match rest.rsplit_once('@') {
            Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
            None => (String::new(), rest),
        };
        let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
        let nodes: Option<Vec<String>> = hosts
            .split(',')
            .map(|node| {
                let (host, port) = node.rsplit_once(':')?;
                let sane = !host.is_empty() && !host.contains(['/', '?', '#', '@']);
                (sane && port.parse::<u16>().is_ok_and(|p| p > 0))
                    .then(|| format!("{node_scheme}{credentials}{node}"))
            })
            .collect();
        let url = url.to_owned();
        nodes
            .map(|nodes| Self::RedisCluster { url, nodes })
            .ok_or_else(|| {
                InvalidValue(
                    "cache.url must be redis+cluster://[user:password@]host:port[,host:port...] \
                 (rediss+cluster:// for TLS)"
                        .into(),
                )
            })
    }
}

impl std::str::FromStr for CacheBackend {
    type Err = InvalidValue;
    fn from_str(url: &str) -> Result<Self, InvalidValue> {
        if url == MEMORY {
            return Ok(Self::Memory);
        }
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            return Ok(Self::Redis(url.to_owned()));
        }
        for (scheme, node_scheme) in CLUSTER_SCHEMES {
            if let Some(rest) = url.strip_prefix(scheme) {
                return Self::cluster(url, node_scheme, rest);
            }
        }
        Err(InvalidValue(format!(
            "cache.url = {url:?} is not supported; use one of memory, redis://, rediss://, \
             redis+cluster://, rediss+cluster://"
        )))
    }
}

impl std::fmt::Display for CacheBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str(MEMORY),
            Self::Redis(url) | Self::RedisCluster { url, .. } => f.write_str(url),
        }
    }
}

impl std::fmt::Debug for CacheBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Redis(url) => f.debug_tuple("Redis").field(&redacted_url(url)).finish(),
            Self::RedisCluster { url, .. } => f
                .debug_tuple("RedisCluster")
                .field(&redacted_url(url))
                .finish(),
        }
    }
}

string_choice!(CacheBackend);

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
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

    #[test]
    fn a_cluster_url_names_its_seed_nodes_with_the_credentials_of_the_url() {
        let url = "rediss+cluster://app:p@ss,w0rd@r1:7000,r2.example.com:7001,[::1]:7002/";
        let cluster: CacheBackend = url.parse().expect("cluster url");
        assert_eq!(
            cluster,
            CacheBackend::RedisCluster {
                url: url.into(),
                nodes: vec![
                    "rediss://app:p@ss,w0rd@r1:7000".into(),
                    "rediss://app:p@ss,w0rd@r2.example.com:7001".into(),
                    "rediss://app:p@ss,w0rd@[::1]:7002".into(),
                ]
            }
        );
        assert_eq!(cluster.to_string(), url);
        assert!(!format!("{cluster:?}").contains("w0rd"));
        let plain: CacheBackend = "redis+cluster://h:7000".parse().expect("url");
        let CacheBackend::RedisCluster { nodes, .. } = plain else {
            panic!("{plain:?} is not a cluster");
        };
        assert_eq!(nodes, ["redis://h:7000"]);
        for bad in [
            "redis+cluster://",
            "redis+cluster://host",
            "redis+cluster://host:port",
            "redis+cluster://:7000",
            "redis+cluster://h1:7000,,h2:7001",
            "redis+cluster://h1:7000/0",
            "redis+cluster://h1:0",
            "redis+cluster://u:p@",
        ] {
            let error = bad.parse::<CacheBackend>().expect_err(bad);
            assert!(
                error.0.starts_with("cache.url must be redis+cluster://"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn key_prefixes_cannot_hash_tag_or_glob() {
        for good in ["", "streamrec:", "staging.recs-2_"] {
            let config = CacheConfig {
                key_prefix: good.into(),
                ..Default::default()
            };
            assert!(config.validate().is_ok(), "{good}");
        }
        for bad in ["{recs}:", "recs*", "a b", "r[1]"] {
            let config = CacheConfig {
                key_prefix: bad.into(),
                ..Default::default()
            };
            let error = config.validate().expect_err(bad).to_string();
            assert!(error.contains("cache.key_prefix"), "{bad}: {error}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn a_bad_cache_url_is_refused_when_read_naming_the_key() {
        figment::Jail::expect_with(|jail| {
            for (value, message) in [
                (
                    "memcached://m:11211",
                    "cache.url = \"memcached://m:11211\" is not supported; use one of memory, \
                     redis://, rediss://, redis+cluster://, rediss+cluster://",
                ),
                (
                    "redis+cluster://h1:7000,h2",
                    "cache.url must be redis+cluster://[user:password@]host:port[,host:port...] \
                     (rediss+cluster:// for TLS)",
                ),
            ] {
                jail.clear_env();
                jail.set_env("STREAMREC__CACHE__URL", value);
                match Config::load(None) {
                    Err(ConfigError::Invalid(m)) => assert_eq!(m, message),
                    other => panic!("{value}: {other:?}"),
                }
            }
            jail.clear_env();
            jail.set_env("STREAMREC__CACHE__URL", "redis+cluster://10.0.0.1:6379");
            jail.set_env("STREAMREC__CACHE__KEY_PREFIX", "2024");
            let config = Config::load(None).expect("loads");
            assert_eq!(
                config.cache.url.to_string(),
                "redis+cluster://10.0.0.1:6379"
            );
            assert_eq!(config.cache.key_prefix, "2024");
            Ok(())
        });
    }
}
