//! The sessions changelog: with Kafka, every state a session writes (and every erasure) is also
//! recorded, keyed by user, on `<prefix>sessions-changelog`, partitioned as the input is. A node
//! that gains a partition replays the partition's changelog into its own store before it serves
//! or applies anything there, as Kafka Streams restores a state store. Which node owns what is
//! the consumer group's business; this module only says what a record holds and how one is
//! applied.
//!
//! A record holds the user's whole state, never a delta, so replaying the same records again, or
//! on top of a store that is already ahead, ends at the latest state: a node keeps, per
//! partition, the changelog offset it restored through ([`SessionStore::restored_through`]) and
//! on regaining the partition reads only what came after.

use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};
use crate::sessions::{SessionStore, Tombstone};

/// What happened to a user's session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The session's state after an apply, with the ids of the events that apply took in (so
    /// that a new owner recognises them when the input is replayed from its committed offset).
    State {
        state: serde_json::Value,
        applied: Vec<String>,
    },
    /// The user was erased at `at_ms` (the owner's clock): a new owner forgets the user too.
    Erased { at_ms: i64 },
}

/// One changelog record: the key is the user id.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeRecord {
    pub user_id: String,
    pub change: Change,
}

impl ChangeRecord {
    /// A state record from the stored bytes of a session (JSON).
    pub fn state(user_id: &str, state: &[u8], applied: Vec<String>) -> Result<Self> {
        let state = serde_json::from_slice(state)?;
        Ok(Self {
            user_id: user_id.to_owned(),
            change: Change::State { state, applied },
        })
    }

    pub fn erased(user_id: &str, at_ms: i64) -> Self {
        Self {
            user_id: user_id.to_owned(),
            change: Change::Erased { at_ms },
        }
    }

    /// The record's value (its key is the user id).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.change).expect("a change serializes")
    }

    pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Self> {
        let corrupt = |what: &str| StorageError::Corrupt(format!("changelog record {what}"));
        let user_id = std::str::from_utf8(key.ok_or_else(|| corrupt("without a key"))?)
            .map_err(|_| corrupt("with a key that is not UTF-8"))?
            .to_owned();
        let change = serde_json::from_slice(value.ok_or_else(|| corrupt("without a value"))?)?;
        Ok(Self { user_id, change })
    }
}

/// Where session changes are recorded (the Kafka changelog topic). A node without one (the
/// embedded log) records nothing: its store is the only copy.
#[async_trait::async_trait]
pub trait Changelog: Send + Sync + 'static {
    /// Returns once every record is durably recorded (acknowledged by the broker).
    async fn record(&self, records: Vec<ChangeRecord>) -> Result<()>;
}

/// Applies one replayed record to `store`. `local_offset` is where this node's own log stands
/// for the user's partition: an erasure's tombstone covers whatever it already journaled.
pub fn apply(store: &dyn SessionStore, record: &ChangeRecord, local_offset: u64) -> Result<()> {
    match &record.change {
        Change::State { state, applied } => {
            let applied: Vec<&str> = applied.iter().map(String::as_str).collect();
            store.restore(&record.user_id, &serde_json::to_vec(state)?, &applied)
        }
        Change::Erased { at_ms } => {
            let tombstone = Tombstone {
                offset: local_offset,
                at_ms: *at_ms,
            };
            store.erase(&record.user_id, tombstone, &[])
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Db, RocksSessionStore};

    #[test]
    fn a_record_reads_back_as_written() {
        let state = ChangeRecord::state("u1", br#"{"num_events":2}"#, vec!["e1".into()])
            .expect("json state");
        let back = ChangeRecord::decode(Some(b"u1"), Some(&state.encode())).expect("decodes");
        assert_eq!(back, state);
        let erased = ChangeRecord::erased("u2", 7);
        assert_eq!(
            ChangeRecord::decode(Some(b"u2"), Some(&erased.encode())).expect("decodes"),
            erased
        );
        assert!(ChangeRecord::decode(None, Some(&erased.encode())).is_err());
        assert!(ChangeRecord::decode(Some(b"u2"), Some(b"{\"kind\":\"other\"}")).is_err());
        assert!(ChangeRecord::state("u", b"not json", vec![]).is_err());
    }

    #[test]
    fn replaying_records_ends_at_the_latest_state_whatever_the_store_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksSessionStore::new(Arc::new(Db::open(dir.path()).expect("db")));
        let records = [
            ChangeRecord::state("u", br#"{"n":1}"#, vec!["e1".into()]).expect("state"),
            ChangeRecord::state("u", br#"{"n":2}"#, vec!["e2".into()]).expect("state"),
            ChangeRecord::erased("v", 5),
            ChangeRecord::state("v", br#"{"n":9}"#, vec!["e9".into()]).expect("state"),
        ];
        // Twice over: a replay on top of a store that already holds it changes nothing.
        for _ in 0..2 {
            for record in &records {
                apply(&store, record, 3).expect("applies");
            }
            assert_eq!(
                store.load("u").expect("load").as_deref(),
                Some(&br#"{"n":2}"#[..])
            );
            assert!(store.is_applied("u", "e1").expect("read"));
            assert!(store.is_applied("u", "e2").expect("read"));
            assert_eq!(
                store.load("v").expect("load").as_deref(),
                Some(&br#"{"n":9}"#[..])
            );
        }
        // An erasure last leaves nothing but its tombstone, at this node's log offset.
        apply(&store, &ChangeRecord::erased("u", 11), 42).expect("applies");
        assert_eq!(store.load("u").expect("load"), None);
        assert!(!store.is_applied("u", "e2").expect("read"));
        assert_eq!(
            store.tombstone("u").expect("read"),
            Some(Tombstone {
                offset: 42,
                at_ms: 11
            })
        );
    }

    #[test]
    fn the_restored_offset_is_kept_per_partition() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksSessionStore::new(Arc::new(Db::open(dir.path()).expect("db")));
        assert_eq!(store.restored_through(3).expect("read"), 0);
        store.set_restored_through(3, 17).expect("write");
        assert_eq!(store.restored_through(3).expect("read"), 17);
        assert_eq!(store.restored_through(4).expect("read"), 0);
    }
}
