//! Real-time activity: tumbling windows (`trending.window`, 5 minutes by default) of positive
//! interaction weight per item and per category, over the last `trending.windows` windows.
//!
//! An item's trending score is its activity with each older window counting half as much as the
//! next (`Σ 0.5^age · weight`, age 0 being the current window), so what happens now outweighs a
//! slow burn without forgetting the last few minutes at a window boundary. It ranks
//! `GET /v1/trending`, fills the lists of users with no history before popularity does, and
//! marks recommended items that are trending.
//!
//! Every model inference asks for the ranking (the trending lift), so the full ranking is kept
//! per (contents, current window) and recomputed only after activity changed or a window turned:
//! reads between two events share one sort instead of each rebuilding it under the lock. The lift
//! may use a ranking up to a fraction of a second old ([`Trending::top_recent`]): under a steady
//! stream of events it would otherwise rebuild the whole ranking for nearly every inference.
//!
//! No one user makes an item trend: within a window, a user's weight on an item counts up to
//! `trending.max_user_weight` (one purchase by default), so an item's window activity is
//! `Σ_users clamp(w, 0, cap)` as for popularity ([`models::training::contribution`]), and a
//! category's the sum over its items. Callers record catalogued items only: ids nobody
//! catalogued never trend. A window's memory is bounded by the distinct (user, item) pairs active
//! in it, and goes with the window.
//!
//! Windows go by event time, so a replay or an import of old events does not light up as
//! trending: events older than the retained windows are ignored. The state is in memory per
//! node; after a restart it refills within a window.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use models::training::contribution;

#[derive(Default)]
struct Window {
    id: i64,
    items: HashMap<String, f64>,
    categories: HashMap<String, f64>,
    /// Per item, each user's weight on it in this window so far (before the cap).
    by_user: HashMap<String, HashMap<String, f64>>,
}

#[derive(Default)]
struct Windows {
    windows: VecDeque<Window>,
    /// Bumped by every change to `windows`: a ranking computed at another generation is stale.
    generation: u64,
    /// The last full rankings of items (`[0]`) and categories (`[1]`).
    ranked: [Option<Ranking>; 2],
}

/// A full ranking, and what it was computed from.
struct Ranking {
    generation: u64,
    /// The current window then (scores decay by window age).
    window: i64,
    computed: Instant,
    entries: Arc<Vec<TrendingEntry>>,
}

pub struct Trending {
    window_ms: i64,
    retained: usize,
    /// The most one user's weight on one item counts in one window.
    max_user_weight: f64,
    windows: Mutex<Windows>,
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
    pub fn new(window: Duration, retained: usize, max_user_weight: f64) -> Self {
        Self {
            window_ms: (window.as_millis() as i64).max(1),
            retained: retained.max(1),
            max_user_weight,
            windows: Mutex::new(Windows::default()),
        }
    }

    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms as u64)
    }

    /// Records `user`'s `weight` of activity on the catalogued `item` (and its `categories`) at
    /// `ts` (epoch ms), as seen at `now`. Non-positive weights, and events outside the retained
    /// windows, count nothing; a user's weight on an item counts up to the cap per window.
    pub fn record(
        &self,
        user: &str,
        item: &str,
        categories: &[String],
        weight: f64,
        ts: i64,
        now: i64,
    ) {
        let current = now.div_euclid(self.window_ms);
        let id = ts.min(now).div_euclid(self.window_ms);
        if !(weight > 0.0 && weight.is_finite()) || current - id >= self.retained as i64 {
            return;
        }
        let mut state = self.windows.lock();
        self.expire(&mut state, current);
        state.generation += 1;
        let windows = &mut state.windows;
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
        let users = w.by_user.entry(item.to_owned()).or_default();
        let before = users.get(user).copied().unwrap_or(0.0);
        let delta = contribution(before + weight, self.max_user_weight)
            - contribution(before, self.max_user_weight);
        if delta <= 0.0 {
            // The user's weight on the item is at the cap in this window: nothing changes.
            return;
        }
        users.insert(user.to_owned(), before + weight);
        *w.items.entry(item.to_owned()).or_default() += delta;
        for c in categories {
            *w.categories.entry(c.clone()).or_default() += delta;
        }
    }

    fn expire(&self, state: &mut Windows, current: i64) {
        while state
            .windows
            .front()
            .is_some_and(|w| current - w.id >= self.retained as i64)
        {
            state.windows.pop_front();
            state.generation += 1;
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
        let ranked = self.ranked(now.div_euclid(self.window_ms), categories, None);
        ranked
            .iter()
            .filter(|e| keep(&e.id))
            .take(k)
            .cloned()
            .collect()
    }

    /// The `k` trending items at `now`, from a ranking computed at most `max_age` ago in the
    /// current window: activity since then may be missing.
    pub fn top_recent(&self, k: usize, now: i64, max_age: Duration) -> Vec<TrendingEntry> {
        let ranked = self.ranked(now.div_euclid(self.window_ms), false, Some(max_age));
        ranked.iter().take(k).cloned().collect()
    }

    /// Every item (or category) ranked at window `current`, reusing the last ranking if nothing
    /// changed since, or (with `max_age`) if it is at most that old.
    fn ranked(
        &self,
        current: i64,
        categories: bool,
        max_age: Option<Duration>,
    ) -> Arc<Vec<TrendingEntry>> {
        let mut state = self.windows.lock();
        self.expire(&mut state, current);
        let slot = usize::from(categories);
        if let Some(r) = &state.ranked[slot]
            && r.window == current
            && (r.generation == state.generation
                || max_age.is_some_and(|m| r.computed.elapsed() <= m))
        {
            return r.entries.clone();
        }
        let mut scores: HashMap<&str, (f64, f64)> = HashMap::new();
        for w in state.windows.iter() {
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
            .map(|(id, (score, current))| TrendingEntry {
                id: id.to_owned(),
                score,
                current,
            })
            .collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        let ranked = Arc::new(ranked);
        state.ranked[slot] = Some(Ranking {
            generation: state.generation,
            window: current,
            computed: Instant::now(),
            entries: ranked.clone(),
        });
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
        let t = Trending::new(Duration::from_secs(300), 12, 100.0);
        // Two minutes into a window.
        let now = 100 * 5 * MIN + 2 * MIN;
        let c = vec!["music".to_owned()];
        for _ in 0..4 {
            t.record("u", "old", &c, 1.0, now - 20 * MIN, now);
            t.record("u", "new", &[], 1.0, now - MIN, now);
        }
        t.record("u", "tiny", &c, 1.0, now, now);
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
    fn a_reused_ranking_never_hides_new_activity_or_a_turned_window() {
        let t = Trending::new(Duration::from_secs(300), 12, 100.0);
        let now = 200 * 5 * MIN;
        t.record("u", "a", &[], 2.0, now, now);
        assert_eq!(ids(&t.top(10, now, false, |_| true)), vec!["a"]);
        t.record("u", "b", &[], 3.0, now, now);
        let top = t.top(10, now, false, |_| true);
        assert_eq!(ids(&top), vec!["b", "a"]);
        // One window later the same activity is half as hot and no longer current.
        let later = t.top(10, now + 5 * MIN, false, |_| true);
        assert_eq!((later[0].score, later[0].current), (1.5, 0.0));
        // A recent ranking may miss the latest activity; an exact one never does.
        t.record("u", "c", &[], 9.0, now + 5 * MIN, now + 5 * MIN);
        let recent = t.top_recent(10, now + 5 * MIN, Duration::from_secs(60));
        assert_eq!(ids(&recent), vec!["b", "a"]);
        assert_eq!(ids(&t.top(1, now + 5 * MIN, false, |_| true)), vec!["c"]);
        assert_eq!(
            ids(&t.top_recent(1, now + 5 * MIN, Duration::from_secs(60))),
            vec!["c"]
        );
    }

    #[test]
    fn one_user_counts_at_most_the_cap_per_item_and_window() {
        let t = Trending::new(Duration::from_secs(300), 12, 5.0);
        let now = 300 * 5 * MIN;
        let c = vec!["toys".to_owned()];
        // One user buying the same item a thousand times...
        for _ in 0..1_000 {
            t.record("loud", "hyped", &c, 5.0, now, now);
        }
        // ...counts as one purchase; three users viewing twice outweigh it.
        for user in ["a", "b", "c"] {
            t.record(user, "liked", &[], 2.0, now, now);
        }
        let top = t.top(10, now, false, |_| true);
        assert_eq!(ids(&top), vec!["liked", "hyped"]);
        assert_eq!((top[0].current, top[1].current), (6.0, 5.0));
        assert_eq!(t.top(10, now, true, |_| true)[0].current, 5.0);
        // The next window the same user counts again, once.
        let later = now + 5 * MIN;
        t.record("loud", "hyped", &c, 5.0, later, later);
        t.record("loud", "hyped", &c, 5.0, later, later);
        assert_eq!(t.top(1, later, false, |id| id == "hyped")[0].current, 5.0);
    }

    #[test]
    fn old_and_negative_events_count_nothing_and_windows_expire() {
        let t = Trending::new(Duration::from_secs(300), 3, 100.0);
        let now = 1_000 * 5 * MIN;
        t.record("u", "ancient", &[], 1.0, now - 60 * MIN, now);
        t.record("u", "disliked", &[], -1.0, now, now);
        t.record("u", "future", &[], 1.0, now + 60 * MIN, now);
        assert_eq!(ids(&t.top(10, now, false, |_| true)), vec!["future"]);
        // Three windows later the activity has left the retained windows.
        assert!(t.top(10, now + 15 * MIN, false, |_| true).is_empty());
    }
}
