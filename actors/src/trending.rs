//! Real-time activity: tumbling windows (`trending.window`, 5 minutes by default) of positive
//! interaction weight per item and per category, over the last `trending.windows` windows.
//!
//! An item's trending score is its activity with each older window counting half as much as the
//! next (`Σ 0.5^age · weight`, age 0 being the current window), so what happens now outweighs a
//! slow burn without forgetting the last few minutes at a window boundary. It ranks
//! `GET /v1/trending`, fills the lists of users with no history before popularity does, and
//! marks recommended items that are trending.
//!
//! Windows go by event time, so a replay or an import of old events does not light up as
//! trending: events older than the retained windows are ignored. The state is in memory per
//! node; after a restart it refills within a window.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

#[derive(Default)]
struct Window {
    id: i64,
    items: HashMap<String, f64>,
    categories: HashMap<String, f64>,
}

pub struct Trending {
    window_ms: i64,
    retained: usize,
    windows: Mutex<VecDeque<Window>>,
}

/// One trending entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrendingEntry {
    pub id: String,
    pub score: f64,
    /// Positive interaction weight in the current window.
    pub current: f64,
}

impl Trending {
    pub fn new(window: Duration, retained: usize) -> Self {
        Self {
            window_ms: (window.as_millis() as i64).max(1),
            retained: retained.max(1),
            windows: Mutex::new(VecDeque::new()),
        }
    }

    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms as u64)
    }

    /// Records `weight` of activity on `item` (and its `categories`) at `ts` (epoch ms), as seen
    /// at `now`. Non-positive weights, and events outside the retained windows, count nothing.
    pub fn record(&self, item: &str, categories: &[String], weight: f64, ts: i64, now: i64) {
        let current = now.div_euclid(self.window_ms);
        let id = ts.min(now).div_euclid(self.window_ms);
        if weight <= 0.0 || current - id >= self.retained as i64 {
            return;
        }
        let mut windows = self.windows.lock();
        self.expire(&mut windows, current);
        let pos = windows.partition_point(|w| w.id < id);
        if windows.get(pos).is_none_or(|w| w.id != id) {
            windows.insert(
                pos,
                Window {
                    id,
                    ..Default::default()
                },
            );
        }
        let w = &mut windows[pos];
        *w.items.entry(item.to_owned()).or_default() += weight;
        for c in categories {
            *w.categories.entry(c.clone()).or_default() += weight;
        }
    }

    fn expire(&self, windows: &mut VecDeque<Window>, current: i64) {
        while windows
            .front()
            .is_some_and(|w| current - w.id >= self.retained as i64)
        {
            windows.pop_front();
        }
    }

    /// The `k` trending items (when `categories` is false) or categories at `now`, best first,
    /// keeping only ids that `keep` accepts.
    pub fn top(
        &self,
        k: usize,
        now: i64,
        categories: bool,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<TrendingEntry> {
        let current = now.div_euclid(self.window_ms);
        let mut windows = self.windows.lock();
        self.expire(&mut windows, current);
        let mut scores: HashMap<&str, (f64, f64)> = HashMap::new();
        for w in windows.iter() {
            let decay = 0.5f64.powi((current - w.id) as i32);
            let counts = if categories { &w.categories } else { &w.items };
            for (id, weight) in counts {
                let entry = scores.entry(id.as_str()).or_default();
                entry.0 += decay * weight;
                if w.id == current {
                    entry.1 += weight;
                }
            }
        }
        let mut ranked: Vec<TrendingEntry> = scores
            .into_iter()
            .filter(|(id, _)| keep(id))
            .map(|(id, (score, current))| TrendingEntry {
                id: id.to_owned(),
                score,
                current,
            })
            .collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        ranked.truncate(k);
        ranked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn ids(entries: &[TrendingEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn recent_activity_outranks_older_activity_of_the_same_size() {
        let t = Trending::new(Duration::from_secs(300), 12);
        // Two minutes into a window.
        let now = 100 * 5 * MIN + 2 * MIN;
        let c = vec!["music".to_owned()];
        for _ in 0..4 {
            t.record("old", &c, 1.0, now - 20 * MIN, now);
            t.record("new", &[], 1.0, now - MIN, now);
        }
        t.record("tiny", &c, 1.0, now, now);
        let top = t.top(10, now, false, |_| true);
        assert_eq!(ids(&top), vec!["new", "tiny", "old"]);
        assert_eq!((top[0].score, top[0].current), (4.0, 4.0));
        // 20 minutes back is 4 windows of 5 minutes: 4 · 0.5⁴.
        assert_eq!(top[2].score, 0.25);
        assert_eq!(top[2].current, 0.0);
        let cats = t.top(10, now, true, |_| true);
        assert_eq!(ids(&cats), vec!["music"]);
        assert_eq!(
            ids(&t.top(10, now, false, |id| id != "new")),
            vec!["tiny", "old"]
        );
    }

    #[test]
    fn old_and_negative_events_count_nothing_and_windows_expire() {
        let t = Trending::new(Duration::from_secs(300), 3);
        let now = 1_000 * 5 * MIN;
        t.record("ancient", &[], 1.0, now - 60 * MIN, now);
        t.record("disliked", &[], -1.0, now, now);
        t.record("future", &[], 1.0, now + 60 * MIN, now);
        assert_eq!(ids(&t.top(10, now, false, |_| true)), vec!["future"]);
        // Three windows later the activity has left the retained windows.
        assert!(t.top(10, now + 15 * MIN, false, |_| true).is_empty());
    }
}
