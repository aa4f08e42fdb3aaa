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
//! The trace context a message's headers carry (the request that produced the event) is handed
//! to ingest with the journaled event ([`crate::ingest::JournalTraces`]), so that the session's
//! apply and the pushes it causes join that request's trace.
//!
//! A broker outage never fails the actor (its supervisor would escalate a long one): the bridge
//! retries, with backoff, what needs the broker, and librdkafka reconnects by itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::partition::partition_for;
use kafka::{GroupConsumer, Producer, Settings, Topic};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;

use crate::obs::Observed;
use crate::session_manager::SessionManagerMsg;
use crate::{Services, Slot, handoff, mailbox};

use batch::{APPLY_TIMEOUT, NodeEffects, RETRY_FOR, changes, journal_and_apply, retry, route};

mod batch;
mod ownership;

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
    /// Partitions of `user-events` on the move: lost, or assigned and not restored yet.
    moves: ownership::Moves,
    obs: Observed<BridgeObs>,
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
        let initial = BridgeObs {
            group: args.settings.group.clone(),
            ..Default::default()
        };
        let obs = Observed::register(
            &args.services.obs,
            &myself.get_cell(),
            args.role.kind(),
            initial,
        );
        Ok(BridgeState {
            args,
            consumer: None,
            moves: ownership::Moves::default(),
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
                    state.obs.update(|o| {
                        o.topics_ready = true;
                        o.last_error = None;
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot create Kafka topics yet; retrying");
                    state.obs.update(|o| o.last_error = Some(error.to_string()));
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
            !(m.topic == Topic::UserEvents && self.moves.is_pending(m.partition as u32))
        });
        self.activate_pending().await?;
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        let assignment = consumer.assignment();
        self.obs.update(|o| o.assignment = assignment);
        if batch.is_empty() {
            return Ok(());
        }
        let effects = NodeEffects {
            services: &services,
            producer: &self.args.producer,
        };
        let now = common::now_millis();
        let sorted = route(&self.args.settings, &batch, now, &effects).await?;
        self.obs.update(|o| {
            o.num_catalog_changes += sorted.num_catalog_changes;
            o.num_dead_letters += sorted.num_dead_letters;
        });
        if !sorted.reroute.is_empty() {
            let producer = &self.args.producer;
            retry("re-producing transactions", RETRY_FOR, || {
                producer.publish(&sorted.reroute)
            })
            .await?;
            self.obs
                .update(|o| o.num_rerouted += sorted.reroute.len() as u64);
        }
        let events = sorted.journal;
        // Ingest takes these as it reads the journaled events; the rest go with this batch.
        let _carried = services.journal_traces.carry(sorted.traces);
        self.obs.update(|o| o.num_events += events.len() as u64);
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
        self.obs.update(|o| o.num_duplicates += duplicates as u64);
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
        let committed = consumer.commit(&batch).await;
        if let Err(error) = &committed {
            tracing::warn!(%error, "committing Kafka offsets failed; the next commit covers them");
        }
        self.obs.update(|o| {
            o.last_error = committed.err().map(|error| error.to_string());
            o.num_messages += batch.len() as u64;
            o.num_batches += 1;
        });
        Ok(())
    }
}
