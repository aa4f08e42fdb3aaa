//! The event log: partitioned, offset-addressed, durable before acknowledged.
//!
//! [`FileEventLog`] is the embedded implementation: per partition a directory of segment files,
//! each record `[len u32][crc32 u32][offset u64][received_ms i64][event JSON]`, where the top bit
//! of `len` marks the receive time (records written before it existed have no `received_ms`, and
//! still read). One writer thread per partition group-commits: it drains every append waiting in
//! its queue, writes them, fsyncs once and only then acknowledges them all. On open, a torn
//! record at the tail of the last segment (a crash mid-write, never acknowledged) is truncated
//! away.
//!
//! The log also deduplicates by `(user_id, event_id)` at append time, so that a client retry of
//! an acknowledged batch is reported as duplicates and not stored twice. The accepted ids are
//! kept as keyed hashes (nothing personal in clear) for the dedupe window, erasure or not: that
//! window is how long a retried or redelivered event id is recognised.
//!
//! **A batch takes effect whole or not at all.** Its records reach the segment (and its fsync)
//! before its ids reach RocksDB, in the same RocksDB batch as the position the ids cover
//! (`ids_through`). A failure of any step cuts the segment back to where the batch began, so the
//! log, on disk and in memory, is as it was before the batch; if even the cut fails, the next
//! batch makes it first. After a crash between the two writes, recovery finds records past
//! `ids_through` and records their ids: the batch then stands whole.
//!
//! **Retention**: [`FileEventLog::enforce_retention`] deletes closed segments older than
//! `retention` whose every record each consumer group in `retention_groups` has committed.
//! Reads from an offset that was deleted start at the first one kept.
//!
//! By concern: `record` is the on-disk format (segments, records, the sparse index, reading a
//! range), `accepted` the dedupe by accepted-id hashes, `recovery` what opening does to a
//! partition, `writer` the group-commit thread, `retention` the deletion of segments every
//! consumer is done with, `rebuild` a partition written back from the archive by a restore.
//! This file holds the API and [`FileEventLog`], which ties them.

mod accepted;
mod rebuild;
mod record;
mod recovery;
mod retention;
mod writer;

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use common::Event;
use common::partition::partition_for;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use crate::db::{Cf, Db};
use crate::error::{Result, StorageError};

use accepted::{hash_plain_accepted_ids, salt};
use record::{IndexPoint, point_for, read_range, segment_path};
use recovery::{recover, restore_ids};
#[cfg(test)]
use writer::Faults;
use writer::{AppendReq, Writer};

pub use rebuild::rebuild_partition;

/// The events a broker still holds of every partition, whichever node consumed them (Kafka
/// mode). Training adds them to the archive, so that a model sees the whole cluster's recent
/// events and not only those of the partitions the training node owns.
#[async_trait]
pub trait EventHistory: Send + Sync + 'static {
    /// Every event of every partition received at or after `since_ms` (by the broker's
    /// timestamps; from the first one kept if the broker cannot tell), up to the end of each
    /// partition when the read began. `received_ms` is the broker's timestamp.
    async fn since(&self, since_ms: i64) -> Result<Vec<Record>>;
}

/// One event at its place in a partition.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub partition: u32,
    pub offset: u64,
    /// When the log received the event (epoch ms, the node's clock); `None` for records written
    /// before receive times were kept.
    pub received_ms: Option<i64>,
    pub event: Event,
}

/// What an append did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    pub accepted: usize,
    pub duplicates: usize,
}

#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    fn num_partitions(&self) -> u32;
    /// Appends events durably; returns once every accepted event is stored.
    async fn append(&self, events: Vec<Event>) -> Result<AppendOutcome>;
    /// Up to `max` records of `partition` from `offset` on (fewer, or none, at the end). From an
    /// offset that retention deleted, reading starts at the first offset kept.
    async fn read(&self, partition: u32, offset: u64, max: usize) -> Result<Vec<Record>>;
    /// The next offset to be written in `partition`, as a watch that changes on every append.
    fn high_watermark(&self, partition: u32) -> watch::Receiver<u64>;
    /// The first offset of `partition` still held (0 until retention deletes a segment).
    fn first_offset(&self, partition: u32) -> u64;
    /// The offset a consumer group (`INGEST`, `ARCHIVE`) has durably processed up to (exclusive).
    fn committed(&self, group: &str, partition: u32) -> Result<u64>;
    fn commit(&self, group: &str, partition: u32, offset: u64) -> Result<()>;
    /// Deletes what retention allows as of `now` (blocking file work); returns the number of
    /// segments deleted.
    fn enforce_retention(&self, now: SystemTime) -> Result<u64>;
}

/// Records read from the log a page at a time.
const SCAN_PAGE: usize = 10_000;

/// Hands every record of `partition` from `from` up to its end (as of the call) to `each`, reading
/// a page at a time so that a long log is never held in memory at once.
pub async fn scan<E: From<StorageError>>(
    log: &dyn EventLog,
    partition: u32,
    from: u64,
    mut each: impl FnMut(Record) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let end = *log.high_watermark(partition).borrow();
    let mut offset = from;
    while offset < end {
        let records = log.read(partition, offset, SCAN_PAGE).await?;
        let Some(last) = records.last() else { break };
        offset = last.offset + 1;
        for record in records {
            each(record)?;
        }
    }
    Ok(())
}

/// Where `POST /v1/events` writes: the embedded log itself, or a broker whose consumer path feeds
/// the log. Acknowledging means stored: an `Ok` is returned only once every event is durable.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn publish(&self, events: Vec<Event>) -> Result<AppendOutcome>;
    /// Whether writes can be accepted right now (`Err` says why not).
    async fn health(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

#[async_trait]
impl EventSink for FileEventLog {
    async fn publish(&self, events: Vec<Event>) -> Result<AppendOutcome> {
        self.append(events).await
    }
}
/// Default size past which a segment is closed and the next one started.
pub const SEGMENT_BYTES: u64 = 128 << 20;

/// How the log is laid out and what it may delete.
#[derive(Clone, Debug)]
pub struct LogOptions {
    pub num_partitions: u32,
    /// fsync every group commit before acknowledging it.
    pub fsync: bool,
    /// A segment is closed, and the next one started, past this size.
    pub segment_bytes: u64,
    /// Closed segments last written longer ago than this, and wholly committed by every group
    /// of `retention_groups`, are deleted. Zero keeps every segment.
    pub retention: Duration,
    /// The consumer groups that must be done with a segment before it goes.
    pub retention_groups: Vec<String>,
}

impl LogOptions {
    /// Default segment size; no retention.
    pub fn new(num_partitions: u32, fsync: bool) -> Self {
        Self {
            num_partitions,
            fsync,
            segment_bytes: SEGMENT_BYTES,
            retention: Duration::ZERO,
            retention_groups: vec![INGEST.to_owned()],
        }
    }
}
struct Partition {
    dir: PathBuf,
    index: Arc<RwLock<Vec<IndexPoint>>>,
    hw: watch::Receiver<u64>,
    /// The base of the segment the writer appends to: never deleted.
    active: Arc<AtomicU64>,
    tx: mpsc::Sender<AppendReq>,
}

pub struct FileEventLog {
    partitions: Vec<Partition>,
    writers: Vec<std::thread::JoinHandle<()>>,
    db: Arc<Db>,
    options: LogOptions,
    /// One retention pass at a time.
    retaining: Mutex<()>,
    #[cfg(test)]
    faults: Vec<Arc<Faults>>,
}

impl Drop for FileEventLog {
    /// Closes every writer's queue and waits for it to finish its last group commit, so that the
    /// log (and its hold on the database) is fully released when this returns.
    fn drop(&mut self) {
        self.partitions.clear();
        for writer in self.writers.drain(..) {
            let _ = writer.join();
        }
    }
}

impl FileEventLog {
    /// Opens (creating if needed) the log under `dir` with `num_partitions` partitions, the
    /// default segment size and no retention.
    pub fn open(dir: &Path, num_partitions: u32, fsync: bool, db: Arc<Db>) -> Result<Self> {
        Self::open_with(dir, LogOptions::new(num_partitions, fsync), db)
    }

    /// Opens (creating if needed) the log under `dir`.
    pub fn open_with(dir: &Path, options: LogOptions, db: Arc<Db>) -> Result<Self> {
        let num_partitions = options.num_partitions;
        let salt: Arc<[u8]> = salt(&db)?.into();
        hash_plain_accepted_ids(&db, &salt)?;
        let mut partitions = Vec::with_capacity(num_partitions as usize);
        let mut writers = Vec::with_capacity(num_partitions as usize);
        #[cfg(test)]
        let mut faults = Vec::new();
        for p in 0..num_partitions {
            let pdir = dir.join(format!("p{p:04}"));
            std::fs::create_dir_all(&pdir)?;
            let (index, next, base, pos) = recover(&pdir)?;
            restore_ids(&db, &salt, &pdir, p, &index, next)?;
            let index = Arc::new(RwLock::new(index));
            let active = Arc::new(AtomicU64::new(base));
            let (hw_tx, hw) = watch::channel(next);
            let (tx, rx) = mpsc::channel();
            let writer = Writer {
                partition: p,
                dir: pdir.clone(),
                db: db.clone(),
                salt: salt.clone(),
                index: index.clone(),
                hw: hw_tx,
                active: active.clone(),
                next,
                base,
                pos,
                segment_bytes: options.segment_bytes,
                fsync: options.fsync,
                file: OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(segment_path(&pdir, base))?,
                dirty: false,
                #[cfg(test)]
                faults: {
                    let f = Arc::new(Faults::default());
                    faults.push(f.clone());
                    f
                },
            };
            writers.push(
                std::thread::Builder::new()
                    .name(format!("log-writer-{p}"))
                    .spawn(move || writer.run(rx))?,
            );
            partitions.push(Partition {
                dir: pdir,
                index,
                hw,
                active,
                tx,
            });
        }
        if let Some(extra) = std::fs::read_dir(dir)?.filter_map(|e| e.ok()).find(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix('p')
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n >= num_partitions)
        }) {
            return Err(StorageError::Corrupt(format!(
                "the event log has partition {} beyond events.num_partitions = {num_partitions}; the partition count cannot shrink",
                extra.file_name().to_string_lossy()
            )));
        }
        Ok(Self {
            partitions,
            writers,
            db,
            options,
            retaining: Mutex::new(()),
            #[cfg(test)]
            faults,
        })
    }

    fn partition(&self, partition: u32) -> Result<&Partition> {
        self.partitions
            .get(partition as usize)
            .ok_or_else(|| StorageError::Corrupt(format!("no partition {partition}")))
    }
}

/// The consumer group that applies events to sessions.
pub const INGEST: &str = "ingest";
/// The consumer group that copies the log to the object store.
pub const ARCHIVE: &str = "archive";

fn offset_key(group: &str, partition: u32) -> Vec<u8> {
    let mut key = crate::db::pair_prefix(group);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// Commits `offset` for `group` on `partition`, in the database alone (no log open).
pub fn commit_in(db: &Db, group: &str, partition: u32, offset: u64) -> Result<()> {
    db.put(
        Cf::Offsets,
        &offset_key(group, partition),
        &offset.to_be_bytes(),
    )
}

/// The offset `group` committed on `partition`, read from the database alone (no log open).
pub fn committed_in(db: &Db, group: &str, partition: u32) -> Result<u64> {
    Ok(db
        .get(Cf::Offsets, &offset_key(group, partition))?
        .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

#[async_trait]
impl EventLog for FileEventLog {
    fn num_partitions(&self) -> u32 {
        self.partitions.len() as u32
    }

    async fn append(&self, events: Vec<Event>) -> Result<AppendOutcome> {
        let n = self.num_partitions();
        let mut by_partition: Vec<Vec<Event>> = vec![Vec::new(); n as usize];
        for event in events {
            by_partition[partition_for(&event.user_id, n) as usize].push(event);
        }
        let mut waits = Vec::new();
        for (p, events) in by_partition.into_iter().enumerate() {
            if events.is_empty() {
                continue;
            }
            let (reply, rx) = oneshot::channel();
            self.partitions[p]
                .tx
                .send(AppendReq { events, reply })
                .map_err(|_| StorageError::Closed)?;
            waits.push(rx);
        }
        let mut total = AppendOutcome::default();
        for rx in waits {
            let outcome = rx.await.map_err(|_| StorageError::Closed)??;
            total.accepted += outcome.accepted;
            total.duplicates += outcome.duplicates;
        }
        Ok(total)
    }

    async fn read(&self, partition: u32, offset: u64, max: usize) -> Result<Vec<Record>> {
        let part = self.partition(partition)?;
        let end = *part.hw.borrow();
        if offset >= end || max == 0 {
            return Ok(Vec::new());
        }
        let mut attempts = 0;
        loop {
            let Some(point) = point_for(&part.index.read(), offset) else {
                return Ok(Vec::new());
            };
            let dir = part.dir.clone();
            let read = tokio::task::spawn_blocking(move || {
                read_range(&dir, point, partition, offset, end, max)
            })
            .await
            .map_err(|e| StorageError::Io(std::io::Error::other(e)))?;
            match read {
                // Retention deleted the segment between choosing it and opening it.
                Err(StorageError::Io(e))
                    if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 =>
                {
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    fn high_watermark(&self, partition: u32) -> watch::Receiver<u64> {
        self.partitions[partition as usize].hw.clone()
    }

    fn first_offset(&self, partition: u32) -> u64 {
        let part = &self.partitions[partition as usize];
        let first = part.index.read().first().map(|p| p.offset);
        first.unwrap_or_else(|| *part.hw.borrow())
    }

    fn committed(&self, group: &str, partition: u32) -> Result<u64> {
        committed_in(&self.db, group, partition)
    }

    fn commit(&self, group: &str, partition: u32, offset: u64) -> Result<()> {
        commit_in(&self.db, group, partition, offset)
    }

    fn enforce_retention(&self, now: SystemTime) -> Result<u64> {
        let retention = self.options.retention;
        let Some(cutoff) = now.checked_sub(retention).filter(|_| !retention.is_zero()) else {
            return Ok(0);
        };
        let _one_pass = self.retaining.lock();
        let mut deleted = 0;
        for partition in 0..self.num_partitions() {
            deleted += self.retain_partition(partition, cutoff)?;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests;
