//! The catalogue part of the facade: items, user profiles and what is trending. These read the
//! shared catalogue view and trending windows directly; writes go through `Services` so that
//! caches and subscribers hear of them, and with Kafka through `product-updates` first, so that
//! every node's catalogue does.

use std::sync::Arc;

use common::{ApiError, Item, RecQuery};
use serde::Serialize;

use super::Node;

/// `GET /v1/trending`: what is active now.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TrendingView {
    /// Length of the tumbling window.
    pub window_secs: u64,
    pub items: Vec<TrendingItem>,
    pub categories: Vec<TrendingCategory>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TrendingItem {
    pub item_id: String,
    /// Decayed activity over the retained windows.
    pub score: f64,
    /// Positive interaction weight in the current window.
    pub current_window: f64,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TrendingCategory {
    pub category: String,
    pub score: f64,
    pub current_window: f64,
}

impl Node {
    pub fn get_item(&self, item_id: &str) -> Option<Arc<Item>> {
        self.services.catalog.get(item_id)
    }

    /// Stores an item. With Kafka it goes to `product-updates` first, which every node's
    /// catalogue follows, then to this node's catalogue at once, so that the caller reads its
    /// own write here; the other nodes apply it as they read it.
    pub async fn upsert_item(&self, item: Item) -> Result<(), ApiError> {
        self.publish_item(&item.item_id, Some(&item)).await?;
        self.services.upsert_item(item).await
    }

    /// Deletes an item; it is never recommended again. Returns whether it existed (here).
    pub async fn delete_item(&self, item_id: &str) -> Result<bool, ApiError> {
        self.publish_item(item_id, None).await?;
        self.services.delete_item(item_id).await
    }

    async fn publish_item(&self, item_id: &str, item: Option<&Item>) -> Result<(), ApiError> {
        let Some(producer) = &self.items else {
            return Ok(());
        };
        producer.publish_item(item_id, item).await.map_err(|e| {
            tracing::warn!(error = %e, "publishing a catalogue change to Kafka failed");
            ApiError::unavailable("the event broker is unavailable")
        })
    }

    pub async fn put_profile(
        &self,
        user_id: &str,
        profile: &serde_json::Value,
    ) -> Result<(), ApiError> {
        self.services
            .catalog
            .store()
            .put_profile(user_id, profile)
            .await
            .map_err(ApiError::from)
    }

    /// The trending items (recommendable, in the query's category if any) and categories.
    pub fn trending(&self, query: &RecQuery) -> TrendingView {
        let categories = self
            .services
            .trending
            .top(query.k, common::now_millis(), true, |_| true);
        TrendingView {
            window_secs: self.services.trending.window().as_secs(),
            items: self
                .trending_items(query)
                .into_iter()
                .map(|e| TrendingItem {
                    item_id: e.id,
                    score: e.score,
                    current_window: e.current,
                })
                .collect(),
            categories: categories
                .into_iter()
                .map(|e| TrendingCategory {
                    category: e.id,
                    score: e.score,
                    current_window: e.current,
                })
                .collect(),
        }
    }

    /// The trending items that may be recommended (in the query's category if any), best first.
    pub fn trending_items(&self, query: &RecQuery) -> Vec<actors::trending::TrendingEntry> {
        let catalog = self.services.catalog.read();
        self.services
            .trending
            .top(query.k, common::now_millis(), false, |id| {
                actors::ranking::eligible(&catalog, id, query.category.as_deref())
            })
    }
}
