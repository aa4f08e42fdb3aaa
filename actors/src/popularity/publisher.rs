//! The popularity publisher (Kafka mode only): every `cluster.popularity_interval` it publishes
//! on the popularity topic what changed in the partitions this node serves, each item with what
//! the partition's users add to it now (see `kafka::popularity`). Changes coalesce between two
//! publishes: an item bought a thousand times in an interval is one record.
//!
//! What changed in a partition this node no longer serves is dropped: its next owner publishes
//! it, after its restore (`handoff::restore` resets the partition from the store, and every item
//! whose weight that changes is published again). A failed publish is logged and its changes
//! are kept for the next one: a broker outage never fails the actor.

use std::collections::HashMap;
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
    /// (partition, item) → weight to publish: what changed, and what a failed publish kept.
    pending: HashMap<(u32, String), f64>,
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
        let changes = services.popularity.take_changes(|p| cluster.is_active(p));
        state.pending.retain(|(p, _), _| cluster.is_active(*p));
        // A newer weight of the same (partition, item) replaces a kept one.
        state.pending.extend(
            changes
                .into_iter()
                .map(|(partition, item_id, weight)| ((partition, item_id), weight)),
        );
        let (num_items, total_weight) = (services.popularity.len(), services.popularity.total());
        state.obs.update(|o| {
            o.num_items = num_items;
            o.total_weight = total_weight;
        });
        if state.pending.is_empty() {
            return Ok(());
        }
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
        let weights: Vec<ItemWeight> = state
            .pending
            .iter()
            .map(|((partition, item_id), weight)| ItemWeight {
                partition: *partition,
                item_id: item_id.clone(),
                weight: *weight,
            })
            .collect();
        match writer.publish(&weights).await {
            Ok(()) => {
                state.pending.clear();
                let published = weights.len() as u64;
                state.obs.update(|o| {
                    o.num_published += published;
                    o.last_error = None;
                });
            }
            Err(error) => {
                tracing::warn!(%error, pending = state.pending.len(), "publishing item popularity failed; retrying");
                state.obs.update(|o| o.last_error = Some(error.to_string()));
            }
        }
        Ok(())
    }
}
