//! The sessions changelog topic, `<prefix>sessions-changelog` (what a record holds:
//! [`storage::changelog`]). Partitioned as `user-events`, so a user's records sit in the
//! partition of the user's events and move with it; keyed by user, so a compacting broker keeps
//! each user's latest.
//!
//! [`ChangelogWriter`] is the owner's side: a batch of records is acknowledged (`acks=all`)
//! before the bridge commits the input offsets they cover. [`read_partition`] is the new
//! owner's: one partition, from an offset to the end it had when the read began.

use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use storage::changelog::{ChangeRecord, Changelog, MARKER_KEY};
use storage::error::StorageError;

use crate::{KafkaError, Result, Settings, millis};

/// The base name of the changelog topic (after `events.topic_prefix`).
pub const CHANGELOG_TOPIC: &str = "sessions-changelog";

/// Produces changelog records to the partition of their user.
pub struct ChangelogWriter {
    producer: FutureProducer,
    topic: String,
    partitions: u32,
    timeout: Duration,
    /// The store whose changes this writer records (see [`storage::Db::store_id`]).
    writer: String,
}

impl ChangelogWriter {
    pub fn new(settings: &Settings, writer: String) -> Result<Self> {
        // Not idempotent: a second idempotent producer in the node made tansu fence the events
        // producer (ProducerFenced on every partition of user-events). A record sent twice is
        // harmless (a whole state; the last one wins); one request in flight keeps them in order.
        let producer = settings
            .client_config()
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "1")
            .set("linger.ms", "1")
            .set("message.timeout.ms", millis(settings.produce_timeout))
            .create()?;
        Ok(Self {
            producer,
            topic: settings.changelog_topic(),
            partitions: settings.partitions as u32,
            timeout: settings.produce_timeout,
            writer,
        })
    }
}

#[async_trait::async_trait]
impl Changelog for ChangelogWriter {
    fn writer(&self) -> &str {
        &self.writer
    }

    async fn record(&self, mut records: Vec<ChangeRecord>) -> storage::error::Result<()> {
        for record in &mut records {
            record.writer.clone_from(&self.writer);
        }
        let values: Vec<Vec<u8>> = records.iter().map(ChangeRecord::encode).collect();
        let sends = records.iter().zip(&values).map(|(record, value)| {
            let partition = common::partition::partition_for(&record.user_id, self.partitions);
            self.producer.send(
                FutureRecord::to(&self.topic)
                    .partition(partition as i32)
                    .key(record.user_id.as_bytes())
                    .payload(value),
                self.timeout,
            )
        });
        try_join_all(sends)
            .await
            .map(drop)
            .map_err(|(e, _)| StorageError::Backend(format!("sessions changelog: {e}")))
    }

    async fn mark(&self, partition: u32) -> storage::error::Result<u64> {
        let mut marker = ChangeRecord::erased(MARKER_KEY, 0);
        marker.change = storage::Change::Marker;
        marker.writer.clone_from(&self.writer);
        let value = marker.encode();
        let delivery = self
            .producer
            .send(
                FutureRecord::to(&self.topic)
                    .partition(partition as i32)
                    .key(MARKER_KEY)
                    .payload(&value),
                self.timeout,
            )
            .await
            .map_err(|(e, _)| StorageError::Backend(format!("sessions changelog marker: {e}")))?;
        Ok(delivery.offset as u64)
    }
}

/// Reads `partition` of the changelog from `from` through offset `until` (a marker the reader
/// wrote with [`Changelog::mark`] just before, so everything recorded before the read began is
/// read, whatever high watermark the broker reports), calling `apply` on each record in order;
/// returns the offset after the last one read (the next to read), and `apply` back. A record
/// that cannot be decoded is logged and skipped: no node wrote it.
pub async fn read_partition<F>(
    settings: &Settings,
    node_id: &str,
    partition: u32,
    from: u64,
    until: u64,
    timeout: Duration,
    mut apply: F,
) -> Result<(u64, F)>
where
    F: FnMut(ChangeRecord) -> storage::error::Result<()> + Send + 'static,
{
    let topic = settings.changelog_topic();
    let consumer: BaseConsumer = settings
        .reader_config("restore", node_id, "earliest")
        .create()?;
    let deadline = std::time::Instant::now() + timeout;
    // Blocking calls (poll) run on the blocking pool, one read at a time.
    tokio::task::spawn_blocking(move || {
        let mut next = from as i64;
        if next > until as i64 {
            return Ok((from, apply));
        }
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, partition as i32, Offset::Offset(next))?;
        consumer.assign(&list)?;
        while next <= until as i64 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(KafkaError::Other(format!(
                    "restoring {topic}/{partition}: at offset {next} of {until} when time ran out"
                )));
            }
            let Some(message) = consumer.poll(left.min(Duration::from_millis(500))) else {
                continue;
            };
            let message = message?;
            next = message.offset() + 1;
            match ChangeRecord::decode(message.key(), message.payload()) {
                Ok(record) => apply(record)
                    .map_err(|e| KafkaError::Other(format!("restoring {topic}: {e}")))?,
                Err(error) => {
                    tracing::warn!(partition, offset = message.offset(), %error, "skipped a changelog record");
                }
            }
        }
        Ok((next as u64, apply))
    })
    .await
    .map_err(|e| KafkaError::Other(e.to_string()))?
}
