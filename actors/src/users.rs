//! The one way in for user-scoped work: recommend, read, erase, export and subscribe. Every
//! gateway (REST, GraphQL, gRPC, WebSocket) reaches a user through here, and so does the push
//! hub when it recomputes a subscriber's list, so that a rule about users (the cache, and in a
//! cluster the user's owner) is written once.
//!
//! This is the only reader of the recommendation cache: a hit is answered here, a miss goes to
//! the user's session through the session manager (which answers a user it has never seen from
//! popularity, without spawning a session), and the session, which computes the list, stores it.
//! A miss therefore costs one cache lookup.
//!
//! In a cluster the user's owner serves: [`Cluster::route`] names it, and a user owned by
//! another node is asked there through [`Remote`] (the internal gRPC service). While the user's
//! partition moves, the request waits for the map to change and asks again, for at most
//! `cluster.handoff_timeout`; then it fails with `unavailable` (503 with `Retry-After`). The
//! node that answered is recorded in [`OWNER`] for the gateways' `x-streamrec-owner`.

use std::cell::RefCell;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use cluster::{Cluster, Route};
use common::{ApiError, ErrorCode, RecQuery, Recommendations};
use prometheus::{IntCounter, IntCounterVec, register_int_counter, register_int_counter_vec};

use crate::push::{PushMsg, Recommender, RecsWatch};
use crate::session::{SessionData, UserView};
use crate::session_manager::SessionManagerMsg;
use crate::{CALL_TIMEOUT, Services, Slot, call, mailbox, slot_get};

static FORWARDED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "streamrec_forwarded_requests_total",
        "User-scoped requests served by another node, by outcome (ok, error).",
        &["outcome"]
    )
    .expect("metric registers once")
});

static HANDOFF_WAITS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "streamrec_handoff_waits_total",
        "Times a request waited for a moving partition (or an owner that refused) and routed again."
    )
    .expect("metric registers once")
});

/// Registers the forwarding and hand-off counters at 0 (each `outcome` of the forwarded ones),
/// so that their first count is an increase `rate()` sees; a single node never counts them.
/// Called once at start (`supervisors::Node::start`); calling it again changes nothing.
pub fn register_metrics() {
    for outcome in ["ok", "error"] {
        FORWARDED.with_label_values(&[outcome]);
    }
    LazyLock::force(&HANDOFF_WAITS);
}

tokio::task_local! {
    /// The node that served the user-scoped call(s) of the current request, for the gateways
    /// to return as `x-streamrec-owner`. Set only where a gateway opened a scope.
    pub static OWNER: RefCell<Option<String>>;
}

/// The longest pause between two routing attempts while a partition moves.
const REROUTE_PAUSE: Duration = Duration::from_millis(100);

/// Another node, as the shard map names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node_id: String,
    pub address: String,
}

/// How a node asks another for a user it does not own (the internal gRPC service's client).
/// An `unavailable` answer (the peer is down, or no longer owns the user) is routed again.
#[async_trait]
pub trait Remote: Send + Sync + 'static {
    async fn recommend(
        &self,
        to: &Peer,
        user_id: &str,
        query: &RecQuery,
    ) -> Result<Arc<Recommendations>, ApiError>;
    async fn get(&self, to: &Peer, user_id: &str) -> Result<Option<UserView>, ApiError>;
    async fn erase(&self, to: &Peer, user_id: &str) -> Result<(), ApiError>;
    async fn export(&self, to: &Peer, user_id: &str) -> Result<serde_json::Value, ApiError>;
}

/// One user-scoped operation, so that routing is written once for all of them.
enum Op<'a> {
    Recommend(&'a RecQuery),
    Get,
    Erase,
    Export,
}

enum Answer {
    Recommend(Arc<Recommendations>),
    Get(Option<UserView>),
    Erase,
    Export(serde_json::Value),
}

/// A live subscription to one user's recommendations (see [`Users::subscribe`]). Changes come
/// on `updates`; one may equal `current` (a recompute that changed nothing visible). Pass `id`
/// to [`Users::unsubscribe`] when done.
pub struct Subscription {
    pub id: u64,
    pub current: Arc<Recommendations>,
    pub updates: RecsWatch,
}

pub struct Users {
    services: Arc<Services>,
    remote: OnceLock<Arc<dyn Remote>>,
    /// Filled by the supervisors on every (re)start of the session manager and the push hub.
    pub sessions: Slot<SessionManagerMsg>,
    pub push: Slot<PushMsg>,
}

impl Users {
    pub fn new(services: Arc<Services>) -> Self {
        Self {
            services,
            remote: OnceLock::new(),
            sessions: Arc::default(),
            push: Arc::default(),
        }
    }

    /// Installs how this node reaches the others (once; later calls change nothing).
    pub fn set_remote(&self, remote: Arc<dyn Remote>) {
        let _ = self.remote.set(remote);
    }

    fn cluster(&self) -> &Cluster {
        &self.services.cluster
    }

    /// The user's recommendations for `query`, from the user's owner.
    #[tracing::instrument(
        name = "users.recommend",
        skip_all,
        fields(user.id = %user_id, streamrec.served_by = tracing::field::Empty)
    )]
    pub async fn recommend(
        &self,
        user_id: &str,
        query: &RecQuery,
    ) -> Result<Arc<Recommendations>, ApiError> {
        match self.route(user_id, Op::Recommend(query)).await? {
            Answer::Recommend(recs) => Ok(recs),
            _ => unreachable!("answers match their operation"),
        }
    }

    /// The user's session (`None` for a user with no events), from the user's owner.
    pub async fn get(&self, user_id: &str) -> Result<Option<UserView>, ApiError> {
        match self.route(user_id, Op::Get).await? {
            Answer::Get(view) => Ok(view),
            _ => unreachable!("answers match their operation"),
        }
    }

    /// Erases the user everywhere (see [`session::erase`](crate::session::erase)), on the
    /// user's owner.
    pub async fn erase(&self, user_id: &str) -> Result<(), ApiError> {
        match self.route(user_id, Op::Erase).await? {
            Answer::Erase => Ok(()),
            _ => unreachable!("answers match their operation"),
        }
    }

    /// Everything held about a user (see [`Users::export_local`]), from the user's owner.
    pub async fn export(&self, user_id: &str) -> Result<serde_json::Value, ApiError> {
        match self.route(user_id, Op::Export).await? {
            Answer::Export(value) => Ok(value),
            _ => unreachable!("answers match their operation"),
        }
    }

    /// Serves `op` where the user's owner is, waiting out a hand-off.
    async fn route(&self, user_id: &str, op: Op<'_>) -> Result<Answer, ApiError> {
        let deadline = tokio::time::Instant::now() + self.services.config.cluster.handoff_timeout;
        let mut changes = self.cluster().changes();
        loop {
            let _ = changes.borrow_and_update();
            let (attempt, served_by) = match self.cluster().route(user_id) {
                Route::Local => (
                    self.serve_local(user_id, &op).await,
                    self.cluster().node_id().to_owned(),
                ),
                Route::Remote { node_id, address } => {
                    let peer = Peer { node_id, address };
                    let answer = self.forward(&peer, user_id, &op).await;
                    FORWARDED
                        .with_label_values(&[if answer.is_ok() { "ok" } else { "error" }])
                        .inc();
                    (answer, peer.node_id)
                }
                Route::Wait => (
                    Err(ApiError::unavailable(format!(
                        "user {user_id}'s partition is moving between nodes"
                    ))),
                    String::new(),
                ),
            };
            match attempt {
                Ok(answer) => {
                    tracing::Span::current().record("streamrec.served_by", served_by.as_str());
                    let _ = OWNER.try_with(|owner| *owner.borrow_mut() = Some(served_by));
                    return Ok(answer);
                }
                Err(e) if e.code == ErrorCode::Unavailable && self.is_moving(user_id) => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Err(ApiError::unavailable(format!(
                            "{}; no owner could serve it within cluster.handoff_timeout, retry later",
                            e.message
                        )));
                    }
                    HANDOFF_WAITS.inc();
                    let pause = REROUTE_PAUSE.min(deadline - now);
                    let _ = tokio::time::timeout(pause, changes.changed()).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether a failed attempt for `user_id` may succeed elsewhere or later: the user is not
    /// (or no longer) served here, so its owner is moving, restoring or unreachable.
    fn is_moving(&self, user_id: &str) -> bool {
        let cluster = self.cluster();
        !cluster.is_active(cluster::partition_of(user_id, cluster.num_partitions()))
    }

    #[tracing::instrument(name = "users.forward", skip_all, fields(peer.node_id = %peer.node_id))]
    async fn forward(&self, peer: &Peer, user_id: &str, op: &Op<'_>) -> Result<Answer, ApiError> {
        let Some(remote) = self.remote.get() else {
            return Err(ApiError::unavailable(format!(
                "user {user_id} is owned by node {} and this node cannot forward yet",
                peer.node_id
            )));
        };
        Ok(match op {
            Op::Recommend(query) => {
                Answer::Recommend(remote.recommend(peer, user_id, query).await?)
            }
            Op::Get => Answer::Get(remote.get(peer, user_id).await?),
            Op::Erase => {
                remote.erase(peer, user_id).await?;
                Answer::Erase
            }
            Op::Export => Answer::Export(remote.export(peer, user_id).await?),
        })
    }

    async fn serve_local(&self, user_id: &str, op: &Op<'_>) -> Result<Answer, ApiError> {
        Ok(match op {
            Op::Recommend(query) => Answer::Recommend(self.recommend_here(user_id, query).await?),
            Op::Get => Answer::Get(self.get_here(user_id).await?),
            Op::Erase => {
                self.erase_here(user_id).await?;
                Answer::Erase
            }
            Op::Export => Answer::Export(self.export_here(user_id).await?),
        })
    }

    /// Serves a user only if this node owns it now (what a forwarded request asks): a node that
    /// no longer owns the user answers `unavailable`, and the caller routes again.
    pub async fn recommend_local(
        &self,
        user_id: &str,
        query: &RecQuery,
    ) -> Result<Arc<Recommendations>, ApiError> {
        self.owned(user_id)?;
        self.recommend_here(user_id, query).await
    }

    pub async fn get_local(&self, user_id: &str) -> Result<Option<UserView>, ApiError> {
        self.owned(user_id)?;
        self.get_here(user_id).await
    }

    pub async fn erase_local(&self, user_id: &str) -> Result<(), ApiError> {
        self.owned(user_id)?;
        self.erase_here(user_id).await
    }

    pub async fn export_local(&self, user_id: &str) -> Result<serde_json::Value, ApiError> {
        self.owned(user_id)?;
        self.export_here(user_id).await
    }

    fn owned(&self, user_id: &str) -> Result<(), ApiError> {
        match self.cluster().route(user_id) {
            Route::Local => Ok(()),
            _ => Err(ApiError::unavailable(format!(
                "node {} does not serve user {user_id}'s partition now",
                self.cluster().node_id()
            ))),
        }
    }

    /// From the cache, else from the user's session.
    async fn recommend_here(
        &self,
        user_id: &str,
        query: &RecQuery,
    ) -> Result<Arc<Recommendations>, ApiError> {
        let services = &self.services;
        let lookup = tracing::info_span!("cache.get", cache.hit = tracing::field::Empty);
        let hit = tracing::Instrument::instrument(
            services
                .cache
                .get(user_id, &services.model_version(), query),
            lookup.clone(),
        )
        .await;
        lookup.record("cache.hit", hit.is_some());
        if let Some(hit) = hit {
            return Ok(hit);
        }
        let (user_id, query) = (user_id.to_owned(), query.clone());
        self.ask(|reply| SessionManagerMsg::Recommend {
            user_id,
            query,
            reply,
        })
        .await
    }

    async fn get_here(&self, user_id: &str) -> Result<Option<UserView>, ApiError> {
        let user_id = user_id.to_owned();
        self.ask(|reply| SessionManagerMsg::Get { user_id, reply })
            .await
    }

    async fn erase_here(&self, user_id: &str) -> Result<(), ApiError> {
        let user_id = user_id.to_owned();
        self.ask(|reply| SessionManagerMsg::Erase { user_id, reply })
            .await
    }

    /// Everything held about a user (GDPR access): the session, the summed interactions, the
    /// profile (decrypted), and the user's events still in the log. After an erasure, all of it
    /// is empty: erased events are behind the user's tombstone.
    async fn export_here(&self, user_id: &str) -> Result<serde_json::Value, ApiError> {
        let session = self.get_here(user_id).await?;
        let services = &self.services;
        let stored = services.store.load(user_id).map_err(ApiError::from)?;
        let interactions = match stored {
            Some(bytes) => SessionData::decode(&bytes)?.items,
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

    /// Subscribes to a user's recommendations: the list now, then its changes. The subscription
    /// is registered before the current list is read, so no change in between is lost.
    pub async fn subscribe(
        &self,
        user_id: &str,
        query: RecQuery,
    ) -> Result<Subscription, ApiError> {
        let push = slot_get(&self.push, "push hub")?;
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
        if let Some(push) = self.push.load_full() {
            let _ = mailbox::tell(&push, PushMsg::Unsubscribe(id));
        }
    }

    /// Whether the session manager is running (readiness).
    pub fn sessions_running(&self) -> bool {
        self.sessions.load().is_some()
    }

    async fn ask<T: Send + 'static>(
        &self,
        build: impl FnOnce(ractor::RpcReplyPort<Result<T, ApiError>>) -> SessionManagerMsg,
    ) -> Result<T, ApiError> {
        let sessions = slot_get(&self.sessions, "session manager")?;
        call(&sessions, "session", build, CALL_TIMEOUT).await
    }
}

#[async_trait]
impl Recommender for Users {
    async fn recommend(
        &self,
        user_id: &str,
        query: &RecQuery,
    ) -> Result<Arc<Recommendations>, ApiError> {
        Users::recommend(self, user_id, query).await
    }
}
