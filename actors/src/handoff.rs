//! Partitions changing hands. The consumer group decides who owns a partition; this module is
//! what a node does about it, called by the Kafka bridge between two batches (so no batch of
//! the partition is half applied when it runs):
//!
//! - [`release`]: the group took partitions away. Everything consumed from them is applied,
//!   recorded in the changelog and committed (the bridge does that per batch, before it polls
//!   again), so the node only stops routing their users here and stops their live sessions.
//! - [`restore`]: the group gave a partition. Its users' states are replayed from the sessions
//!   changelog into this node's store, from the offset this node last restored through (all of
//!   it on a new node, only what others wrote since on a node that gets a partition back), and
//!   only then does the partition serve and apply. Until then its requests wait.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::{Histogram, IntCounterVec, register_histogram, register_int_counter_vec};
use ractor::ActorProcessingErr;
use storage::changelog::Restore;

use crate::Services;
use crate::changes::Changes;
use crate::session_manager::SessionManagerMsg;
use crate::{Slot, mailbox};

static RESTORE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "streamrec_restore_seconds",
        "Time to restore one partition's sessions from the changelog before it serves.",
        vec![
            0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0
        ]
    )
    .expect("metric registers once")
});

static RESTORES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "streamrec_restores_total",
        "Partitions restored from the changelog: full (from its start) or incremental (a \
         partition this node held before, from where it left off).",
        &["kind"]
    )
    .expect("metric registers once")
});

/// Registers the restore counter (each `kind` at 0) and histogram, so that a node's first
/// restore is an increase `rate()` sees. Called once at start (`supervisors::Node::start`);
/// calling it again changes nothing.
pub fn register_metrics() {
    for kind in ["full", "incremental"] {
        RESTORES.with_label_values(&[kind]);
    }
    LazyLock::force(&RESTORE_SECONDS);
}

/// Longest one partition's restore may take before the bridge fails (and, restarted by its
/// supervisor, joins the group again).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(600);

/// What one restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub partition: u32,
    /// Changelog records replayed.
    pub records: u64,
    /// Users whose state they changed here.
    pub users: usize,
    /// The changelog offset restored through.
    pub through: u64,
    /// The input offset the restored states cover, when the changelog says: the partition is
    /// consumed from there (see [`storage::changelog::Restore::covered`]).
    pub covered: Option<u64>,
}

/// The group revoked `partitions`: their users route elsewhere from now on, and their live
/// sessions stop. Returns how many stopped.
pub async fn release(
    services: &Services,
    sessions: &Slot<SessionManagerMsg>,
    partitions: &[u32],
) -> Result<usize, ActorProcessingErr> {
    services.cluster.revoked(partitions);
    stop_sessions(sessions, partitions).await
}

/// Stops the live sessions of users in `partitions` (see [`SessionManagerMsg::Release`]).
async fn stop_sessions(
    sessions: &Slot<SessionManagerMsg>,
    partitions: &[u32],
) -> Result<usize, ActorProcessingErr> {
    let Some(manager) = sessions.load_full() else {
        // Restarting: it starts with no live session.
        return Ok(0);
    };
    let partitions = partitions.to_vec();
    let stopped = mailbox::ask(
        &manager,
        |reply| SessionManagerMsg::Release { partitions, reply },
        Some(crate::CALL_TIMEOUT),
    )
    .await
    .map_err(|e| format!("releasing sessions: {e}"))?;
    Ok(stopped.unwrap_or(0))
}

/// Replays `partition`'s changelog into the store; the caller then activates the partition
/// (after pointing its input where the restored states end). A session
/// of the partition still live here (started by a replay of this node's own journal) would
/// hold what the store held before: it is stopped first. Every restored user's cached lists are
/// dropped (and live subscribers told) on the way.
pub async fn restore(
    services: &Services,
    sessions: &Slot<SessionManagerMsg>,
    settings: &kafka::Settings,
    partition: u32,
) -> Result<Restored, ActorProcessingErr> {
    let started = Instant::now();
    stop_sessions(sessions, &[partition]).await?;
    let from = services.store.restored_through(partition)?;
    let Some(changelog) = &services.changelog else {
        // No changelog (the embedded log): this node's store is the only copy.
        return Ok(Restored {
            partition,
            ..Default::default()
        });
    };
    let own = changelog.writer().to_owned();
    let until = changelog.mark(partition).await?;
    // From where this store last restored through, the range begins under its own marker.
    let replay = Arc::new(Mutex::new(Restore::new((from > 0).then(|| own.clone()))));
    let feed = replay.clone();
    let (through, _) = kafka::changelog::read_partition(
        settings,
        services.cluster.node_id(),
        partition,
        from,
        until,
        RESTORE_TIMEOUT,
        move |record| {
            feed.lock().push(record);
            Ok(())
        },
    )
    .await?;
    let replay = std::mem::take(&mut *replay.lock());
    let (records, fenced, covered) = (replay.num_read(), replay.num_fenced(), replay.covered());
    // An erasure replayed here covers whatever this node's log already holds of the user.
    let local_end = *services.log.high_watermark(partition).borrow();
    let (catalog, cap) = (
        services.catalog.clone(),
        services.config.trending.max_user_weight,
    );
    let contributions = move |state: &[u8]| crate::popularity::of_state(state, &catalog, cap);
    let changed = replay.apply(
        services.store.as_ref(),
        partition,
        &own,
        local_end,
        &contributions,
    )?;
    services.store.set_restored_through(partition, through)?;
    // What the partition's users add to popularity is now this store's to say.
    services
        .popularity
        .reset_partition(partition, services.store.partition_stats(partition)?);
    for user in &changed {
        services.changes.publish(Changes::User(user.clone()));
    }
    let kind = if from == 0 { "full" } else { "incremental" };
    RESTORES.with_label_values(&[kind]).inc();
    RESTORE_SECONDS.observe(started.elapsed().as_secs_f64());
    tracing::info!(
        partition,
        from,
        through,
        records,
        fenced,
        ?covered,
        users = changed.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "partition restored"
    );
    Ok(Restored {
        partition,
        records,
        users: changed.len(),
        through,
        covered,
    })
}
