//! The user-scoped part of the facade: events in (and when they are applied), and, through
//! [`Users`](actors::Users), the one entry point for user-scoped work, recommendations, a user's
//! session view, live subscriptions, erasure and export.

use std::sync::Arc;
use std::time::Duration;

use actors::session::UserView;
use actors::users::Subscription;
use common::{ApiError, Event, RecQuery, Recommendations};
use storage::AppendOutcome;

use super::Node;

impl Node {
    pub async fn post_events(&self, events: Vec<Event>) -> Result<AppendOutcome, ApiError> {
        self.services.sink.publish(events).await.map_err(|e| {
            tracing::error!(error = %e, "event append failed");
            ApiError::unavailable(
                "the event log is not accepting writes; retrying the same events is safe",
            )
        })
    }

    pub async fn recommend(
        &self,
        user_id: &str,
        query: &RecQuery,
    ) -> Result<Arc<Recommendations>, ApiError> {
        self.users.recommend(user_id, query).await
    }

    pub async fn user(&self, user_id: &str) -> Result<Option<UserView>, ApiError> {
        self.users.get(user_id).await
    }

    pub async fn erase_user(&self, user_id: &str) -> Result<(), ApiError> {
        self.users.erase(user_id).await
    }

    /// Everything held about a user (see [`Users::export`](actors::Users::export)).
    pub async fn export_user(&self, user_id: &str) -> Result<serde_json::Value, ApiError> {
        self.users.export(user_id).await
    }

    /// Applies all events already in the log to sessions right now (for tests and tools):
    /// returns once every partition's committed offset reaches its end, or after `timeout`.
    pub async fn wait_caught_up(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.ingest_lag() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Records in the log not yet applied, over all partitions.
    pub fn ingest_lag(&self) -> u64 {
        let log = &self.services.log;
        (0..log.num_partitions())
            .map(|p| {
                (*log.high_watermark(p).borrow())
                    .saturating_sub(log.committed(storage::INGEST, p).unwrap_or(0))
            })
            .sum()
    }

    /// Subscribes to a user's recommendations (see [`Users::subscribe`](actors::Users::subscribe)).
    pub async fn subscribe(
        &self,
        user_id: &str,
        query: RecQuery,
    ) -> Result<Subscription, ApiError> {
        self.users.subscribe(user_id, query).await
    }

    pub fn unsubscribe(&self, id: u64) {
        self.users.unsubscribe(id);
    }
}
