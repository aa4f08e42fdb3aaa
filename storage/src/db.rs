//! The node's RocksDB instance, one column family per concern.
//!
//! Writes that must be atomic together (a session's state, the event ids it applied and the
//! item counters they moved) go in one `WriteBatch`. Writes go through the WAL without fsync:
//! they survive a process crash (`kill -9`), and on power loss the WAL loses a suffix only,
//! never a write before one that survived; the event log is the fsynced source of truth. The
//! few writes that must survive a power loss before they are answered (an erasure) use
//! [`Db::write_synced`], which also makes every earlier write durable.
//!
//! The id sets (`applied_ids`, `accepted_ids`) hold the time each id was recorded; a compaction
//! filter drops ids older than the dedupe window, so the sets stay as large as the window's
//! traffic instead of growing for ever.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, MergeOperands, Options,
    WriteOptions,
};

use crate::error::{Result, StorageError};

/// Column families.
#[derive(Clone, Copy, Debug)]
pub enum Cf {
    /// user id → serialized session state.
    Sessions,
    /// user id \0 event id → when it was applied (i64 BE epoch ms), for every event applied to
    /// a session within the dedupe window.
    AppliedIds,
    /// keyed hash of (user id, event id) → when it was accepted (i64 BE epoch ms), for every
    /// event accepted into the embedded log within the dedupe window (see `log`).
    AcceptedIds,
    /// group \0 partition (u32 BE) → committed offset (u64 BE) of a consumer group.
    Offsets,
    /// item id → item JSON.
    Items,
    /// item id → deletion time; deleted items are never recommended.
    DeletedItems,
    /// partition (u32 BE) ‖ item id → what the partition's users add to the item's popularity
    /// (f64, merge-added; see `sessions`).
    ItemStats,
    /// user id → erasure record; replays of older events are skipped.
    Erasures,
    /// user id → profile JSON (demographics, attributes).
    Profiles,
    /// Bookkeeping of the stores themselves (the log's id-set position, migrations done).
    Meta,
}

impl Cf {
    const ALL: [Cf; 10] = [
        Cf::Sessions,
        Cf::AppliedIds,
        Cf::AcceptedIds,
        Cf::Offsets,
        Cf::Items,
        Cf::DeletedItems,
        Cf::ItemStats,
        Cf::Erasures,
        Cf::Profiles,
        Cf::Meta,
    ];

    fn name(self) -> &'static str {
        match self {
            Cf::Sessions => "sessions",
            Cf::AppliedIds => "applied_ids",
            Cf::AcceptedIds => "accepted_ids",
            Cf::Offsets => "offsets",
            Cf::Items => "items",
            Cf::DeletedItems => "deleted_items",
            Cf::ItemStats => "item_stats",
            Cf::Erasures => "erasures",
            Cf::Profiles => "profiles",
            Cf::Meta => "meta",
        }
    }
}

/// One key/value pair read from a column family.
pub type KeyValue = (Box<[u8]>, Box<[u8]>);

pub struct Db {
    db: rocksdb::DB,
    num_synced_writes: AtomicU64,
}

/// How long an event id is remembered by default (`events.dedupe_window`).
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// The value of an id-set entry: when the id was recorded.
pub fn id_stamp(at_ms: i64) -> [u8; 8] {
    at_ms.to_be_bytes()
}

/// When an id-set entry was recorded; `None` for entries written before times were kept.
pub fn id_time(value: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(value.try_into().ok()?))
}

/// Marks that every `applied_ids` entry carries its time.
const APPLIED_IDS_TIMED: &[u8] = b"applied_ids_timed";
/// Meta key of [`Db::store_id`].
const STORE_ID: &[u8] = b"store_id";
/// Entries per write batch when a migration rewrites a column family.
const MIGRATION_BATCH: usize = 10_000;

fn add_f64(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut sum = existing.and_then(decode_f64).unwrap_or(0.0);
    for op in operands {
        sum += decode_f64(op).unwrap_or(0.0);
    }
    Some(sum.to_le_bytes().to_vec())
}

pub fn decode_f64(bytes: &[u8]) -> Option<f64> {
    Some(f64::from_le_bytes(bytes.try_into().ok()?))
}

impl Db {
    /// Opens (creating if needed) the database with the default dedupe window.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, DEFAULT_DEDUPE_WINDOW)
    }

    /// Opens the database; ids older than `dedupe_window` are dropped from the id sets as
    /// compactions rewrite them (at least the window, at most about twice it). A zero window keeps
    /// every id.
    pub fn open_with(path: &Path, dedupe_window: Duration) -> Result<Self> {
        std::fs::create_dir_all(path)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        opts.set_compression_type(DBCompressionType::Lz4);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut cf_opts = Options::default();
            cf_opts.set_compression_type(DBCompressionType::Lz4);
            let mut table = BlockBasedOptions::default();
            table.set_bloom_filter(10.0, false);
            cf_opts.set_block_based_table_factory(&table);
            if matches!(cf, Cf::ItemStats) {
                cf_opts.set_merge_operator_associative("add_f64", add_f64);
            }
            if matches!(cf, Cf::AppliedIds | Cf::AcceptedIds) && !dedupe_window.is_zero() {
                let window_ms = i64::try_from(dedupe_window.as_millis()).unwrap_or(i64::MAX);
                cf_opts.set_compaction_filter(
                    "dedupe_window",
                    move |_level: u32, _key: &[u8], value: &[u8]| match id_time(value) {
                        Some(at) if at < common::now_millis().saturating_sub(window_ms) => {
                            Decision::Remove
                        }
                        _ => Decision::Keep,
                    },
                );
                // Files are rewritten (and filtered) at least once per window even when nothing
                // else compacts them.
                cf_opts.set_periodic_compaction_seconds(dedupe_window.as_secs().max(1));
            }
            ColumnFamilyDescriptor::new(cf.name(), cf_opts)
        });
        let db = rocksdb::DB::open_cf_descriptors(&opts, path, cfs)?;
        let db = Self {
            db,
            num_synced_writes: AtomicU64::new(0),
        };
        db.time_untimed_applied_ids()?;
        Ok(db)
    }

    /// This database's identity: a random id made when it was first opened, kept for its life.
    /// A node's data dir wiped is a new store, even under the same node id; the sessions
    /// changelog tells by it which records a store wrote itself.
    pub fn store_id(&self) -> Result<String> {
        if let Some(id) = self.get(Cf::Meta, STORE_ID)? {
            return String::from_utf8(id).map_err(|_| StorageError::Corrupt("store id".into()));
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(self.cf(Cf::Meta), STORE_ID, id.as_bytes());
        self.write_synced(batch)?;
        Ok(id)
    }

    /// Earlier versions stored applied ids without a time: they count from now, once.
    fn time_untimed_applied_ids(&self) -> Result<()> {
        if self.contains(Cf::Meta, APPLIED_IDS_TIMED)? {
            return Ok(());
        }
        let stamp = id_stamp(common::now_millis());
        let mut batch = rocksdb::WriteBatch::default();
        for kv in self.scan(Cf::AppliedIds) {
            let (key, value) = kv?;
            if id_time(&value).is_none() {
                batch.put_cf(self.cf(Cf::AppliedIds), key, stamp);
            }
            if batch.len() >= MIGRATION_BATCH {
                self.write(std::mem::take(&mut batch))?;
            }
        }
        batch.put_cf(self.cf(Cf::Meta), APPLIED_IDS_TIMED, []);
        self.write(batch)
    }

    pub(crate) fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        // Every family is created at open, so a miss is a bug in this module.
        self.db
            .cf_handle(cf.name())
            .expect("column family created at open")
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    /// Whether `key` is present, without copying its value: the bloom filters answer most
    /// absent keys, a pinned read the rest.
    pub fn contains(&self, cf: Cf, key: &[u8]) -> Result<bool> {
        let cf = self.cf(cf);
        if !self.db.key_may_exist_cf(cf, key) {
            return Ok(false);
        }
        Ok(self.db.get_pinned_cf(cf, key)?.is_some())
    }

    pub fn put(&self, cf: Cf, key: &[u8], value: &[u8]) -> Result<()> {
        Ok(self.db.put_cf(self.cf(cf), key, value)?)
    }

    pub fn delete(&self, cf: Cf, key: &[u8]) -> Result<()> {
        Ok(self.db.delete_cf(self.cf(cf), key)?)
    }

    pub fn write(&self, batch: rocksdb::WriteBatch) -> Result<()> {
        Ok(self.db.write(batch)?)
    }

    /// Writes `batch` and fsyncs the WAL before returning: the batch, and every write before it,
    /// survives a power loss.
    pub fn write_synced(&self, batch: rocksdb::WriteBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        self.num_synced_writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes made durable by [`Db::write_synced`] since open.
    pub fn num_synced_writes(&self) -> u64 {
        self.num_synced_writes.load(Ordering::Relaxed)
    }

    /// Compacts a whole column family now (the dedupe window applies as it does).
    pub fn compact(&self, cf: Cf) {
        self.db
            .compact_range_cf(self.cf(cf), None::<&[u8]>, None::<&[u8]>);
    }

    /// Every key/value of a column family, in key order (start-up loads and training only).
    pub fn scan(&self, cf: Cf) -> impl Iterator<Item = Result<KeyValue>> + '_ {
        self.db
            .iterator_cf(self.cf(cf), rocksdb::IteratorMode::Start)
            .map(|r| r.map_err(StorageError::from))
    }

    /// Every key/value of a column family whose key starts with `prefix`, in key order.
    pub fn scan_prefix<'a>(
        &'a self,
        cf: Cf,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = Result<KeyValue>> + 'a {
        self.db
            .iterator_cf(
                self.cf(cf),
                rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward),
            )
            .take_while(move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
            .map(|r| r.map_err(StorageError::from))
    }

    /// Deletes all keys that start with `prefix` (which must not be empty).
    pub fn delete_prefix(&self, batch: &mut rocksdb::WriteBatch, cf: Cf, prefix: &[u8]) {
        let mut end = prefix.to_vec();
        // Keys here are `id \0 ...`: the prefix ends in \0, so bumping the last byte bounds it.
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        batch.delete_range_cf(self.cf(cf), prefix, end.as_slice());
    }

    /// Writes a consistent copy of the whole database to `path`, which must not exist yet: a
    /// RocksDB checkpoint (memtables flushed, table files hard-linked where the file system
    /// allows), the unit of a snapshot.
    pub fn checkpoint(&self, path: &Path) -> Result<()> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(path)?;
        Ok(())
    }

    /// Makes every write so far durable (on shutdown).
    pub fn flush(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }
}

/// `a \0 b`, the composite key used for (user, event) pairs.
pub fn pair_key(a: &str, b: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + b.len() + 1);
    key.extend_from_slice(a.as_bytes());
    key.push(0);
    key.extend_from_slice(b.as_bytes());
    key
}

/// `a \0`, the prefix of every pair key of `a`.
pub fn pair_prefix(a: &str) -> Vec<u8> {
    pair_key(a, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    #[test]
    fn the_dedupe_window_drops_older_ids_and_nothing_newer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open_with(dir.path(), Duration::from_secs(7 * 86_400)).expect("db");
        let now = common::now_millis();
        for cf in [Cf::AppliedIds, Cf::AcceptedIds] {
            db.put(cf, b"old", &id_stamp(now - 8 * DAY_MS))
                .expect("put");
            db.put(cf, b"edge", &id_stamp(now - 6 * DAY_MS))
                .expect("put");
            db.put(cf, b"new", &id_stamp(now)).expect("put");
            db.compact(cf);
            assert!(!db.contains(cf, b"old").expect("get"), "{cf:?}");
            assert!(db.contains(cf, b"edge").expect("get"), "{cf:?}");
            assert!(db.contains(cf, b"new").expect("get"), "{cf:?}");
        }
        // Other families are not id sets.
        db.put(Cf::Sessions, b"old", &id_stamp(now - 8 * DAY_MS))
            .expect("put");
        db.compact(Cf::Sessions);
        assert!(db.contains(Cf::Sessions, b"old").expect("get"));
    }

    #[test]
    fn a_zero_window_keeps_every_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open_with(dir.path(), Duration::ZERO).expect("db");
        db.put(Cf::AppliedIds, b"old", &id_stamp(1)).expect("put");
        db.compact(Cf::AppliedIds);
        assert!(db.contains(Cf::AppliedIds, b"old").expect("get"));
    }

    #[test]
    fn applied_ids_stored_without_a_time_count_from_the_upgrade() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = Db::open(dir.path()).expect("db");
            db.put(Cf::AppliedIds, &pair_key("u", "e"), &[])
                .expect("put");
            db.delete(Cf::Meta, APPLIED_IDS_TIMED).expect("as before");
        }
        let before = common::now_millis();
        let db = Db::open(dir.path()).expect("db");
        let value = db
            .get(Cf::AppliedIds, &pair_key("u", "e"))
            .expect("get")
            .expect("kept");
        assert!(id_time(&value).is_some_and(|at| at >= before));
    }
}
