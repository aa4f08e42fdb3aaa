//! Live item popularity: the sum of positive interaction weights per item, loaded from the
//! session store at start and advanced as sessions apply events. It ranks items for users with
//! no history and fills lists for items the model has not seen yet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

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

    pub fn add(&self, item_id: &str, delta: f64) {
        if delta <= 0.0 {
            return;
        }
        *self.counts.write().entry(item_id.to_owned()).or_default() += delta;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_weight_then_id() {
        let p = Popularity::new(vec![("b".into(), 1.0), ("a".into(), 1.0)]);
        p.add("c", 5.0);
        p.add("a", -3.0);
        p.refresh();
        let ids: Vec<_> = p.ranked().iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids, vec!["c", "a", "b"]);
    }
}
