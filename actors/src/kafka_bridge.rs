//! The Kafka bridge: with `events.url = kafka://...`, the node's own log becomes a journal fed
//! from the consumer group, and everything downstream (ingest actors, sessions, archive,
//! training) stays as it is in embedded mode.
//!
//! The group decides which node owns which partition of `user-events`, and so which users (see
//! [`handoff`](crate::handoff)): between two batches the bridge acts on what moved, releasing
//! what it lost and restoring from the sessions changelog what it gained before applying any of
//! it. `transaction-stream` is read by whichever node the group gave its partitions and
//! re-produced into `user-events` (same key, same event id), so that a user's events of both
//! topics reach the one owner of the user.
//!
//! Per batch: decode every message; catalog changes go to the catalog, malformed messages (and
//! catalog changes the store refuses as invalid data) to `<topic>.dlq` (with the reason in a
//! header), transactions back to `user-events`, events to the journal (which drops event ids it
//! already holds). Then the bridge waits until the ingest actors have applied the journaled
//! events to session state in RocksDB, records each touched user's new state in the changelog,
//! and only then commits the Kafka offsets. A crash anywhere replays the batch and changes
//! nothing twice: at-least-once delivery, exactly-once effect.
//!
//! A broker outage never fails the actor (its supervisor would escalate a long one): the bridge
//! retries, with backoff, what needs the broker, and librdkafka reconnects by itself.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use common::partition::partition_for;
use common::{ApiError, ErrorCode, Event, Item};
use kafka::{
    DeadLetter, Decoded, GroupConsumer, Message, Producer, Rebalance, Settings, Topic, decode,
};
use prometheus::{IntCounterVec, register_int_counter_vec};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;
use storage::EventLog;

use crate::obs::Obs;
use crate::session_manager::SessionManagerMsg;
use crate::{Services, Slot, handoff, mailbox};

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

/// What a bridge consumes. A node runs one of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `user-events`, in the nodes' group (`events.group`): the partitions, and so the users,
    /// this node owns. Alone in its group, so that the assignor spreads these partitions, and
    /// not those of other topics, evenly over the nodes.
    Users,
    /// `transaction-stream`, in the nodes' group for it (`<events.group>.transactions`), each
    /// message re-produced into `user-events` for its user's owner.
    Transactions,
    /// `product-updates` whole, in a group of this node's own (`<events.group>.catalog.<node
    /// id>`), so that every node's catalogue view sees every change. Each node reports a
    /// message it cannot apply to the dead-letter topic.
    Catalog,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Users, Role::Transactions, Role::Catalog];

    /// The name the bridge goes by in the console and `/v1/admin/actors`.
    pub fn kind(self) -> &'static str {
        match self {
            Role::Users => "kafka_bridge",
            Role::Transactions => "kafka_transactions",
            Role::Catalog => "kafka_catalog",
        }
    }
}

pub struct BridgeArgs {
    pub role: Role,
    pub services: Arc<Services>,
    pub settings: Arc<Settings>,
    pub producer: Producer,
    /// Where the sessions of partitions this node loses are stopped.
    pub sessions: Slot<SessionManagerMsg>,
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
    pub num_rerouted: u64,
    pub num_batches: u64,
    pub num_restores: u64,
    pub num_restored_records: u64,
    pub last_error: Option<String>,
}

pub struct BridgeState {
    args: BridgeArgs,
    consumer: Option<GroupConsumer>,
    /// Partitions of `user-events` lost with the broker out of reach, until the next assignment.
    lost: Vec<u32>,
    /// Partitions of `user-events` assigned here and not restored yet, with when.
    pending: BTreeMap<u32, Instant>,
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
            .register(&myself.get_cell(), args.role.kind(), &obs_state);
        Ok(BridgeState {
            args,
            consumer: None,
            lost: Vec::new(),
            pending: BTreeMap::new(),
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
                    state.consumer = Some(state.join().await?);
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
    /// Joins the role's group. The users' bridge, restarted, first gives up what its previous
    /// consumer owned: it comes back through the group, and is restored again.
    async fn join(&self) -> Result<GroupConsumer, ActorProcessingErr> {
        let (services, settings) = (&self.args.services, &self.args.settings);
        let config = &services.config;
        let group = &settings.group;
        let consumer = match self.args.role {
            Role::Users => {
                let owned: Vec<u32> = services
                    .cluster
                    .status(false)
                    .partitions
                    .into_keys()
                    .collect();
                if !owned.is_empty() {
                    handoff::release(services, &self.args.sessions, &owned).await?;
                }
                let instance = config
                    .events
                    .static_membership
                    .then_some(config.cluster.node_id.as_str());
                GroupConsumer::new(settings.clone(), group, &[Topic::UserEvents], instance)?
            }
            Role::Transactions => GroupConsumer::new(
                settings.clone(),
                &format!("{group}.transactions"),
                &[Topic::Transactions],
                None,
            )?,
            Role::Catalog => GroupConsumer::new(
                settings.clone(),
                &format!("{group}.catalog.{}", config.cluster.node_id),
                &[Topic::ProductUpdates],
                None,
            )?,
        };
        Ok(consumer)
    }

    async fn run_batch(&mut self) -> Result<(), ActorProcessingErr> {
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        let services = self.args.services.clone();
        let mut batch = consumer
            .next_batch(services.config.events.consume_batch, POLL_WAIT)
            .await;
        let rebalances = consumer.take_rebalances();
        if !rebalances.is_empty() {
            // What the batch holds of partitions given up meanwhile is the next owner's: it
            // reads them again from the committed offsets.
            let owned = consumer.owned();
            batch.retain(|m| owned.contains(&(m.topic, m.partition)));
            self.rebalance(rebalances).await?;
        }
        // Nothing of a partition applies before it is restored: its messages come again, from
        // where the restore says (see `activate_pending`).
        batch.retain(|m| {
            !(m.topic == Topic::UserEvents && self.pending.contains_key(&(m.partition as u32)))
        });
        self.activate_pending().await?;
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        self.obs_state.assignment = consumer.assignment();
        if batch.is_empty() {
            self.obs.publish(&self.obs_state);
            return Ok(());
        }
        let effects = NodeEffects {
            services: &services,
            producer: &self.args.producer,
        };
        let now = common::now_millis();
        let sorted = route(
            &self.args.settings,
            &batch,
            now,
            &effects,
            &mut self.obs_state,
        )
        .await?;
        if !sorted.reroute.is_empty() {
            let producer = &self.args.producer;
            retry("re-producing transactions", RETRY_FOR, || {
                producer.publish(&sorted.reroute)
            })
            .await?;
            self.obs_state.num_rerouted += sorted.reroute.len() as u64;
        }
        let events = sorted.journal;
        self.obs_state.num_events += events.len() as u64;
        let mut applied: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in &events {
            applied
                .entry(e.user_id.clone())
                .or_default()
                .push(e.event_id.clone());
        }
        // Per partition of user-events, the input offset after this batch.
        let mut through: BTreeMap<u32, u64> = BTreeMap::new();
        for m in batch.iter().filter(|m| m.topic == Topic::UserEvents) {
            let next = through.entry(m.partition as u32).or_default();
            *next = (*next).max(m.offset as u64 + 1);
        }
        let duplicates = journal_and_apply(&*services.log, events, APPLY_TIMEOUT).await?;
        self.obs_state.num_duplicates += duplicates as u64;
        if let Some(changelog) = &services.changelog {
            let partitions = services.log.num_partitions();
            let through = |user: &str| through.get(&partition_for(user, partitions)).copied();
            let records = changes(&*services.store, applied, through)?;
            retry("recording the changelog", RETRY_FOR, || {
                changelog.record(records.clone())
            })
            .await?;
        }
        tracing::debug!(
            messages = batch.len(),
            first = ?batch.first().map(|m| (m.topic, m.partition, m.offset)),
            last = ?batch.last().map(|m| (m.topic, m.partition, m.offset)),
            duplicates,
            "batch applied; committing"
        );
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

    /// Acts on what the group moved, in order: partitions of `user-events` revoked are
    /// released, those assigned become pending (see [`Self::activate_pending`]). Partitions lost
    /// with the broker out of reach keep serving reads from this node's state until the next
    /// assignment says whether they are still its own.
    async fn rebalance(&mut self, rebalances: Vec<Rebalance>) -> Result<(), ActorProcessingErr> {
        let services = self.args.services.clone();
        let user_partitions = |list: &[(Topic, i32)]| -> Vec<u32> {
            list.iter()
                .filter(|(topic, _)| *topic == Topic::UserEvents)
                .map(|(_, p)| *p as u32)
                .collect()
        };
        for rebalance in rebalances {
            match rebalance {
                Rebalance::Revoked(list) => {
                    let lost = user_partitions(&list);
                    for p in &lost {
                        self.pending.remove(p);
                    }
                    self.release(&lost).await?;
                }
                Rebalance::Lost(list) => {
                    self.lost.extend(user_partitions(&list));
                }
                Rebalance::Assigned(list) => {
                    let new = user_partitions(&list);
                    // Lost partitions that did not come back are another node's now.
                    let gone: Vec<u32> = std::mem::take(&mut self.lost)
                        .into_iter()
                        .filter(|p| !new.contains(p))
                        .collect();
                    self.release(&gone).await?;
                    if !new.is_empty() {
                        services.cluster.assigned(&new);
                        let now = Instant::now();
                        self.pending.extend(new.into_iter().map(|p| (p, now)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Restores and activates the pending partitions whose previous holder has let go: no other
    /// live member still says it holds the partition (it releases only between its batches, and
    /// says so on the status topic), or it has said so for longer than two member timeouts (a
    /// holder that stopped speaking is dropped after one). Some brokers (tansu) assign a partition
    /// to its new owner for a while before the old one gives it up, or assign it for a moment to
    /// a node that gives it back; waiting here keeps two nodes from applying it at once. Once
    /// restored, the partition is consumed again from the input offset its states cover (else
    /// the committed one): what was fetched meanwhile was dropped.
    async fn activate_pending(&mut self) -> Result<(), ActorProcessingErr> {
        let services = self.args.services.clone();
        let settle = services.config.events.assign_settle;
        let give_up = services.config.cluster.member_timeout * 2;
        let ready: Vec<u32> = self
            .pending
            .iter()
            .filter(|(p, since)| {
                since.elapsed() >= settle
                    && (services.cluster.claimed_elsewhere(**p).is_none()
                        || since.elapsed() >= give_up)
            })
            .map(|(p, _)| *p)
            .collect();
        for partition in ready {
            let restored = handoff::restore(
                &services,
                &self.args.sessions,
                &self.args.settings,
                partition,
            )
            .await?;
            if let Some(consumer) = &self.consumer {
                let from = consumer
                    .rewind(Topic::UserEvents, partition as i32, restored.covered)
                    .await?;
                tracing::info!(
                    partition,
                    from,
                    "partition consumed from what its restore covers"
                );
            }
            self.pending.remove(&partition);
            services.cluster.activate(partition);
            self.obs_state.num_restores += 1;
            self.obs_state.num_restored_records += restored.records;
        }
        Ok(())
    }

    async fn release(&mut self, partitions: &[u32]) -> Result<(), ActorProcessingErr> {
        if partitions.is_empty() {
            return Ok(());
        }
        let stopped =
            handoff::release(&self.args.services, &self.args.sessions, partitions).await?;
        tracing::info!(?partitions, sessions = stopped, "partitions released");
        Ok(())
    }
}

/// The changelog records of a batch: each touched user's state as stored now, with the ids of
/// the batch's events for the user. A user with no state (erased) has nothing to record.
fn changes(
    store: &dyn storage::SessionStore,
    applied: BTreeMap<String, Vec<String>>,
    through: impl Fn(&str) -> Option<u64>,
) -> Result<Vec<storage::ChangeRecord>, ActorProcessingErr> {
    let mut records = Vec::with_capacity(applied.len());
    for (user, ids) in applied {
        if let Some(state) = store.load(&user)? {
            let record = storage::ChangeRecord::state(&user, &state, ids, through(&user))?;
            records.push(record);
        }
    }
    Ok(records)
}

/// Where a batch's catalog changes and dead letters go: the node's catalog and the Kafka
/// producer ([`NodeEffects`]), or an in-memory fake in the tests.
trait Effects {
    fn upsert(&self, item: Item) -> impl Future<Output = Result<(), ApiError>> + Send;
    fn delete(&self, item_id: &str) -> impl Future<Output = Result<bool, ApiError>> + Send;
    fn dead_letter(&self, letter: DeadLetter<'_>)
    -> impl Future<Output = kafka::Result<()>> + Send;
}

struct NodeEffects<'a> {
    services: &'a Services,
    producer: &'a Producer,
}

impl Effects for NodeEffects<'_> {
    async fn upsert(&self, item: Item) -> Result<(), ApiError> {
        self.services.upsert_item(item).await
    }

    async fn delete(&self, item_id: &str) -> Result<bool, ApiError> {
        self.services.delete_item(item_id).await
    }

    async fn dead_letter(&self, letter: DeadLetter<'_>) -> kafka::Result<()> {
        self.producer.dead_letter(letter).await
    }
}

/// One batch, sorted by where its events go.
#[derive(Debug, Default)]
struct Sorted {
    /// Events of `user-events`, in order, for the journal.
    journal: Vec<Event>,
    /// Events of `transaction-stream`, for `user-events` (their owner may be another node).
    reroute: Vec<Event>,
}

/// Sorts one batch: its events are returned in order, for the journal or for `user-events`;
/// catalog changes are applied; what cannot be decoded, or that the catalog refuses as
/// invalid, goes to its topic's dead-letter topic with the reason. Counts catalog changes and
/// dead letters in `obs`.
async fn route(
    settings: &Settings,
    batch: &[Message],
    now: i64,
    effects: &impl Effects,
    obs: &mut BridgeObs,
) -> Result<Sorted, ActorProcessingErr> {
    let mut sorted = Sorted::default();
    for message in batch {
        let topic = message.topic.base_name();
        let applied = match decode(settings, message, now) {
            Ok(Decoded::Event(event)) => {
                match message.topic {
                    Topic::Transactions => sorted.reroute.push(event),
                    _ => sorted.journal.push(event),
                }
                MESSAGES.with_label_values(&[topic, "applied"]).inc();
                continue;
            }
            Ok(Decoded::Upsert(item)) => {
                apply_catalog("catalog upsert", || effects.upsert(item.clone())).await?
            }
            Ok(Decoded::Delete(item_id)) => {
                apply_catalog("catalog delete", || effects.delete(&item_id)).await?
            }
            Err(reason) => Err(reason),
        };
        if let Err(reason) = applied {
            tracing::warn!(topic, partition = message.partition, offset = message.offset, %reason, "dead letter");
            retry("dead letter", RETRY_FOR, || {
                effects.dead_letter(DeadLetter {
                    topic: message.topic,
                    partition: message.partition,
                    offset: message.offset,
                    key: message.key.as_deref(),
                    payload: message.payload.as_deref(),
                    reason: &reason,
                })
            })
            .await?;
            obs.num_dead_letters += 1;
            MESSAGES.with_label_values(&[topic, "dead_letter"]).inc();
            continue;
        }
        obs.num_catalog_changes += 1;
        MESSAGES.with_label_values(&[topic, "applied"]).inc();
    }
    Ok(sorted)
}

/// Appends `events` to the journal and waits, at most `timeout`, until ingest has applied them;
/// returns how many the journal already held.
async fn journal_and_apply(
    log: &dyn EventLog,
    events: Vec<Event>,
    timeout: Duration,
) -> Result<usize, ActorProcessingErr> {
    if events.is_empty() {
        return Ok(0);
    }
    let n = log.num_partitions();
    let partitions: std::collections::BTreeSet<u32> = events
        .iter()
        .map(|e| partition_for(&e.user_id, n))
        .collect();
    let outcome = log.append(events).await?;
    // Nothing else appends to the journal in Kafka mode: the high watermarks now end with this
    // batch.
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
    tokio::time::timeout(timeout, applied)
        .await
        .map_err(|_| "journaled events were not applied in time")??;
    Ok(outcome.duplicates)
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
    let outcome = retry(what, RETRY_FOR, || {
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

/// Runs `step` until it succeeds, with backoff, for at most `limit` ([`RETRY_FOR`]).
async fn retry<T, E, F>(
    what: &str,
    limit: Duration,
    mut step: impl FnMut() -> F,
) -> Result<T, ActorProcessingErr>
where
    F: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + limit;
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
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use storage::{Db, FileEventLog};

    use super::*;

    /// A dead letter as the fake received it: topic, offset, reason, payload.
    type Letter = (Topic, i64, String, Vec<u8>);

    /// Records what the bridge did to the catalog and the dead-letter topics; refuses, as invalid,
    /// an item called `refused`.
    #[derive(Default)]
    struct FakeEffects {
        upserts: Mutex<Vec<String>>,
        deletes: Mutex<Vec<String>>,
        dead_letters: Mutex<Vec<Letter>>,
    }

    impl Effects for FakeEffects {
        async fn upsert(&self, item: Item) -> Result<(), ApiError> {
            self.upserts
                .lock()
                .expect("lock")
                .push(item.item_id.clone());
            if item.item_id == "refused" {
                return Err(ApiError::invalid("the store refused a value as invalid"));
            }
            Ok(())
        }

        async fn delete(&self, item_id: &str) -> Result<bool, ApiError> {
            self.deletes.lock().expect("lock").push(item_id.to_owned());
            Ok(true)
        }

        async fn dead_letter(&self, letter: DeadLetter<'_>) -> kafka::Result<()> {
            self.dead_letters.lock().expect("lock").push((
                letter.topic,
                letter.offset,
                letter.reason.to_owned(),
                letter.payload.unwrap_or_default().to_vec(),
            ));
            Ok(())
        }
    }

    fn settings() -> Settings {
        Settings {
            brokers: "localhost:9092".into(),
            group: "g".into(),
            prefix: "t.".into(),
            partitions: 4,
            replication: 1,
            produce_timeout: Duration::from_secs(1),
            session_timeout: Duration::from_secs(6),
            options: Default::default(),
        }
    }

    fn message(topic: Topic, offset: i64, payload: &str) -> Message {
        Message {
            topic,
            partition: 0,
            offset,
            key: None,
            payload: Some(payload.as_bytes().to_vec()),
            timestamp: Some(1_000),
        }
    }

    #[tokio::test]
    async fn a_batch_is_sorted_into_events_catalog_changes_and_dead_letters() {
        let batch = [
            message(
                Topic::UserEvents,
                0,
                r#"{"event_id":"e1","user_id":"u1","item_id":"i1","kind":"click"}"#,
            ),
            message(Topic::UserEvents, 1, "not json"),
            message(
                Topic::ProductUpdates,
                0,
                r#"{"item_id":"sku-1","title":"Lamp"}"#,
            ),
            message(
                Topic::ProductUpdates,
                1,
                r#"{"item_id":"sku-2","deleted":true}"#,
            ),
            message(
                Topic::ProductUpdates,
                2,
                r#"{"item_id":"refused","title":"Vase"}"#,
            ),
            message(
                Topic::Transactions,
                7,
                r#"{"user_id":"u2","item_id":"i2","kind":"purchase"}"#,
            ),
        ];
        let effects = FakeEffects::default();
        let mut obs = BridgeObs::default();
        let sorted = route(&settings(), &batch, 5, &effects, &mut obs)
            .await
            .expect("nothing fails the bridge");

        // Events in batch order, for the journal; a transaction goes back to `user-events`, for
        // its user's owner, its id (none was given) taken from its place in the topic.
        let ids = |events: &[Event]| -> Vec<String> {
            events.iter().map(|e| e.event_id.clone()).collect()
        };
        assert_eq!(ids(&sorted.journal), ["e1"]);
        assert_eq!(ids(&sorted.reroute), ["t.transaction-stream-0-7"]);
        assert_eq!(*effects.upserts.lock().expect("lock"), ["sku-1", "refused"]);
        assert_eq!(*effects.deletes.lock().expect("lock"), ["sku-2"]);
        // The undecodable message and the refused item are dead letters, with their reasons and
        // the original bytes; the partition goes on.
        let letters = effects.dead_letters.lock().expect("lock").clone();
        assert_eq!(letters.len(), 2, "{letters:?}");
        assert_eq!((letters[0].0, letters[0].1), (Topic::UserEvents, 1));
        assert!(
            letters[0].2.contains("not a valid event object"),
            "{letters:?}"
        );
        assert_eq!(letters[0].3, b"not json");
        assert_eq!((letters[1].0, letters[1].1), (Topic::ProductUpdates, 2));
        assert!(letters[1].2.starts_with("invalid item"), "{letters:?}");
        assert_eq!((obs.num_catalog_changes, obs.num_dead_letters), (2, 2));
    }

    /// A journal of two partitions in `dir`.
    fn journal(dir: &std::path::Path) -> FileEventLog {
        let db = Arc::new(Db::open(&dir.join("db")).expect("db"));
        FileEventLog::open(&dir.join("log"), 2, false, db).expect("log")
    }

    fn clicks(ids: std::ops::Range<u32>) -> Vec<Event> {
        ids.map(|i| Event {
            event_id: format!("e{i}"),
            user_id: format!("u{i}"),
            item_id: "i".into(),
            kind: common::EventKind::Click,
            value: None,
            ts: 1,
        })
        .collect()
    }

    /// What an ingest actor does, in short: commits each partition up to its high watermark,
    /// once the journal holds `n` records.
    async fn ingest(log: &FileEventLog, n: u64) {
        let ends = move || (0..2).map(move |p| *log.high_watermark(p).borrow());
        let journaled =
            testkit::wait_until(async || ends().sum::<u64>() == n, Duration::from_secs(5));
        assert!(journaled.await, "the events never reached the journal");
        for (p, end) in ends().enumerate() {
            log.commit(storage::INGEST, p as u32, end).expect("commit");
        }
    }

    #[tokio::test]
    async fn a_batch_is_done_once_ingest_applied_it_and_a_replay_is_counted_as_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = journal(dir.path());
        let (journaled, ()) = tokio::join!(
            journal_and_apply(&log, clicks(0..6), Duration::from_secs(10)),
            ingest(&log, 6),
        );
        assert_eq!(journaled.expect("applied"), 0);
        for p in 0..2 {
            assert_eq!(
                log.committed(storage::INGEST, p).expect("committed"),
                *log.high_watermark(p).borrow()
            );
        }
        // A replay of the batch (after a crash before the Kafka commit) adds nothing to wait for.
        let replayed = journal_and_apply(&log, clicks(0..6), Duration::from_secs(10)).await;
        assert_eq!(replayed.expect("nothing to apply"), 6);
    }

    #[tokio::test]
    async fn a_batch_ingest_never_applies_fails_the_bridge_after_the_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = journal(dir.path());
        let error = journal_and_apply(&log, clicks(0..3), Duration::from_millis(100))
            .await
            .expect_err("not applied");
        assert!(error.to_string().contains("not applied in time"), "{error}");
        // Nothing but the journal write happened: ingest resumes from where it was.
        assert_eq!(log.committed(storage::INGEST, 0).expect("committed"), 0);
    }

    #[tokio::test]
    async fn a_step_that_keeps_failing_is_retried_until_the_limit_then_fails_the_bridge() {
        let attempts = AtomicUsize::new(0);
        let gave_up = retry("dead letter", Duration::from_millis(250), || {
            attempts.fetch_add(1, Ordering::Relaxed);
            async { Err::<(), _>("broker unreachable") }
        })
        .await
        .expect_err("gives up");
        assert_eq!(gave_up.to_string(), "dead letter: broker unreachable");
        // Backoff 100 ms, then 200 ms: at most three attempts start within 250 ms.
        let attempts = attempts.load(Ordering::Relaxed);
        assert!((2..=3).contains(&attempts), "{attempts} attempts");
    }

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
