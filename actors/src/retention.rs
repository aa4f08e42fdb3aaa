//! The retention actor: every few minutes it deletes what nothing needs any more, so that a
//! node's disk follows its traffic rather than its age. Log segments go once every consumer group
//! is done with them and `events.retention` has passed (see `storage::log`); an erasure tombstone
//! goes once `events.dedupe_window` has passed and nothing it covers is left to read: the log no
//! longer holds the user's partition up to its offset, and training does not read the archive
//! (which keeps every record). Event ids leave the id sets by themselves, as storage compacts
//! (see `storage::db`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::ApiError;
use common::config::TrainSource;
use common::partition::partition_for;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use crate::Services;
use crate::mailbox;
use crate::obs::Observed;

/// How often retention runs.
const EVERY: Duration = Duration::from_secs(300);

/// What one run deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RetentionRun {
    pub segments_deleted: u64,
    pub tombstones_pruned: u64,
}

pub enum RetentionMsg {
    Run(Option<RpcReplyPort<Result<RetentionRun, ApiError>>>),
}

pub struct RetentionActor;

#[derive(Clone, Debug, Default, Serialize)]
pub struct RetentionObs {
    pub num_runs: u64,
    pub num_segments_deleted: u64,
    pub num_tombstones_pruned: u64,
    pub last_run_at: Option<i64>,
    pub last_error: Option<String>,
}

pub struct RetentionState {
    services: Arc<Services>,
    obs: Observed<RetentionObs>,
}

impl Actor for RetentionActor {
    type Msg = RetentionMsg;
    type State = RetentionState;
    type Arguments = Arc<Services>;

    async fn pre_start(
        &self,
        myself: ActorRef<RetentionMsg>,
        services: Arc<Services>,
    ) -> Result<RetentionState, ActorProcessingErr> {
        let obs = Observed::register(
            &services.obs,
            &myself.get_cell(),
            "retention",
            RetentionObs::default(),
        );
        mailbox::tell_every(myself.clone(), EVERY, || RetentionMsg::Run(None));
        Ok(RetentionState { services, obs })
    }

    async fn handle(
        &self,
        _: ActorRef<RetentionMsg>,
        RetentionMsg::Run(reply): RetentionMsg,
        state: &mut RetentionState,
    ) -> Result<(), ActorProcessingErr> {
        state.obs.handled();
        let services = state.services.clone();
        let result = tokio::task::spawn_blocking(move || retain_once(&services, SystemTime::now()))
            .await
            .unwrap_or_else(|e| Err(ApiError::internal(e)));
        if let Err(error) = &result {
            tracing::warn!(error = %error.message, "retention failed; the next run retries");
        }
        state.obs.update(|obs| {
            obs.num_runs += 1;
            obs.last_run_at = Some(common::now_millis());
            match &result {
                Ok(run) => {
                    obs.num_segments_deleted += run.segments_deleted;
                    obs.num_tombstones_pruned += run.tombstones_pruned;
                    obs.last_error = None;
                }
                Err(error) => obs.last_error = Some(error.message.clone()),
            }
        });
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
        Ok(())
    }
}

/// Deletes what retention allows as of `now` (blocking: file and RocksDB scans).
pub fn retain_once(services: &Services, now: SystemTime) -> Result<RetentionRun, ApiError> {
    let log = &services.log;
    let segments_deleted = log.enforce_retention(now).map_err(ApiError::internal)?;
    let window = services.config.events.dedupe_window;
    let reads_archive = services.config.model.train_source == TrainSource::Archive;
    let tombstones_pruned = if window.is_zero() || reads_archive {
        0
    } else {
        let cutoff_ms = now
            .checked_sub(window)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(i64::MIN, |d| d.as_millis() as i64);
        let n = log.num_partitions();
        services
            .store
            .prune_tombstones(&|user, t| {
                t.at_ms < cutoff_ms && log.first_offset(partition_for(user, n)) >= t.offset
            })
            .map_err(ApiError::internal)?
    };
    if segments_deleted + tombstones_pruned > 0 {
        tracing::info!(
            segments_deleted,
            tombstones_pruned,
            "retention deleted what nothing needs"
        );
    }
    Ok(RetentionRun {
        segments_deleted,
        tombstones_pruned,
    })
}
