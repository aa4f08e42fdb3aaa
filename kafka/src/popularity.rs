//! The item popularity topic, `<prefix>item-popularity`: what the users of each partition add
//! to each item's popularity, as the partition's owner knows it (see `actors::popularity`).
//! Partitioned as `user-events` (the record of partition `p`'s users sits in partition `p`) and
//! keyed by item, so a record says "partition p's users add w to item i" outright, never by how
//! much it changed: a compacting broker keeps each (partition, item)'s latest, and a reader that
//! reads the topic whole from its start knows the whole cluster's popularity, as a Kafka Streams
//! global table is read.
//!
//! A node that gains a partition publishes the partition whole, between a [`Record::Begin`] and
//! a [`Record::End`] marker: a reader replaces everything it knew of the partition by what lies
//! between them, so what a former owner said of an item the new owner does not count is gone.
//! The markers are keyed by a control character, which no item id holds; a compacting broker keeps
//! the latest pair, and the records between them that nothing later replaced.

use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{KafkaError, Result, Settings, millis};

/// The base name of the popularity topic (after `events.topic_prefix`).
pub const POPULARITY_TOPIC: &str = "item-popularity";

/// What `partition`'s users add to `item_id`.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemWeight {
    pub partition: u32,
    pub item_id: String,
    pub weight: f64,
}

/// One record of the topic.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Weight(ItemWeight),
    /// The partition is published whole from here...
    Begin {
        partition: u32,
    },
    /// ...to here.
    End {
        partition: u32,
    },
}

const BEGIN_KEY: &str = "\u{1}begin";
const END_KEY: &str = "\u{1}end";

/// A record's value: `{"weight": w, "node": "<the node that published it>"}` (the node is for
/// an operator reading the topic).
pub fn encode(weight: f64, node: &str) -> Vec<u8> {
    serde_json::json!({ "weight": weight, "node": node })
        .to_string()
        .into_bytes()
}

/// A record of `partition`, or `None` for one that is not a popularity record (a key that is
/// not UTF-8, a weight that is not a finite number).
pub fn decode(partition: u32, key: Option<&[u8]>, payload: Option<&[u8]>) -> Option<Record> {
    let key = std::str::from_utf8(key?).ok()?;
    match key {
        BEGIN_KEY => return Some(Record::Begin { partition }),
        END_KEY => return Some(Record::End { partition }),
        _ => {}
    }
    let value: serde_json::Value = serde_json::from_slice(payload?).ok()?;
    let weight = value["weight"].as_f64()?;
    weight.is_finite().then(|| {
        Record::Weight(ItemWeight {
            partition,
            item_id: key.to_owned(),
            weight,
        })
    })
}

/// Publishes the weights this node owns.
pub struct PopularityWriter {
    producer: FutureProducer,
    topic: String,
    node: String,
    timeout: Duration,
}

impl PopularityWriter {
    pub fn new(settings: &Settings, node: &str) -> Result<Self> {
        // Not idempotent, for the reason the changelog writer is not; a weight sent twice is
        // harmless (the value, not a change), one request in flight keeps them in order.
        let producer = settings
            .client_config()
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "1")
            .set("linger.ms", "5")
            .set("message.timeout.ms", millis(settings.produce_timeout))
            .create()?;
        Ok(Self {
            producer,
            topic: settings.popularity_topic(),
            node: node.to_owned(),
            timeout: settings.produce_timeout,
        })
    }

    /// Returns once the broker acknowledged every weight.
    pub async fn publish(&self, weights: &[ItemWeight]) -> Result<()> {
        let records: Vec<(u32, &str, Vec<u8>)> = weights
            .iter()
            .map(|w| {
                (
                    w.partition,
                    w.item_id.as_str(),
                    encode(w.weight, &self.node),
                )
            })
            .collect();
        self.send(&records).await
    }

    /// Publishes `partition` whole: every item it adds to, between the two markers. Returns
    /// once the broker acknowledged them all.
    pub async fn publish_whole(&self, partition: u32, weights: &[(String, f64)]) -> Result<()> {
        let marker = serde_json::json!({ "node": self.node })
            .to_string()
            .into_bytes();
        let records: Vec<(u32, &str, Vec<u8>)> =
            std::iter::once((partition, BEGIN_KEY, marker.clone()))
                .chain(
                    weights
                        .iter()
                        .map(|(id, w)| (partition, id.as_str(), encode(*w, &self.node))),
                )
                .chain(std::iter::once((partition, END_KEY, marker)))
                .collect();
        self.send(&records).await
    }

    /// Sends (partition, key, value) records in order (one request in flight per broker).
    async fn send(&self, records: &[(u32, &str, Vec<u8>)]) -> Result<()> {
        let sends = records.iter().map(|(partition, key, value)| {
            self.producer.send(
                FutureRecord::to(&self.topic)
                    .partition(*partition as i32)
                    .key(key.as_bytes())
                    .payload(value),
                self.timeout,
            )
        });
        try_join_all(sends)
            .await
            .map(drop)
            .map_err(|(e, _)| KafkaError::Client(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weight_reads_back_as_written() {
        let value = encode(2.5, "node-1");
        assert_eq!(
            decode(3, Some(b"i1"), Some(&value)),
            Some(Record::Weight(ItemWeight {
                partition: 3,
                item_id: "i1".into(),
                weight: 2.5
            }))
        );
        assert_eq!(
            decode(3, Some(BEGIN_KEY.as_bytes()), Some(b"{}")),
            Some(Record::Begin { partition: 3 })
        );
        assert_eq!(
            decode(3, Some(END_KEY.as_bytes()), None),
            Some(Record::End { partition: 3 })
        );
        assert_eq!(decode(3, None, Some(&value)), None);
        assert_eq!(decode(3, Some(b"i1"), None), None);
        assert_eq!(decode(3, Some(&[0xff]), Some(&value)), None);
        assert_eq!(decode(3, Some(b"i1"), Some(b"{\"weight\":\"x\"}")), None);
    }
}
