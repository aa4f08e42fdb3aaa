//! `streamrec restore`: rebuilds a node's data dir after its disk was lost, from the newest
//! snapshot of its database at or before a time, then lets the node replay what came after.
//!
//! - The database comes back from the snapshot ([`storage::snapshot`]): sessions, the embedded
//!   catalogue, profiles, erasures, the id sets, and the offsets up to which ingest had applied
//!   the log.
//! - On the embedded log, each partition of the log is written back from the archive, starting
//!   at the offset the snapshot's ingest had reached: the node's ingest replays the archived
//!   events after the snapshot when it starts, as after any restart, and the id sets drop the
//!   ones it had applied. Events the node took after its last archive run are lost with its disk
//!   (RPO: `objects.archive_interval`).
//! - With Kafka, the node's log is a journal of what it consumed; the partitions it is assigned
//!   restore from the sessions changelog after the offset the snapshot had restored through, so
//!   nothing is replayed here.
//!
//! The node must not be running, and the data dir must hold no database and no log: a restore
//! never writes over a store.

use std::path::Path;

use anyhow::{Context, bail};
use common::Config;
use common::config::EventsBackend;
use serde::Serialize;
use storage::snapshot::Manifest;
use storage::{Db, INGEST, backends, snapshot};

/// What a restore did.
#[derive(Debug, Serialize)]
pub struct Restored {
    pub snapshot: String,
    pub snapshot_created_at: i64,
    pub snapshot_bytes: u64,
    /// Archived events written back into the log, to be replayed when the node starts.
    pub events_to_replay: u64,
    pub duration_ms: u64,
}

/// Restores `config.data_dir` from the newest snapshot of `config.cluster.node_id` taken at or
/// before `at` (epoch ms).
pub async fn restore(config: &Config, at: i64) -> anyhow::Result<Restored> {
    let started = std::time::Instant::now();
    let dir = &config.data_dir;
    let (db_dir, log_dir) = (dir.join("db"), dir.join("events"));
    for held in [&db_dir, &log_dir] {
        if non_empty(held) {
            bail!(
                "{} is not empty: restore only into a data dir without a database or a log \
                 (move it away first)",
                held.display()
            );
        }
    }
    let objects = backends::objects(&config.objects, dir)
        .await
        .context("opening the object store")?;
    let node_id = &config.cluster.node_id;
    let manifest = snapshot::newest(objects.as_ref(), node_id, at)
        .await
        .context("listing snapshots")?
        .with_context(|| format!("no snapshot of node {node_id:?} at or before {at} ms"))?;
    snapshot::fetch(objects.as_ref(), &manifest, &db_dir)
        .await
        .context("downloading the snapshot")?;
    let events_to_replay = match config.events.url {
        EventsBackend::Kafka { .. } => 0,
        EventsBackend::Embedded => {
            rebuild_log(config, &manifest, objects.as_ref(), &db_dir, &log_dir).await?
        }
    };
    Ok(Restored {
        snapshot: manifest.key.clone(),
        snapshot_created_at: manifest.created_at,
        snapshot_bytes: manifest.bytes(),
        events_to_replay,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Writes every partition of the log back from this node's archive, from where the restored
/// database's ingest had applied up to; returns how many events it holds.
async fn rebuild_log(
    config: &Config,
    manifest: &Manifest,
    objects: &dyn storage::ObjectStore,
    db_dir: &Path,
    log_dir: &Path,
) -> anyhow::Result<u64> {
    let archived = actors::archiver::read_archive_of(objects, Some(&manifest.node_id))
        .await
        .map_err(|e| anyhow::anyhow!("reading the archive: {}", e.message))?;
    let db = Db::open(db_dir).context("opening the restored database")?;
    let mut events = 0;
    for partition in 0..config.events.num_partitions {
        let from = storage::log::committed_in(&db, INGEST, partition)?;
        events += storage::log::rebuild_partition(log_dir, partition, from, &archived)
            .with_context(|| format!("writing partition {partition} of the log"))?;
    }
    db.flush()?;
    Ok(events)
}

fn non_empty(dir: &Path) -> bool {
    dir.read_dir().is_ok_and(|mut d| d.next().is_some())
}
