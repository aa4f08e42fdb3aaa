//! The node's RocksDB instance, one column family per concern.
//!
//! Writes that must be atomic together (a session's state, the event ids it applied and the
//! item counters they moved) go in one `WriteBatch`. Writes go through the WAL without fsync:
//! they survive a process crash (`kill -9`), and on power loss the WAL loses a suffix only,
//! never a write before one that survived; the event log is the fsynced source of truth.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBCompressionType, MergeOperands, Options,
};

use crate::error::{Result, StorageError};

/// Column families.
#[derive(Clone, Copy, Debug)]
pub enum Cf {
    /// user id → serialized session state.
    Sessions,
    /// user id \0 event id → () for every event applied to a session.
    AppliedIds,
    /// user id \0 event id → () for every event accepted into the embedded log.
    AcceptedIds,
    /// partition (u32 BE) → committed offset (u64 BE) of the ingest consumer.
    Offsets,
    /// item id → item JSON.
    Items,
    /// item id → deletion time; deleted items are never recommended.
    DeletedItems,
    /// item id → f64 sum of positive interaction weights (merge-added).
    ItemStats,
    /// user id → erasure record; replays of older events are skipped.
    Erasures,
    /// user id → profile JSON (demographics, attributes).
    Profiles,
}

impl Cf {
    const ALL: [Cf; 9] = [
        Cf::Sessions,
        Cf::AppliedIds,
        Cf::AcceptedIds,
        Cf::Offsets,
        Cf::Items,
        Cf::DeletedItems,
        Cf::ItemStats,
        Cf::Erasures,
        Cf::Profiles,
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
        }
    }
}

/// One key/value pair read from a column family.
pub type KeyValue = (Box<[u8]>, Box<[u8]>);

pub struct Db {
    db: rocksdb::DB,
}

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
    pub fn open(path: &Path) -> Result<Self> {
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
            ColumnFamilyDescriptor::new(cf.name(), cf_opts)
        });
        let db = rocksdb::DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Self { db })
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

    pub fn contains(&self, cf: Cf, key: &[u8]) -> Result<bool> {
        Ok(self.db.get_pinned_cf(self.cf(cf), key)?.is_some())
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

    /// Every key/value of a column family, in key order (start-up loads and training only).
    pub fn scan(&self, cf: Cf) -> impl Iterator<Item = Result<KeyValue>> + '_ {
        self.db
            .iterator_cf(self.cf(cf), rocksdb::IteratorMode::Start)
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
