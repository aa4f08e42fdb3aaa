//! Durable session state. A session's state, the ids of the events it applied and the item
//! counters those events moved are written in one atomic batch, which is what makes replays
//! idempotent: an event id found here has already had its whole effect (within the dedupe
//! window, after which the id is forgotten; see `db`).
//!
//! An erasure is written in one batch fsynced before it returns: once answered, it survives a
//! power loss.
//!
//! Item counters are kept per input partition (`partition u32 BE ‖ item id`), so that the
//! popularity of a partition's users moves with the partition: the node that owns a partition
//! knows exactly what its users add to each item, and says so to the others (see
//! `actors::popularity`).

use std::collections::HashMap;

use common::partition::partition_for;
use rocksdb::WriteBatch;

use crate::db::{Cf, Db, id_stamp, pair_key, pair_prefix};
use crate::error::Result;
use crate::log::Record;

/// What one apply writes.
pub struct SessionCommit<'a> {
    pub user_id: &'a str,
    /// The user's input partition: where `item_deltas` count.
    pub partition: u32,
    pub state: &'a [u8],
    pub applied_event_ids: &'a [&'a str],
    /// (item id, weight to add to its popularity).
    pub item_deltas: &'a [(&'a str, f64)],
}

/// What erasing a user leaves behind, so that nothing erased comes back. It is based on when
/// the node's log received events, never on the time a client wrote in them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tombstone {
    /// The end of the user's log partition at erasure: every record of this node's log before
    /// it was received before the erasure.
    pub offset: u64,
    /// When the user was erased (epoch ms, the node's clock): archived records, which come from
    /// several nodes' logs whose offsets do not compare, are judged by their receive time.
    pub at_ms: i64,
}

impl Tombstone {
    /// Whether the erasure covers a record of this node's log: it must never count again.
    /// Events delivered again after the erasure (a retried batch, a Kafka topic consumed again)
    /// land at new offsets; the log recognises their ids within the dedupe window and does not
    /// take them in.
    pub fn covers(&self, record: &Record) -> bool {
        record.offset < self.offset
    }

    /// Whether the erasure covers an archived record (from any node's log): received before the
    /// erasure. Records archived before receive times were kept are judged by their event time.
    pub fn covers_archived(&self, record: &Record) -> bool {
        record.received_ms.unwrap_or(record.event.ts) <= self.at_ms
    }

    fn encode(&self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.offset.to_be_bytes());
        bytes[8..].copy_from_slice(&self.at_ms.to_be_bytes());
        bytes
    }

    /// 16 bytes; 8 bytes (an offset alone) were written by earlier versions.
    fn decode(bytes: &[u8]) -> Option<Self> {
        let offset = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let at_ms = match bytes.get(8..16) {
            Some(at) => i64::from_be_bytes(at.try_into().ok()?),
            None => i64::MIN,
        };
        Some(Self { offset, at_ms })
    }
}

pub trait SessionStore: Send + Sync + 'static {
    fn load(&self, user_id: &str) -> Result<Option<Vec<u8>>>;
    /// Whether the user has a stored session: a key lookup, the state is neither copied nor
    /// decoded.
    fn exists(&self, user_id: &str) -> Result<bool>;
    fn is_applied(&self, user_id: &str, event_id: &str) -> Result<bool>;
    fn commit(&self, commit: SessionCommit<'_>) -> Result<()>;
    /// Erases everything held about the user and records the tombstone: the events it covers
    /// are never applied again. `item_deltas` are the user's contributions to item popularity
    /// in the user's `partition`, taken back. Durable (fsynced, with every write before it)
    /// when it returns.
    fn erase(
        &self,
        user_id: &str,
        partition: u32,
        tombstone: Tombstone,
        item_deltas: &[(&str, f64)],
    ) -> Result<()>;
    /// The user's latest erasure, if the user was ever erased.
    fn tombstone(&self, user_id: &str) -> Result<Option<Tombstone>>;
    /// Removes the tombstones `expired` says cover nothing any more; returns how many.
    fn prune_tombstones(&self, expired: &dyn Fn(&str, &Tombstone) -> bool) -> Result<u64>;
    /// What the users of each partition add to each item's popularity.
    fn item_stats(&self) -> Result<Vec<PartitionStat>>;
    /// What the users of `partition` add to each item's popularity.
    fn partition_stats(&self, partition: u32) -> Result<Vec<(String, f64)>>;
    /// The number of partitions the item counters are kept by; `None` before they were kept
    /// per partition (a store of an earlier version), when they must be rebuilt.
    fn item_stats_partitions(&self) -> Result<Option<u32>>;
    /// Recomputes every item counter from the stored sessions, `contributions` saying what one
    /// state (as stored) adds to which items, and keeps them by `num_partitions`. Returns the
    /// number of sessions read.
    fn rebuild_item_stats(&self, num_partitions: u32, contributions: &Contributions)
    -> Result<u64>;
    /// Writes a state replayed from the changelog, with the event ids it covers (see
    /// [`changelog`](crate::changelog)) and what it changes in the counters of its `partition`.
    fn restore(
        &self,
        user_id: &str,
        partition: u32,
        state: &[u8],
        applied_event_ids: &[&str],
        item_deltas: &[(&str, f64)],
    ) -> Result<()>;
    /// The changelog offset this node restored `partition` through (0: never restored).
    fn restored_through(&self, partition: u32) -> Result<u64>;
    fn set_restored_through(&self, partition: u32, offset: u64) -> Result<()>;
}

/// What one item gains in one partition: (partition, item id, weight).
pub type PartitionStat = (u32, String, f64);

/// What a session's state (the bytes a session stores) adds to the popularity of which items.
pub type Contributions = dyn Fn(&[u8]) -> Vec<(String, f64)> + Send + Sync;

/// Meta key: the number of partitions item counters are kept by (u32 BE).
const ITEM_STATS_PARTITIONS: &[u8] = b"item_stats_partitions";

/// The key of an item's counter in a partition.
fn stat_key(partition: u32, item: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + item.len());
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(item.as_bytes());
    key
}

fn decode_stat(key: &[u8], value: &[u8]) -> Option<PartitionStat> {
    let partition = u32::from_be_bytes(key.get(..4)?.try_into().ok()?);
    let item = String::from_utf8_lossy(&key[4..]).into_owned();
    Some((partition, item, crate::db::decode_f64(value)?))
}

/// Where [`SessionStore::restored_through`] keeps its offsets, among the consumer offsets.
const CHANGELOG_GROUP: &str = "changelog";

fn changelog_key(partition: u32) -> Vec<u8> {
    let mut key = pair_prefix(CHANGELOG_GROUP);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

pub struct RocksSessionStore {
    db: std::sync::Arc<Db>,
}

impl RocksSessionStore {
    pub fn new(db: std::sync::Arc<Db>) -> Self {
        Self { db }
    }
}

impl SessionStore for RocksSessionStore {
    fn load(&self, user_id: &str) -> Result<Option<Vec<u8>>> {
        self.db.get(Cf::Sessions, user_id.as_bytes())
    }

    fn exists(&self, user_id: &str) -> Result<bool> {
        self.db.contains(Cf::Sessions, user_id.as_bytes())
    }

    fn is_applied(&self, user_id: &str, event_id: &str) -> Result<bool> {
        self.db
            .contains(Cf::AppliedIds, &pair_key(user_id, event_id))
    }

    fn commit(&self, c: SessionCommit<'_>) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db.cf(Cf::Sessions), c.user_id.as_bytes(), c.state);
        let stamp = id_stamp(common::now_millis());
        for id in c.applied_event_ids {
            batch.put_cf(self.db.cf(Cf::AppliedIds), pair_key(c.user_id, id), stamp);
        }
        self.add_stats(&mut batch, c.partition, c.item_deltas, 1.0);
        self.db.write(batch)
    }

    fn erase(
        &self,
        user_id: &str,
        partition: u32,
        tombstone: Tombstone,
        item_deltas: &[(&str, f64)],
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        self.add_stats(&mut batch, partition, item_deltas, -1.0);
        batch.delete_cf(self.db.cf(Cf::Sessions), user_id.as_bytes());
        self.db
            .delete_prefix(&mut batch, Cf::AppliedIds, &pair_prefix(user_id));
        batch.put_cf(
            self.db.cf(Cf::Erasures),
            user_id.as_bytes(),
            tombstone.encode(),
        );
        self.db.write_synced(batch)
    }

    fn tombstone(&self, user_id: &str) -> Result<Option<Tombstone>> {
        Ok(self
            .db
            .get(Cf::Erasures, user_id.as_bytes())?
            .and_then(|v| Tombstone::decode(&v)))
    }

    fn prune_tombstones(&self, expired: &dyn Fn(&str, &Tombstone) -> bool) -> Result<u64> {
        let mut batch = WriteBatch::default();
        for kv in self.db.scan(Cf::Erasures) {
            let (user, value) = kv?;
            let Some(tombstone) = Tombstone::decode(&value) else {
                continue;
            };
            if expired(&String::from_utf8_lossy(&user), &tombstone) {
                batch.delete_cf(self.db.cf(Cf::Erasures), &user);
            }
        }
        let pruned = batch.len() as u64;
        if pruned > 0 {
            self.db.write(batch)?;
        }
        Ok(pruned)
    }

    fn restore(
        &self,
        user_id: &str,
        partition: u32,
        state: &[u8],
        applied_event_ids: &[&str],
        item_deltas: &[(&str, f64)],
    ) -> Result<()> {
        self.commit(SessionCommit {
            user_id,
            partition,
            state,
            applied_event_ids,
            item_deltas,
        })
    }

    fn restored_through(&self, partition: u32) -> Result<u64> {
        Ok(self
            .db
            .get(Cf::Offsets, &changelog_key(partition))?
            .and_then(|v| Some(u64::from_be_bytes(v.as_slice().try_into().ok()?)))
            .unwrap_or(0))
    }

    fn set_restored_through(&self, partition: u32, offset: u64) -> Result<()> {
        self.db.put(
            Cf::Offsets,
            &changelog_key(partition),
            &offset.to_be_bytes(),
        )
    }

    fn item_stats(&self) -> Result<Vec<PartitionStat>> {
        let mut stats = Vec::new();
        for kv in self.db.scan(Cf::ItemStats) {
            let (key, value) = kv?;
            stats.extend(decode_stat(&key, &value));
        }
        Ok(stats)
    }

    fn partition_stats(&self, partition: u32) -> Result<Vec<(String, f64)>> {
        let mut stats = Vec::new();
        for kv in self.db.scan_prefix(Cf::ItemStats, &partition.to_be_bytes()) {
            let (key, value) = kv?;
            stats.extend(decode_stat(&key, &value).map(|(_, item, weight)| (item, weight)));
        }
        Ok(stats)
    }

    fn item_stats_partitions(&self) -> Result<Option<u32>> {
        Ok(self
            .db
            .get(Cf::Meta, ITEM_STATS_PARTITIONS)?
            .and_then(|v| Some(u32::from_be_bytes(v.as_slice().try_into().ok()?))))
    }

    fn rebuild_item_stats(
        &self,
        num_partitions: u32,
        contributions: &Contributions,
    ) -> Result<u64> {
        let mut totals: HashMap<(u32, String), f64> = HashMap::new();
        let mut sessions = 0;
        for kv in self.db.scan(Cf::Sessions) {
            let (user, state) = kv?;
            sessions += 1;
            let partition = partition_for(&String::from_utf8_lossy(&user), num_partitions);
            for (item, weight) in contributions(&state) {
                *totals.entry((partition, item)).or_default() += weight;
            }
        }
        let mut batch = WriteBatch::default();
        let cf = self.db.cf(Cf::ItemStats);
        // Every counter, whatever its layout (earlier versions keyed them by item alone).
        for kv in self.db.scan(Cf::ItemStats) {
            batch.delete_cf(cf, kv?.0);
        }
        for ((partition, item), weight) in totals {
            batch.put_cf(cf, stat_key(partition, &item), weight.to_le_bytes());
        }
        batch.put_cf(
            self.db.cf(Cf::Meta),
            ITEM_STATS_PARTITIONS,
            num_partitions.to_be_bytes(),
        );
        self.db.write_synced(batch)?;
        Ok(sessions)
    }
}

impl RocksSessionStore {
    /// Adds `sign · delta` to each item's counter in `partition`.
    fn add_stats(&self, batch: &mut WriteBatch, partition: u32, deltas: &[(&str, f64)], sign: f64) {
        for (item, delta) in deltas {
            batch.merge_cf(
                self.db.cf(Cf::ItemStats),
                stat_key(partition, item),
                (sign * delta).to_le_bytes(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_is_atomic_and_erase_forgets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksSessionStore::new(std::sync::Arc::new(Db::open(dir.path()).expect("db")));
        store
            .commit(SessionCommit {
                user_id: "u1",
                partition: 3,
                state: b"s",
                applied_event_ids: &["e1", "e2"],
                item_deltas: &[("i1", 2.0), ("i1", 3.0)],
            })
            .expect("commit");
        store
            .commit(SessionCommit {
                user_id: "u2",
                partition: 1,
                state: b"s",
                applied_event_ids: &["e3"],
                item_deltas: &[("i1", 1.0)],
            })
            .expect("commit");
        assert!(store.is_applied("u1", "e2").expect("get"));
        assert!(!store.is_applied("u10", "e2").expect("get"));
        assert_eq!(
            store.item_stats().expect("stats"),
            vec![(1, "i1".to_owned(), 1.0), (3, "i1".to_owned(), 5.0)]
        );
        assert_eq!(
            store.partition_stats(3).expect("stats"),
            vec![("i1".to_owned(), 5.0)]
        );
        let tombstone = Tombstone {
            offset: 7,
            at_ms: 1_000,
        };
        store
            .erase("u1", 3, tombstone, &[("i1", 5.0)])
            .expect("erase");
        assert_eq!(
            store.partition_stats(3).expect("stats"),
            vec![("i1".to_owned(), 0.0)]
        );
        assert_eq!(
            store.partition_stats(1).expect("stats"),
            vec![("i1".to_owned(), 1.0)]
        );
        assert!(store.load("u1").expect("load").is_none());
        assert!(!store.is_applied("u1", "e1").expect("get"));
        assert_eq!(store.tombstone("u1").expect("erased"), Some(tombstone));
        assert_eq!(store.tombstone("u2").expect("never erased"), None);
    }

    #[test]
    fn item_counters_rebuild_by_partition_from_the_sessions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = std::sync::Arc::new(Db::open(dir.path()).expect("db"));
        // A counter as an earlier version kept it: by item alone.
        db.put(Cf::ItemStats, b"old-item", &7.0_f64.to_le_bytes())
            .expect("put");
        let store = RocksSessionStore::new(db);
        for user in ["u1", "u2", "u3"] {
            store
                .restore(user, 0, br#"{"a":1.0,"b":2.0}"#, &[], &[])
                .expect("restore");
        }
        assert_eq!(store.item_stats_partitions().expect("meta"), None);
        // A state's contributions: here its JSON object's values.
        let contributions = |state: &[u8]| -> Vec<(String, f64)> {
            let map: HashMap<String, f64> = serde_json::from_slice(state).expect("json");
            map.into_iter().collect()
        };
        assert_eq!(
            store
                .rebuild_item_stats(4, &contributions)
                .expect("rebuild"),
            3
        );
        assert_eq!(store.item_stats_partitions().expect("meta"), Some(4));
        let mut expected = Vec::new();
        for user in ["u1", "u2", "u3"] {
            let p = partition_for(user, 4);
            expected.push((p, "a".to_owned(), 1.0));
            expected.push((p, "b".to_owned(), 2.0));
        }
        // Users sharing a partition add up.
        let mut summed: HashMap<(u32, String), f64> = HashMap::new();
        for (p, item, w) in expected {
            *summed.entry((p, item)).or_default() += w;
        }
        let mut expected: Vec<PartitionStat> =
            summed.into_iter().map(|((p, i), w)| (p, i, w)).collect();
        expected.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        assert_eq!(store.item_stats().expect("stats"), expected);
    }

    #[test]
    fn an_erasure_is_synced_before_it_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = std::sync::Arc::new(Db::open(dir.path()).expect("db"));
        let store = RocksSessionStore::new(db.clone());
        store
            .commit(SessionCommit {
                user_id: "u1",
                partition: 0,
                state: b"s",
                applied_event_ids: &["e1"],
                item_deltas: &[],
            })
            .expect("commit");
        assert_eq!(db.num_synced_writes(), 0, "ordinary writes are not synced");
        let tombstone = Tombstone {
            offset: 1,
            at_ms: 1,
        };
        store.erase("u1", 0, tombstone, &[]).expect("erase");
        assert_eq!(db.num_synced_writes(), 1);
    }

    fn record(offset: u64, received_ms: Option<i64>, ts: i64) -> Record {
        Record {
            partition: 0,
            offset,
            received_ms,
            event: common::Event {
                event_id: "e".into(),
                user_id: "u".into(),
                item_id: "i".into(),
                kind: common::EventKind::View,
                value: None,
                ts,
            },
        }
    }

    #[test]
    fn a_tombstone_goes_by_log_offset_and_receive_time_never_by_event_time() {
        let tombstone = Tombstone {
            offset: 10,
            at_ms: 5_000,
        };
        // This node's log: the offset decides, whatever the client wrote as `ts`.
        assert!(
            tombstone.covers(&record(9, Some(4_000), i64::MAX)),
            "future-dated, before"
        );
        assert!(
            !tombstone.covers(&record(10, Some(6_000), 1)),
            "back-dated, after"
        );
        // The archive (several nodes' logs): the receive time decides.
        assert!(tombstone.covers_archived(&record(500, Some(5_000), i64::MAX)));
        assert!(!tombstone.covers_archived(&record(0, Some(5_001), 1)));
        // Archived before receive times were kept: the event time, as then.
        assert!(tombstone.covers_archived(&record(0, None, 4_000)));
        assert!(!tombstone.covers_archived(&record(0, None, 6_000)));
        // An offset alone, as earlier versions stored it, still covers by offset.
        let legacy = Tombstone::decode(&10u64.to_be_bytes()).expect("decodes");
        assert!(legacy.covers(&record(9, None, 9_000)));
        assert!(!legacy.covers(&record(10, None, 1)));
    }

    #[test]
    fn tombstones_are_pruned_only_where_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksSessionStore::new(std::sync::Arc::new(Db::open(dir.path()).expect("db")));
        for (user, at_ms) in [("old", 1_000), ("new", 9_000)] {
            store
                .erase(user, 0, Tombstone { offset: 3, at_ms }, &[])
                .expect("erase");
        }
        let pruned = store
            .prune_tombstones(&|_, t| t.at_ms < 5_000)
            .expect("prune");
        assert_eq!(pruned, 1);
        assert_eq!(store.tombstone("old").expect("read"), None);
        assert!(store.tombstone("new").expect("read").is_some());
    }
}
