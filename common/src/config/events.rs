//! `[events]`: where events come from, the node's own log, and the Kafka client settings.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{InvalidValue, Lenient, string_choice};
use super::{ConfigError, invalid};

/// The event log that feeds sessions.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Where events come from: `embedded` (the node's own log under `data_dir/events`), or
    /// `kafka://host:port[,host:port...]` (topics `user-events`, `transaction-stream` and
    /// `product-updates`, consumed in a group; the node's log then journals what it consumed).
    /// Default `embedded`.
    #[serde(default)]
    pub url: EventsBackend,
    /// Partitions of the log, and of the Kafka topics streamrec creates; a user always maps to
    /// one. Fixed once data exists. Default 12.
    #[serde(default = "num_partitions")]
    pub num_partitions: u32,
    /// fsync every append before acknowledging it (group-committed). Default true.
    #[serde(default = "fsync")]
    pub fsync: bool,
    /// Most records an ingest actor applies per batch (also the most Kafka messages the
    /// consumer takes per batch). Default 512.
    #[serde(default = "consume_batch")]
    pub consume_batch: usize,
    /// Kafka consumer group of the nodes. Default `streamrec`.
    #[serde(default = "group")]
    pub group: String,
    /// Prepended to every topic name (`<prefix>user-events`, ...), to share a cluster between
    /// deployments. Default empty.
    #[serde(default)]
    pub topic_prefix: String,
    /// Replication factor of the topics streamrec creates. Default 1 (use 3 on a real cluster).
    #[serde(default = "replication_factor")]
    pub replication_factor: i32,
    /// Longest `POST /v1/events` waits for the broker's acknowledgement before answering 503.
    /// Default 5s.
    #[serde(default = "produce_timeout", with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// Kafka consumer-group session timeout: how soon a dead node's partitions move. Default 10s.
    #[serde(default = "session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Join the group as a static member (`group.instance.id` = `cluster.node_id`), so that a
    /// node restarted within `session_timeout` gets its partitions back without a rebalance.
    /// Default false: tansu (the broker the tests and `make cluster` run) never settles a group
    /// of static members; turn it on with Apache Kafka, Redpanda and the like.
    #[serde(default)]
    pub static_membership: bool,
    /// How long a node waits after the group assigned it a partition before restoring it from
    /// the changelog: the previous owner's last batch, if it is still finishing one, lands in
    /// the changelog first. Some brokers (tansu) briefly assign a partition to its new owner
    /// before the old one has given it up. Default 2s.
    #[serde(default = "assign_settle", with = "humantime_serde")]
    pub assign_settle: Duration,
    /// Extra librdkafka client properties, e.g. `"security.protocol" = "SASL_SSL"`,
    /// `"sasl.mechanism"`, `"sasl.username"`, `"sasl.password"` for a managed cluster. Default none.
    #[serde(default)]
    pub kafka_options: BTreeMap<String, String>,
    /// How long a segment of the node's log is kept after its last write, once ingest and (with
    /// archiving on) the archive have committed all of it; the segment being written is never
    /// deleted. With archiving off, this bounds what `model.train_source = "log"` and the GDPR
    /// export see. `0s` keeps every segment. Default 7d.
    #[serde(default = "seven_days", with = "humantime_serde")]
    pub retention: Duration,
    /// How long an event id is remembered: within it, an event delivered again (a client retry,
    /// a Kafka topic consumed again) is recognised as a duplicate, also after its user was
    /// erased; after it, the id is forgotten and the same event would count again. Ids are
    /// dropped as storage compacts, so some stay up to about twice as long. An erasure tombstone
    /// is dropped after it too, once nothing it covers is left to read (the log past it, and no
    /// training from the archive). Keep Kafka's retention of `user-events` within it: an erased
    /// user's events consumed again from the topic after it would count as new. `0s` remembers
    /// for ever; otherwise at least 1m. Default 7d.
    #[serde(default = "seven_days", with = "humantime_serde")]
    pub dedupe_window: Duration,
}

fn num_partitions() -> u32 {
    12
}
fn fsync() -> bool {
    true
}
fn consume_batch() -> usize {
    512
}
fn group() -> String {
    "streamrec".into()
}
fn replication_factor() -> i32 {
    1
}
fn produce_timeout() -> Duration {
    Duration::from_secs(5)
}
fn session_timeout() -> Duration {
    Duration::from_secs(10)
}
fn assign_settle() -> Duration {
    Duration::from_secs(2)
}
fn seven_days() -> Duration {
    Duration::from_secs(7 * 86_400)
}

impl Default for EventsConfig {
    fn default() -> Self {
        super::defaults()
    }
}

impl EventsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1024).contains(&self.num_partitions) {
            return invalid("events.num_partitions must be between 1 and 1024");
        }
        let window = self.dedupe_window;
        if !window.is_zero() && window < Duration::from_secs(60) {
            return invalid("events.dedupe_window must be 0s (for ever) or at least 1m");
        }
        if self.consume_batch == 0 {
            return invalid("server.max_batch_events and events.consume_batch must be at least 1");
        }
        if matches!(self.url, EventsBackend::Kafka { .. })
            && (self.group.is_empty() || self.replication_factor < 1)
        {
            return invalid(
                "events.group must not be empty and events.replication_factor must be at least 1",
            );
        }
        Ok(())
    }
}

/// Where events come from, parsed once from `events.url`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Lenient", into = "String")]
pub enum EventsBackend {
    /// The node's own log.
    #[default]
    Embedded,
    /// A Kafka-compatible cluster.
    Kafka {
        /// `host:port[,host:port...]`, each with a host and a port (Kafka's `bootstrap.servers`).
        brokers: String,
    },
}

impl std::str::FromStr for EventsBackend {
    type Err = InvalidValue;
    fn from_str(url: &str) -> Result<Self, InvalidValue> {
        if url == super::EMBEDDED {
            return Ok(Self::Embedded);
        }
        let Some(brokers) = url.strip_prefix("kafka://") else {
            return Err(InvalidValue(format!(
                "events.url = {url:?} is not supported; use one of embedded, kafka://"
            )));
        };
        if brokers.split(',').any(|b| {
            b.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        }) {
            return Err(InvalidValue(
                "events.url must be kafka://host:port[,host:port...]".into(),
            ));
        }
        Ok(Self::Kafka {
            brokers: brokers.to_owned(),
        })
    }
}

impl std::fmt::Display for EventsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str(super::EMBEDDED),
            Self::Kafka { brokers } => write!(f, "kafka://{brokers}"),
        }
    }
}

string_choice!(EventsBackend);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_need_sane_partitions_window_batch_and_kafka_group() {
        assert!(EventsConfig::default().validate().is_ok());
        let partitions = EventsConfig {
            num_partitions: 1025,
            ..Default::default()
        };
        assert!(partitions.validate().is_err());
        let mut window = EventsConfig {
            dedupe_window: Duration::from_secs(59),
            ..Default::default()
        };
        assert!(window.validate().is_err());
        window.dedupe_window = Duration::ZERO;
        assert!(window.validate().is_ok());
        let mut kafka = EventsConfig {
            url: "kafka://b1:9092,b2:9093".parse().expect("kafka url"),
            ..Default::default()
        };
        assert_eq!(
            kafka.url,
            EventsBackend::Kafka {
                brokers: "b1:9092,b2:9093".into()
            }
        );
        assert_eq!(kafka.url.to_string(), "kafka://b1:9092,b2:9093");
        assert!(kafka.validate().is_ok());
        kafka.group.clear();
        assert!(kafka.validate().is_err());
    }
}
