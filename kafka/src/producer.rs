//! The producer: events from `POST /v1/events` and dead letters.
//!
//! Idempotent (`enable.idempotence`, hence `acks=all`): a retry inside librdkafka never
//! duplicates or reorders a partition's messages. Keys are partitioned with `murmur2_random`,
//! the Java client's default, so a user's events land on the same partition whichever client
//! produced them (and on the partition `common::partition::partition_for` computes).
//!
//! Events published for a request (the [`EventSink`]) are sent in a `kafka.produce` span, and
//! when that span is sampled each message carries its W3C context in the `traceparent` (and
//! `tracestate`) headers, so that the apply and the pushes the event causes join the request's
//! trace on whichever node consumes it. With tracing off, no header is written.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::telemetry::TraceContext;
use common::{Event, Item};
use futures::future::join_all;
use parking_lot::RwLock;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use storage::{AppendOutcome, EventSink, StorageError};

use crate::{Result, Settings, Topic, millis};

/// Cheap to clone; clones share one librdkafka producer, replaced after a fatal error.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<RwLock<FutureProducer>>,
    settings: Arc<Settings>,
}

/// A message that cannot be applied, on its way to `<topic>.dlq`.
pub struct DeadLetter<'a> {
    pub topic: Topic,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub reason: &'a str,
}

impl Producer {
    pub fn new(settings: Arc<Settings>) -> Result<Self> {
        let inner = Self::create(&settings)?;
        Ok(Self {
            inner: Arc::new(RwLock::new(inner)),
            settings,
        })
    }

    fn create(settings: &Settings) -> Result<FutureProducer> {
        Ok(settings
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "2")
            .set("message.timeout.ms", millis(settings.produce_timeout))
            .create()?)
    }

    fn current(&self) -> FutureProducer {
        self.inner.read().clone()
    }

    /// An idempotent producer whose identity the broker no longer accepts (fenced after a broker
    /// lost its producer state, a sequence gap, a fatal error) refuses every later message:
    /// replace it. Returns whether it did.
    fn replace_if_broken(&self, error: &crate::KafkaError) -> bool {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let mut inner = self.inner.write();
        let code = match error {
            crate::KafkaError::Client(e) => e.rdkafka_error_code(),
            crate::KafkaError::Other(_) => None,
        };
        let reason = match (inner.client().fatal_error(), code) {
            (Some((code, reason)), _) => format!("{code:?}: {reason}"),
            (
                None,
                Some(
                    code @ (Code::ProducerFenced
                    | Code::InvalidProducerEpoch
                    | Code::UnknownProducerId
                    | Code::OutOfOrderSequenceNumber
                    | Code::InvalidProducerIdMapping),
                ),
            ) => format!("{code:?}"),
            _ => return false,
        };
        match Self::create(&self.settings) {
            Ok(fresh) => {
                tracing::warn!(%reason, "the broker refused the Kafka producer; replaced it");
                *inner = fresh;
                true
            }
            Err(error) => {
                tracing::error!(%error, "cannot replace the failed Kafka producer");
                false
            }
        }
    }

    /// Publishes events to `user-events`, keyed by user; returns once the broker acked them all.
    /// On error some events may be stored: a retry with the same event ids is safe, since the
    /// consumer path drops events it already applied.
    pub async fn publish(&self, events: &[Event]) -> Result<()> {
        self.publish_with(events, None).await
    }

    /// [`Producer::publish`] for the current request: in a `kafka.produce` span, whose context
    /// (when sampled) every message carries in its headers.
    pub async fn publish_traced(&self, events: &[Event]) -> Result<()> {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "kafka.produce",
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.destination.name = %self.settings.topic(Topic::UserEvents),
            messaging.batch.message_count = events.len(),
        );
        let trace = TraceContext::of(&span);
        self.publish_with(events, trace.as_ref())
            .instrument(span)
            .await
    }

    async fn publish_with(&self, events: &[Event], trace: Option<&TraceContext>) -> Result<()> {
        match self.publish_once(events, trace).await {
            Err(e) if self.replace_if_broken(&e) => self.publish_once(events, trace).await,
            result => result,
        }
    }

    async fn publish_once(&self, events: &[Event], trace: Option<&TraceContext>) -> Result<()> {
        let topic = self.settings.topic(Topic::UserEvents);
        let producer = self.current();
        let sends = events.iter().map(|event| {
            let (topic, producer) = (&topic, &producer);
            async move {
                let payload = serde_json::to_vec(event)
                    .map_err(|e| crate::KafkaError::Other(e.to_string()))?;
                let mut record = FutureRecord::to(topic)
                    .key(event.user_id.as_bytes())
                    .payload(&payload);
                if let Some(trace) = trace {
                    record = record.headers(trace_headers(trace));
                }
                producer
                    .send(record, self.settings.produce_timeout)
                    .await
                    .map(drop)
                    .map_err(|(e, _)| crate::KafkaError::Client(e))
            }
        });
        join_all(sends).await.into_iter().collect()
    }

    /// Publishes a catalogue change to `product-updates`, keyed by item (so that one item's
    /// changes stay in order): the item as `PUT /v1/items/{id}` takes it, with `item_id`, or
    /// `{"item_id": .., "deleted": true}` for `None`. Returns once the broker acked it.
    pub async fn publish_item(&self, item_id: &str, item: Option<&Item>) -> Result<()> {
        let value = match item {
            Some(item) => serde_json::json!({
                "item_id": item.item_id,
                "title": item.title,
                "categories": item.categories,
                "tags": item.tags,
                "attributes": item.attributes,
                "available": item.available,
            }),
            None => serde_json::json!({"item_id": item_id, "deleted": true}),
        };
        let payload = value.to_string();
        let topic = self.settings.topic(Topic::ProductUpdates);
        let send = || async {
            self.current()
                .send(
                    FutureRecord::to(&topic).key(item_id).payload(&payload),
                    self.settings.produce_timeout,
                )
                .await
                .map(drop)
                .map_err(|(e, _)| crate::KafkaError::Client(e))
        };
        match send().await {
            Err(e) if self.replace_if_broken(&e) => send().await,
            result => result,
        }
    }

    /// Writes `letter` to its dead-letter topic, with the original key and bytes, the reason in
    /// the `reason` header and where it came from in `source.topic|partition|offset`.
    pub async fn dead_letter(&self, letter: DeadLetter<'_>) -> Result<()> {
        match self.dead_letter_once(&letter).await {
            Err(e) if self.replace_if_broken(&e) => self.dead_letter_once(&letter).await,
            result => result,
        }
    }

    async fn dead_letter_once(&self, letter: &DeadLetter<'_>) -> Result<()> {
        let source = self.settings.topic(letter.topic);
        let (partition, offset) = (letter.partition.to_string(), letter.offset.to_string());
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "reason",
                value: Some(letter.reason),
            })
            .insert(Header {
                key: "source.topic",
                value: Some(&source),
            })
            .insert(Header {
                key: "source.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "source.offset",
                value: Some(&offset),
            });
        let dlq = self.settings.dlq(letter.topic);
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&dlq).headers(headers);
        if let Some(key) = letter.key {
            record = record.key(key);
        }
        if let Some(payload) = letter.payload {
            record = record.payload(payload);
        }
        self.current()
            .send(record, self.settings.produce_timeout)
            .await
            .map(drop)
            .map_err(|(e, _)| crate::KafkaError::Client(e))
    }

    /// Whether a broker answers a metadata request within `timeout`.
    pub async fn health(&self, timeout: Duration) -> std::result::Result<(), String> {
        let client = self.current();
        let topic = self.settings.topic(Topic::UserEvents);
        tokio::task::spawn_blocking(move || client.client().fetch_metadata(Some(&topic), timeout))
            .await
            .map_err(|e| e.to_string())?
            .map(drop)
            .map_err(|e| format!("kafka: {e}"))
    }
}

/// The headers that carry `trace` with a message.
fn trace_headers(trace: &TraceContext) -> OwnedHeaders {
    trace.headers().fold(
        OwnedHeaders::new_with_capacity(2),
        |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        },
    )
}

#[async_trait]
impl EventSink for Producer {
    async fn publish(&self, events: Vec<Event>) -> storage::error::Result<AppendOutcome> {
        let accepted = events.len();
        Producer::publish_traced(self, &events)
            .await
            .map_err(|e| StorageError::Backend(e.to_string()))?;
        // Duplicates are only known where events are applied: the consumer path drops them.
        Ok(AppendOutcome {
            accepted,
            duplicates: 0,
        })
    }

    async fn health(&self) -> std::result::Result<(), String> {
        Producer::health(self, Duration::from_secs(1)).await
    }
}
