//! The on-disk format of a partition: segment files named by their first offset, each a run of
//! records `[len u32][crc32 u32][offset u64][received_ms i64][event JSON]` (no `received_ms`
//! when the top bit of `len` is clear, as written before receive times were kept), and the
//! sparse index into them. Reading and writing both go through here, so that the format has
//! one home.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::Record;
use crate::error::{Result, StorageError};

/// `[len u32][crc32 u32][offset u64]`, then `[received_ms i64]` when `len` has [`RECEIVED`].
const HEADER: usize = 16;
/// The top bit of `len`: a receive time follows the offset.
const RECEIVED: u32 = 1 << 31;
/// A sparse index point every this many records keeps reads near O(batch).
pub(super) const INDEX_EVERY: u64 = 512;

/// A point of the sparse index: record `offset` starts at `pos` in segment `base`.
#[derive(Clone, Copy, Debug)]
pub(super) struct IndexPoint {
    pub(super) offset: u64,
    pub(super) base: u64,
    pub(super) pos: u64,
}
pub(super) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>> {
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
pub(super) struct RawRecord {
    pub(super) offset: u64,
    pub(super) received_ms: Option<i64>,
    pub(super) payload: Vec<u8>,
    /// Bytes it takes in the segment.
    pub(super) size: u64,
}

/// Reads one record at the reader's position; `Ok(None)` at a clean or torn end.
pub(super) fn read_record(reader: &mut impl Read) -> Result<Option<RawRecord>> {
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

pub(super) fn encode_record(
    buf: &mut Vec<u8>,
    offset: u64,
    received_ms: i64,
    payload: &[u8],
) -> Result<()> {
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
/// The index point to start reading `offset` from: the last at or before it, or the first
/// kept when `offset` was deleted.
pub(super) fn point_for(index: &[IndexPoint], offset: u64) -> Option<IndexPoint> {
    let i = index.partition_point(|p| p.offset <= offset);
    index.get(i.saturating_sub(1)).copied()
}
pub(super) fn read_range(
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
