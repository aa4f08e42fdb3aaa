//! The trainer: retrains the model on a schedule (`model.retrain_interval`) and on demand, off
//! the serving path. It reads the event log (what retention keeps of it, or the archive plus the
//! log's tail), skipping erased users, trains on the blocking pool, measures the new version on
//! a temporal hold-out (and, beside the active version, on the part of it the active version
//! never trained on, for the gate), publishes it to the model registry and has every model actor load it;
//! then it clears the cache and tells live subscribers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config::TrainSource;
use common::pii::PersonalFields;
use common::{ApiError, ErrorCode};
use models::item_item::ItemItemParams;
use models::training::{Content, Setup, train_against};
use models::transitions::TransitionParams;
use models::{HybridParams, Interactions, TrainParams};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use storage::{Record, Tombstone};

use crate::Services;
use crate::archiver::read_archive;
use crate::mailbox;
use crate::obs::Observed;
use crate::registry::Published;

pub enum TrainerMsg {
    /// Start a run. With `wait`, the reply comes when the run ends; otherwise when it starts.
    Train {
        wait: bool,
        reply: Option<RpcReplyPort<Result<String, ApiError>>>,
    },
    Progress {
        iteration: usize,
        iterations: usize,
    },
    Done(Result<String, String>),
    /// Reads the shared manifest again: another node may have activated a version (sent to
    /// itself every [`FOLLOW_INTERVAL`] in a cluster).
    Follow,
}

/// How often a node of a cluster reads the shared model manifest.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(3);
/// How long a run may hold the training lease; a node that dies training holds it no longer.
const LEASE_TTL: Duration = Duration::from_secs(3600);

pub struct TrainerActor;

/// `GET /v1/admin/train`, and the trainer's state in the console.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrainerObs {
    /// Whether a run is in progress; a run ends after its version is activated (or rejected).
    pub running: bool,
    /// The running run's stage (`reading events`, `iteration 3/10`).
    pub progress: Option<String>,
    /// Runs ended since the node started, failed or rejected ones included.
    pub num_runs: u64,
    pub num_failures: u64,
    /// The version the last successful run activated.
    pub last_version: Option<String>,
    /// Why the last run failed or its version was rejected; cleared by a successful run.
    pub last_error: Option<String>,
    pub last_duration_ms: Option<u64>,
}

pub struct TrainerState {
    services: Arc<Services>,
    started: Option<Instant>,
    waiting: Vec<RpcReplyPort<Result<String, ApiError>>>,
    obs: Observed<TrainerObs>,
}

impl Actor for TrainerActor {
    type Msg = TrainerMsg;
    type State = TrainerState;
    type Arguments = Arc<Services>;

    async fn pre_start(
        &self,
        myself: ActorRef<TrainerMsg>,
        services: Arc<Services>,
    ) -> Result<TrainerState, ActorProcessingErr> {
        let obs = Observed::register(
            &services.obs,
            &myself.get_cell(),
            "trainer",
            TrainerObs::default(),
        );
        // Versions stored before profiles were filtered may hold personal fields: rewrite them
        // once, off the start path (the object store may be slow or away; a run tries again).
        let migrating = services.clone();
        tokio::spawn(async move { scrub_stored_versions(&migrating).await });
        // A cluster shares its object store: versions made or activated elsewhere are followed.
        if services.changelog.is_some() {
            mailbox::tell_every(myself.clone(), FOLLOW_INTERVAL, || TrainerMsg::Follow);
        }
        let interval = services.config.model.retrain_interval;
        if !interval.is_zero() {
            mailbox::tell_every(myself.clone(), interval, || TrainerMsg::Train {
                wait: false,
                reply: None,
            });
        }
        Ok(TrainerState {
            services,
            started: None,
            waiting: Vec::new(),
            obs,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TrainerMsg>,
        msg: TrainerMsg,
        state: &mut TrainerState,
    ) -> Result<(), ActorProcessingErr> {
        state.obs.handled();
        match msg {
            TrainerMsg::Train { wait, reply } => {
                if state.obs.get().running {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(ApiError::new(
                            ErrorCode::Conflict,
                            "a training run is already in progress",
                        )));
                    }
                    return Ok(());
                }
                // Visible before the caller hears "started": whoever then reads the state sees
                // the run.
                state.obs.update(|o| {
                    o.running = true;
                    o.progress = Some("reading events".into());
                });
                state.started = Some(Instant::now());
                match (wait, reply) {
                    (true, Some(reply)) => state.waiting.push(reply),
                    (false, Some(reply)) => drop(reply.send(Ok("started".into()))),
                    _ => {}
                }
                let services = state.services.clone();
                tokio::spawn(async move {
                    let result = run(&services, &myself).await.map_err(|e| e.message);
                    let _ = mailbox::tell(&myself, TrainerMsg::Done(result));
                });
            }
            TrainerMsg::Progress {
                iteration,
                iterations,
            } => {
                tracing::info!(iteration, iterations, "training");
                state
                    .obs
                    .update(|o| o.progress = Some(format!("iteration {iteration}/{iterations}")));
            }
            TrainerMsg::Done(result) => {
                let duration_ms = state.started.take().map(|s| s.elapsed().as_millis() as u64);
                match &result {
                    Ok(version) => {
                        tracing::info!(%version, duration_ms, "model trained and activated")
                    }
                    Err(error) => tracing::error!(%error, "training failed"),
                }
                state.obs.update(|o| {
                    o.running = false;
                    o.progress = None;
                    o.num_runs += 1;
                    o.last_duration_ms = duration_ms;
                    match &result {
                        Ok(version) => {
                            o.last_version = Some(version.clone());
                            o.last_error = None;
                        }
                        Err(error) => {
                            o.num_failures += 1;
                            o.last_error = Some(error.clone());
                        }
                    }
                });
                for reply in state.waiting.drain(..) {
                    let _ = reply.send(result.clone().map_err(ApiError::unavailable));
                }
            }
            TrainerMsg::Follow => match state.services.registry.refresh().await {
                Ok(true) => {
                    if let Err(error) = swapped_in(&state.services).await {
                        tracing::warn!(error = %error.message, "loading the version activated elsewhere");
                    }
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(error = %error.message, "reading the model manifest");
                }
            },
        }
        Ok(())
    }
}

/// Runs the registry's one-time rewrite of stored versions without personal profile features;
/// a failure is logged and left for the next run.
async fn scrub_stored_versions(services: &Services) {
    if let Err(error) = services
        .registry
        .scrub_personal_features(&services.config.pii.fields)
        .await
    {
        tracing::warn!(%error, "stored versions not yet scrubbed of personal profile fields");
    }
}

/// One run, under the training lease: a node whose cluster is training elsewhere does not
/// start another.
async fn run(services: &Services, trainer: &ActorRef<TrainerMsg>) -> Result<String, ApiError> {
    let holder = services.cluster.node_id();
    if !services.registry.try_lease(holder, LEASE_TTL).await? {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "another node of the cluster is training",
        ));
    }
    let result = train_once(services, trainer).await;
    if let Err(error) = services.registry.end_lease(holder).await {
        tracing::warn!(error = %error.message, "ending the training lease; it expires by itself");
    }
    result
}

async fn train_once(
    services: &Services,
    trainer: &ActorRef<TrainerMsg>,
) -> Result<String, ApiError> {
    scrub_stored_versions(services).await;
    let (mut data, range) = collect(services).await?;
    // Every catalogued item is a candidate, interactions or not; its content describes it.
    let mut catalogued = Vec::new();
    for id in services.catalog.item_ids() {
        if let Some(item) = services.catalog.get(&id) {
            data.add_item(&item.item_id);
            catalogued.push(item);
        }
    }
    let mut tokens = vec![Vec::new(); data.items.len()];
    for item in &catalogued {
        if let Some(row) = data.item_index(&item.item_id) {
            tokens[row as usize] = models::content::tokens(item.as_ref().into());
        }
    }
    // Profiles let a user with no interactions start from users like them; without the store
    // (PostgreSQL down) the version is trained without that part. Personal fields never become
    // features (`profile_tokens` leaves them out), so no version holds them.
    let personal = PersonalFields::new(&services.config.pii.fields);
    let mut user_tokens = vec![Vec::new(); data.users.len()];
    match services.catalog.store().profiles().await {
        Ok(profiles) => {
            for (user_id, profile) in profiles {
                if let Some(row) = data.user_index(&user_id) {
                    user_tokens[row as usize] = models::content::profile_tokens(&profile, personal);
                }
            }
        }
        Err(error) => tracing::warn!(%error, "training without user profiles"),
    }
    let m = &services.config.model;
    let params = TrainParams {
        dim: m.dim,
        iterations: m.iterations,
        regularization: m.regularization,
        alpha: m.alpha,
        seed: m.seed,
    };
    let hybrid = HybridParams {
        cf_weight: m.cf_weight,
        transitions: TransitionParams {
            window: m.transition_window,
            half_life: m.transition_half_life,
            top_k: m.transition_top_k,
            ..Default::default()
        },
        item_item: ItemItemParams {
            lambda: m.item_item_lambda,
            top_k: m.item_item_top_k,
            ..Default::default()
        },
    };
    let progress = trainer.clone();
    let content = Content {
        items: tokens,
        users: user_tokens,
    };
    let setup = Setup {
        range,
        params,
        hybrid,
        max_user_weight: services.config.trending.max_user_weight,
    };
    // The gate compares the new version with this one on events neither trained on.
    let active = services.registry.active();
    let against = active.clone();
    let mut artifact = tokio::task::spawn_blocking(move || {
        train_against(
            data,
            content,
            setup,
            against.as_deref(),
            |iteration, iterations| {
                let _ = mailbox::tell(
                    &progress,
                    TrainerMsg::Progress {
                        iteration,
                        iterations,
                    },
                );
            },
        )
    })
    .await
    .map_err(ApiError::internal)?;
    // Another version activated meanwhile (by hand, or followed from another node): the shared
    // figures are of one the gate will not compare with, so it falls back to the own metrics.
    let scored = active.map(|a| a.meta.version.clone());
    if services.registry.active().map(|a| a.meta.version.clone()) != scored {
        use models::gate::{ACTIVE_SHARED_NDCG, SHARED_NDCG, SHARED_USERS};
        for key in [SHARED_NDCG, ACTIVE_SHARED_NDCG, SHARED_USERS] {
            artifact.meta.metrics.remove(key);
        }
    }
    let version = artifact.meta.version.clone();
    match services
        .registry
        .publish(artifact, m.max_regression)
        .await?
    {
        Published::Activated => {
            swapped_in(services).await?;
            Ok(version)
        }
        Published::Rejected(why) => {
            tracing::warn!(%version, %why, "new model version rejected; the active one stays");
            Err(ApiError::new(
                ErrorCode::Conflict,
                format!("version {version} was not activated: {why}"),
            ))
        }
    }
}

/// Activates a stored version (a rollback, or a rejected version an operator wants anyway).
pub async fn activate(services: &Services, version: &str) -> Result<(), ApiError> {
    services.registry.activate(version).await?;
    swapped_in(services).await
}

/// After the registry's active version changed: every model actor loads it, cached results go,
/// subscribers get results from the new version.
async fn swapped_in(services: &Services) -> Result<(), ApiError> {
    services.models.reload_all().await?;
    services.changes.publish(crate::changes::Changes::Model);
    Ok(())
}

/// Reads every event into training data, skipping events of erased users: from the node's log,
/// or (`model.train_source = "archive"`) from the event archive, which every node writes, plus
/// the node's own tail not archived yet. With Kafka, the partitions other nodes own are read
/// from the broker too (their tails are in no archive yet; see [`history_since`]). An event id
/// seen twice (journaled by two nodes across a rebalance, or in the archive and on the broker)
/// counts once.
pub async fn collect(services: &Services) -> Result<(Interactions, Option<(i64, i64)>), ApiError> {
    let log = &services.log;
    let mut data = Interactions::default();
    let mut range: Option<(i64, i64)> = None;
    let mut tombstones: HashMap<String, Option<Tombstone>> = HashMap::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let from_archive = services.config.model.train_source == TrainSource::Archive;
    let dedupe = from_archive || services.history.is_some();
    // Records of this node's log are judged by offset, archived ones (several nodes' logs) by
    // their receive time.
    let mut add = |r: Record, archived: bool| -> Result<(), ApiError> {
        let e = &r.event;
        let tombstone = match tombstones.get(&e.user_id) {
            Some(t) => *t,
            None => {
                let t = services
                    .store
                    .tombstone(&e.user_id)
                    .map_err(ApiError::internal)?;
                tombstones.insert(e.user_id.clone(), t);
                t
            }
        };
        if tombstone.is_some_and(|t| {
            if archived {
                t.covers_archived(&r)
            } else {
                t.covers(&r)
            }
        }) {
            return Ok(());
        }
        if dedupe && !seen.insert((e.user_id.clone(), e.event_id.clone())) {
            return Ok(());
        }
        data.add(&e.user_id, &e.item_id, e.weight(), e.ts);
        range = Some(range.map_or((e.ts, e.ts), |(lo, hi)| (lo.min(e.ts), hi.max(e.ts))));
        Ok(())
    };
    if from_archive {
        for r in read_archive(services.registry.objects()).await? {
            add(r, true)?;
        }
    }
    for partition in 0..log.num_partitions() {
        let from = if from_archive {
            log.committed(storage::ARCHIVE, partition)
                .map_err(ApiError::internal)?
        } else {
            0
        };
        storage::log::scan(log.as_ref(), partition, from, |r| add(r, false)).await?;
    }
    if let Some(history) = &services.history {
        let since = history_since(services, common::now_millis());
        match history.since(since).await {
            Ok(records) => {
                tracing::info!(
                    since,
                    records = records.len(),
                    "read the broker's user-events for training"
                );
                for r in records {
                    add(r, true)?;
                }
            }
            // A first model is better than none; a later one waits for the broker rather than
            // replace a version that saw every node's events with one that did not.
            Err(error) if services.registry.active().is_none() => tracing::warn!(
                %error,
                "the broker's events cannot be read: the first model trains on this node's own"
            ),
            Err(error) => {
                return Err(ApiError::unavailable(format!(
                    "reading every partition's events from the broker: {error}"
                )));
            }
        }
    }
    Ok((data, range))
}

/// From when the broker's events are read: with the archive, three archive intervals back
/// (every node archived what is older, with room for a late run); without it, everything the
/// broker still holds.
fn history_since(services: &Services, now_ms: i64) -> i64 {
    let interval = services.config.objects.archive_interval;
    if services.config.model.train_source != TrainSource::Archive || interval.is_zero() {
        return 0;
    }
    now_ms.saturating_sub(i64::try_from(interval.as_millis() * 3).unwrap_or(i64::MAX))
}
