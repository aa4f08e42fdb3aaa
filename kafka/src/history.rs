//! `user-events` read whole, every partition, for training: a cluster's nodes each archive the
//! partitions they own, so the archive lags the broker by up to an archive interval for every
//! other node's users. The trainer reads what the broker still holds since a point in time and
//! drops what the archive already gave it (by user and event id).
//!
//! Like the tail it assigns the partitions itself and commits nothing. Where each partition
//! ends is fixed when the read begins; some brokers (tansu) report one past the last batch's
//! base offset as the high watermark, so the read goes on until that offset and then takes
//! whatever else is already fetched.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use storage::{EventHistory, Record, StorageError};

use crate::{Decoded, KafkaError, Message, Settings, Topic, decode};

/// How long a broker may take to answer one metadata request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the whole read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(600);
/// Once every partition reached its end: how long to wait for more already in flight.
const DRAIN: Duration = Duration::from_millis(200);
/// A partition that sends nothing for this long is taken as read (its end was misreported).
const IDLE: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct History {
    settings: Settings,
    node_id: String,
}

impl History {
    pub fn new(settings: &Settings, node_id: &str) -> Self {
        Self {
            settings: settings.clone(),
            node_id: node_id.to_owned(),
        }
    }

    fn read(&self, since_ms: i64) -> crate::Result<Vec<Record>> {
        let topic = self.settings.topic(Topic::UserEvents);
        let consumer: BaseConsumer = self
            .settings
            .reader_config("history", &self.node_id, "earliest")
            .create()?;
        // A topic nobody wrote to yet (a cluster's first start) holds nothing to read.
        let metadata = consumer.fetch_metadata(Some(&topic), REQUEST_TIMEOUT)?;
        let known: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if known.is_empty() {
            return Ok(Vec::new());
        }
        let mut wanted = TopicPartitionList::new();
        for &partition in &known {
            wanted.add_partition_offset(&topic, partition, Offset::Offset(since_ms.max(0)))?;
        }
        // Offsets by time; a broker that cannot tell gives the start of each partition.
        let starts = consumer
            .offsets_for_times(wanted, REQUEST_TIMEOUT)
            .inspect_err(|error| {
                tracing::warn!(%error, "the broker cannot find offsets by time; reading user-events whole");
            })
            .ok();
        let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
        let mut assign = TopicPartitionList::new();
        for &partition in &known {
            let (low, high) = consumer.fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)?;
            let start = match starts
                .as_ref()
                .and_then(|s| s.find_partition(&topic, partition))
                .map(|p| p.offset())
            {
                Some(Offset::Offset(offset)) => offset.max(low),
                // No message at or after `since_ms`.
                Some(Offset::End) => high,
                _ => low,
            };
            if start < high {
                ends.insert(partition, high - 1);
                assign.add_partition_offset(&topic, partition, Offset::Offset(start))?;
            }
        }
        let mut records = Vec::new();
        if ends.is_empty() {
            return Ok(records);
        }
        consumer.assign(&assign)?;
        let deadline = Instant::now() + READ_TIMEOUT;
        let now = common::now_millis();
        let mut last_message = Instant::now();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(KafkaError::Other(format!(
                    "reading {topic} for training: {} partitions not read to their end in time",
                    ends.len()
                )));
            }
            let wait = if ends.is_empty() {
                DRAIN
            } else {
                left.min(Duration::from_millis(500))
            };
            let Some(message) = consumer.poll(wait) else {
                if ends.is_empty() {
                    return Ok(records);
                }
                if last_message.elapsed() >= IDLE {
                    tracing::warn!(partitions = ?ends.keys().collect::<Vec<_>>(), "user-events partitions ended before the offset the broker reported");
                    return Ok(records);
                }
                continue;
            };
            let m = message?;
            last_message = Instant::now();
            if ends
                .get(&m.partition())
                .is_some_and(|end| m.offset() >= *end)
            {
                ends.remove(&m.partition());
            }
            let message = Message::of(Topic::UserEvents, &m);
            // What cannot be decoded is a dead letter of its owner, and never trained on.
            if let Ok(Decoded::Event(event)) = decode(&self.settings, &message, now) {
                records.push(Record {
                    partition: m.partition() as u32,
                    offset: m.offset() as u64,
                    received_ms: message.timestamp,
                    event,
                });
            }
        }
    }
}

#[async_trait]
impl EventHistory for History {
    async fn since(&self, since_ms: i64) -> storage::error::Result<Vec<Record>> {
        let history = self.clone();
        tokio::task::spawn_blocking(move || history.read(since_ms))
            .await
            .map_err(|e| StorageError::Backend(e.to_string()))?
            .map_err(|e| StorageError::Backend(format!("reading user-events: {e}")))
    }
}
