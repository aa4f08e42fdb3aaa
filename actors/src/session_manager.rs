//! Owns the live sessions of this node: spawns a session on the first message for its user,
//! routes messages to it, passivates it when idle or when the live-session cap is reached
//! (least recently used first), and drops it from its map when it stops or fails. A failed
//! session is restarted lazily: the next message for the user spawns a fresh one from the store.
//!
//! Every message for a session passes through here, so the manager alone knows when a session
//! was last used: one periodic sweep passivates the idle ones, least recently used first, instead
//! of a timer per session. Whether a user exists is a key lookup in the store, not a load.
//!
//! Passivation is a message queued behind everything already routed to the session, and the
//! session leaves the map before it is sent, so no message is ever routed to a stopping session.
//!
//! Metrics: `streamrec_sessions_live` (the map's size) and `streamrec_sessions_stopped_total`
//! by `reason` (passivated, evicted, released, failed), the same counts the observable state
//! keeps.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use common::partition::partition_for;
use common::{ApiError, RecQuery, Recommendations};
use lru::LruCache;
use prometheus::{IntCounterVec, IntGauge, register_int_counter_vec, register_int_gauge};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;
use storage::Record;

use crate::mailbox;
use crate::obs::Observed;
use crate::session::{
    self, ApplyOutcome, SessionActor, SessionArgs, SessionData, SessionMsg, UserView,
};
use crate::{CALL_TIMEOUT, Services, call};

pub enum SessionManagerMsg {
    Apply {
        user_id: String,
        records: Vec<Record>,
        /// The trace contexts the records came with (see [`SessionMsg::Apply`]).
        traces: Vec<common::telemetry::TraceContext>,
        reply: RpcReplyPort<Result<ApplyOutcome, ApiError>>,
    },
    Recommend {
        user_id: String,
        query: RecQuery,
        reply: RpcReplyPort<Result<Arc<Recommendations>, ApiError>>,
    },
    Get {
        user_id: String,
        reply: RpcReplyPort<Result<Option<UserView>, ApiError>>,
    },
    Erase {
        user_id: String,
        reply: RpcReplyPort<Result<(), ApiError>>,
    },
    /// Passivates the sessions unused for `sessions.idle_timeout` (sent to itself).
    Sweep,
    /// Passivates `user_id`'s live session now (an operator's action): it leaves the map before
    /// it is told to stop, so the user's next message starts a new one instead of reaching the
    /// stopping one. Replies whether there was one.
    Passivate {
        user_id: String,
        reply: RpcReplyPort<bool>,
    },
    /// Stops the live sessions of users in `partitions`, which this node no longer owns: their
    /// next owner restores their state, and should this node get a partition back, its
    /// sessions start again from what it restored. Replies how many stopped.
    Release {
        partitions: Vec<u32>,
        reply: RpcReplyPort<usize>,
    },
}

static LIVE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "streamrec_sessions_live",
        "Live session actors on this node."
    )
    .expect("metric registers once")
});

static STOPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "streamrec_sessions_stopped_total",
        "Live sessions that ended, by reason: passivated (idle past sessions.idle_timeout), \
         evicted (least recently used, past sessions.max_live), released (their partition moved \
         to another node) or failed (the actor failed; it restarts on its user's next message).",
        &["reason"]
    )
    .expect("metric registers once")
});

/// Why a live session ended: the `reason` label of `streamrec_sessions_stopped_total`.
#[derive(Clone, Copy)]
enum Stop {
    Passivated,
    Evicted,
    Released,
    Failed,
}

impl Stop {
    const ALL: [Stop; 4] = [
        Stop::Passivated,
        Stop::Evicted,
        Stop::Released,
        Stop::Failed,
    ];

    fn name(self) -> &'static str {
        match self {
            Stop::Passivated => "passivated",
            Stop::Evicted => "evicted",
            Stop::Released => "released",
            Stop::Failed => "failed",
        }
    }

    fn count(self, n: usize) {
        STOPPED.with_label_values(&[self.name()]).inc_by(n as u64);
    }
}

/// Registers the sessions gauge, and the stopped counter with every `reason` at 0 so that the
/// first eviction or failure is an increase `rate()` sees. Called once at start
/// (`supervisors::Node::start`); calling it again changes nothing.
pub fn register_metrics() {
    LazyLock::force(&LIVE);
    for stop in Stop::ALL {
        STOPPED.with_label_values(&[stop.name()]);
    }
}

/// The shortest sweep period, whatever the idle timeout.
const MIN_SWEEP: Duration = Duration::from_millis(20);

struct Live {
    session: ActorRef<SessionMsg>,
    last_used: Instant,
}

pub struct SessionManager;

#[derive(Clone, Debug, Default, Serialize)]
pub struct SessionManagerObs {
    pub num_live: usize,
    pub max_live: usize,
    pub num_spawned: u64,
    pub num_passivated: u64,
    pub num_evicted: u64,
    pub num_failed: u64,
    pub last_failure: Option<String>,
}

pub struct SessionManagerState {
    services: Arc<Services>,
    /// Least recently used last.
    sessions: LruCache<String, Live>,
    users_by_actor: HashMap<ActorId, String>,
    obs: Observed<SessionManagerObs>,
}

impl Actor for SessionManager {
    type Msg = SessionManagerMsg;
    type State = SessionManagerState;
    type Arguments = Arc<Services>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        services: Arc<Services>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let initial = SessionManagerObs {
            max_live: services.config.sessions.max_live,
            ..Default::default()
        };
        let obs = Observed::register(
            &services.obs,
            &myself.get_cell(),
            "session_manager",
            initial,
        );
        let period = (services.config.sessions.idle_timeout / 2).max(MIN_SWEEP);
        mailbox::tell_every(myself.clone(), period, || SessionManagerMsg::Sweep);
        // A restarted manager starts with no live session.
        LIVE.set(0);
        Ok(SessionManagerState {
            services,
            sessions: LruCache::unbounded(),
            users_by_actor: HashMap::new(),
            obs,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        _: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        LIVE.set(0);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.obs.handled();
        match msg {
            SessionManagerMsg::Apply {
                user_id,
                records,
                traces,
                reply,
            } => match state.session(&myself, &user_id).await {
                Ok(session) => forward(&session, SessionMsg::Apply(records, traces, reply)),
                Err(e) => drop(reply.send(Err(e))),
            },
            SessionManagerMsg::Recommend {
                user_id,
                query,
                reply,
            } => {
                if !state.known(&user_id) {
                    // A user never seen: popularity, without spawning a session for nobody.
                    let services = state.services.clone();
                    tokio::spawn(async move {
                        let recs = session::recommend_for(
                            &services,
                            &user_id,
                            &SessionData::default(),
                            None,
                            &query,
                        )
                        .await;
                        let _ = reply.send(recs.map(|(recs, _)| recs));
                    });
                } else {
                    match state.session(&myself, &user_id).await {
                        Ok(session) => forward(&session, SessionMsg::Recommend(query, reply)),
                        Err(e) => drop(reply.send(Err(e))),
                    }
                }
            }
            SessionManagerMsg::Get { user_id, reply } => {
                if !state.known(&user_id) {
                    let _ = reply.send(Ok(None));
                } else {
                    match state.session(&myself, &user_id).await {
                        Ok(session) => forward(&session, SessionMsg::Get(reply)),
                        Err(e) => drop(reply.send(Err(e))),
                    }
                }
            }
            SessionManagerMsg::Erase { user_id, reply } => {
                let result = match state.remove(&user_id) {
                    Some(session) => {
                        call(&session, "session", SessionMsg::Erase, CALL_TIMEOUT).await
                    }
                    None => match state.stored(&user_id) {
                        Ok(data) => session::erase(&state.services, &user_id, &data).await,
                        Err(e) => Err(e),
                    },
                };
                let _ = reply.send(result);
            }
            SessionManagerMsg::Passivate { user_id, reply } => {
                let live = state.sessions.pop(&user_id);
                if let Some(live) = &live {
                    state.users_by_actor.remove(&live.session.get_id());
                    let _ = mailbox::tell(&live.session, SessionMsg::Passivate);
                    Stop::Passivated.count(1);
                    state.obs.update(|o| o.num_passivated += 1);
                }
                let _ = reply.send(live.is_some());
            }
            SessionManagerMsg::Release { partitions, reply } => {
                let released = state.release(&partitions);
                Stop::Released.count(released);
                let _ = reply.send(released);
            }
            SessionManagerMsg::Sweep => {
                let idle = state.services.config.sessions.idle_timeout;
                let passivated = state.sweep(Instant::now(), idle);
                state.obs.update(|o| o.num_passivated += passivated as u64);
                Stop::Passivated.count(passivated);
            }
        }
        state.publish();
        Ok(())
    }

    /// Sessions restart lazily, so a stopped or failed one only leaves the map; the manager
    /// itself never stops because a session did.
    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error.to_string())),
            _ => return Ok(()),
        };
        if let Some(user_id) = state.users_by_actor.remove(&cell.get_id())
            && state
                .sessions
                .peek(&user_id)
                .is_some_and(|live| live.session.get_id() == cell.get_id())
        {
            state.sessions.pop(&user_id);
        }
        if let Some(error) = failure {
            tracing::warn!(actor = %cell.get_id(), %error, "session failed; it restarts on its next message");
            Stop::Failed.count(1);
            state.obs.update(|o| {
                o.num_failed += 1;
                o.last_failure = Some(error);
            });
        }
        state.publish();
        Ok(())
    }
}

fn forward(session: &ActorRef<SessionMsg>, msg: SessionMsg) {
    // If the session died in between, the reply port inside `msg` is dropped with it and the
    // caller sees `unavailable`; it never waits forever.
    let _ = mailbox::tell(session, msg);
}

impl SessionManagerState {
    /// Whether the user has a live or stored session, without loading it. A store error counts
    /// as known, so the request goes through a session and reports the error there.
    fn known(&self, user_id: &str) -> bool {
        self.sessions.contains(user_id) || self.services.store.exists(user_id).unwrap_or(true)
    }

    /// Stops the sessions of users in `partitions`; returns how many.
    fn release(&mut self, partitions: &[u32]) -> usize {
        let n = self.services.log.num_partitions();
        let users: Vec<String> = self
            .sessions
            .iter()
            .map(|(user, _)| user)
            .filter(|user| partitions.contains(&partition_for(user, n)))
            .cloned()
            .collect();
        for user in &users {
            if let Some(session) = self.remove(user) {
                session.stop(Some("released".into()));
            }
        }
        users.len()
    }

    /// Passivates the sessions unused for `idle` by `now`, least recently used first; returns
    /// how many.
    fn sweep(&mut self, now: Instant, idle: Duration) -> usize {
        let mut passivated = 0;
        while let Some((_, live)) = self.sessions.peek_lru()
            && now.saturating_duration_since(live.last_used) >= idle
        {
            let Some((_, live)) = self.sessions.pop_lru() else {
                break;
            };
            self.users_by_actor.remove(&live.session.get_id());
            let _ = mailbox::tell(&live.session, SessionMsg::Passivate);
            passivated += 1;
        }
        passivated
    }

    fn stored(&self, user_id: &str) -> Result<SessionData, ApiError> {
        match self
            .services
            .store
            .load(user_id)
            .map_err(ApiError::internal)?
        {
            Some(bytes) => SessionData::decode(&bytes),
            None => Ok(SessionData::default()),
        }
    }

    fn remove(&mut self, user_id: &str) -> Option<ActorRef<SessionMsg>> {
        let live = self.sessions.pop(user_id)?;
        self.users_by_actor.remove(&live.session.get_id());
        Some(live.session)
    }

    async fn session(
        &mut self,
        myself: &ActorRef<SessionManagerMsg>,
        user_id: &str,
    ) -> Result<ActorRef<SessionMsg>, ApiError> {
        if let Some(live) = self.sessions.get_mut(user_id) {
            live.last_used = Instant::now();
            return Ok(live.session.clone());
        }
        while self.sessions.len() >= self.services.config.sessions.max_live {
            let Some((_, evicted)) = self.sessions.pop_lru() else {
                break;
            };
            self.users_by_actor.remove(&evicted.session.get_id());
            let _ = mailbox::tell(&evicted.session, SessionMsg::Passivate);
            self.obs.update(|o| o.num_evicted += 1);
            Stop::Evicted.count(1);
        }
        let args = SessionArgs {
            user_id: user_id.to_owned(),
            services: self.services.clone(),
        };
        let (session, _) = Actor::spawn_linked(None, SessionActor, args, myself.get_cell())
            .await
            .map_err(|e| ApiError::unavailable(format!("session failed to start: {e}")))?;
        self.services.obs.label(&session.get_cell(), user_id);
        self.sessions.put(
            user_id.to_owned(),
            Live {
                session: session.clone(),
                last_used: Instant::now(),
            },
        );
        self.users_by_actor
            .insert(session.get_id(), user_id.to_owned());
        self.obs.update(|o| o.num_spawned += 1);
        Ok(session)
    }

    fn publish(&mut self) {
        let live = self.sessions.len();
        LIVE.set(live as i64);
        self.obs.update(|o| o.num_live = live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, record};

    async fn manager(services: &Arc<Services>) -> ActorRef<SessionManagerMsg> {
        Actor::spawn(None, SessionManager, services.clone())
            .await
            .expect("spawn")
            .0
    }

    fn obs(services: &Services, manager: &ActorRef<SessionManagerMsg>) -> SessionManagerObs {
        services.obs.get(&manager.get_cell()).expect("registered")
    }

    async fn apply(manager: &ActorRef<SessionManagerMsg>, user: &str, id: &str) {
        let records = vec![record(0, user, id, "item")];
        let user_id = user.to_owned();
        call(
            manager,
            "manager",
            |reply| SessionManagerMsg::Apply {
                user_id,
                records,
                traces: Vec::new(),
                reply,
            },
            CALL_TIMEOUT,
        )
        .await
        .expect("apply");
    }

    async fn get(manager: &ActorRef<SessionManagerMsg>, user: &str) -> Option<UserView> {
        let user_id = user.to_owned();
        call(
            manager,
            "manager",
            |reply| SessionManagerMsg::Get { user_id, reply },
            CALL_TIMEOUT,
        )
        .await
        .expect("get")
    }

    #[tokio::test]
    async fn one_sweep_passivates_the_idle_sessions_and_keeps_the_busy_ones() {
        let mut config = common::Config::default();
        config.sessions.idle_timeout = Duration::from_millis(300);
        let t = testing::services(config).await;
        let manager = manager(&t.services).await;
        apply(&manager, "idle", "e1").await;
        apply(&manager, "busy", "e2").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Used more often than the idle timeout: never passivated.
            assert!(get(&manager, "busy").await.is_some());
            let state = obs(&t.services, &manager);
            if state.num_passivated == 1 {
                assert_eq!(state.num_live, 1, "only the idle session went");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the idle session was never passivated"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A message wakes a passivated user from the store.
        assert_eq!(get(&manager, "idle").await.expect("stored").num_events, 1);
    }

    #[tokio::test]
    async fn releasing_partitions_stops_only_their_sessions_and_their_state_stays_stored() {
        let t = testing::services(common::Config::default()).await;
        let manager = manager(&t.services).await;
        let n = t.services.log.num_partitions();
        let users: Vec<String> = (0..12).map(|u| format!("user{u}")).collect();
        for (i, user) in users.iter().enumerate() {
            apply(&manager, user, &format!("e{i}")).await;
        }
        let released = partition_for(&users[0], n);
        let in_released = users
            .iter()
            .filter(|u| partition_for(u, n) == released)
            .count();
        let stopped = manager
            .call(
                |reply| SessionManagerMsg::Release {
                    partitions: vec![released],
                    reply,
                },
                Some(CALL_TIMEOUT),
            )
            .await
            .expect("released");
        assert_eq!(stopped.expect("answered"), in_released);
        assert_eq!(
            obs(&t.services, &manager).num_live,
            users.len() - in_released
        );
        // The state stays in the store: a session started again reads it back.
        assert_eq!(
            get(&manager, &users[0]).await.expect("stored").num_events,
            1
        );
    }

    #[tokio::test]
    async fn a_user_never_seen_is_answered_without_a_session() {
        let t = testing::services(common::Config::default()).await;
        let manager = manager(&t.services).await;
        assert!(get(&manager, "nobody").await.is_none());
        assert_eq!(obs(&t.services, &manager).num_spawned, 0);
    }

    #[tokio::test]
    async fn erasing_a_passivated_user_erases_the_stored_session() {
        let mut config = common::Config::default();
        config.sessions.max_live = 1;
        let t = testing::services(config).await;
        let manager = manager(&t.services).await;
        apply(&manager, "gone", "e1").await;
        // The cap of one live session evicts `gone`.
        apply(&manager, "other", "e2").await;
        assert_eq!(obs(&t.services, &manager).num_evicted, 1);
        let user_id = "gone".to_owned();
        call(
            &manager,
            "manager",
            |reply| SessionManagerMsg::Erase { user_id, reply },
            CALL_TIMEOUT,
        )
        .await
        .expect("erase");
        assert!(!t.services.store.exists("gone").expect("store"));
        assert!(get(&manager, "gone").await.is_none());
    }
}
