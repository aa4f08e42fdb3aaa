//! Recommendation results, the body of `GET /v1/users/{id}/recommendations` and of every push.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recommendation {
    pub item_id: String,
    pub score: f32,
    /// Why the item was chosen: `similar_to:<item_id>`, `collaborative_filtering`, `popular`.
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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

impl RecQuery {
    /// A checked query: `k` from 1 to [`MAX_K`], `category` a valid id.
    pub fn new(k: usize, category: Option<String>) -> Result<Self, String> {
        if !(1..=MAX_K).contains(&k) {
            return Err(format!("`k` must be an integer from 1 to {MAX_K}"));
        }
        if let Some(c) = &category {
            crate::validate_id("category", c)?;
        }
        Ok(Self { k, category })
    }
}
