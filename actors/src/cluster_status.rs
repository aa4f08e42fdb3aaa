//! The cluster status actor (Kafka mode only): keeps this node's entry on the status topic true
//! and the other members' entries in the shard map fresh, so that [`cluster::Cluster::route`]
//! can send a request for any user to its owner.
//!
//! - It publishes `cluster.status(false)` whenever this node's ownership changes (the Kafka
//!   bridge records every assignment, activation and revocation in the map), and every
//!   `cluster.status_interval` as a heartbeat; `status(true)` when it stops, so that the others
//!   drop this node at once instead of after `cluster.member_timeout`.
//! - It reads everyone's statuses into `cluster.observe`, skipping those older than
//!   `member_timeout` (the reader starts a little before the end of the topic), and forgets
//!   members not heard from within `member_timeout` (`cluster.expire`).
//!
//! The map wakes this actor on every change, its own observations included: it publishes only
//! when this node's own status differs from what it last published, or a heartbeat is due, so
//! nodes never echo each other's statuses back and forth.
//!
//! Like the bridge, a broker outage never fails it: a failed publish is logged and tried again
//! at the next heartbeat, and the reader reconnects by itself.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use cluster::{PartitionState, Status};
use kafka::Settings;
use kafka::status::{StatusReader, StatusWriter};
use prometheus::{IntGauge, IntGaugeVec, register_int_gauge, register_int_gauge_vec};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Services;
use crate::mailbox;
use crate::obs::Observed;

static PARTITIONS_OWNED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "streamrec_cluster_partitions_owned",
        "Partitions of the user topics this node owns, by state (active, restoring).",
        &["state"]
    )
    .expect("metric registers once")
});

static PARTITION_OWNED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "streamrec_cluster_partition_owned",
        "Whether this node owns each partition of the user topics: 0 no, 1 restoring, 2 active \
         (one series per partition, so bounded by events.num_partitions).",
        &["partition"]
    )
    .expect("metric registers once")
});

static MEMBERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "streamrec_cluster_members",
        "Members of the cluster this node knows of, itself included."
    )
    .expect("metric registers once")
});

/// Longest a poll waits for statuses before it looks at the map and the heartbeat again.
const POLL_WAIT: Duration = Duration::from_millis(500);
/// Longest the leaving status may take when the actor stops.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before retrying to set up the topic and clients while the broker is away.
const SETUP_RETRY: Duration = Duration::from_secs(1);

pub enum ClusterStatusMsg {
    Poll,
}

pub struct ClusterStatusActor;

pub struct ClusterStatusArgs {
    pub services: Arc<Services>,
    pub settings: Arc<Settings>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterStatusObs {
    pub topic: String,
    /// Members known, this node included.
    pub num_members: usize,
    pub num_partitions_owned: usize,
    pub num_published: u64,
    pub num_observed: u64,
    /// Statuses skipped as older than `cluster.member_timeout`.
    pub num_stale: u64,
    pub num_expired: u64,
    pub last_error: Option<String>,
}

/// What a status says about ownership: when it changes, the node publishes at once.
type Ownership = (String, BTreeMap<u32, PartitionState>, u64);

fn ownership(status: &Status) -> Ownership {
    (
        status.address.clone(),
        status.partitions.clone(),
        status.generation,
    )
}

pub struct ClusterStatusState {
    args: ClusterStatusArgs,
    clients: Option<(StatusWriter, StatusReader)>,
    changes: watch::Receiver<u64>,
    /// What this node last published (or tried to).
    published: Option<Ownership>,
    next_heartbeat: Instant,
    obs: Observed<ClusterStatusObs>,
}

impl Actor for ClusterStatusActor {
    type Msg = ClusterStatusMsg;
    type State = ClusterStatusState;
    type Arguments = ClusterStatusArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ClusterStatusMsg>,
        args: ClusterStatusArgs,
    ) -> Result<ClusterStatusState, ActorProcessingErr> {
        let initial = ClusterStatusObs {
            topic: args.settings.status_topic(),
            ..Default::default()
        };
        let obs = Observed::register(
            &args.services.obs,
            &myself.get_cell(),
            "cluster_status",
            initial,
        );
        Ok(ClusterStatusState {
            changes: args.services.cluster.changes(),
            args,
            clients: None,
            published: None,
            next_heartbeat: Instant::now(),
            obs,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<ClusterStatusMsg>,
        _: &mut ClusterStatusState,
    ) -> Result<(), ActorProcessingErr> {
        mailbox::tell(&myself, ClusterStatusMsg::Poll)?;
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<ClusterStatusMsg>,
        state: &mut ClusterStatusState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((writer, _)) = &state.clients {
            let leaving = state.args.services.cluster.status(true);
            match tokio::time::timeout(LEAVE_TIMEOUT, writer.publish(&leaving)).await {
                Ok(Ok(())) => tracing::info!("told the cluster this node is leaving"),
                Ok(Err(error)) => tracing::warn!(%error, "could not publish the leaving status"),
                Err(_) => tracing::warn!("publishing the leaving status timed out"),
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ClusterStatusMsg>,
        ClusterStatusMsg::Poll: ClusterStatusMsg,
        state: &mut ClusterStatusState,
    ) -> Result<(), ActorProcessingErr> {
        state.obs.handled();
        if state.clients.is_none() {
            if let Err(error) = state.connect().await {
                tracing::warn!(%error, "cannot set up the cluster status topic yet; retrying");
                state.obs.update(|o| o.last_error = Some(error.to_string()));
                mailbox::tell_after(myself.clone(), SETUP_RETRY, || ClusterStatusMsg::Poll);
                return Ok(());
            }
            state.obs.update(|o| o.last_error = None);
        }
        state.poll().await;
        mailbox::tell(&myself, ClusterStatusMsg::Poll)?;
        Ok(())
    }
}

impl ClusterStatusState {
    async fn connect(&mut self) -> kafka::Result<()> {
        let settings = &self.args.settings;
        kafka::ensure_topics(settings, Duration::from_secs(5)).await?;
        let node_id = &self.args.services.config.cluster.node_id;
        self.clients = Some((
            StatusWriter::new(settings)?,
            StatusReader::new(settings, node_id)?,
        ));
        Ok(())
    }

    /// One round: wait for statuses or a change of the map (at most until the next heartbeat),
    /// take in what came, publish if this node's status changed or a heartbeat is due.
    async fn poll(&mut self) {
        let Some((writer, reader)) = &self.clients else {
            return;
        };
        let config = &self.args.services.config.cluster;
        let cluster = &self.args.services.cluster;
        let wait = POLL_WAIT.min(
            self.next_heartbeat
                .saturating_duration_since(Instant::now()),
        );
        let statuses = tokio::select! {
            statuses = reader.next(wait) => statuses,
            changed = self.changes.changed() => {
                if changed.is_err() {
                    // The map is gone: the node is shutting down; do not spin.
                    tokio::time::sleep(wait).await;
                }
                Vec::new()
            }
        };
        let observed = !statuses.is_empty();
        let now_ms = common::now_millis();
        let max_age = i64::try_from(config.member_timeout.as_millis()).unwrap_or(i64::MAX);
        for status in statuses {
            if now_ms.saturating_sub(status.at_ms) > max_age {
                self.obs.update(|o| o.num_stale += 1);
                continue;
            }
            self.obs.update(|o| o.num_observed += 1);
            cluster.observe(status);
        }
        let heartbeat = Instant::now() >= self.next_heartbeat;
        if observed || heartbeat {
            // A leaving member goes at once; a silent one after `member_timeout`.
            let expired = cluster.expire(config.member_timeout) as u64;
            self.obs.update(|o| o.num_expired += expired);
        }
        // Seen up to here, our own updates included; a change from now on wakes the next poll.
        self.changes.borrow_and_update();
        let own = cluster.status(false);
        if heartbeat || self.published.as_ref() != Some(&ownership(&own)) {
            self.published = Some(ownership(&own));
            self.next_heartbeat = Instant::now() + config.status_interval;
            match writer.publish(&own).await {
                Ok(()) => self.obs.update(|o| {
                    o.num_published += 1;
                    o.last_error = None;
                }),
                // Tried again at the next heartbeat.
                Err(error) => {
                    tracing::warn!(%error, "could not publish this node's cluster status");
                    self.obs.update(|o| o.last_error = Some(error.to_string()));
                }
            }
        }
        self.observe_metrics(&own);
    }

    fn observe_metrics(&self, own: &Status) {
        let view = self.args.services.cluster.view();
        let count = |wanted: PartitionState| {
            own.partitions
                .values()
                .filter(|state| **state == wanted)
                .count()
        };
        let (active, restoring) = (
            count(PartitionState::Active),
            count(PartitionState::Restoring),
        );
        PARTITIONS_OWNED
            .with_label_values(&["active"])
            .set(active as i64);
        PARTITIONS_OWNED
            .with_label_values(&["restoring"])
            .set(restoring as i64);
        for partition in 0..self.args.services.cluster.num_partitions() {
            let state = match own.partitions.get(&partition) {
                None | Some(PartitionState::Moving) => 0,
                Some(PartitionState::Restoring) => 1,
                Some(PartitionState::Active) => 2,
            };
            PARTITION_OWNED
                .with_label_values(&[&partition.to_string()])
                .set(state);
        }
        MEMBERS.set(view.members.len() as i64);
        self.obs.update(|o| {
            o.num_members = view.members.len();
            o.num_partitions_owned = own.partitions.len();
        });
    }
}
