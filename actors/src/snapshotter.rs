//! The snapshotter: a consistent snapshot of the node's database to the object store, hourly by
//! default (`objects.snapshot_interval`), for `streamrec restore` after a lost disk (see
//! [`storage::snapshot`]). A failed run is logged and tried again at the next tick; snapshots
//! are independent of each other, so one that fails costs nothing but its age.

use std::sync::Arc;
use std::time::Instant;

use common::ApiError;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use storage::snapshot::{Manifest, Snapshots};

use crate::Services;
use crate::mailbox;
use crate::obs::Observed;

pub enum SnapshotMsg {
    Run(Option<RpcReplyPort<Result<Manifest, ApiError>>>),
}

pub struct SnapshotActor;

pub struct SnapshotArgs {
    pub services: Arc<Services>,
    pub snapshots: Arc<Snapshots>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SnapshotObs {
    pub num_runs: u64,
    pub num_failures: u64,
    /// The last snapshot taken: its key, size, when, and how long it took.
    pub last_key: Option<String>,
    pub last_bytes: Option<u64>,
    pub last_at: Option<i64>,
    pub last_duration_ms: Option<u64>,
    pub last_error: Option<String>,
}

pub struct SnapshotState {
    snapshots: Arc<Snapshots>,
    obs: Observed<SnapshotObs>,
}

impl Actor for SnapshotActor {
    type Msg = SnapshotMsg;
    type State = SnapshotState;
    type Arguments = SnapshotArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SnapshotMsg>,
        args: SnapshotArgs,
    ) -> Result<SnapshotState, ActorProcessingErr> {
        let obs = Observed::register(
            &args.services.obs,
            &myself.get_cell(),
            "snapshotter",
            SnapshotObs::default(),
        );
        let interval = args.services.config.objects.snapshot_interval;
        if !interval.is_zero() {
            mailbox::tell_every(myself.clone(), interval, || SnapshotMsg::Run(None));
        }
        Ok(SnapshotState {
            snapshots: args.snapshots,
            obs,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<SnapshotMsg>,
        SnapshotMsg::Run(reply): SnapshotMsg,
        state: &mut SnapshotState,
    ) -> Result<(), ActorProcessingErr> {
        state.obs.handled();
        let started = Instant::now();
        let result = state.snapshots.take().await.map_err(ApiError::from);
        let duration_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(m) => tracing::info!(key = %m.key, bytes = m.bytes(), duration_ms, "snapshot taken"),
            Err(error) => {
                tracing::warn!(error = %error.message, "snapshot failed; the next run retries")
            }
        }
        state.obs.update(|o| {
            o.num_runs += 1;
            match &result {
                Ok(m) => {
                    o.last_key = Some(m.key.clone());
                    o.last_bytes = Some(m.bytes());
                    o.last_at = Some(m.created_at);
                    o.last_duration_ms = Some(duration_ms);
                    o.last_error = None;
                }
                Err(error) => {
                    o.num_failures += 1;
                    o.last_error = Some(error.message.clone());
                }
            }
        });
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
        Ok(())
    }
}
