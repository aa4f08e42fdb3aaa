//! The nodes' consumer group. Offsets are never committed automatically: the caller commits a
//! batch with [`GroupConsumer::commit`] only after it applied it, so a crash replays rather than
//! loses (at-least-once; the apply path drops what it already applied).
//!
//! The group decides which node owns which partition, with the cooperative-sticky assignor
//! unless `events.kafka_options` names another: on a rebalance only the partitions that move
//! stop. librdkafka runs the rebalance inside a poll; the consumer only notes what moved
//! ([`Rebalance`]) and ends the batch there, and the caller acts on it before its next poll
//! (see [`GroupConsumer::take_rebalances`]).
//!
//! When trace contexts travel (`common::telemetry::propagating`, checked once per batch), each
//! message's `traceparent`/`tracestate` headers are kept with it ([`Message::trace`]); otherwise
//! its headers are not read at all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::telemetry::TraceContext;
use futures::FutureExt;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Headers as _;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};

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
    /// The sampled trace context of the request that produced it, from its headers; only read
    /// by [`GroupConsumer::next_batch`], and only when trace contexts travel.
    pub trace: Option<TraceContext>,
}

impl Message {
    /// An owned copy of what a client received from `topic` (its headers unread).
    pub fn of(topic: Topic, m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        Self {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp: m.timestamp().to_millis(),
            trace: None,
        }
    }

    /// The trace context in `m`'s headers, if any.
    fn trace_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<TraceContext> {
        let headers = m.headers()?;
        TraceContext::from_headers(
            headers
                .iter()
                .filter_map(|header| Some((header.key, header.value?))),
        )
    }
}

/// A change of this node's share of the group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rebalance {
    Assigned(Vec<(Topic, i32)>),
    /// Given up in a rebalance: another member may own them next.
    Revoked(Vec<(Topic, i32)>),
    /// Lost without a rebalance this node took part in: the group coordinator was out of
    /// reach past the session timeout (the broker down, or this node cut off). Nobody can have
    /// been assigned them while the broker itself was down; the next assignment says who owns
    /// them now.
    Lost(Vec<(Topic, i32)>),
}

/// Notes the rebalances librdkafka runs inside a poll, in order.
struct GroupContext {
    settings: Arc<Settings>,
    pending: Mutex<Vec<Rebalance>>,
}

impl GroupContext {
    fn partitions(&self, list: &TopicPartitionList) -> Vec<(Topic, i32)> {
        list.elements()
            .iter()
            .filter_map(|e| Some((self.settings.topic_of(e.topic())?, e.partition())))
            .collect()
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        match rebalance {
            rdkafka::consumer::Rebalance::Revoke(list) if consumer.assignment_lost() => {
                let lost = self.partitions(list);
                tracing::warn!(
                    ?lost,
                    "partitions lost: the group coordinator was out of reach"
                );
                self.pending.lock().push(Rebalance::Lost(lost));
            }
            rdkafka::consumer::Rebalance::Revoke(list) => {
                let revoked = self.partitions(list);
                tracing::info!(?revoked, "partitions revoked");
                self.pending.lock().push(Rebalance::Revoked(revoked));
            }
            rdkafka::consumer::Rebalance::Assign(_) => {}
            rdkafka::consumer::Rebalance::Error(error) => {
                tracing::warn!(%error, "rebalance failed");
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        if let rdkafka::consumer::Rebalance::Assign(list) = rebalance {
            let assigned = self.partitions(list);
            tracing::info!(?assigned, "partitions assigned");
            self.pending.lock().push(Rebalance::Assigned(assigned));
        }
    }
}

pub struct GroupConsumer {
    inner: Arc<StreamConsumer<GroupContext>>,
    settings: Arc<Settings>,
}

impl GroupConsumer {
    /// Joins `group` and subscribes to `topics`. With `instance_id` the node is a static member
    /// (`group.instance.id`): a restart within the session timeout gets its partitions back
    /// without a rebalance.
    pub fn new(
        settings: Arc<Settings>,
        group: &str,
        topics: &[Topic],
        instance_id: Option<&str>,
    ) -> Result<Self> {
        let heartbeat = (settings.session_timeout / 6).max(Duration::from_millis(100));
        let mut config = settings.client_config();
        if !settings
            .options
            .contains_key("partition.assignment.strategy")
        {
            config.set("partition.assignment.strategy", "cooperative-sticky");
        }
        if let Some(id) = instance_id {
            config.set("group.instance.id", id);
        }
        let context = GroupContext {
            settings: settings.clone(),
            pending: Mutex::default(),
        };
        let inner: StreamConsumer<GroupContext> = config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", millis(settings.session_timeout))
            .set("heartbeat.interval.ms", millis(heartbeat))
            .set("enable.partition.eof", "false")
            .create_with_context(context)?;
        let topics: Vec<String> = topics.iter().map(|t| settings.topic(*t)).collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        inner.subscribe(&topics)?;
        Ok(Self {
            inner: Arc::new(inner),
            settings,
        })
    }

    /// Waits up to `wait` for a first message, then takes whatever else is already fetched, up
    /// to `max`. Empty when nothing arrived. Client errors (a broker down) are logged and end
    /// the batch: librdkafka reconnects by itself. A rebalance ends the batch too: the batch
    /// may hold messages of partitions no longer this node's, which the caller drops (see
    /// [`GroupConsumer::owned`]).
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Vec<Message> {
        let mut batch = Vec::new();
        let first = match tokio::time::timeout(wait, self.inner.recv()).await {
            Err(_) => return batch,
            Ok(first) => first,
        };
        let traced = common::telemetry::propagating();
        let mut next = Some(first);
        while let Some(result) = next.take() {
            match result {
                Ok(message) => {
                    if let Some(mut owned) = self.own(&message) {
                        if traced {
                            owned.trace = Message::trace_of(&message);
                        }
                        batch.push(owned);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "kafka consumer");
                    break;
                }
            }
            if batch.len() < max && self.inner.context().pending.lock().is_empty() {
                next = self.inner.recv().now_or_never();
            }
        }
        batch
    }

    fn own(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Message> {
        Some(Message::of(self.settings.topic_of(m.topic())?, m))
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

    /// Consumes `partition` of `topic` (assigned here) from `offset`, else from the offset the
    /// group committed, else from the start.
    pub async fn rewind(&self, topic: Topic, partition: i32, offset: Option<u64>) -> Result<u64> {
        let name = self.settings.topic(topic);
        let offset = match offset {
            Some(offset) => offset,
            None => {
                let mut list = TopicPartitionList::new();
                list.add_partition(&name, partition);
                let inner = self.inner.clone();
                let committed = tokio::task::spawn_blocking(move || {
                    inner.committed_offsets(list, Duration::from_secs(10))
                })
                .await
                .map_err(|e| KafkaError::Other(e.to_string()))??;
                match committed.elements().first().map(|e| e.offset()) {
                    Some(Offset::Offset(o)) if o >= 0 => o as u64,
                    _ => 0,
                }
            }
        };
        self.inner.seek(
            &name,
            partition,
            Offset::Offset(offset as i64),
            Duration::from_secs(5),
        )?;
        Ok(offset)
    }

    /// The rebalances since the last call, in order.
    pub fn take_rebalances(&self) -> Vec<Rebalance> {
        std::mem::take(&mut *self.inner.context().pending.lock())
    }

    /// The topic-partitions assigned to this node now.
    pub fn owned(&self) -> std::collections::HashSet<(Topic, i32)> {
        self.inner
            .assignment()
            .map(|list| self.inner.context().partitions(&list).into_iter().collect())
            .unwrap_or_default()
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
