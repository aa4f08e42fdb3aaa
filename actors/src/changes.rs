//! The change feed: what happened that may change someone's recommendations. Sessions publish
//! [`Changes::User`] when they apply events or erase, catalogue writes publish
//! [`Changes::Items`] when an item's eligibility changes, a model swap publishes
//! [`Changes::Model`]. The cache and the push hub subscribe; no producer knows who listens.
//!
//! The cache hears first, inside [`ChangeFeed::publish`], before any other subscriber is woken:
//! a subscriber that recomputes on a change (the push hub) must never read the entry that the
//! change made stale. Other subscribers read a broadcast channel; one that falls more than
//! [`CAPACITY`] changes behind gets `Lagged` and must treat it as "everything changed".
//!
//! A change made by traced work (a session applying events that came with a request's trace
//! context) is published with the context of that work ([`ChangeFeed::publish_traced`]), so
//! that what a subscriber does about it (a push) joins the same trace.

use std::sync::Arc;

use common::telemetry::TraceContext;
use storage::RecCache;
use tokio::sync::broadcast;

/// How many changes a subscriber may fall behind before it lags.
pub const CAPACITY: usize = 4096;

/// One change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changes {
    /// The user's session changed (events applied, or the user erased).
    User(String),
    /// An item became ineligible or changed its categories: any list may hold it.
    Items,
    /// The active model version changed: every list comes from the old one.
    Model,
}

/// A change as subscribers hear it: with the trace context of the work that made it, if traced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub change: Changes,
    pub trace: Option<TraceContext>,
}

pub struct ChangeFeed {
    cache: Arc<dyn RecCache>,
    tx: broadcast::Sender<Notice>,
}

impl ChangeFeed {
    pub fn new(cache: Arc<dyn RecCache>) -> Self {
        Self {
            cache,
            tx: broadcast::channel(CAPACITY).0,
        }
    }

    /// Drops what the change made stale from the cache, then tells every subscriber.
    pub fn publish(&self, change: Changes) {
        self.publish_traced(change, None);
    }

    /// [`ChangeFeed::publish`], with the trace context of the work that made the change.
    pub fn publish_traced(&self, change: Changes, trace: Option<TraceContext>) {
        match &change {
            Changes::User(user_id) => self.cache.invalidate(user_id),
            Changes::Items | Changes::Model => self.cache.clear(),
        }
        // No subscriber is not an error: nobody listens yet.
        let _ = self.tx.send(Notice { change, trace });
    }

    /// Changes published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::{RecQuery, Recommendations};
    use storage::cache::MemoryCache;

    fn recs(user: &str) -> Arc<Recommendations> {
        Arc::new(Recommendations {
            user_id: user.into(),
            model_version: "v1".into(),
            items: vec![],
        })
    }

    #[tokio::test]
    async fn the_cache_forgets_before_any_subscriber_hears() {
        let cache = Arc::new(MemoryCache::new(100, 4, std::time::Duration::from_secs(60)));
        let feed = ChangeFeed::new(cache.clone());
        let query = RecQuery::new(3, None).expect("valid");
        for user in ["a", "b"] {
            cache.put(user, "v1", &query, recs(user)).await;
        }
        let mut rx = feed.subscribe();

        feed.publish(Changes::User("a".into()));
        assert_eq!(
            rx.recv().await.expect("open").change,
            Changes::User("a".into())
        );
        assert!(cache.get("a", "v1", &query).await.is_none(), "a is stale");
        assert!(cache.get("b", "v1", &query).await.is_some(), "b is not");

        feed.publish(Changes::Model);
        assert_eq!(rx.recv().await.expect("open").change, Changes::Model);
        assert!(
            cache.get("b", "v1", &query).await.is_none(),
            "a new model clears all"
        );
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_it_lagged() {
        let cache = Arc::new(MemoryCache::new(100, 4, std::time::Duration::from_secs(60)));
        let feed = ChangeFeed::new(cache);
        let mut rx = feed.subscribe();
        for i in 0..=CAPACITY {
            feed.publish(Changes::User(i.to_string()));
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(1))
        ));
    }
}
