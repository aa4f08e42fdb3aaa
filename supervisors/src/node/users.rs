//! The user-scoped part of the facade: events in (and when they are applied), recommendations,
//! a user's session view, live subscriptions, erasure and export. Kept together because they all
//! act on one user, through the session manager, the push hub or the event log.

use std::sync::Arc;
use std::time::Duration;

use actors::push::{PushMsg, RecsWatch};
use actors::session::UserView;
use actors::session_manager::SessionManagerMsg;
use actors::{CALL_TIMEOUT, call, mailbox, slot_get};
use common::{ApiError, Event, RecQuery, Recommendations};
use storage::AppendOutcome;

use super::Node;

/// A live subscription to one user's recommendations (see [`Node::subscribe`]). Changes come on
/// `updates`; one may equal `current` (a recompute that changed nothing visible). Pass `id` to
/// [`Node::unsubscribe`] when done.
pub struct Subscription {
    pub id: u64,
    pub current: Arc<Recommendations>,
    pub updates: RecsWatch,
}

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
        actors::push::recommend(&self.services, user_id, query).await
    }

    pub async fn user(&self, user_id: &str) -> Result<Option<UserView>, ApiError> {
        let sessions = slot_get(&self.services.sessions, "session manager")?;
        let user_id = user_id.to_owned();
        call(
            &sessions,
            "session",
            |reply| SessionManagerMsg::Get { user_id, reply },
            CALL_TIMEOUT,
        )
        .await
    }

    pub async fn erase_user(&self, user_id: &str) -> Result<(), ApiError> {
        let sessions = slot_get(&self.services.sessions, "session manager")?;
        let user_id = user_id.to_owned();
        call(
            &sessions,
            "session",
            |reply| SessionManagerMsg::Erase { user_id, reply },
            CALL_TIMEOUT,
        )
        .await
    }

    /// Everything held about a user (GDPR access): the session, the summed interactions, the
    /// profile (decrypted), and the user's events still in the log. After an erasure, all of it
    /// is empty: erased events are behind the user's tombstone.
    pub async fn export_user(&self, user_id: &str) -> Result<serde_json::Value, ApiError> {
        let session = self.user(user_id).await?;
        let services = &self.services;
        let stored = services.store.load(user_id).map_err(ApiError::from)?;
        let interactions = match stored {
            Some(bytes) => actors::session::SessionData::decode(&bytes)?.items,
            None => Default::default(),
        };
        let profile = services
            .catalog
            .store()
            .get_profile(user_id)
            .await
            .map_err(ApiError::from)?;
        let log = &services.log;
        let partition = common::partition::partition_for(user_id, log.num_partitions());
        let tombstone = services.store.tombstone(user_id).map_err(ApiError::from)?;
        let mut events = Vec::new();
        let from = tombstone.map_or(0, |t| t.offset);
        storage::log::scan(log.as_ref(), partition, from, |r| {
            if r.event.user_id == user_id && !tombstone.is_some_and(|t| t.covers(&r)) {
                events.push(r.event);
            }
            Ok::<_, ApiError>(())
        })
        .await?;
        Ok(serde_json::json!({
            "user_id": user_id,
            "session": session,
            "interactions": interactions,
            "profile": profile,
            "events": events,
        }))
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

    /// Subscribes to a user's recommendations: the list now, then its changes. The subscription
    /// is registered before the current list is read, so no change in between is lost.
    pub async fn subscribe(
        &self,
        user_id: &str,
        query: RecQuery,
    ) -> Result<Subscription, ApiError> {
        let push = slot_get(&self.services.push, "push hub")?;
        let (id, updates) = match mailbox::ask(
            &push,
            |reply| PushMsg::Subscribe {
                user_id: user_id.to_owned(),
                query: query.clone(),
                reply,
            },
            Some(CALL_TIMEOUT),
        )
        .await
        {
            Ok(ractor::rpc::CallResult::Success(sub)) => sub,
            _ => return Err(ApiError::unavailable("push hub is not available")),
        };
        match self.recommend(user_id, &query).await {
            Ok(current) => Ok(Subscription {
                id,
                current,
                updates,
            }),
            Err(e) => {
                self.unsubscribe(id);
                Err(e)
            }
        }
    }

    pub fn unsubscribe(&self, id: u64) {
        if let Some(push) = self.services.push.load_full() {
            let _ = mailbox::tell(&push, PushMsg::Unsubscribe(id));
        }
    }
}
