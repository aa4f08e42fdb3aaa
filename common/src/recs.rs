//! Recommendation results, the body of `GET /v1/users/{id}/recommendations` and of every push.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub item_id: String,
    pub score: f32,
    /// Why the item was chosen: `similar_to:<item_id>`, `collaborative_filtering`, `popular`.
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendations {
    pub user_id: String,
    pub model_version: String,
    pub items: Vec<Recommendation>,
}

/// What a recommendation request asks for; also the cache key within a user.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecQuery {
    pub k: usize,
    pub category: Option<String>,
}

/// Largest `k` a client may ask for.
pub const MAX_K: usize = 100;
