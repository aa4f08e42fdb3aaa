//! The changelog tail (Kafka mode only): makes the change feed cluster-wide. A session publishes
//! its changes on its own node's feed; every node also follows the sessions changelog, where
//! each owner records every state it writes and every erasure, and publishes `User(id)` for
//! users it does not own itself. So a node drops its cached lists of a user another node changed,
//! and a WebSocket, GraphQL or gRPC subscriber on any node hears of every change to its user:
//! the push hub recomputes the list through `Users`, which asks the owner.
//!
//! It also follows every event of `user-events` into this node's trending windows, so that
//! trending counts the whole cluster's activity (sessions do not count it in a cluster: their
//! node sees only its own users), and every weight on the popularity topic into this node's
//! popularity, for the partitions it does not hold: their owners' word (see `popularity`). An
//! item this node has not heard of yet counts (its owner catalogued it); a deleted one does not.
//!
//! The tail starts at the end of the changelog and of `user-events`: what changed before a node
//! started, its cache never held. It reads the popularity topic from its start, which holds
//! every partition's latest weights. A broker outage never fails it: the client reconnects by
//! itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kafka::Settings;
use kafka::popularity::Record as PopularityRecord;
use kafka::tail::{Tail, Tailed};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;
use storage::catalog::ItemStatus;

use crate::Services;
use crate::changes::Changes;
use crate::mailbox;
use crate::obs::Observed;

const POLL_WAIT: Duration = Duration::from_millis(500);
const MAX_RECORDS: usize = 1024;
const SETUP_RETRY: Duration = Duration::from_secs(1);

pub enum TailMsg {
    Poll,
}

pub struct ChangelogTailActor;

pub struct TailArgs {
    pub services: Arc<Services>,
    pub settings: Arc<Settings>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TailObs {
    pub topic: String,
    /// Changelog records read.
    pub num_records: u64,
    /// Records about users another node owns, published on this node's feed.
    pub num_remote: u64,
    /// Events of `user-events` read (into trending).
    pub num_events: u64,
    /// Item weights of partitions other nodes own, read from the popularity topic.
    pub num_weights: u64,
    pub last_error: Option<String>,
}

pub struct TailState {
    args: TailArgs,
    tail: Option<Tail>,
    /// Partitions being read whole from the popularity topic: what lies between the markers.
    whole: HashMap<u32, Vec<(String, f64)>>,
    obs: Observed<TailObs>,
}

/// A record of the popularity topic, for a partition this node does not hold: its owner's word.
/// A partition published whole replaces what this node knew of it at the end marker; `whole`
/// holds what lies between the markers meanwhile.
fn popularity(
    services: &Services,
    whole: &mut HashMap<u32, Vec<(String, f64)>>,
    record: PopularityRecord,
) {
    let foreign = |partition: u32| !services.cluster.holds(partition);
    match record {
        PopularityRecord::Begin { partition } => {
            whole.insert(partition, Vec::new());
        }
        PopularityRecord::End { partition } => {
            if let Some(weights) = whole.remove(&partition)
                && foreign(partition)
            {
                let view = services.catalog.read();
                let weights = weights
                    .into_iter()
                    .filter(|(id, _)| !matches!(view.status(id), ItemStatus::Deleted))
                    .collect();
                drop(view);
                services.popularity.replace_partition(partition, weights);
            }
        }
        PopularityRecord::Weight(w) => {
            if let Some(staged) = whole.get_mut(&w.partition) {
                staged.push((w.item_id, w.weight));
            } else if foreign(w.partition)
                && !matches!(
                    services.catalog.read().status(&w.item_id),
                    ItemStatus::Deleted
                )
            {
                services.popularity.set(w.partition, &w.item_id, w.weight);
            }
        }
    }
}

impl Actor for ChangelogTailActor {
    type Msg = TailMsg;
    type State = TailState;
    type Arguments = TailArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TailMsg>,
        args: TailArgs,
    ) -> Result<TailState, ActorProcessingErr> {
        let initial = TailObs {
            topic: args.settings.changelog_topic(),
            ..Default::default()
        };
        let obs = Observed::register(
            &args.services.obs,
            &myself.get_cell(),
            "changelog_tail",
            initial,
        );
        Ok(TailState {
            args,
            tail: None,
            whole: HashMap::new(),
            obs,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<TailMsg>,
        _: &mut TailState,
    ) -> Result<(), ActorProcessingErr> {
        mailbox::tell(&myself, TailMsg::Poll)?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<TailMsg>,
        TailMsg::Poll: TailMsg,
        state: &mut TailState,
    ) -> Result<(), ActorProcessingErr> {
        state.obs.handled();
        let settings = &state.args.settings;
        if state.tail.is_none() {
            // The topic first: a tail assigned to a missing topic may not see it for minutes.
            let node_id = state.args.services.cluster.node_id();
            match kafka::ensure_topics(settings, Duration::from_secs(5))
                .await
                .and_then(|_| Tail::new(settings, node_id))
            {
                Ok(tail) => {
                    state.tail = Some(tail);
                    state.obs.update(|o| o.last_error = None);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot follow the sessions changelog yet; retrying");
                    state.obs.update(|o| o.last_error = Some(error.to_string()));
                    mailbox::tell_after(myself.clone(), SETUP_RETRY, || TailMsg::Poll);
                    return Ok(());
                }
            }
        }
        if let Some(tail) = &state.tail {
            let services = &state.args.services;
            let records = tail.next(MAX_RECORDS, POLL_WAIT).await;
            let now = common::now_millis();
            let (mut num_records, mut num_remote, mut num_events, mut num_weights) = (0, 0, 0, 0);
            for tailed in records {
                match tailed {
                    // This node's own sessions published their changes already.
                    Tailed::Change { partition, record } => {
                        num_records += 1;
                        if !services.cluster.is_active(partition) {
                            services.changes.publish(Changes::User(record.user_id));
                            num_remote += 1;
                        }
                    }
                    // What this node holds (restoring or serving) is its own to say.
                    Tailed::Popularity(record) => {
                        num_weights += 1;
                        popularity(services, &mut state.whole, record);
                    }
                    Tailed::Event(e) => {
                        num_events += 1;
                        // Ids nobody catalogued never trend.
                        if let ItemStatus::Catalogued(item) =
                            services.catalog.read().status(&e.item_id)
                        {
                            services.trending.record(
                                &e.user_id,
                                &e.item_id,
                                &item.categories,
                                f64::from(e.weight()),
                                e.ts,
                                now,
                            );
                        }
                    }
                }
            }
            state.obs.update(|o| {
                o.num_records += num_records;
                o.num_remote += num_remote;
                o.num_events += num_events;
                o.num_weights += num_weights;
            });
        }
        mailbox::tell(&myself, TailMsg::Poll)?;
        Ok(())
    }
}
