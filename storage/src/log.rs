//! The event log: partitioned, offset-addressed, durable before acknowledged.
//!
//! [`FileEventLog`] is the embedded implementation: per partition a directory of segment files,
//! each record `[len u32][crc32 u32][offset u64][event JSON]`. One writer thread per partition
//! group-commits: it drains every append waiting in its queue, writes them, fsyncs once and only
//! then acknowledges them all. On open, a torn record at the tail of the last segment (a crash
//! mid-write, never acknowledged) is truncated away.
//!
//! The log also deduplicates by `(user_id, event_id)` at append time, so that a client retry of
//! an acknowledged batch is reported as duplicates and not stored twice.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use async_trait::async_trait;
use common::Event;
use common::partition::partition_for;
use parking_lot::RwLock;
use tokio::sync::{oneshot, watch};

use crate::db::{Cf, Db, pair_key};
use crate::error::{Result, StorageError};

/// One event at its place in a partition.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub partition: u32,
    pub offset: u64,
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
    /// Up to `max` records of `partition` from `offset` on (fewer, or none, at the end).
    async fn read(&self, partition: u32, offset: u64, max: usize) -> Result<Vec<Record>>;
    /// The next offset to be written in `partition`, as a watch that changes on every append.
    fn high_watermark(&self, partition: u32) -> watch::Receiver<u64>;
    /// The offset a consumer group (`INGEST`, `ARCHIVE`) has durably processed up to (exclusive).
    fn committed(&self, group: &str, partition: u32) -> Result<u64>;
    fn commit(&self, group: &str, partition: u32, offset: u64) -> Result<()>;
    /// Forgets which event ids of `user_id` were accepted (erasure).
    fn forget_user(&self, user_id: &str) -> Result<()>;
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

const HEADER: usize = 16;
const SEGMENT_BYTES: u64 = 128 << 20;
/// A sparse index point every this many records keeps reads near O(batch).
const INDEX_EVERY: u64 = 512;

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
    tx: mpsc::Sender<AppendReq>,
}

pub struct FileEventLog {
    partitions: Vec<Partition>,
    writers: Vec<std::thread::JoinHandle<()>>,
    db: Arc<Db>,
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

/// Reads one record at the reader's position; `Ok(None)` at a clean or torn end.
fn read_record(reader: &mut impl Read) -> Result<Option<(u64, Vec<u8>, u64)>> {
    let mut header = [0u8; HEADER];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let offset = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let mut payload = vec![0u8; len];
    match reader.read_exact(&mut payload) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    if record_crc(offset, &payload) != crc {
        return Ok(None);
    }
    Ok(Some((offset, payload, (HEADER + len) as u64)))
}

fn record_crc(offset: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&offset.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn encode_record(buf: &mut Vec<u8>, offset: u64, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&record_crc(offset, payload).to_le_bytes());
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Scans a partition directory, truncating a torn tail; returns the index and the next offset.
fn recover(dir: &Path) -> Result<(Vec<IndexPoint>, u64, u64, u64)> {
    let bases = list_segments(dir)?;
    let mut index = Vec::new();
    let mut next = 0u64;
    let mut last = (0u64, 0u64);
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
        next = base;
        while let Some((offset, _, size)) = read_record(&mut reader)? {
            if offset != next {
                return Err(StorageError::Corrupt(format!(
                    "{} has offset {offset}, expected {next}",
                    path.display()
                )));
            }
            if offset.is_multiple_of(INDEX_EVERY) || pos == 0 {
                index.push(IndexPoint { offset, base, pos });
            }
            next += 1;
            pos += size;
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
            OpenOptions::new().write(true).open(&path)?.set_len(pos)?;
        }
        last = (base, pos);
    }
    Ok((index, next, last.0, last.1))
}

impl FileEventLog {
    /// Opens (creating if needed) the log under `dir` with `num_partitions` partitions.
    pub fn open(dir: &Path, num_partitions: u32, fsync: bool, db: Arc<Db>) -> Result<Self> {
        let mut partitions = Vec::with_capacity(num_partitions as usize);
        let mut writers = Vec::with_capacity(num_partitions as usize);
        for p in 0..num_partitions {
            let pdir = dir.join(format!("p{p:04}"));
            std::fs::create_dir_all(&pdir)?;
            let (index, next, base, pos) = recover(&pdir)?;
            let index = Arc::new(RwLock::new(index));
            let (hw_tx, hw) = watch::channel(next);
            let (tx, rx) = mpsc::channel();
            let writer = Writer {
                dir: pdir.clone(),
                db: db.clone(),
                index: index.clone(),
                hw: hw_tx,
                next,
                base,
                pos,
                fsync,
                file: OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(segment_path(&pdir, base))?,
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
        let point = {
            let index = part.index.read();
            let i = index.partition_point(|p| p.offset <= offset);
            match i.checked_sub(1) {
                Some(i) => index[i],
                None => return Ok(Vec::new()),
            }
        };
        let dir = part.dir.clone();
        tokio::task::spawn_blocking(move || read_range(&dir, point, partition, offset, end, max))
            .await
            .map_err(|e| StorageError::Io(std::io::Error::other(e)))?
    }

    fn high_watermark(&self, partition: u32) -> watch::Receiver<u64> {
        self.partitions[partition as usize].hw.clone()
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

    fn forget_user(&self, user_id: &str) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        self.db.delete_prefix(
            &mut batch,
            Cf::AcceptedIds,
            &crate::db::pair_prefix(user_id),
        );
        self.db.write(batch)
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
            Some((off, payload, _)) => {
                if off >= offset {
                    let event = serde_json::from_slice(&payload)?;
                    out.push(Record {
                        partition,
                        offset: off,
                        event,
                    });
                }
                next = off + 1;
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

struct Writer {
    dir: PathBuf,
    db: Arc<Db>,
    index: Arc<RwLock<Vec<IndexPoint>>>,
    hw: watch::Sender<u64>,
    next: u64,
    base: u64,
    pos: u64,
    fsync: bool,
    file: File,
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

    /// Writes every request's new events as one group commit; returns each request's outcome.
    fn write_batch(&mut self, batch: &[AppendReq]) -> Result<Vec<AppendOutcome>> {
        if self.pos >= SEGMENT_BYTES {
            self.roll()?;
        }
        let mut buf = Vec::new();
        let mut seen = HashSet::new();
        let mut ids = rocksdb::WriteBatch::default();
        let mut points = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut next = self.next;
        for req in batch {
            let mut outcome = AppendOutcome::default();
            for event in &req.events {
                let key = pair_key(&event.user_id, &event.event_id);
                if !seen.insert(key.clone()) || self.db.contains(Cf::AcceptedIds, &key)? {
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
                encode_record(&mut buf, next, &serde_json::to_vec(event)?);
                ids.put_cf(self.db.cf(Cf::AcceptedIds), &key, []);
                next += 1;
                outcome.accepted += 1;
            }
            outcomes.push(outcome);
        }
        if buf.is_empty() {
            return Ok(outcomes);
        }
        if let Err(e) = self.file.write_all(&buf).and_then(|()| {
            if self.fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        }) {
            // Cut off whatever part of the batch reached the file: none of it was acknowledged.
            let _ = self.file.set_len(self.pos);
            return Err(e.into());
        }
        self.db.write(ids)?;
        self.index.write().extend(points);
        self.pos += buf.len() as u64;
        self.next = next;
        self.hw.send_replace(next);
        Ok(outcomes)
    }

    fn roll(&mut self) -> Result<()> {
        self.base = self.next;
        self.pos = 0;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, self.base))?;
        if self.fsync {
            File::open(&self.dir)?.sync_all()?;
        }
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

    fn open(dir: &Path) -> FileEventLog {
        let db = Arc::new(Db::open(&dir.join("db")).expect("db"));
        FileEventLog::open(&dir.join("log"), 4, true, db).expect("log")
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
}
