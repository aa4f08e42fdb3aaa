//! What every node of a cluster follows besides its own partitions: from the end on, the
//! sessions changelog (each owner's changes to its users, so that a node hears of changes to
//! users it does not own) and `user-events` (every event, so that trending counts the whole
//! cluster's activity); from its start, the item popularity (each owner's weights, so that
//! popularity counts every partition's users). Like [`StatusReader`](crate::status::StatusReader) it assigns the
//! partitions itself: it is no member of the nodes' group and commits nothing.

use std::time::Duration;

use common::Event;
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use storage::changelog::{Change, ChangeRecord};

use crate::popularity::Record as PopularityRecord;
use crate::{Decoded, Message, Result, Settings, Topic, decode};

/// One record the tail read.
#[derive(Debug)]
pub enum Tailed {
    /// A change of the changelog's `partition`.
    Change {
        partition: u32,
        record: ChangeRecord,
    },
    /// An event of `user-events`.
    Event(Event),
    /// What a partition's users add to an item, as its owner published it.
    Popularity(PopularityRecord),
}

pub struct Tail {
    consumer: StreamConsumer,
    settings: Settings,
}

impl Tail {
    pub fn new(settings: &Settings, node_id: &str) -> Result<Self> {
        let consumer: StreamConsumer =
            settings.reader_config("tail", node_id, "latest").create()?;
        let mut partitions = TopicPartitionList::new();
        for topic in [
            settings.changelog_topic(),
            settings.topic(Topic::UserEvents),
        ] {
            for partition in 0..settings.partitions {
                partitions.add_partition_offset(&topic, partition, Offset::End)?;
            }
        }
        for partition in 0..settings.partitions {
            partitions.add_partition_offset(
                &settings.popularity_topic(),
                partition,
                Offset::Beginning,
            )?;
        }
        consumer.assign(&partitions)?;
        Ok(Self {
            consumer,
            settings: settings.clone(),
        })
    }

    /// Waits up to `wait` for a first record, then takes whatever else is already fetched, up
    /// to `max`. What cannot be read (a bad event is the owner's dead letter) is skipped.
    /// Cancel-safe; client errors are logged and end the batch.
    pub async fn next(&self, max: usize, wait: Duration) -> Vec<Tailed> {
        let mut records = Vec::new();
        let Ok(first) = tokio::time::timeout(wait, self.consumer.recv()).await else {
            return records;
        };
        let changelog = self.settings.changelog_topic();
        let popularity = self.settings.popularity_topic();
        let now = common::now_millis();
        let mut next = Some(first);
        while let Some(received) = next.take() {
            match received {
                Ok(m) if m.topic() == changelog => {
                    match ChangeRecord::decode(m.key(), m.payload()) {
                        Ok(record) if record.change == Change::Marker => {}
                        Ok(record) => records.push(Tailed::Change {
                            partition: m.partition() as u32,
                            record,
                        }),
                        Err(error) => {
                            tracing::warn!(offset = m.offset(), %error, "skipped a changelog record");
                        }
                    }
                }
                Ok(m) if m.topic() == popularity => {
                    let partition = m.partition() as u32;
                    match crate::popularity::decode(partition, m.key(), m.payload()) {
                        Some(record) => records.push(Tailed::Popularity(record)),
                        None => {
                            tracing::warn!(
                                offset = m.offset(),
                                partition,
                                "skipped a popularity record"
                            );
                        }
                    }
                }
                Ok(m) => {
                    let message = Message::of(Topic::UserEvents, &m);
                    if let Ok(Decoded::Event(event)) = decode(&self.settings, &message, now) {
                        records.push(Tailed::Event(event));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "kafka tail");
                    break;
                }
            }
            if records.len() < max {
                next = self.consumer.recv().now_or_never();
            }
        }
        records
    }
}
