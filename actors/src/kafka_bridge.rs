//! The Kafka bridge: with `events.url = kafka://...`, the node's own log becomes a journal fed
//! from the consumer group, and everything downstream (ingest actors, sessions, archive,
//! training) stays as it is in embedded mode.
//!
//! Per batch: decode every message; catalog changes go to the catalog, malformed messages (and
//! catalog changes the store refuses as invalid data) to `<topic>.dlq` (with the reason in a
//! header), events to the journal (which drops event ids it
//! already holds). Then the bridge waits until the ingest actors have applied the journaled
//! events to session state in RocksDB, and only then commits the Kafka offsets. A crash anywhere
//! replays the batch and changes nothing twice: at-least-once delivery, exactly-once effect.
//!
//! A broker outage never fails the actor (its supervisor would escalate a long one): the bridge
//! retries, with backoff, what needs the broker, and librdkafka reconnects by itself.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use common::partition::partition_for;
use common::{ApiError, ErrorCode};
use kafka::{DeadLetter, Decoded, GroupConsumer, Producer, Settings, decode};
use prometheus::{IntCounterVec, register_int_counter_vec};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;

use crate::Services;
use crate::mailbox;
use crate::obs::Obs;

static MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "streamrec_kafka_messages_total",
        "Kafka messages consumed, by source topic and outcome (applied, dead_letter).",
        &["topic", "outcome"]
    )
    .expect("metric registers once")
});

/// How long a batch may wait for its events to be applied before the bridge fails and replays.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a step that needs a remote store is retried before the bridge fails and replays.
const RETRY_FOR: Duration = Duration::from_secs(120);
const POLL_WAIT: Duration = Duration::from_millis(500);

pub enum BridgeMsg {
    Poll,
}

pub struct KafkaBridge;

pub struct BridgeArgs {
    pub services: Arc<Services>,
    pub settings: Arc<Settings>,
    pub producer: Producer,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BridgeObs {
    pub group: String,
    pub topics_ready: bool,
    pub assignment: Vec<String>,
    pub num_messages: u64,
    pub num_events: u64,
    pub num_duplicates: u64,
    pub num_catalog_changes: u64,
    pub num_dead_letters: u64,
    pub num_batches: u64,
    pub last_error: Option<String>,
}

pub struct BridgeState {
    args: BridgeArgs,
    consumer: Option<GroupConsumer>,
    obs_state: BridgeObs,
    obs: Arc<Obs<BridgeObs>>,
}

impl Actor for KafkaBridge {
    type Msg = BridgeMsg;
    type State = BridgeState;
    type Arguments = BridgeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<BridgeMsg>,
        args: BridgeArgs,
    ) -> Result<BridgeState, ActorProcessingErr> {
        let obs_state = BridgeObs {
            group: args.settings.group.clone(),
            ..Default::default()
        };
        let obs = args
            .services
            .obs
            .register(&myself.get_cell(), "kafka_bridge", &obs_state);
        Ok(BridgeState {
            args,
            consumer: None,
            obs_state,
            obs,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<BridgeMsg>,
        _: &mut BridgeState,
    ) -> Result<(), ActorProcessingErr> {
        mailbox::tell(&myself, BridgeMsg::Poll)?;
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<BridgeMsg>,
        state: &mut BridgeState,
    ) -> Result<(), ActorProcessingErr> {
        state.args.services.obs.deregister(&myself.get_cell());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<BridgeMsg>,
        BridgeMsg::Poll: BridgeMsg,
        state: &mut BridgeState,
    ) -> Result<(), ActorProcessingErr> {
        state.obs.handled();
        if state.consumer.is_none() {
            // Topics first: a consumer subscribed to a missing topic may not see it for minutes.
            match kafka::ensure_topics(&state.args.settings, Duration::from_secs(5)).await {
                Ok(_) => {
                    state.consumer = Some(GroupConsumer::new(state.args.settings.clone())?);
                    state.obs_state.topics_ready = true;
                    state.obs_state.last_error = None;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot create Kafka topics yet; retrying");
                    state.obs_state.last_error = Some(error.to_string());
                    state.obs.publish(&state.obs_state);
                    mailbox::tell_after(myself.clone(), Duration::from_secs(1), || BridgeMsg::Poll);
                    return Ok(());
                }
            }
        }
        state.run_batch().await?;
        mailbox::tell(&myself, BridgeMsg::Poll)?;
        Ok(())
    }
}

impl BridgeState {
    async fn run_batch(&mut self) -> Result<(), ActorProcessingErr> {
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        let services = &self.args.services;
        let settings = &self.args.settings;
        let batch = consumer
            .next_batch(services.config.events.consume_batch, POLL_WAIT)
            .await;
        self.obs_state.assignment = consumer.assignment();
        if batch.is_empty() {
            self.obs.publish(&self.obs_state);
            return Ok(());
        }
        let now = common::now_millis();
        let mut events = Vec::new();
        for message in &batch {
            let topic = message.topic.base_name();
            let applied = match decode(settings, message, now) {
                Ok(Decoded::Event(event)) => {
                    events.push(event);
                    MESSAGES.with_label_values(&[topic, "applied"]).inc();
                    continue;
                }
                Ok(Decoded::Upsert(item)) => {
                    apply_catalog("catalog upsert", || services.upsert_item(item.clone())).await?
                }
                Ok(Decoded::Delete(item_id)) => {
                    apply_catalog("catalog delete", || services.delete_item(&item_id)).await?
                }
                Err(reason) => Err(reason),
            };
            if let Err(reason) = applied {
                tracing::warn!(topic, partition = message.partition, offset = message.offset, %reason, "dead letter");
                let producer = &self.args.producer;
                retry("dead letter", || {
                    producer.dead_letter(DeadLetter {
                        topic: message.topic,
                        partition: message.partition,
                        offset: message.offset,
                        key: message.key.as_deref(),
                        payload: message.payload.as_deref(),
                        reason: &reason,
                    })
                })
                .await?;
                self.obs_state.num_dead_letters += 1;
                MESSAGES.with_label_values(&[topic, "dead_letter"]).inc();
                continue;
            }
            self.obs_state.num_catalog_changes += 1;
            MESSAGES.with_label_values(&[topic, "applied"]).inc();
        }
        self.obs_state.num_events += events.len() as u64;
        self.obs_state.num_duplicates += self.journal_and_apply(events).await? as u64;
        // A failed commit loses nothing: the next batch's commit covers these offsets, and a
        // replay after a crash is dropped as duplicates.
        match consumer.commit(&batch).await {
            Ok(()) => self.obs_state.last_error = None,
            Err(error) => {
                tracing::warn!(%error, "committing Kafka offsets failed; the next commit covers them");
                self.obs_state.last_error = Some(error.to_string());
            }
        }
        self.obs_state.num_messages += batch.len() as u64;
        self.obs_state.num_batches += 1;
        self.obs.publish(&self.obs_state);
        Ok(())
    }

    /// Appends `events` to the journal and waits until ingest has applied them; returns how many
    /// the journal already held.
    async fn journal_and_apply(
        &self,
        events: Vec<common::Event>,
    ) -> Result<usize, ActorProcessingErr> {
        if events.is_empty() {
            return Ok(0);
        }
        let log = &self.args.services.log;
        let n = log.num_partitions();
        let partitions: std::collections::BTreeSet<u32> = events
            .iter()
            .map(|e| partition_for(&e.user_id, n))
            .collect();
        let outcome = log.append(events).await?;
        // Nothing else appends to the journal in Kafka mode: the high watermarks now end with
        // this batch.
        let targets: BTreeMap<u32, u64> = partitions
            .into_iter()
            .map(|p| (p, *log.high_watermark(p).borrow()))
            .collect();
        let applied = async {
            let mut pause = Duration::from_millis(1);
            loop {
                let mut done = true;
                for (&p, &target) in &targets {
                    done &= log.committed(storage::INGEST, p)? >= target;
                }
                if done {
                    return Ok::<_, storage::StorageError>(());
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        };
        tokio::time::timeout(APPLY_TIMEOUT, applied)
            .await
            .map_err(|_| "journaled events were not applied in time")??;
        Ok(outcome.duplicates)
    }
}

/// Applies a catalog change, retrying while the store is unavailable. A change the store refuses
/// as invalid (`invalid_argument`: data PostgreSQL will never take) is not retried: the outer
/// `Ok(Err(reason))` sends it to the dead-letter topic, and the partition goes on.
async fn apply_catalog<T, F>(
    what: &str,
    mut step: impl FnMut() -> F,
) -> Result<Result<(), String>, ActorProcessingErr>
where
    F: Future<Output = Result<T, ApiError>>,
{
    let outcome = retry(what, || {
        let attempt = step();
        async move {
            match attempt.await {
                Ok(_) => Ok(Ok(())),
                Err(e) if e.code == ErrorCode::InvalidArgument => {
                    Ok(Err(format!("invalid item: {}", e.message)))
                }
                Err(e) => Err(e),
            }
        }
    })
    .await?;
    Ok(outcome)
}

/// Runs `step` until it succeeds, with backoff, for at most [`RETRY_FOR`].
async fn retry<T, E, F>(what: &str, mut step: impl FnMut() -> F) -> Result<T, ActorProcessingErr>
where
    F: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, what, "retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(format!("{what}: {error}").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_catalog_change_the_store_refuses_is_a_dead_letter_not_a_retry() {
        let attempts = AtomicUsize::new(0);
        let refused = apply_catalog("catalog upsert", || {
            attempts.fetch_add(1, Ordering::Relaxed);
            async {
                Err::<(), _>(ApiError::invalid(
                    "the store refused a value as invalid (SQLSTATE 22021)",
                ))
            }
        })
        .await
        .expect("not a failure of the bridge");
        let reason = refused.expect_err("a dead letter");
        assert!(reason.contains("SQLSTATE 22021"), "{reason}");
        assert_eq!(attempts.load(Ordering::Relaxed), 1, "never retried");

        // An outage is retried until the store answers (with backoff: 0.7 s here).
        let attempts = AtomicUsize::new(0);
        let applied = apply_catalog("catalog upsert", || {
            let n = attempts.fetch_add(1, Ordering::Relaxed);
            async move {
                if n < 3 {
                    Err(ApiError::unavailable("a backing store is unavailable"))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .expect("applied in the end");
        assert_eq!((applied, attempts.load(Ordering::Relaxed)), (Ok(()), 4));
    }
}
