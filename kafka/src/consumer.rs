//! The nodes' consumer group. Offsets are never committed automatically: the caller commits a
//! batch with [`GroupConsumer::commit`] only after it applied it, so a crash replays rather than
//! loses (at-least-once; the apply path drops what it already applied).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message as _, Offset, TopicPartitionList};

use crate::{KafkaError, Result, Settings, Topic, millis};

/// One consumed message, owned.
#[derive(Clone, Debug)]
pub struct Message {
    pub topic: Topic,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Epoch milliseconds the producer or broker stamped, if any.
    pub timestamp: Option<i64>,
}

pub struct GroupConsumer {
    inner: Arc<StreamConsumer>,
    settings: Arc<Settings>,
}

impl GroupConsumer {
    /// Joins the group and subscribes to the three source topics.
    pub fn new(settings: Arc<Settings>) -> Result<Self> {
        let heartbeat = (settings.session_timeout / 6).max(Duration::from_millis(100));
        let inner: StreamConsumer = settings
            .client_config()
            .set("group.id", &settings.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", millis(settings.session_timeout))
            .set("heartbeat.interval.ms", millis(heartbeat))
            .set("enable.partition.eof", "false")
            .create()?;
        let topics: Vec<String> = Topic::ALL.iter().map(|t| settings.topic(*t)).collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        inner.subscribe(&topics)?;
        Ok(Self {
            inner: Arc::new(inner),
            settings,
        })
    }

    /// Waits up to `wait` for a first message, then takes whatever else is already fetched, up
    /// to `max`. Empty when nothing arrived. Client errors (a broker down, a rebalance) are
    /// logged and end the batch: librdkafka reconnects by itself.
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Vec<Message> {
        let mut batch = Vec::new();
        let first = match tokio::time::timeout(wait, self.inner.recv()).await {
            Err(_) => return batch,
            Ok(first) => first,
        };
        let mut next = Some(first);
        while let Some(result) = next.take() {
            match result {
                Ok(message) => {
                    if let Some(message) = self.own(&message) {
                        batch.push(message);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "kafka consumer");
                    break;
                }
            }
            if batch.len() < max {
                next = self.inner.recv().now_or_never();
            }
        }
        batch
    }

    fn own(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Message> {
        Some(Message {
            topic: self.settings.topic_of(m.topic())?,
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp: m.timestamp().to_millis(),
        })
    }

    /// Commits, per topic-partition, the offset after the last of `messages`.
    pub async fn commit(&self, messages: &[Message]) -> Result<()> {
        let mut next: BTreeMap<(Topic, i32), i64> = BTreeMap::new();
        for m in messages {
            let slot = next.entry((m.topic, m.partition)).or_default();
            *slot = (*slot).max(m.offset + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            list.add_partition_offset(
                &self.settings.topic(topic),
                partition,
                Offset::Offset(offset),
            )?;
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.commit(&list, CommitMode::Sync))
            .await
            .map_err(|e| KafkaError::Other(e.to_string()))??;
        Ok(())
    }

    /// The partitions this node holds now, as `topic/partition` names.
    pub fn assignment(&self) -> Vec<String> {
        self.inner
            .assignment()
            .map(|list| {
                list.elements()
                    .iter()
                    .map(|e| format!("{}/{}", e.topic(), e.partition()))
                    .collect()
            })
            .unwrap_or_default()
    }
}
