//! The cluster's status topic, `<prefix>cluster-status`: every node publishes its own
//! [`Status`] (address, partitions, generation) there on every change and on a heartbeat, and
//! reads everyone's, as Kafka Connect's workers do with their status topic. Ownership itself is
//! decided by the consumer group; the broker cannot tell who owns what (tansu's DescribeGroups
//! returns no assignments), so the owners say so here.
//!
//! One partition, so every node reads every status in order; keyed by node id, so that a
//! compacting broker keeps each node's latest. The reader assigns the partition directly (no
//! group membership, no commits) and starts a little before the end: the statuses of the last
//! heartbeats, enough to know the live members at once rather than a heartbeat later.

use std::time::Duration;

use cluster::Status;
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::{KafkaError, Result, Settings, millis};

/// The base name of the status topic (after `events.topic_prefix`).
pub const STATUS_TOPIC: &str = "cluster-status";

/// How many records before the end the reader starts at: the last heartbeats of a few dozen
/// nodes. Older ones are dropped by their age (see [`StatusReader::next`]'s caller).
const TAIL: i64 = 128;

/// A status that could not be read back.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum StatusError {
    #[error("status without a payload")]
    Empty,
    #[error("status is not JSON of a cluster status: {0}")]
    Json(String),
    #[error("status of node {node} published under key {key:?}")]
    Key { node: String, key: String },
}

/// The record of `status`: its key (the node id) and its value (JSON).
pub fn encode(status: &Status) -> (Vec<u8>, Vec<u8>) {
    let value = serde_json::to_vec(status).expect("a status serializes");
    (status.node_id.as_bytes().to_vec(), value)
}

/// A status from its record. The key, when present, must name the node the status is about.
pub fn decode(key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<Status, StatusError> {
    let payload = payload.ok_or(StatusError::Empty)?;
    let status: Status =
        serde_json::from_slice(payload).map_err(|e| StatusError::Json(e.to_string()))?;
    if let Some(key) = key
        && key != status.node_id.as_bytes()
    {
        return Err(StatusError::Key {
            node: status.node_id,
            key: String::from_utf8_lossy(key).into_owned(),
        });
    }
    Ok(status)
}

/// Publishes this node's status.
pub struct StatusWriter {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl StatusWriter {
    pub fn new(settings: &Settings) -> Result<Self> {
        let producer = settings
            .client_config()
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", millis(settings.produce_timeout))
            .create()?;
        Ok(Self {
            producer,
            topic: settings.status_topic(),
            timeout: settings.produce_timeout,
        })
    }

    /// Returns once the broker acknowledged the status.
    pub async fn publish(&self, status: &Status) -> Result<()> {
        let (key, value) = encode(status);
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(&key).payload(&value),
                self.timeout,
            )
            .await
            .map(drop)
            .map_err(|(e, _)| KafkaError::Client(e))
    }
}

/// Reads every node's statuses, from shortly before the end of the topic on.
pub struct StatusReader {
    consumer: StreamConsumer,
}

impl StatusReader {
    /// `node_id` names the reader's own group id (`<group>.status.<node_id>`): librdkafka needs
    /// one to assign partitions, and it must not be the nodes' consumer group. Nothing joins it
    /// and nothing is committed under it.
    pub fn new(settings: &Settings, node_id: &str) -> Result<Self> {
        let consumer: StreamConsumer = settings
            .reader_config("status", node_id, "latest")
            .create()?;
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition_offset(&settings.status_topic(), 0, Offset::OffsetTail(TAIL))?;
        consumer.assign(&partitions)?;
        Ok(Self { consumer })
    }

    /// Waits up to `wait` for a first status, then takes whatever else is already fetched. A
    /// record that is not a status is logged and skipped; client errors (a broker down) are
    /// logged and end the batch, librdkafka reconnects by itself. Cancel-safe: nothing is taken
    /// from the consumer before the first record is ready.
    pub async fn next(&self, wait: Duration) -> Vec<Status> {
        let mut statuses = Vec::new();
        let Ok(first) = tokio::time::timeout(wait, self.consumer.recv()).await else {
            return statuses;
        };
        let mut next = Some(first);
        while let Some(received) = next.take() {
            match received {
                Ok(message) => match decode(message.key(), message.payload()) {
                    Ok(status) => statuses.push(status),
                    Err(error) => {
                        tracing::warn!(offset = message.offset(), %error, "skipped a record of the status topic");
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "kafka status reader");
                    break;
                }
            }
            next = self.consumer.recv().now_or_never();
        }
        statuses
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cluster::PartitionState;

    use super::*;

    fn status() -> Status {
        Status {
            node_id: "node-1".into(),
            address: "10.0.0.1:8080".into(),
            partitions: BTreeMap::from([
                (0, PartitionState::Active),
                (3, PartitionState::Restoring),
            ]),
            generation: 7,
            at_ms: 1_700_000_000_000,
            leaving: false,
        }
    }

    #[test]
    fn a_status_reads_back_as_written_keyed_by_its_node() {
        let (key, value) = encode(&status());
        assert_eq!(key, b"node-1");
        assert_eq!(decode(Some(&key), Some(&value)), Ok(status()));
        assert_eq!(decode(None, Some(&value)), Ok(status()));
        let json: serde_json::Value = serde_json::from_slice(&value).expect("json");
        assert_eq!(json["partitions"]["3"], "restoring");
        assert_eq!(json["leaving"], false);
    }

    #[test]
    fn a_status_of_an_older_node_without_leaving_is_not_leaving() {
        let json = br#"{"node_id":"n","address":"a:1","partitions":{"1":"active"},"generation":1,"at_ms":5}"#;
        let status = decode(Some(b"n"), Some(json)).expect("status");
        assert!(!status.leaving);
        assert_eq!(status.partitions[&1], PartitionState::Active);
    }

    #[test]
    fn records_that_are_not_statuses_are_refused() {
        let (_, value) = encode(&status());
        assert_eq!(decode(Some(b"node-1"), None), Err(StatusError::Empty));
        assert!(matches!(
            decode(Some(b"node-1"), Some(b"{\"node_id\":1}")),
            Err(StatusError::Json(_))
        ));
        assert!(matches!(
            decode(
                Some(b"node-1"),
                Some(br#"{"node_id":"node-1","partitions":{"0":"gone"}}"#)
            ),
            Err(StatusError::Json(_))
        ));
        // A node cannot speak for another.
        assert_eq!(
            decode(Some(b"node-2"), Some(&value)),
            Err(StatusError::Key {
                node: "node-1".into(),
                key: "node-2".into()
            })
        );
    }
}
