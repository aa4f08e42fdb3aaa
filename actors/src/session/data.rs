//! What a session holds and shows: the stored state (recent interactions, per-item weights,
//! counters), its encoding and eviction, and the view `GET /v1/users/{id}` returns.

use std::collections::{HashMap, VecDeque};

use common::{ApiError, EventKind};
use serde::{Deserialize, Serialize};
use storage::catalog::ItemStatus;

/// One interaction in the user's recent history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Interaction {
    pub item_id: String,
    pub kind: EventKind,
    pub ts: i64,
}

/// The durable part of a session.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SessionData {
    /// Distinct events applied.
    pub num_events: u64,
    /// Most recent first, at most `sessions.max_recent`.
    pub recent: VecDeque<Interaction>,
    /// Summed interaction weight per item ([`common::event::accumulate`]): the input of fold-in
    /// and the seen-items filter; <= 0 for a disliked item.
    pub items: HashMap<String, f32>,
}

impl SessionData {
    pub fn decode(bytes: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(bytes)
            .map_err(|e| ApiError::internal(format!("corrupt session state: {e}")))
    }

    /// Keeps the weights of at most `max_items` items (`sessions.max_items`): those of the most
    /// recent interactions first, then the disliked ones (an evicted item could be recommended
    /// again), then the heaviest; returns the evicted ones.
    pub fn evict_items(&mut self, max_items: usize) -> Vec<(String, f32)> {
        if self.items.len() <= max_items {
            return Vec::new();
        }
        let mut recency: HashMap<&str, usize> = HashMap::new();
        for (i, interaction) in self.recent.iter().enumerate() {
            recency.entry(interaction.item_id.as_str()).or_insert(i);
        }
        let mut order: Vec<(&String, f32)> = self.items.iter().map(|(id, w)| (id, *w)).collect();
        order.sort_by(|a, b| {
            let rank = |id: &String| recency.get(id.as_str()).copied().unwrap_or(usize::MAX);
            rank(a.0)
                .cmp(&rank(b.0))
                .then((a.1 > 0.0).cmp(&(b.1 > 0.0)))
                .then(b.1.abs().total_cmp(&a.1.abs()))
                .then(a.0.cmp(b.0))
        });
        let evicted: Vec<String> = order[max_items..]
            .iter()
            .map(|(id, _)| (*id).clone())
            .collect();
        evicted
            .into_iter()
            .filter_map(|id| self.items.remove_entry(&id))
            .collect()
    }
}

/// `GET /v1/users/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserView {
    pub user_id: String,
    pub num_events: u64,
    pub recent: Vec<Interaction>,
    /// The session's activity in the current trending window.
    pub current_window: WindowFeatures,
}

/// Session features over the current tumbling window (`trending.window`): how active the user is
/// now, and in which categories.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct WindowFeatures {
    pub window_secs: u64,
    pub events: u64,
    pub categories: std::collections::BTreeMap<String, u64>,
}

impl WindowFeatures {
    /// Features of `recent` (most recent first) in the window that holds `now`.
    pub fn of(
        recent: &VecDeque<Interaction>,
        window: std::time::Duration,
        now: i64,
        catalog: &storage::CatalogView,
    ) -> Self {
        let window_ms = (window.as_millis() as i64).max(1);
        let start = now.div_euclid(window_ms) * window_ms;
        let view = catalog.read();
        let mut features = Self {
            window_secs: window.as_secs(),
            ..Default::default()
        };
        // Event time, as the trending windows: a late event of this window still counts.
        for i in recent
            .iter()
            .filter(|i| i.ts >= start && i.ts < start + window_ms)
        {
            features.events += 1;
            if let ItemStatus::Catalogued(item) = view.status(&i.item_id) {
                for c in &item.categories {
                    *features.categories.entry(c.clone()).or_default() += 1;
                }
            }
        }
        features
    }
}
