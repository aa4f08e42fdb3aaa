//! `[cluster]`: this node's identity among the others, and how long a request waits for a user
//! whose partition is moving. A cluster exists only with `events.url = kafka://...`: the Kafka
//! consumer group decides which node owns which partition. The embedded log is a single node.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::Secret;
use super::{ConfigError, invalid};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name in the cluster, stable across restarts (with `events.static_membership`
    /// it is also the consumer group's static member id, so a quick restart does not move
    /// partitions): in Kubernetes, the StatefulSet pod name. Default the host name (`$HOSTNAME`,
    /// else the kernel's).
    #[serde(default = "node_id")]
    pub node_id: String,
    /// Where other nodes reach this one (`host:port`). Default the listen address, with an
    /// unspecified IP (`0.0.0.0`) replaced by the host name.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Longest a request waits for a user whose partition is moving (or restoring) before it
    /// gets 503 `unavailable` with `Retry-After`. Default 10s.
    #[serde(default = "handoff_timeout", with = "humantime_serde")]
    pub handoff_timeout: Duration,
    /// How often a node publishes its status (address, partitions) on the status topic.
    /// Default 2s.
    #[serde(default = "status_interval", with = "humantime_serde")]
    pub status_interval: Duration,
    /// How often a node publishes what the users of the partitions it serves add to each item's
    /// popularity (what changed since the last time), so that every node ranks by the whole
    /// cluster's users. Default 5s.
    #[serde(default = "popularity_interval", with = "humantime_serde")]
    pub popularity_interval: Duration,
    /// A member not heard from for this long is dropped from the map. Default 10s.
    #[serde(default = "member_timeout", with = "humantime_serde")]
    pub member_timeout: Duration,
    /// Shared secret every node presents when it forwards a request to another. Required with
    /// Kafka unless `server.tls.client_ca` makes nodes authenticate each other with mutual TLS.
    /// Default none.
    #[serde(default)]
    pub secret: Option<Secret>,
}

fn node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "streamrec".to_owned())
}
fn handoff_timeout() -> Duration {
    Duration::from_secs(10)
}
fn status_interval() -> Duration {
    Duration::from_secs(2)
}
fn popularity_interval() -> Duration {
    Duration::from_secs(5)
}
fn member_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for ClusterConfig {
    fn default() -> Self {
        super::defaults()
    }
}

impl ClusterConfig {
    /// The address other nodes use: `advertise`, else `listen` with a reachable host.
    pub fn advertised(&self, listen: SocketAddr) -> String {
        match &self.advertise {
            Some(address) => address.clone(),
            None if listen.ip().is_unspecified() => format!("{}:{}", node_id(), listen.port()),
            None => listen.to_string(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let valid_id = !self.node_id.is_empty()
            && self.node_id.len() <= 128
            && self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_id {
            return invalid(
                "cluster.node_id must be 1-128 characters of letters, digits, '-', '_' or '.'",
            );
        }
        if self.handoff_timeout.is_zero()
            || self.status_interval.is_zero()
            || self.popularity_interval.is_zero()
            || self.member_timeout <= self.status_interval
        {
            return invalid(
                "cluster.handoff_timeout, cluster.status_interval and cluster.popularity_interval \
                 must be positive, and cluster.member_timeout longer than cluster.status_interval",
            );
        }
        if self.secret.as_ref().is_some_and(|s| s.0.len() < 16) {
            return invalid("cluster.secret must be at least 16 characters");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_has_a_usable_name_and_sane_timers() {
        let config = ClusterConfig::default();
        assert!(config.validate().is_ok(), "{config:?}");
        for bad in [
            |c: &mut ClusterConfig| c.node_id = String::new(),
            |c: &mut ClusterConfig| c.node_id = "a b".into(),
            |c: &mut ClusterConfig| c.handoff_timeout = Duration::ZERO,
            |c: &mut ClusterConfig| c.member_timeout = c.status_interval,
            |c: &mut ClusterConfig| c.popularity_interval = Duration::ZERO,
            |c: &mut ClusterConfig| c.secret = Some(Secret("short".into())),
        ] {
            let mut config = ClusterConfig::default();
            bad(&mut config);
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn the_advertised_address_is_reachable() {
        let mut config = ClusterConfig::default();
        let listen: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        assert_eq!(config.advertised(listen), "127.0.0.1:8080");
        let any: SocketAddr = "0.0.0.0:9000".parse().expect("addr");
        assert!(config.advertised(any).ends_with(":9000"));
        assert!(!config.advertised(any).starts_with("0.0.0.0"));
        config.advertise = Some("node-1.streamrec:8080".into());
        assert_eq!(config.advertised(any), "node-1.streamrec:8080");
    }
}
