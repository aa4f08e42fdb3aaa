//! The popularity publisher (Kafka mode only): every `cluster.popularity_interval` it publishes
//! on the popularity topic what changed in the partitions this node serves, each item with what
//! the partition's users add to it now (see `kafka::popularity`). Changes coalesce between two
//! publishes: an item bought a thousand times in an interval is one record.
//!
//! A partition restored here is published whole once it serves (a restore resets it from the
//! store just before it activates), so that every node replaces what the previous owner said
//! of it. What changed in a partition still restoring waits until it serves. What changed in a partition this node no longer holds is dropped:
//! its next owner publishes it after its own restore. A failed publish is logged and its changes
//! are kept for the next one: a broker outage never fails the actor.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kafka::Settings;
use kafka::popularity::{ItemWeight, PopularityWriter};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;

use crate::Services;
use crate::mailbox;
use crate::obs::Observed;

pub enum PublisherMsg {
    Publish,
}

pub struct PopularityPublisher;

pub struct PublisherArgs {
    pub services: Arc<Services>,
    pub settings: Arc<Settings>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PublisherObs {
    pub topic: String,
    /// Item weights published.
    pub num_published: u64,
    /// Items with a popularity on this node, from every partition.
    pub num_items: usize,
    /// The sum of every item's popularity on this node: the same on every node of a settled
    /// cluster.
    pub total_weight: f64,
    pub last_error: Option<String>,
}

pub struct PublisherState {
    args: PublisherArgs,
    writer: Option<PopularityWriter>,
    /// (partition, item) → weight to publish: what changed, what a failed publish kept, and
    /// what changed in a partition still restoring.
    pending: HashMap<(u32, String), f64>,
    /// Partitions to publish whole.
    whole: HashSet<u32>,
    obs: Observed<PublisherObs>,
}

impl Actor for PopularityPublisher {
    type Msg = PublisherMsg;
    type State = PublisherState;
    type Arguments = PublisherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PublisherMsg>,
        args: PublisherArgs,
    ) -> Result<PublisherState, ActorProcessingErr> {
        let initial = PublisherObs {
            topic: args.settings.popularity_topic(),
            ..Default::default()
        };
        let obs = Observed::register(
            &args.services.obs,
            &myself.get_cell(),
            "popularity_publisher",
            initial,
        );
        Ok(PublisherState {
            args,
            writer: None,
            pending: HashMap::new(),
            whole: HashSet::new(),
            obs,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<PublisherMsg>,
        state: &mut PublisherState,
    ) -> Result<(), ActorProcessingErr> {
        let every = state.args.services.config.cluster.popularity_interval;
        mailbox::tell_every(myself, every, || PublisherMsg::Publish);
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<PublisherMsg>,
        PublisherMsg::Publish: PublisherMsg,
        state: &mut PublisherState,
    ) -> Result<(), ActorProcessingErr> {
        state.obs.handled();
        let services = &state.args.services;
        let cluster = &services.cluster;
        // A newer weight of the same (partition, item) replaces a kept one.
        state.pending.extend(
            services
                .popularity
                .take_changes()
                .into_iter()
                .map(|(partition, item_id, weight)| ((partition, item_id), weight)),
        );
        state.pending.retain(|(p, _), _| cluster.holds(*p));
        state.whole.extend(services.popularity.take_whole_due());
        state.whole.retain(|p| cluster.holds(*p));
        let (num_items, total_weight) = (services.popularity.len(), services.popularity.total());
        state.obs.update(|o| {
            o.num_items = num_items;
            o.total_weight = total_weight;
        });
        if state.writer.is_none() {
            let node_id = services.cluster.node_id();
            match PopularityWriter::new(&state.args.settings, node_id) {
                Ok(writer) => state.writer = Some(writer),
                Err(error) => {
                    tracing::warn!(%error, "cannot publish item popularity yet; retrying");
                    state.obs.update(|o| o.last_error = Some(error.to_string()));
                    return Ok(());
                }
            }
        }
        let writer = state.writer.as_ref().expect("set above");
        let mut published = 0;
        let mut failed = None;
        let serving: Vec<u32> = state
            .whole
            .iter()
            .copied()
            .filter(|p| cluster.is_active(*p))
            .collect();
        for partition in serving {
            let weights = services.popularity.partition(partition);
            match writer.publish_whole(partition, &weights).await {
                Ok(()) => {
                    state.whole.remove(&partition);
                    published += weights.len() as u64;
                }
                Err(error) => failed = Some(error),
            }
        }
        let weights: Vec<ItemWeight> = state
            .pending
            .iter()
            .filter(|((partition, _), _)| cluster.is_active(*partition))
            .map(|((partition, item_id), weight)| ItemWeight {
                partition: *partition,
                item_id: item_id.clone(),
                weight: *weight,
            })
            .collect();
        if !weights.is_empty() {
            match writer.publish(&weights).await {
                Ok(()) => {
                    for w in &weights {
                        state.pending.remove(&(w.partition, w.item_id.clone()));
                    }
                    published += weights.len() as u64;
                }
                Err(error) => failed = Some(error),
            }
        }
        if let Some(error) = &failed {
            tracing::warn!(%error, pending = state.pending.len(), "publishing item popularity failed; retrying");
        }
        state.obs.update(|o| {
            o.num_published += published;
            o.last_error = failed.map(|e| e.to_string());
        });
        Ok(())
    }
}
