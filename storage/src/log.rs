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

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use common::Event;
use common::partition::partition_for;
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};

use crate::db::{Cf, Db, id_stamp};
use crate::error::{Result, StorageError};

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

/// `[len u32][crc32 u32][offset u64]`, then `[received_ms i64]` when `len` has [`RECEIVED`].
const HEADER: usize = 16;
/// The top bit of `len`: a receive time follows the offset.
const RECEIVED: u32 = 1 << 31;
/// Default size past which a segment is closed and the next one started.
pub const SEGMENT_BYTES: u64 = 128 << 20;
/// A sparse index point every this many records keeps reads near O(batch).
const INDEX_EVERY: u64 = 512;
/// Meta keys: the salt of the accepted-id hashes, the legacy migration done, and per partition
/// the offset up to which the accepted ids of the log's records are stored.
const SALT_KEY: &[u8] = b"accepted_ids_salt";
const HASHED_KEY: &[u8] = b"accepted_ids_hashed";
const IDS_THROUGH: &[u8] = b"log_ids_through";
/// First byte of a hashed accepted id: never the first byte of a UTF-8 user id, so keys written
/// by earlier versions (`user \0 event`) are told apart.
const HASHED: u8 = 0xff;

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

struct AppendReq {
    events: Vec<Event>,
    reply: oneshot::Sender<Result<AppendOutcome>>,
}

/// A point of the sparse index: record `offset` starts at `pos` in segment `base`.
#[derive(Clone, Copy, Debug)]
struct IndexPoint {
    offset: u64,
    base: u64,
    pos: u64,
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

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = name.strip_suffix(".log").and_then(|b| b.parse().ok()) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// One record as stored.
struct RawRecord {
    offset: u64,
    received_ms: Option<i64>,
    payload: Vec<u8>,
    /// Bytes it takes in the segment.
    size: u64,
}

/// Reads one record at the reader's position; `Ok(None)` at a clean or torn end.
fn read_record(reader: &mut impl Read) -> Result<Option<RawRecord>> {
    let mut header = [0u8; HEADER];
    if !read_full(reader, &mut header)? {
        return Ok(None);
    }
    let word = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let offset = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let mut size = HEADER;
    let received_ms = if word & RECEIVED != 0 {
        let mut at = [0u8; 8];
        if !read_full(reader, &mut at)? {
            return Ok(None);
        }
        size += 8;
        Some(i64::from_le_bytes(at))
    } else {
        None
    };
    let len = (word & !RECEIVED) as usize;
    let mut payload = vec![0u8; len];
    if !read_full(reader, &mut payload)? {
        return Ok(None);
    }
    if record_crc(offset, received_ms, &payload) != crc {
        return Ok(None);
    }
    Ok(Some(RawRecord {
        offset,
        received_ms,
        payload,
        size: (size + len) as u64,
    }))
}

/// `read_exact`, but `false` at the end of the file.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn record_crc(offset: u64, received_ms: Option<i64>, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&offset.to_le_bytes());
    if let Some(at) = received_ms {
        hasher.update(&at.to_le_bytes());
    }
    hasher.update(payload);
    hasher.finalize()
}

fn encode_record(buf: &mut Vec<u8>, offset: u64, received_ms: i64, payload: &[u8]) -> Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| len & RECEIVED == 0)
        .ok_or_else(|| StorageError::Corrupt("event too large for the log".into()))?;
    buf.extend_from_slice(&(len | RECEIVED).to_le_bytes());
    buf.extend_from_slice(&record_crc(offset, Some(received_ms), payload).to_le_bytes());
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&received_ms.to_le_bytes());
    buf.extend_from_slice(payload);
    Ok(())
}

/// The accepted-ids key of an event: a hash keyed by the node's salt, so that the set holds no
/// user or event id in clear, and the set can outlive a user's erasure for the dedupe window.
fn accepted_key(salt: &[u8], user_id: &str, event_id: &str) -> [u8; 17] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update((user_id.len() as u64).to_le_bytes());
    hasher.update(user_id.as_bytes());
    hasher.update(event_id.as_bytes());
    let digest = hasher.finalize();
    let mut key = [HASHED; 17];
    key[1..].copy_from_slice(&digest[..16]);
    key
}

/// The node's salt for accepted-id hashes, made once.
fn salt(db: &Db) -> Result<Vec<u8>> {
    if let Some(salt) = db.get(Cf::Meta, SALT_KEY)? {
        return Ok(salt);
    }
    use aes_gcm::aead::OsRng;
    use aes_gcm::aead::rand_core::RngCore;
    let mut salt = vec![0u8; 32];
    OsRng.fill_bytes(&mut salt);
    db.put(Cf::Meta, SALT_KEY, &salt)?;
    Ok(salt)
}

/// Earlier versions kept accepted ids as `user \0 event` without a time: hash them, counting
/// their window from now. Runs once; a crash half-way resumes (hashed keys are told apart).
fn hash_plain_accepted_ids(db: &Db, salt: &[u8]) -> Result<()> {
    if db.contains(Cf::Meta, HASHED_KEY)? {
        return Ok(());
    }
    let stamp = id_stamp(common::now_millis());
    let mut batch = rocksdb::WriteBatch::default();
    for kv in db.scan(Cf::AcceptedIds) {
        let (key, _) = kv?;
        if key.first() == Some(&HASHED) {
            break;
        }
        if let Some(at) = key.iter().position(|&b| b == 0) {
            let user = String::from_utf8_lossy(&key[..at]);
            let event = String::from_utf8_lossy(&key[at + 1..]);
            batch.put_cf(
                db.cf(Cf::AcceptedIds),
                accepted_key(salt, &user, &event),
                stamp,
            );
        }
        batch.delete_cf(db.cf(Cf::AcceptedIds), &key);
        if batch.len() >= 10_000 {
            db.write(std::mem::take(&mut batch))?;
        }
    }
    batch.put_cf(db.cf(Cf::Meta), HASHED_KEY, []);
    db.write(batch)
}

fn ids_through_key(partition: u32) -> Vec<u8> {
    let mut key = IDS_THROUGH.to_vec();
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// Scans a partition directory, truncating a torn tail; returns the index, the next offset, and
/// the last segment's base and length.
fn recover(dir: &Path) -> Result<(Vec<IndexPoint>, u64, u64, u64)> {
    let bases = list_segments(dir)?;
    let mut index = Vec::new();
    // Retention deletes the oldest segments: the first one kept starts the log.
    let mut next = bases.first().copied().unwrap_or(0);
    let mut last = (next, 0u64);
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base);
        let mut reader = BufReader::new(File::open(&path)?);
        let mut pos = 0u64;
        if base != next {
            return Err(StorageError::Corrupt(format!(
                "{} does not follow offset {next}",
                path.display()
            )));
        }
        while let Some(record) = read_record(&mut reader)? {
            if record.offset != next {
                return Err(StorageError::Corrupt(format!(
                    "{} has offset {}, expected {next}",
                    path.display(),
                    record.offset
                )));
            }
            if next.is_multiple_of(INDEX_EVERY) || pos == 0 {
                index.push(IndexPoint {
                    offset: next,
                    base,
                    pos,
                });
            }
            next += 1;
            pos += record.size;
        }
        let len = std::fs::metadata(&path)?.len();
        if pos < len {
            if i + 1 != bases.len() {
                return Err(StorageError::Corrupt(format!(
                    "{} is damaged before its end",
                    path.display()
                )));
            }
            tracing::warn!(path = %path.display(), valid_bytes = pos, file_bytes = len, "truncating torn tail of event log");
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(pos)?;
            file.sync_data()?;
        }
        last = (base, pos);
    }
    Ok((index, next, last.0, last.1))
}

/// The index point to start reading `offset` from: the last at or before it, or the first
/// kept when `offset` was deleted.
fn point_for(index: &[IndexPoint], offset: u64) -> Option<IndexPoint> {
    let i = index.partition_point(|p| p.offset <= offset);
    index.get(i.saturating_sub(1)).copied()
}

/// After a crash between a batch's segment write and its ids write, the records past
/// `ids_through` stand (they are whole and fsynced) without their ids: store them, so that a
/// retry of that batch is still recognised.
fn restore_ids(
    db: &Db,
    salt: &[u8],
    dir: &Path,
    partition: u32,
    index: &[IndexPoint],
    next: u64,
) -> Result<()> {
    let key = ids_through_key(partition);
    let through = db
        .get(Cf::Meta, &key)?
        .and_then(|v| v.try_into().ok().map(u64::from_be_bytes));
    let mut batch = rocksdb::WriteBatch::default();
    match through {
        Some(through) if through < next => {
            if let Some(point) = point_for(index, through) {
                let records = read_range(dir, point, partition, through, next, usize::MAX)?;
                tracing::warn!(
                    partition,
                    records = records.len(),
                    "restoring accepted ids of records written just before a crash"
                );
                let now = common::now_millis();
                for r in records {
                    batch.put_cf(
                        db.cf(Cf::AcceptedIds),
                        accepted_key(salt, &r.event.user_id, &r.event.event_id),
                        id_stamp(r.received_ms.unwrap_or(now)),
                    );
                }
            }
        }
        Some(through) if through > next => tracing::warn!(
            partition,
            through,
            next,
            "the event log ends before its stored ids (was fsync off at a power loss?)"
        ),
        Some(_) => return Ok(()),
        None => {}
    }
    batch.put_cf(db.cf(Cf::Meta), key, next.to_be_bytes());
    db.write(batch)
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

    /// Deletes, oldest first, the closed segments of one partition that every retention group
    /// has committed and that were last written before `cutoff`.
    fn retain_partition(&self, partition: u32, cutoff: SystemTime) -> Result<u64> {
        let part = self.partition(partition)?;
        let mut consumed = None::<u64>;
        for group in &self.options.retention_groups {
            let c = self.committed(group, partition)?;
            consumed = Some(consumed.map_or(c, |m| m.min(c)));
        }
        let consumed = consumed.unwrap_or(0);
        let active = part.active.load(Ordering::Acquire);
        let bases = list_segments(&part.dir)?;
        let mut deleted = 0;
        for pair in bases.windows(2) {
            let (base, end) = (pair[0], pair[1]);
            let path = segment_path(&part.dir, base);
            if base >= active || end > consumed || std::fs::metadata(&path)?.modified()? > cutoff {
                break;
            }
            // Readers stop finding it first; one that already chose it retries (see `read`).
            part.index.write().retain(|p| p.base != base);
            std::fs::remove_file(&path)?;
            // Oldest first, each deletion durable before the next: the log never has a gap.
            File::open(&part.dir)?.sync_all()?;
            tracing::info!(
                partition,
                first_offset = base,
                end_offset = end,
                "deleted an event log segment every consumer is done with"
            );
            deleted += 1;
        }
        Ok(deleted)
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
        Ok(self
            .db
            .get(Cf::Offsets, &offset_key(group, partition))?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    fn commit(&self, group: &str, partition: u32, offset: u64) -> Result<()> {
        self.db.put(
            Cf::Offsets,
            &offset_key(group, partition),
            &offset.to_be_bytes(),
        )
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

fn read_range(
    dir: &Path,
    point: IndexPoint,
    partition: u32,
    offset: u64,
    end: u64,
    max: usize,
) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut base = point.base;
    let mut file = File::open(segment_path(dir, base))?;
    file.seek(SeekFrom::Start(point.pos))?;
    let mut reader = BufReader::new(file);
    let mut next = point.offset;
    while next < end && out.len() < max {
        match read_record(&mut reader)? {
            Some(r) => {
                if r.offset >= offset {
                    let event = serde_json::from_slice(&r.payload)?;
                    out.push(Record {
                        partition,
                        offset: r.offset,
                        received_ms: r.received_ms,
                        event,
                    });
                }
                next = r.offset + 1;
            }
            None => {
                // End of this segment: the next one starts at `next`.
                if next == base || !segment_path(dir, next).exists() {
                    break;
                }
                base = next;
                reader = BufReader::new(File::open(segment_path(dir, base))?);
            }
        }
    }
    Ok(out)
}

/// Where a test makes the writer fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// The segment write stops half-way.
    Write,
    /// The segment fsync fails.
    Sync,
    /// The accepted-ids write to RocksDB fails.
    Ids,
    /// Opening the next segment fails.
    Roll,
    /// Cutting a failed batch off the segment fails.
    Truncate,
}

/// One-shot faults armed by a test.
#[cfg(test)]
#[derive(Default)]
struct Faults(Mutex<Vec<Fault>>);

#[cfg(test)]
impl Faults {
    fn arm(&self, fault: Fault) {
        self.0.lock().push(fault);
    }

    fn fire(&self, at: Fault) -> std::io::Result<()> {
        let mut armed = self.0.lock();
        match armed.iter().position(|f| *f == at) {
            Some(i) => {
                armed.remove(i);
                Err(std::io::Error::other(format!("injected fault: {at:?}")))
            }
            None => Ok(()),
        }
    }
}

struct Writer {
    partition: u32,
    dir: PathBuf,
    db: Arc<Db>,
    salt: Arc<[u8]>,
    index: Arc<RwLock<Vec<IndexPoint>>>,
    hw: watch::Sender<u64>,
    active: Arc<AtomicU64>,
    next: u64,
    base: u64,
    pos: u64,
    segment_bytes: u64,
    fsync: bool,
    file: File,
    /// The segment may hold bytes past `pos` (a failed batch that could not be cut off): they
    /// are cut off before anything else is written.
    dirty: bool,
    #[cfg(test)]
    faults: Arc<Faults>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<AppendReq>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            match self.write_batch(&batch) {
                Ok(outcomes) => {
                    for (req, outcome) in batch.into_iter().zip(outcomes) {
                        let _ = req.reply.send(Ok(outcome));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, dir = %self.dir.display(), "event log append failed");
                    for req in batch {
                        let _ = req.reply.send(Err(StorageError::Io(std::io::Error::other(
                            error.to_string(),
                        ))));
                    }
                }
            }
        }
    }

    #[cfg(test)]
    fn fault(&self, at: Fault) -> std::io::Result<()> {
        self.faults.fire(at)
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn fault(&self, _: Fault) -> std::io::Result<()> {
        Ok(())
    }

    /// Writes every request's new events as one group commit; returns each request's outcome.
    /// On an error the log is as it was before the call.
    fn write_batch(&mut self, batch: &[AppendReq]) -> Result<Vec<AppendOutcome>> {
        self.cut_back()?;
        if self.pos >= self.segment_bytes {
            self.roll()?;
        }
        let received_ms = common::now_millis();
        let stamp = id_stamp(received_ms);
        let mut buf = Vec::new();
        let mut seen = HashSet::new();
        let mut ids = rocksdb::WriteBatch::default();
        let mut points = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut next = self.next;
        for req in batch {
            let mut outcome = AppendOutcome::default();
            for event in &req.events {
                let key = accepted_key(&self.salt, &event.user_id, &event.event_id);
                if !seen.insert(key) || self.db.contains(Cf::AcceptedIds, &key)? {
                    outcome.duplicates += 1;
                    continue;
                }
                let pos = self.pos + buf.len() as u64;
                if next.is_multiple_of(INDEX_EVERY) || pos == 0 {
                    points.push(IndexPoint {
                        offset: next,
                        base: self.base,
                        pos,
                    });
                }
                encode_record(&mut buf, next, received_ms, &serde_json::to_vec(event)?)?;
                ids.put_cf(self.db.cf(Cf::AcceptedIds), key, stamp);
                next += 1;
                outcome.accepted += 1;
            }
            outcomes.push(outcome);
        }
        if buf.is_empty() {
            return Ok(outcomes);
        }
        ids.put_cf(
            self.db.cf(Cf::Meta),
            ids_through_key(self.partition),
            next.to_be_bytes(),
        );
        // The records first, then their ids: ids of records that are not in the log would
        // report a retry as a duplicate, and the event would be lost.
        if let Err(e) = self.append(&buf) {
            self.cut_back_after_failure();
            return Err(e.into());
        }
        if let Err(e) = self
            .fault(Fault::Ids)
            .map_err(StorageError::from)
            .and_then(|()| self.db.write(ids))
        {
            self.cut_back_after_failure();
            return Err(e);
        }
        self.index.write().extend(points);
        self.pos += buf.len() as u64;
        self.next = next;
        self.hw.send_replace(next);
        Ok(outcomes)
    }

    /// Appends `buf` to the segment, durably when `fsync` is on.
    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Err(e) = self.fault(Fault::Write) {
            self.file.write_all(&buf[..buf.len() / 2])?;
            return Err(e);
        }
        self.file.write_all(buf)?;
        self.fault(Fault::Sync)?;
        if self.fsync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// A step of the batch failed: whatever part of it reached the segment goes (none of it was
    /// acknowledged). If that fails too, the next batch tries again before writing.
    fn cut_back_after_failure(&mut self) {
        self.dirty = true;
        if let Err(error) = self.cut_back() {
            tracing::error!(%error, dir = %self.dir.display(), "cannot cut a failed batch off the event log; retrying before the next write");
        }
    }

    /// Cuts the segment back to `pos` if a failed batch left bytes past it.
    fn cut_back(&mut self) -> Result<()> {
        if self.dirty {
            self.fault(Fault::Truncate)?;
            self.file.set_len(self.pos)?;
            if self.fsync {
                self.file.sync_data()?;
            }
            self.dirty = false;
        }
        Ok(())
    }

    /// Starts the next segment. The writer moves to it only once it is open and its directory
    /// entry durable: a failed roll leaves the writer on the full segment, and the next batch
    /// rolls again (to the same file, if this one got as far as creating it).
    fn roll(&mut self) -> Result<()> {
        let base = self.next;
        self.fault(Fault::Roll)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, base))?;
        if self.fsync {
            File::open(&self.dir)?.sync_all()?;
        }
        self.file = file;
        self.base = base;
        self.pos = 0;
        self.active.store(base, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::EventKind;

    fn event(user: &str, id: &str) -> Event {
        Event {
            event_id: id.into(),
            user_id: user.into(),
            item_id: "i".into(),
            kind: EventKind::View,
            value: None,
            ts: 1,
        }
    }

    fn open_with(dir: &Path, options: LogOptions) -> FileEventLog {
        let db = Arc::new(Db::open(&dir.join("db")).expect("db"));
        FileEventLog::open_with(&dir.join("log"), options, db).expect("log")
    }

    fn open(dir: &Path) -> FileEventLog {
        open_with(dir, LogOptions::new(4, true))
    }

    /// Segments of a few records each.
    fn small_segments() -> LogOptions {
        LogOptions {
            segment_bytes: 300,
            ..LogOptions::new(4, true)
        }
    }

    async fn ids(log: &FileEventLog, p: u32) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        scan(log, p, 0, |r| {
            out.push((r.offset, r.event.event_id));
            Ok::<_, StorageError>(())
        })
        .await
        .expect("scan");
        out
    }

    /// `(offset, id)` of `names` written from `first` on, one offset after another.
    fn expected(first: u64, names: &[&str]) -> Vec<(u64, String)> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (first + i as u64, (*n).to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn appends_reads_and_deduplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path());
        let events: Vec<_> = (0..1500)
            .map(|i| event("alice", &format!("e{i}")))
            .collect();
        let outcome = log.append(events.clone()).await.expect("append");
        assert_eq!(
            outcome,
            AppendOutcome {
                accepted: 1500,
                duplicates: 0
            }
        );
        let again = log
            .append(vec![events[3].clone(), events[3].clone()])
            .await
            .expect("append");
        assert_eq!(
            again,
            AppendOutcome {
                accepted: 0,
                duplicates: 2
            }
        );

        let p = partition_for("alice", 4);
        let records = log.read(p, 1000, 100).await.expect("read");
        assert_eq!(records.len(), 100);
        assert_eq!(records[0].offset, 1000);
        assert_eq!(records[0].event.event_id, "e1000");
        assert!(records[0].received_ms.is_some());
        assert!(log.read(p, 1500, 10).await.expect("read").is_empty());
    }

    #[tokio::test]
    async fn survives_reopen_and_truncates_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = partition_for("bob", 4);
        {
            let log = open(dir.path());
            log.append((0..10).map(|i| event("bob", &format!("e{i}"))).collect())
                .await
                .expect("append");
            log.commit(INGEST, p, 4).expect("commit");
        }
        // A crash in the middle of a write leaves half a record behind.
        let seg = segment_path(&dir.path().join("log").join(format!("p{p:04}")), 0);
        let mut f = OpenOptions::new().append(true).open(&seg).expect("segment");
        f.write_all(&[9, 0, 0, 0, 1, 2]).expect("write");
        drop(f);

        let log = open(dir.path());
        assert_eq!(*log.high_watermark(p).borrow(), 10);
        assert_eq!(log.committed(INGEST, p).expect("committed"), 4);
        let outcome = log.append(vec![event("bob", "e10")]).await.expect("append");
        assert_eq!(outcome.accepted, 1);
        let all = log.read(p, 0, 100).await.expect("read");
        assert_eq!(
            all.iter().map(|r| r.offset).collect::<Vec<_>>(),
            (0..11).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn records_written_before_receive_times_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = partition_for("old", 4);
        let pdir = dir.path().join("log").join(format!("p{p:04}"));
        std::fs::create_dir_all(&pdir).expect("mkdir");
        // The earlier format: `[len][crc(offset, payload)][offset][payload]`.
        let mut old = Vec::new();
        for (offset, id) in [(0u64, "o0"), (1, "o1")] {
            let payload = serde_json::to_vec(&event("old", id)).expect("json");
            let mut crc = crc32fast::Hasher::new();
            crc.update(&offset.to_le_bytes());
            crc.update(&payload);
            old.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            old.extend_from_slice(&crc.finalize().to_le_bytes());
            old.extend_from_slice(&offset.to_le_bytes());
            old.extend_from_slice(&payload);
        }
        std::fs::write(segment_path(&pdir, 0), old).expect("write");

        let log = open(dir.path());
        log.append(vec![event("old", "n2")]).await.expect("append");
        let records = log.read(p, 0, 10).await.expect("read");
        let got: Vec<_> = records
            .iter()
            .map(|r| (r.offset, r.event.event_id.as_str(), r.received_ms.is_some()))
            .collect();
        assert_eq!(got, [(0, "o0", false), (1, "o1", false), (2, "n2", true)]);
    }

    #[tokio::test]
    async fn a_failed_id_write_leaves_the_log_as_before_and_it_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = partition_for("alice", 4);
        {
            let log = open(dir.path());
            log.append(vec![event("alice", "a0"), event("alice", "a1")])
                .await
                .expect("append");
            log.faults[p as usize].arm(Fault::Ids);
            log.append(vec![event("alice", "lost")])
                .await
                .expect_err("the ids write fails");
            assert_eq!(*log.high_watermark(p).borrow(), 2);
            let outcome = log
                .append(vec![event("alice", "a2")])
                .await
                .expect("append");
            assert_eq!(outcome.accepted, 1);
            assert_eq!(ids(&log, p).await, expected(0, &["a0", "a1", "a2"]));
        }
        let log = open(dir.path());
        assert_eq!(ids(&log, p).await, expected(0, &["a0", "a1", "a2"]));
        // Never acknowledged, never recorded: a retry is a new event.
        let retry = log
            .append(vec![event("alice", "lost")])
            .await
            .expect("append");
        assert_eq!(retry.accepted, 1);
        assert_eq!(ids(&log, p).await, expected(0, &["a0", "a1", "a2", "lost"]));
    }

    #[tokio::test]
    async fn a_failed_write_or_fsync_is_cut_off_even_when_the_cut_fails_at_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = partition_for("carol", 4);
        {
            let log = open(dir.path());
            log.append(vec![event("carol", "c0")])
                .await
                .expect("append");
            let faults = &log.faults[p as usize];
            faults.arm(Fault::Write);
            log.append(vec![event("carol", "half")])
                .await
                .expect_err("the write stops half-way");
            faults.arm(Fault::Sync);
            log.append(vec![event("carol", "unsynced")])
                .await
                .expect_err("the fsync fails");
            // Half a batch reaches the file, and the disk refuses to cut it off at once.
            faults.arm(Fault::Write);
            faults.arm(Fault::Truncate);
            log.append(vec![event("carol", "stuck")])
                .await
                .expect_err("the write stops half-way");
            log.append(vec![event("carol", "c1"), event("carol", "c2")])
                .await
                .expect("append");
            assert_eq!(ids(&log, p).await, expected(0, &["c0", "c1", "c2"]));
        }
        let log = open(dir.path());
        assert_eq!(ids(&log, p).await, expected(0, &["c0", "c1", "c2"]));
        log.append(vec![event("carol", "c3")])
            .await
            .expect("append");
        assert_eq!(ids(&log, p).await, expected(0, &["c0", "c1", "c2", "c3"]));
    }

    #[tokio::test]
    async fn a_failed_roll_leaves_the_writer_on_its_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = partition_for("dave", 4);
        let mut names = Vec::new();
        {
            let log = open_with(dir.path(), small_segments());
            // One record per batch until the segment is full and the roll fails.
            log.faults[p as usize].arm(Fault::Roll);
            loop {
                let name = format!("d{}", names.len());
                match log.append(vec![event("dave", &name)]).await {
                    Ok(_) => names.push(name),
                    Err(_) => break,
                }
                assert!(names.len() < 50, "no roll was due");
            }
            assert_eq!(log.partitions[p as usize].active.load(Ordering::Acquire), 0);
            let full = names.len();
            assert_eq!(*log.high_watermark(p).borrow(), full as u64);
            for _ in 0..5 {
                let name = format!("d{}", names.len());
                log.append(vec![event("dave", &name)])
                    .await
                    .expect("append");
                names.push(name);
            }
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            assert_eq!(ids(&log, p).await, expected(0, &names));
            // A consumer reading from where the roll failed finds what came after it.
            let tail: Vec<(u64, String)> = log
                .read(p, full as u64, 100)
                .await
                .expect("read after the failed roll")
                .into_iter()
                .map(|r| (r.offset, r.event.event_id))
                .collect();
            assert_eq!(tail, expected(full as u64, &names[full..]));
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let log = open_with(dir.path(), small_segments());
        assert_eq!(ids(&log, p).await, expected(0, &names));
        log.append(vec![event("dave", "last")])
            .await
            .expect("append");
        let n = names.len() as u64;
        assert_eq!(ids(&log, p).await.last(), Some(&(n, "last".to_owned())));
    }

    #[tokio::test]
    async fn a_crash_between_the_segment_and_the_ids_keeps_the_batch_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = partition_for("erin", 4);
        {
            let log = open(dir.path());
            log.append(vec![event("erin", "e0")]).await.expect("append");
            // The ids write fails and so does the cut: the records stay, as after a crash
            // between the two writes.
            log.faults[p as usize].arm(Fault::Ids);
            log.faults[p as usize].arm(Fault::Truncate);
            log.append(vec![event("erin", "e1")])
                .await
                .expect_err("the ids write fails");
        }
        let log = open(dir.path());
        assert_eq!(ids(&log, p).await, expected(0, &["e0", "e1"]));
        let retry = log.append(vec![event("erin", "e1")]).await.expect("append");
        assert_eq!(retry.duplicates, 1, "the batch stands whole, ids included");
    }

    /// Sets the last-write time of every segment of `dir` below `end` to `at`.
    fn age_segments(dir: &Path, end: u64, at: SystemTime) {
        for base in list_segments(dir).expect("ls") {
            if base < end {
                File::options()
                    .write(true)
                    .open(segment_path(dir, base))
                    .expect("open")
                    .set_modified(at)
                    .expect("set mtime");
            }
        }
    }

    #[tokio::test]
    async fn retention_deletes_old_segments_every_group_committed_and_nothing_newer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let day = Duration::from_secs(86_400);
        let options = LogOptions {
            retention: 7 * day,
            retention_groups: vec![INGEST.into(), ARCHIVE.into()],
            ..small_segments()
        };
        let p = partition_for("frank", 4);
        let names: Vec<String> = (0..30).map(|i| format!("f{i}")).collect();
        let log = open_with(dir.path(), options.clone());
        for name in &names {
            log.append(vec![event("frank", name)])
                .await
                .expect("append");
        }
        let pdir = log.partitions[p as usize].dir.clone();
        let bases = list_segments(&pdir).expect("ls");
        assert!(bases.len() >= 6, "{bases:?}");
        let now = SystemTime::now();
        // Segments 0..3 are old; from segment 3 on they were written recently.
        age_segments(&pdir, bases[3], now - 8 * day);
        // Ingest is done with everything, the archive up to inside segment 2.
        log.commit(INGEST, p, 30).expect("commit");
        log.commit(ARCHIVE, p, bases[2] + 1).expect("commit");
        assert_eq!(log.enforce_retention(now).expect("retention"), 2);
        assert_eq!(list_segments(&pdir).expect("ls"), bases[2..]);
        assert_eq!(log.first_offset(p), bases[2]);
        // The archive catches up: the third old segment goes, the recent ones stay.
        log.commit(ARCHIVE, p, 30).expect("commit");
        assert_eq!(log.enforce_retention(now).expect("retention"), 1);
        assert_eq!(list_segments(&pdir).expect("ls"), bases[3..]);
        // Everything old and committed: all but the active segment go.
        age_segments(&pdir, u64::MAX, now - 8 * day);
        log.enforce_retention(now).expect("retention");
        let active = log.partitions[p as usize].active.load(Ordering::Acquire);
        assert_eq!(list_segments(&pdir).expect("ls"), [active]);

        // Reading from 0 starts at the first offset kept; the log reopens and goes on.
        let kept: Vec<(u64, String)> = (active..30).map(|o| (o, format!("f{o}"))).collect();
        assert_eq!(ids(&log, p).await, kept);
        drop(log);
        let log = open_with(dir.path(), options);
        assert_eq!(log.first_offset(p), active);
        log.append(vec![event("frank", "f30")])
            .await
            .expect("append");
        assert_eq!(ids(&log, p).await.last(), Some(&(30, "f30".to_owned())));
        // Other partitions, never written, lost nothing.
        assert_eq!(log.first_offset((p + 1) % 4), 0);
    }

    #[tokio::test]
    async fn retention_off_or_young_segments_delete_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = partition_for("gina", 4);
        let log = open_with(dir.path(), small_segments());
        for i in 0..12 {
            log.append(vec![event("gina", &format!("g{i}"))])
                .await
                .expect("append");
        }
        log.commit(INGEST, p, 12).expect("commit");
        let pdir = log.partitions[p as usize].dir.clone();
        let bases = list_segments(&pdir).expect("ls");
        age_segments(
            &pdir,
            u64::MAX,
            SystemTime::now() - Duration::from_secs(1_000_000),
        );
        // Retention is off (zero) in these options.
        assert_eq!(log.enforce_retention(SystemTime::now()).expect("ok"), 0);
        drop(log);
        let log = open_with(
            dir.path(),
            LogOptions {
                retention: Duration::from_secs(2_000_000),
                ..small_segments()
            },
        );
        assert_eq!(log.enforce_retention(SystemTime::now()).expect("ok"), 0);
        assert_eq!(list_segments(&pdir).expect("ls"), bases);
    }
}
