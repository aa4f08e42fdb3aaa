//! The writer thread of one partition: it drains every append waiting in its queue, writes the
//! records, fsyncs once, stores their ids, and only then acknowledges them all; a failure of any
//! step cuts the segment back so that the log is as it was before the batch. Tests make it fail
//! at chosen steps through the `Fault` seam.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use common::Event;
#[cfg(test)]
use parking_lot::Mutex;
use parking_lot::RwLock;
use tokio::sync::{oneshot, watch};

use super::AppendOutcome;
use super::accepted::{accepted_key, ids_through_key};
use super::record::{INDEX_EVERY, IndexPoint, encode_record, segment_path};
use crate::db::{Cf, Db, id_stamp};
use crate::error::{Result, StorageError};

pub(super) struct AppendReq {
    pub(super) events: Vec<Event>,
    pub(super) reply: oneshot::Sender<Result<AppendOutcome>>,
}
/// Where a test makes the writer fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
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
pub(super) struct Faults(Mutex<Vec<Fault>>);

#[cfg(test)]
impl Faults {
    pub(super) fn arm(&self, fault: Fault) {
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

pub(super) struct Writer {
    pub(super) partition: u32,
    pub(super) dir: PathBuf,
    pub(super) db: Arc<Db>,
    pub(super) salt: Arc<[u8]>,
    pub(super) index: Arc<RwLock<Vec<IndexPoint>>>,
    pub(super) hw: watch::Sender<u64>,
    pub(super) active: Arc<AtomicU64>,
    pub(super) next: u64,
    pub(super) base: u64,
    pub(super) pos: u64,
    pub(super) segment_bytes: u64,
    pub(super) fsync: bool,
    pub(super) file: File,
    /// The segment may hold bytes past `pos` (a failed batch that could not be cut off): they
    /// are cut off before anything else is written.
    pub(super) dirty: bool,
    #[cfg(test)]
    pub(super) faults: Arc<Faults>,
}

impl Writer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<AppendReq>) {
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
