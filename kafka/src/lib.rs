//! Kafka as streamrec's event source, behind the same traits as the embedded log.
//!
//! - [`Producer`]: `POST /v1/events` publishes to `user-events` (idempotent, `acks=all`, keyed by
//!   user with the Java client's murmur2 partitioner) and answers only after the broker acked;
//!   it also writes dead letters.
//! - [`GroupConsumer`]: the nodes' consumer group over `user-events`, `transaction-stream` and
//!   `product-updates`; offsets are committed by the caller, only after a batch is applied.
//! - [`decode`]: one message to an event, a catalog change, or the reason it goes to
//!   `<topic>.dlq`.
//! - [`ensure_topics`]: creates missing topics (brokers may have auto-creation off).
//! - [`status`]: the cluster's status topic, each node's ownership and address, read by all.
//! - [`changelog`]: the sessions changelog, written by a partition's owner and replayed by the
//!   node that gains it.
//! - [`popularity`]: what each partition's users add to each item, published by the owner.
//! - [`tail`]: what every node follows: the changelog and `user-events` from the end on, the
//!   item popularity from its start.
//! - [`history`]: `user-events` read whole since a point in time, for training.
//!
//! Nothing here knows about actors or sessions: the bridge actor composes these parts.

mod admin;
pub mod changelog;
mod consumer;
mod decode;
pub mod history;
pub mod popularity;
mod producer;
pub mod status;
pub mod tail;

use std::collections::BTreeMap;
use std::time::Duration;

use common::config::{EventsBackend, EventsConfig};
use rdkafka::ClientConfig;

pub use admin::ensure_topics;
pub use consumer::{GroupConsumer, Message, Rebalance};
pub use decode::{Decoded, decode, default_event_id};
pub use producer::{DeadLetter, Producer};

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("kafka: {0}")]
    Other(String),
}

pub type Result<T, E = KafkaError> = std::result::Result<T, E>;

/// The topics streamrec reads, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Topic {
    /// Interactions (views, clicks, ...), keyed by user id.
    UserEvents,
    /// Purchases, keyed by user id; same message shape as `user-events`.
    Transactions,
    /// Catalog upserts and deletions, keyed by item id.
    ProductUpdates,
}

impl Topic {
    pub const ALL: [Topic; 3] = [
        Topic::UserEvents,
        Topic::Transactions,
        Topic::ProductUpdates,
    ];

    pub fn base_name(self) -> &'static str {
        match self {
            Topic::UserEvents => "user-events",
            Topic::Transactions => "transaction-stream",
            Topic::ProductUpdates => "product-updates",
        }
    }
}

/// Everything the Kafka clients need, taken from `[events]`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    pub group: String,
    pub prefix: String,
    pub partitions: i32,
    pub replication: i32,
    pub produce_timeout: Duration,
    pub session_timeout: Duration,
    pub options: BTreeMap<String, String>,
}

impl Settings {
    /// The Kafka settings of `config`, or `None` when events do not come from Kafka.
    pub fn from_config(config: &EventsConfig) -> Option<Self> {
        let EventsBackend::Kafka { brokers } = &config.url else {
            return None;
        };
        Some(Self {
            brokers: brokers.clone(),
            group: config.group.clone(),
            prefix: config.topic_prefix.clone(),
            partitions: config.num_partitions as i32,
            replication: config.replication_factor,
            produce_timeout: config.produce_timeout,
            session_timeout: config.session_timeout,
            options: config.kafka_options.clone(),
        })
    }

    pub fn topic(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.base_name())
    }

    /// The dead-letter topic of `topic`.
    pub fn dlq(&self, topic: Topic) -> String {
        format!("{}.dlq", self.topic(topic))
    }

    pub fn topic_of(&self, name: &str) -> Option<Topic> {
        let base = name.strip_prefix(&self.prefix)?;
        Topic::ALL.into_iter().find(|t| t.base_name() == base)
    }

    /// The cluster's status topic (see [`status`]).
    pub fn status_topic(&self) -> String {
        format!("{}{}", self.prefix, status::STATUS_TOPIC)
    }

    /// The sessions changelog (see [`changelog`]), partitioned as `user-events`.
    pub fn changelog_topic(&self) -> String {
        format!("{}{}", self.prefix, changelog::CHANGELOG_TOPIC)
    }

    /// The item popularity topic (see [`popularity`]), partitioned as `user-events`.
    pub fn popularity_topic(&self) -> String {
        format!("{}{}", self.prefix, popularity::POPULARITY_TOPIC)
    }

    /// Every topic streamrec creates if absent: the three sources, their dead-letter topics,
    /// the status topic, the sessions changelog and the item popularity.
    pub fn all_topics(&self) -> Vec<String> {
        Topic::ALL
            .into_iter()
            .flat_map(|t| [self.topic(t), self.dlq(t)])
            .chain([
                self.status_topic(),
                self.changelog_topic(),
                self.popularity_topic(),
            ])
            .collect()
    }

    /// How many partitions topic `name` is created with: the status topic has one, so that
    /// every node reads all statuses in order; the others `events.num_partitions`.
    pub fn partitions_of(&self, name: &str) -> i32 {
        if name == self.status_topic() {
            1
        } else {
            self.partitions
        }
    }

    /// The properties of a reader that assigns its partitions itself (no group membership,
    /// nothing committed): `<group>.<role>.<node_id>` only names it, as librdkafka needs a group
    /// id to assign, and `reset` is where it starts when an offset is out of range.
    fn reader_config(&self, role: &str, node_id: &str, reset: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", format!("{}.{role}.{node_id}", self.group))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", reset);
        config
    }

    /// The client properties shared by every client: brokers, then the user's own options.
    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", "streamrec")
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }
}

fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_take_the_prefix_and_map_back() {
        let mut config = EventsConfig {
            url: "kafka://127.0.0.1:9092".parse().expect("kafka url"),
            ..Default::default()
        };
        let plain = Settings::from_config(&config).expect("kafka");
        assert_eq!(plain.topic(Topic::UserEvents), "user-events");
        assert_eq!(plain.dlq(Topic::ProductUpdates), "product-updates.dlq");
        config.topic_prefix = "t1.".into();
        let prefixed = Settings::from_config(&config).expect("kafka");
        assert_eq!(prefixed.topic(Topic::Transactions), "t1.transaction-stream");
        assert_eq!(
            prefixed.topic_of("t1.product-updates"),
            Some(Topic::ProductUpdates)
        );
        assert_eq!(prefixed.topic_of("product-updates"), None);
        assert_eq!(prefixed.topic_of("t1.user-events.dlq"), None);
        assert_eq!(prefixed.all_topics().len(), 9);
        assert_eq!(prefixed.popularity_topic(), "t1.item-popularity");
        assert_eq!(prefixed.changelog_topic(), "t1.sessions-changelog");
        assert_eq!(prefixed.status_topic(), "t1.cluster-status");
        assert_eq!(prefixed.partitions_of("t1.cluster-status"), 1);
        assert_eq!(
            prefixed.partitions_of("t1.user-events"),
            config.num_partitions as i32
        );
        config.url = EventsBackend::Embedded;
        assert!(Settings::from_config(&config).is_none());
    }
}
