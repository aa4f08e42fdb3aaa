//! A partition's log written back from archived records, for `streamrec restore`: a node whose
//! disk was lost gets its RocksDB from a snapshot, whose ingest offsets say where applying
//! stopped, and its log from the archive, starting at that offset, so that the node's own ingest
//! replays what came after the snapshot as it would after any restart. Records keep their
//! offsets and receive times (erasures judge by both).

use std::io::Write;
use std::path::Path;

use super::Record;
use super::record::{encode_record, list_segments, segment_path};
use crate::error::{Result, StorageError};

/// Writes partition `partition` of the log under `dir` as one segment starting at `base`, with
/// the records of `records` from `base` on, as long as their offsets follow each other (a gap
/// ends it: the log cannot hold one). The partition must have no segment yet. Returns how many
/// records it holds; the log opened on `dir` then starts at `base` and ends after them.
pub fn rebuild_partition(dir: &Path, partition: u32, base: u64, records: &[Record]) -> Result<u64> {
    let pdir = dir.join(format!("p{partition:04}"));
    std::fs::create_dir_all(&pdir)?;
    if !list_segments(&pdir)?.is_empty() {
        return Err(StorageError::Corrupt(format!(
            "{} already holds a log; restore writes only into an empty one",
            pdir.display()
        )));
    }
    let mut wanted: Vec<&Record> = records
        .iter()
        .filter(|r| r.partition == partition && r.offset >= base)
        .collect();
    wanted.sort_by_key(|r| r.offset);
    wanted.dedup_by_key(|r| r.offset);
    let mut buf = Vec::new();
    let mut next = base;
    for r in wanted {
        if r.offset != next {
            tracing::warn!(
                partition,
                expected = next,
                found = r.offset,
                "the archive has a gap; the log ends before it"
            );
            break;
        }
        let received_ms = r.received_ms.unwrap_or(r.event.ts);
        encode_record(&mut buf, next, received_ms, &serde_json::to_vec(&r.event)?)?;
        next += 1;
    }
    let path = segment_path(&pdir, base);
    let mut file = std::fs::File::create(&path)?;
    file.write_all(&buf)?;
    file.sync_all()?;
    Ok(next - base)
}
