//! The sessions changelog: with Kafka, every state a session writes (and every erasure) is also
//! recorded, keyed by user, on `<prefix>sessions-changelog`, partitioned as the input is. A node
//! that gains a partition replays the partition's changelog into its own store before it serves
//! or applies anything there, as Kafka Streams restores a state store. Which node owns what is
//! the consumer group's business; this module only says what a record holds and how one is
//! applied.
//!
//! A record holds the user's whole state, never a delta, so only a user's last record matters:
//! a restore ([`Restore`]) keeps, per user, the last record of the range it reads (with the
//! event ids of all of them) and applies that. A node keeps, per partition, the changelog offset
//! it restored through ([`SessionStore::restored_through`]) and on regaining the partition reads
//! only what came after.
//!
//! Each record names the store that wrote it ([`ChangeRecord::writer`], the data dir's
//! [`store_id`](crate::Db::store_id)). A store is never behind its own records (it writes its
//! state, then the record), and may be ahead of them: killed after an apply and before the
//! record, it holds events whose input offsets were not committed, which it will consume again
//! and find already applied. So a restore leaves a user alone when the last record is a state
//! the store wrote itself, and never rolls it back.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};
use crate::sessions::{Contributions, SessionStore, Tombstone};

/// What happened to a user's session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The session's state after an apply, with the ids of the events that apply took in (so
    /// that a new owner recognises them when the input is replayed from its committed offset).
    State {
        state: serde_json::Value,
        applied: Vec<String>,
        /// The input offset (of the user's partition of `user-events`) after the batch this
        /// state came from: everything before it, the writer had applied.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        through: Option<u64>,
    },
    /// The user was erased at `at_ms` (the owner's clock): a new owner forgets the user too.
    Erased { at_ms: i64 },
    /// Written by a node about to restore the partition, under [`MARKER_KEY`]: its offset is
    /// where the restore ends, whatever high watermark the broker reports. About no user.
    Marker,
}

/// The key of [`Change::Marker`] records: a control character, which no user id holds.
pub const MARKER_KEY: &str = "\u{1}restore";

/// One changelog record: the key is the user id.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeRecord {
    pub user_id: String,
    /// The store that wrote it; set by the [`Changelog`] when it records it.
    pub writer: String,
    pub change: Change,
}

/// A record's value.
#[derive(Serialize, Deserialize)]
struct Value {
    #[serde(default)]
    writer: String,
    #[serde(flatten)]
    change: Change,
}

impl ChangeRecord {
    /// A state record from the stored bytes of a session (JSON), of a batch whose input ended
    /// before offset `through` of the user's partition.
    pub fn state(
        user_id: &str,
        state: &[u8],
        applied: Vec<String>,
        through: Option<u64>,
    ) -> Result<Self> {
        let state = serde_json::from_slice(state)?;
        Ok(Self {
            user_id: user_id.to_owned(),
            writer: String::new(),
            change: Change::State {
                state,
                applied,
                through,
            },
        })
    }

    pub fn erased(user_id: &str, at_ms: i64) -> Self {
        Self {
            user_id: user_id.to_owned(),
            writer: String::new(),
            change: Change::Erased { at_ms },
        }
    }

    /// The record's value (its key is the user id).
    pub fn encode(&self) -> Vec<u8> {
        let value = Value {
            writer: self.writer.clone(),
            change: self.change.clone(),
        };
        serde_json::to_vec(&value).expect("a change serializes")
    }

    pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Self> {
        let corrupt = |what: &str| StorageError::Corrupt(format!("changelog record {what}"));
        let user_id = std::str::from_utf8(key.ok_or_else(|| corrupt("without a key"))?)
            .map_err(|_| corrupt("with a key that is not UTF-8"))?
            .to_owned();
        let value: Value =
            serde_json::from_slice(value.ok_or_else(|| corrupt("without a value"))?)?;
        Ok(Self {
            user_id,
            writer: value.writer,
            change: value.change,
        })
    }
}

/// Where session changes are recorded (the Kafka changelog topic). A node without one (the
/// embedded log) records nothing: its store is the only copy.
#[async_trait::async_trait]
pub trait Changelog: Send + Sync + 'static {
    /// The store this node's records name as their writer.
    fn writer(&self) -> &str;
    /// Returns once every record is durably recorded (acknowledged by the broker).
    async fn record(&self, records: Vec<ChangeRecord>) -> Result<()>;
    /// Appends a [`Change::Marker`] to `partition` and returns its offset: a restore that has
    /// read up to it has read everything recorded before it began.
    async fn mark(&self, partition: u32) -> Result<u64>;
}

/// One partition's restore: fed the records of the range read, in order, then applied.
///
/// Markers fence: the writer of the latest marker is the partition's owner from there on, and
/// a record another store writes after it comes from a node that has not yet noticed it lost the
/// partition (some brokers, tansu among them, assign a partition to its new owner for a while
/// before the old one gives it up). Such a record is skipped; the events it covers are the new
/// owner's to apply, from the input offsets it was assigned at.
#[derive(Default)]
pub struct Restore {
    /// Per user, the last record, with the event ids of every state record read.
    last: HashMap<String, (ChangeRecord, Vec<String>)>,
    /// The writer of the latest marker read (or the owner the range began under).
    fence: Option<String>,
    /// The furthest input offset an accepted record says its writer had applied up to.
    covered: Option<u64>,
    read: u64,
    fenced: u64,
}

impl Restore {
    /// A restore of a range that begins under `owner`'s marker: a store restoring from where
    /// it last restored through begins after its own marker. `None` from the start.
    pub fn new(owner: Option<String>) -> Self {
        Self {
            fence: owner,
            ..Self::default()
        }
    }

    pub fn push(&mut self, record: ChangeRecord) {
        self.read += 1;
        let ids = match &record.change {
            Change::Marker => {
                self.fence = Some(record.writer);
                return;
            }
            _ if self.fence.as_ref().is_some_and(|f| *f != record.writer) => {
                self.fenced += 1;
                return;
            }
            Change::State {
                applied, through, ..
            } => {
                self.covered = self.covered.max(*through);
                applied.clone()
            }
            Change::Erased { .. } => Vec::new(),
        };
        match self.last.entry(record.user_id.clone()) {
            Entry::Occupied(mut slot) => {
                let (last, applied) = slot.get_mut();
                // Ids from before an erasure went with it.
                if matches!(record.change, Change::Erased { .. }) {
                    applied.clear();
                }
                applied.extend(ids);
                *last = record;
            }
            Entry::Vacant(slot) => {
                slot.insert((record, ids));
            }
        }
    }

    /// Records read.
    pub fn num_read(&self) -> u64 {
        self.read
    }

    /// Records skipped as written by a store after another's marker.
    pub fn num_fenced(&self) -> u64 {
        self.fenced
    }

    /// The input offset the accepted records cover: the partition's owners had applied every
    /// event before it. Where a fenced-off node committed input offsets past it, the new owner
    /// consumes again from here (see `actors::handoff`).
    pub fn covered(&self) -> Option<u64> {
        self.covered
    }

    /// Applies each user's last record to `store` (which keeps `partition`), but a state
    /// `own` (this store) wrote: the store holds it or something newer. `local_offset` is where
    /// this node's own log stands for the partition: a replayed erasure's tombstone covers what
    /// it already journaled. The partition's item counters move by what each user's
    /// `contributions` change. Returns the users whose state changed.
    pub fn apply(
        self,
        store: &dyn SessionStore,
        partition: u32,
        own: &str,
        local_offset: u64,
        contributions: &Contributions,
    ) -> Result<Vec<String>> {
        let mut changed = Vec::new();
        for (user, (record, applied)) in self.last {
            let before = || -> Result<Vec<(String, f64)>> {
                Ok(store
                    .load(&user)?
                    .map(|state| contributions(&state))
                    .unwrap_or_default())
            };
            match &record.change {
                Change::State { .. } if record.writer == own => continue,
                Change::State { state, .. } => {
                    let state = serde_json::to_vec(state)?;
                    let deltas = diff(before()?, contributions(&state));
                    let deltas: Vec<(&str, f64)> =
                        deltas.iter().map(|(i, d)| (i.as_str(), *d)).collect();
                    let applied: Vec<&str> = applied.iter().map(String::as_str).collect();
                    store.restore(&user, partition, &state, &applied, &deltas)?;
                }
                Change::Erased { at_ms } => {
                    let tombstone = Tombstone {
                        offset: local_offset,
                        at_ms: *at_ms,
                    };
                    let taken = before()?;
                    let taken: Vec<(&str, f64)> =
                        taken.iter().map(|(i, w)| (i.as_str(), *w)).collect();
                    store.erase(&user, partition, tombstone, &taken)?;
                }
                Change::Marker => continue,
            }
            changed.push(user);
        }
        Ok(changed)
    }
}

/// What going from contributions `before` to `after` adds to each item (non-zero only).
fn diff(before: Vec<(String, f64)>, after: Vec<(String, f64)>) -> Vec<(String, f64)> {
    let mut deltas: HashMap<String, f64> = after.into_iter().collect();
    for (item, weight) in before {
        *deltas.entry(item).or_default() -= weight;
    }
    deltas.retain(|_, delta| *delta != 0.0);
    deltas.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Db, RocksSessionStore};

    #[test]
    fn a_record_reads_back_as_written() {
        let mut state =
            ChangeRecord::state("u1", br#"{"num_events":2}"#, vec!["e1".into()], Some(7))
                .expect("json state");
        state.writer = "store-1".into();
        let back = ChangeRecord::decode(Some(b"u1"), Some(&state.encode())).expect("decodes");
        assert_eq!(back, state);
        let erased = ChangeRecord::erased("u2", 7);
        let json: serde_json::Value = serde_json::from_slice(&state.encode()).expect("json");
        assert_eq!(json["writer"], "store-1");
        assert_eq!(json["kind"], "state");
        assert_eq!(
            ChangeRecord::decode(Some(b"u2"), Some(&erased.encode())).expect("decodes"),
            erased
        );
        assert!(ChangeRecord::decode(None, Some(&erased.encode())).is_err());
        assert!(ChangeRecord::decode(Some(b"u2"), Some(b"{\"kind\":\"other\"}")).is_err());
        assert!(ChangeRecord::state("u", b"not json", vec![], None).is_err());
    }

    fn state(user: &str, writer: &str, n: u32, ids: &[&str]) -> ChangeRecord {
        let body = format!(r#"{{"n":{n}}}"#);
        let ids = ids.iter().map(|id| id.to_string()).collect();
        let mut record =
            ChangeRecord::state(user, body.as_bytes(), ids, Some(u64::from(n) * 10)).expect("json");
        record.writer = writer.to_owned();
        record
    }

    fn erased(user: &str, writer: &str, at_ms: i64) -> ChangeRecord {
        let mut record = ChangeRecord::erased(user, at_ms);
        record.writer = writer.to_owned();
        record
    }

    fn marker(writer: &str) -> ChangeRecord {
        let mut record = ChangeRecord::erased(MARKER_KEY, 0);
        record.change = Change::Marker;
        record.writer = writer.to_owned();
        record
    }

    /// What a test state adds to popularity: its `n`, to item `x`.
    fn contributions(state: &[u8]) -> Vec<(String, f64)> {
        let state: serde_json::Value = serde_json::from_slice(state).expect("json");
        vec![("x".to_owned(), state["n"].as_f64().expect("n"))]
    }

    /// Item `x`'s counter in partition 0.
    fn x(store: &dyn SessionStore) -> f64 {
        store
            .partition_stats(0)
            .expect("stats")
            .into_iter()
            .find_map(|(item, weight)| (item == "x").then_some(weight))
            .unwrap_or(0.0)
    }

    fn apply(restore: Restore, store: &dyn SessionStore) -> Vec<String> {
        restore
            .apply(store, 0, "me", 0, &contributions)
            .expect("applies")
    }

    fn restore(store: &dyn SessionStore, own: &str, records: &[ChangeRecord]) -> Vec<String> {
        let mut restore = Restore::default();
        for record in records {
            restore.push(record.clone());
        }
        let mut changed = restore
            .apply(store, 0, own, 42, &contributions)
            .expect("applies");
        changed.sort();
        changed
    }

    fn load(store: &dyn SessionStore, user: &str) -> Option<String> {
        store
            .load(user)
            .expect("load")
            .map(|b| String::from_utf8(b).expect("utf-8"))
    }

    #[test]
    fn a_restore_ends_at_each_users_last_record_with_the_ids_of_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksSessionStore::new(Arc::new(Db::open(dir.path()).expect("db")));
        let records = [
            state("u", "a", 1, &["e1"]),
            state("u", "b", 2, &["e2"]),
            erased("v", "a", 5),
            state("v", "b", 9, &["e9"]),
            erased("w", "b", 7),
        ];
        // Twice over: a replay on top of a store that already holds it changes nothing.
        for _ in 0..2 {
            assert_eq!(restore(&store, "me", &records), ["u", "v", "w"]);
            assert_eq!(load(&store, "u").as_deref(), Some(r#"{"n":2}"#));
            assert!(store.is_applied("u", "e1").expect("read"));
            assert!(store.is_applied("u", "e2").expect("read"));
            assert_eq!(load(&store, "v").as_deref(), Some(r#"{"n":9}"#));
            // The user came back after the erasure: only the ids since count.
            assert!(store.is_applied("v", "e9").expect("read"));
            assert_eq!(load(&store, "w"), None);
            assert_eq!(
                store.tombstone("w").expect("read"),
                Some(Tombstone {
                    offset: 42,
                    at_ms: 7
                })
            );
            // The partition's counters hold what the restored states add: u's 2 and v's 9.
            assert_eq!(x(&store), 11.0);
        }
    }

    #[test]
    fn a_record_written_after_another_stores_marker_is_fenced_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksSessionStore::new(Arc::new(Db::open(dir.path()).expect("db")));
        let records = [
            marker("old"),
            state("u", "old", 1, &["e1"]),
            // The new owner marks the partition; the old one, not yet aware, writes on.
            marker("new"),
            state("u", "new", 3, &["e2", "e3"]),
            state("u", "old", 2, &["e2"]),
            erased("v", "old", 9),
        ];
        let mut restore = Restore::default();
        for record in &records {
            restore.push(record.clone());
        }
        assert_eq!(restore.num_fenced(), 2);
        // What the fenced-off writer applied is not covered: the owner consumes it again.
        assert_eq!(restore.covered(), Some(30));
        assert_eq!(apply(restore, &store), ["u"]);
        assert_eq!(load(&store, "u").as_deref(), Some(r#"{"n":3}"#));
        // A range that begins under an owner's marker is fenced from its first record.
        let mut restore = Restore::new(Some("new".into()));
        restore.push(state("w", "old", 5, &["e5"]));
        assert_eq!(restore.num_fenced(), 1);
        assert!(apply(restore, &store).is_empty());
    }

    #[test]
    fn a_store_is_never_rolled_back_to_a_state_it_wrote_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksSessionStore::new(Arc::new(Db::open(dir.path()).expect("db")));
        // The store applied more than its last record says (killed before recording it).
        store
            .restore("u", 0, br#"{"n":3}"#, &["e1", "e2", "e3"], &[("x", 3.0)])
            .expect("local state");
        assert_eq!(
            restore(&store, "me", &[state("u", "me", 2, &["e2"])]),
            Vec::<String>::new()
        );
        assert_eq!(load(&store, "u").as_deref(), Some(r#"{"n":3}"#));
        // Another store's later record wins; so does an erasure, whoever wrote it.
        let later = [
            state("u", "me", 2, &["e2"]),
            state("u", "other", 4, &["e4"]),
        ];
        assert_eq!(x(&store), 3.0);
        assert_eq!(restore(&store, "me", &later), ["u"]);
        assert_eq!(load(&store, "u").as_deref(), Some(r#"{"n":4}"#));
        assert_eq!(x(&store), 4.0, "counters move by the difference");
        assert_eq!(restore(&store, "me", &[erased("u", "me", 9)]), ["u"]);
        assert_eq!(load(&store, "u"), None);
        assert_eq!(x(&store), 0.0, "an erasure takes the user's part back");
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
