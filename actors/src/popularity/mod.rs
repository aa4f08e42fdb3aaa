//! Live item popularity, loaded from the session store at start and advanced as sessions apply
//! events. It ranks items for users with no history and fills lists for items the model has not
//! seen yet.
//!
//! Popularity is what many users do, so no one user can buy it: an item's popularity is
//! `Σ_users clamp(w, 0, cap)`, `w` being the user's summed interaction weight on the item and
//! `cap` `trending.max_user_weight` (one purchase by default). A user who buys an item a thousand
//! times counts as one who bought it once. Only catalogued items count: an id nobody catalogued
//! (anyone may post events about any id) never enters the map, and a deleted item leaves it, so
//! the map is never larger than the catalogue. Weight is counted from when the item is in the
//! catalogue.

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

pub struct Popularity {
    counts: RwLock<HashMap<String, f64>>,
    /// The last ranking and when it was made.
    ranked: Mutex<(Option<Instant>, Ranked)>,
}

impl Popularity {
    pub fn new(initial: Vec<(String, f64)>) -> Self {
        Self {
            counts: RwLock::new(initial.into_iter().collect()),
            ranked: Mutex::new((None, Arc::default())),
        }
    }

    /// Moves an item's popularity by `delta` (negative when a user's contribution shrank), never
    /// below 0. Callers pass catalogued items only.
    pub fn add(&self, item_id: &str, delta: f64) {
        if delta == 0.0 || !delta.is_finite() {
            return;
        }
        let mut counts = self.counts.write();
        let count = counts.entry(item_id.to_owned()).or_default();
        *count = (*count + delta).max(0.0);
    }

    /// Drops a deleted item.
    pub fn forget(&self, item_id: &str) {
        self.counts.write().remove(item_id);
    }

    /// Items counted.
    pub fn len(&self) -> usize {
        self.counts.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn remove(&self, deltas: &[(String, f64)]) {
        let mut counts = self.counts.write();
        for (item, delta) in deltas {
            if let Some(c) = counts.get_mut(item) {
                *c = (*c - delta).max(0.0);
            }
        }
    }

    /// Items by descending popularity (ties by id), refreshed at most every 500 ms.
    pub fn ranked(&self) -> Ranked {
        let mut ranked = self.ranked.lock();
        if ranked.0.is_none_or(|t| t.elapsed() >= RERANK_EVERY) {
            let mut list: Vec<(String, f64)> = self
                .counts
                .read()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
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

    #[test]
    fn ranks_by_weight_then_id() {
        let p = Popularity::new(vec![("b".into(), 1.0), ("a".into(), 1.0)]);
        p.add("c", 5.0);
        p.add("a", 2.0);
        p.add("a", -3.0);
        p.refresh();
        let ranked = p.ranked();
        let ids: Vec<_> = ranked.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids, vec!["c", "b", "a"]);
        assert_eq!(ranked[2].1, 0.0, "never below zero");
        p.forget("c");
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn one_users_contribution_is_its_positive_part_up_to_the_cap() {
        assert_eq!(contribution(5_000.0, 5.0), 5.0);
        assert_eq!(contribution(2.0, 5.0), 2.0);
        assert_eq!(contribution(-1.0, 5.0), 0.0);
    }
}
