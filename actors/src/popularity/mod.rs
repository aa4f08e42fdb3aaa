//! Live item popularity, loaded from the session store at start and advanced as sessions apply
//! events. It ranks items for users with no history and fills lists for items the model has not
//! seen yet.
//!
//! Popularity is what many users do, so no one user can buy it: an item's popularity is
//! `Σ_users clamp(w, 0, cap)`, `w` being the user's summed interaction weight on the item and
//! `cap` `trending.max_user_weight` (one purchase by default). A user who buys an item a thousand
//! times counts as one who bought it once. Only catalogued items count: an id nobody catalogued
//! (anyone may post events about any id) never enters the map, and a deleted item leaves it, so
//! the map is never larger than the catalogue. A session counts an item's weight from when the
//! item is in the catalogue; a partition restored on a node is counted again from its users'
//! whole states, so weight from events posted before their item was catalogued counts from the
//! partition's next move (or the store's rebuild) on.
//!
//! It is kept per input partition, as the store keeps it: an item's popularity is the sum of
//! what each partition's users add. On one node every partition is local. In a cluster a node
//! knows exactly only the partitions it owns (its sessions moved them); the owner of each
//! partition publishes its weights ([`publisher`]) and every node reads everyone's from the
//! popularity topic (`changelog_tail`), so every node ranks by the whole cluster's users. A
//! partition a node gains is reloaded from its store once restored, and what changed in it from
//! what the previous owner last published is published again.

pub mod publisher;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use models::training::contribution;
use parking_lot::{Mutex, RwLock};
use storage::CatalogView;
use storage::catalog::ItemStatus;

/// How stale the ranked list may be before it is re-sorted.
const RERANK_EVERY: Duration = Duration::from_millis(500);

/// Items with their popularity, most popular first.
pub type Ranked = Arc<Vec<(String, f64)>>;

/// One item's popularity, and what each partition adds to it.
#[derive(Default)]
struct Item {
    total: f64,
    /// (partition, weight > 0), few: the partitions whose users touched the item.
    parts: Vec<(u32, f64)>,
}

impl Item {
    fn weight(&self, partition: u32) -> f64 {
        self.parts
            .iter()
            .find_map(|(p, w)| (*p == partition).then_some(*w))
            .unwrap_or(0.0)
    }

    fn set(&mut self, partition: u32, weight: f64) {
        let weight = weight.max(0.0);
        match self.parts.iter().position(|(p, _)| *p == partition) {
            Some(i) if weight == 0.0 => {
                self.parts.swap_remove(i);
            }
            Some(i) => self.parts[i].1 = weight,
            None if weight > 0.0 => self.parts.push((partition, weight)),
            None => {}
        }
        self.total = self.parts.iter().map(|(_, w)| w).sum();
    }
}

pub struct Popularity {
    items: RwLock<HashMap<String, Item>>,
    /// The last ranking and when it was made.
    ranked: Mutex<(Option<Instant>, Ranked)>,
    /// (partition, item) changed here and not yet published; kept only in a cluster.
    dirty: Option<Mutex<HashSet<(u32, String)>>>,
    /// Partitions reset from the store (restored here), to be published whole.
    whole_due: Mutex<HashSet<u32>>,
}

impl Popularity {
    /// Popularity of items all counted in partition 0 (tests, and a node's first moments).
    pub fn new(totals: Vec<(String, f64)>) -> Self {
        let initial = totals.into_iter().map(|(id, w)| (0, id, w)).collect();
        Self::by_partition(initial, false)
    }

    /// Popularity from what each partition adds to each item (`SessionStore::item_stats`).
    /// `publishing`: keep track of what changes, for [`publisher`] (a cluster).
    pub fn by_partition(initial: Vec<(u32, String, f64)>, publishing: bool) -> Self {
        let mut items: HashMap<String, Item> = HashMap::new();
        for (partition, item, weight) in initial {
            items.entry(item).or_default().set(partition, weight);
        }
        items.retain(|_, item| !item.parts.is_empty());
        Self {
            items: RwLock::new(items),
            ranked: Mutex::new((None, Arc::default())),
            dirty: publishing.then(Mutex::default),
            whole_due: Mutex::default(),
        }
    }

    /// Moves what `partition`'s users add to an item by `delta` (negative when a user's
    /// contribution shrank), never below 0. Callers pass catalogued items only.
    pub fn add(&self, partition: u32, item_id: &str, delta: f64) {
        if delta == 0.0 || !delta.is_finite() {
            return;
        }
        let mut items = self.items.write();
        let item = items.entry(item_id.to_owned()).or_default();
        item.set(partition, item.weight(partition) + delta);
        if item.parts.is_empty() {
            items.remove(item_id);
        }
        if let Some(dirty) = &self.dirty {
            dirty.lock().insert((partition, item_id.to_owned()));
        }
    }

    /// Takes back what an erased user of `partition` added.
    pub fn remove(&self, partition: u32, deltas: &[(String, f64)]) {
        for (item, delta) in deltas {
            self.add(partition, item, -delta);
        }
    }

    /// What `partition`'s users add to an item, as another node (its owner) says.
    pub fn set(&self, partition: u32, item_id: &str, weight: f64) {
        if !weight.is_finite() {
            return;
        }
        let mut items = self.items.write();
        let item = items.entry(item_id.to_owned()).or_default();
        item.set(partition, weight);
        if item.parts.is_empty() {
            items.remove(item_id);
        }
    }

    /// Replaces what `partition` adds to every item by `weights`: the store's, after the
    /// partition was restored here. The partition is then due to be published whole.
    pub fn reset_partition(&self, partition: u32, weights: Vec<(String, f64)>) {
        self.replace_partition(partition, weights);
        if self.dirty.is_some() {
            self.whole_due.lock().insert(partition);
        }
    }

    /// Replaces what `partition` adds to every item by `weights`, as its owner published the
    /// partition whole.
    pub fn replace_partition(&self, partition: u32, weights: Vec<(String, f64)>) {
        let mut items = self.items.write();
        for item in items.values_mut() {
            item.set(partition, 0.0);
        }
        for (id, weight) in weights {
            if weight > 0.0 && weight.is_finite() {
                items.entry(id).or_default().set(partition, weight);
            }
        }
        items.retain(|_, item| !item.parts.is_empty());
    }

    /// What `partition`'s users add to each item.
    pub fn partition(&self, partition: u32) -> Vec<(String, f64)> {
        self.items
            .read()
            .iter()
            .filter_map(|(id, item)| {
                let weight = item.weight(partition);
                (weight > 0.0).then(|| (id.clone(), weight))
            })
            .collect()
    }

    /// The partitions reset since the last call, each to be published whole.
    pub fn take_whole_due(&self) -> HashSet<u32> {
        std::mem::take(&mut *self.whole_due.lock())
    }

    /// What changed here since the last call, each (partition, item) with its weight now.
    pub fn take_changes(&self) -> Vec<(u32, String, f64)> {
        let Some(dirty) = &self.dirty else {
            return Vec::new();
        };
        let taken = std::mem::take(&mut *dirty.lock());
        let items = self.items.read();
        taken
            .into_iter()
            .map(|(partition, id)| {
                let weight = items.get(&id).map_or(0.0, |item| item.weight(partition));
                (partition, id, weight)
            })
            .collect()
    }

    /// Drops a deleted item.
    pub fn forget(&self, item_id: &str) {
        self.items.write().remove(item_id);
    }

    /// Items counted.
    pub fn len(&self) -> usize {
        self.items.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sum of every item's popularity (for the console and tests: every node of a settled
    /// cluster holds the same).
    pub fn total(&self) -> f64 {
        self.items.read().values().map(|item| item.total).sum()
    }

    /// Items by descending popularity (ties by id), refreshed at most every 500 ms.
    pub fn ranked(&self) -> Ranked {
        let mut ranked = self.ranked.lock();
        if ranked.0.is_none_or(|t| t.elapsed() >= RERANK_EVERY) {
            let mut list: Vec<(String, f64)> = self
                .items
                .read()
                .iter()
                .map(|(k, v)| (k.clone(), v.total))
                .collect();
            list.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            *ranked = (Some(Instant::now()), Arc::new(list));
        }
        ranked.1.clone()
    }

    /// Forces the next `ranked` to re-sort (tests, after bulk loads).
    pub fn refresh(&self) {
        self.ranked.lock().0 = None;
    }
}

/// How one user's contributions move when the user's per-item totals go from `before` to
/// `after` (a session's `items`, before and after applying events): for the `touched` items and
/// any item `after` no longer holds, the catalogued ones only.
pub fn deltas<'a>(
    touched: impl IntoIterator<Item = &'a str>,
    before: &'a HashMap<String, f32>,
    after: &HashMap<String, f32>,
    catalog: &CatalogView,
    cap: f64,
) -> Vec<(&'a str, f64)> {
    let mut items: HashSet<&str> = touched.into_iter().collect();
    items.extend(
        before
            .keys()
            .filter(|k| !after.contains_key(*k))
            .map(String::as_str),
    );
    let total =
        |map: &HashMap<String, f32>, id: &str| f64::from(map.get(id).copied().unwrap_or(0.0));
    let view = catalog.read();
    items
        .into_iter()
        .filter(|id| matches!(view.status(id), ItemStatus::Catalogued(_)))
        .map(|id| {
            let delta = contribution(total(after, id), cap) - contribution(total(before, id), cap);
            (id, delta)
        })
        .filter(|(_, delta)| *delta != 0.0)
        .collect()
}

/// What a session's stored state adds to popularity (see [`contributions`]); nothing for a
/// state that cannot be read.
pub fn of_state(state: &[u8], catalog: &CatalogView, cap: f64) -> Vec<(String, f64)> {
    crate::session::SessionData::decode(state)
        .map(|data| contributions(&data.items, catalog, cap))
        .unwrap_or_default()
}

/// Everything one user's totals add to popularity (what erasing the user takes back).
pub fn contributions(
    items: &HashMap<String, f32>,
    catalog: &CatalogView,
    cap: f64,
) -> Vec<(String, f64)> {
    let view = catalog.read();
    items
        .iter()
        .filter(|(id, _)| matches!(view.status(id), ItemStatus::Catalogued(_)))
        .map(|(id, w)| (id.clone(), contribution(f64::from(*w), cap)))
        .filter(|(_, c)| *c > 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranked(p: &Popularity) -> Vec<(String, f64)> {
        p.refresh();
        p.ranked().to_vec()
    }

    #[test]
    fn ranks_by_weight_then_id() {
        let p = Popularity::new(vec![("b".into(), 1.0), ("a".into(), 1.0)]);
        p.add(0, "c", 5.0);
        p.add(0, "a", 2.0);
        p.add(0, "a", -1.0);
        assert_eq!(
            ranked(&p),
            [("c".into(), 5.0), ("a".into(), 2.0), ("b".into(), 1.0)]
        );
        p.add(0, "a", -5.0);
        assert_eq!(ranked(&p).len(), 2, "never below zero: gone at zero");
        p.forget("c");
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn an_item_adds_up_what_every_partition_says() {
        let p = Popularity::by_partition(
            vec![
                (0, "a".into(), 1.0),
                (1, "a".into(), 2.0),
                (1, "b".into(), 4.0),
            ],
            true,
        );
        assert_eq!(ranked(&p), [("b".into(), 4.0), ("a".into(), 3.0)]);
        // Another node, the owner of partition 2, says what its users add.
        p.set(2, "a", 3.0);
        p.set(2, "a", 2.0);
        assert_eq!(ranked(&p), [("a".into(), 5.0), ("b".into(), 4.0)]);
        assert_eq!(p.total(), 9.0);
        assert!(
            p.take_changes().is_empty(),
            "what others say is theirs to publish"
        );
        // Local changes are published with their weight then.
        p.add(1, "b", -1.0);
        p.add(1, "b", -1.0);
        p.add(0, "a", 1.0);
        let mut changes = p.take_changes();
        changes.sort_by(|x, y| x.1.cmp(&y.1));
        assert_eq!(changes, [(0, "a".into(), 2.0), (1, "b".into(), 2.0)]);
        assert!(p.take_changes().is_empty(), "taken once");
    }

    #[test]
    fn a_restored_partition_replaces_what_the_previous_owner_said() {
        let p = Popularity::by_partition(vec![(0, "a".into(), 1.0)], true);
        p.set(1, "a", 2.0);
        p.set(1, "b", 2.0);
        // Restored here: the store says partition 1's users add 4 to c, and nothing to a or b.
        p.reset_partition(1, vec![("c".into(), 4.0)]);
        assert_eq!(ranked(&p), [("c".into(), 4.0), ("a".into(), 1.0)]);
        assert_eq!(
            p.take_whole_due(),
            HashSet::from([1]),
            "to be published whole"
        );
        assert!(p.take_whole_due().is_empty());
        assert_eq!(p.partition(1), [("c".into(), 4.0)]);
        // Another node's word on a partition, whole, replaces all it said before.
        p.replace_partition(0, vec![("b".into(), 2.0)]);
        assert_eq!(ranked(&p), [("c".into(), 4.0), ("b".into(), 2.0)]);
        assert!(
            p.take_whole_due().is_empty(),
            "another's word is not published again"
        );
    }

    #[test]
    fn a_single_node_keeps_no_changes() {
        let p = Popularity::new(Vec::new());
        p.add(0, "a", 1.0);
        assert!(p.take_changes().is_empty());
    }

    #[test]
    fn one_users_contribution_is_its_positive_part_up_to_the_cap() {
        assert_eq!(contribution(5_000.0, 5.0), 5.0);
        assert_eq!(contribution(2.0, 5.0), 2.0);
        assert_eq!(contribution(-1.0, 5.0), 0.0);
    }
}
