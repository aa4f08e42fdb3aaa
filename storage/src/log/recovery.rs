//! What opening the log does to each partition before its writer starts: scan the segments and
//! rebuild the sparse index, cut away a torn tail (a crash mid-write, never acknowledged), and
//! store the ids of records that a crash left without them, so that a batch stands whole.

use std::fs::{File, OpenOptions};
use std::io::BufReader;
use std::path::Path;

use super::accepted::{accepted_key, ids_through_key};
use super::record::{
    INDEX_EVERY, IndexPoint, list_segments, point_for, read_range, read_record, segment_path,
};
use crate::db::{Cf, Db, id_stamp};
use crate::error::{Result, StorageError};

/// Scans a partition directory, truncating a torn tail; returns the index, the next offset, and
/// the last segment's base and length.
pub(super) fn recover(dir: &Path) -> Result<(Vec<IndexPoint>, u64, u64, u64)> {
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
/// After a crash between a batch's segment write and its ids write, the records past
/// `ids_through` stand (they are whole and fsynced) without their ids: store them, so that a
/// retry of that batch is still recognised.
pub(super) fn restore_ids(
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
