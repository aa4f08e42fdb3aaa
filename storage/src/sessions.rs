//! Durable session state. A session's state, the ids of the events it applied and the item
//! counters those events moved are written in one atomic batch, which is what makes replays
//! idempotent: an event id found here has already had its whole effect.

use rocksdb::WriteBatch;

use crate::db::{Cf, Db, pair_key, pair_prefix};
use crate::error::Result;

/// What one apply writes.
pub struct SessionCommit<'a> {
    pub user_id: &'a str,
    pub state: &'a [u8],
    pub applied_event_ids: &'a [&'a str],
    /// (item id, weight to add to its popularity).
    pub item_deltas: &'a [(&'a str, f64)],
}

pub trait SessionStore: Send + Sync + 'static {
    fn load(&self, user_id: &str) -> Result<Option<Vec<u8>>>;
    fn is_applied(&self, user_id: &str, event_id: &str) -> Result<bool>;
    fn commit(&self, commit: SessionCommit<'_>) -> Result<()>;
    /// Erases everything held about the user and records `erased_at` (the log offset of the
    /// user's partition at erasure): older events of the user are never applied again.
    /// `item_deltas` are the user's contributions to item popularity, taken back.
    fn erase(&self, user_id: &str, erased_at: u64, item_deltas: &[(&str, f64)]) -> Result<()>;
    /// The erasure offset of a user, if it was ever erased.
    fn erased_at(&self, user_id: &str) -> Result<Option<u64>>;
    /// Popularity of every item (sum of positive weights).
    fn item_stats(&self) -> Result<Vec<(String, f64)>>;
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

    fn is_applied(&self, user_id: &str, event_id: &str) -> Result<bool> {
        self.db
            .contains(Cf::AppliedIds, &pair_key(user_id, event_id))
    }

    fn commit(&self, c: SessionCommit<'_>) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.db.cf(Cf::Sessions), c.user_id.as_bytes(), c.state);
        for id in c.applied_event_ids {
            batch.put_cf(self.db.cf(Cf::AppliedIds), pair_key(c.user_id, id), []);
        }
        for (item, delta) in c.item_deltas {
            batch.merge_cf(
                self.db.cf(Cf::ItemStats),
                item.as_bytes(),
                delta.to_le_bytes(),
            );
        }
        self.db.write(batch)
    }

    fn erase(&self, user_id: &str, erased_at: u64, item_deltas: &[(&str, f64)]) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (item, delta) in item_deltas {
            batch.merge_cf(
                self.db.cf(Cf::ItemStats),
                item.as_bytes(),
                (-delta).to_le_bytes(),
            );
        }
        batch.delete_cf(self.db.cf(Cf::Sessions), user_id.as_bytes());
        self.db
            .delete_prefix(&mut batch, Cf::AppliedIds, &pair_prefix(user_id));
        batch.put_cf(
            self.db.cf(Cf::Erasures),
            user_id.as_bytes(),
            erased_at.to_be_bytes(),
        );
        self.db.write(batch)
    }

    fn erased_at(&self, user_id: &str) -> Result<Option<u64>> {
        Ok(self
            .db
            .get(Cf::Erasures, user_id.as_bytes())?
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes)))
    }

    fn item_stats(&self) -> Result<Vec<(String, f64)>> {
        self.db
            .scan(Cf::ItemStats)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    crate::db::decode_f64(&v).unwrap_or(0.0),
                ))
            })
            .collect()
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
                state: b"s",
                applied_event_ids: &["e1", "e2"],
                item_deltas: &[("i1", 2.0), ("i1", 3.0)],
            })
            .expect("commit");
        assert!(store.is_applied("u1", "e2").expect("get"));
        assert!(!store.is_applied("u10", "e2").expect("get"));
        assert_eq!(
            store.item_stats().expect("stats"),
            vec![("i1".to_owned(), 5.0)]
        );
        store.erase("u1", 7, &[("i1", 5.0)]).expect("erase");
        assert_eq!(
            store.item_stats().expect("stats"),
            vec![("i1".to_owned(), 0.0)]
        );
        assert!(store.load("u1").expect("load").is_none());
        assert!(!store.is_applied("u1", "e1").expect("get"));
        assert_eq!(store.erased_at("u1").expect("erased"), Some(7));
    }
}
