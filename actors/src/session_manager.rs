//! Owns the live sessions of this node: spawns a session on the first message for its user,
//! routes messages to it, passivates it when idle or when the live-session cap is reached
//! (least recently used first), and drops it from its map when it stops or fails. A failed
//! session is restarted lazily: the next message for the user spawns a fresh one from the store.
//!
//! Passivation is a message queued behind everything already routed to the session, and the
//! session leaves the map before it is sent, so no message is ever routed to a stopping session.

use std::collections::HashMap;
use std::sync::Arc;

use common::{ApiError, RecQuery, Recommendations};
use lru::LruCache;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;
use storage::Record;

use crate::mailbox;
use crate::obs::Obs;
use crate::session::{
    self, ApplyOutcome, SessionActor, SessionArgs, SessionData, SessionMsg, UserView,
};
use crate::{CALL_TIMEOUT, Services, call};

pub enum SessionManagerMsg {
    Apply {
        user_id: String,
        records: Vec<Record>,
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
    /// A session reports it has been idle for `sessions.idle_timeout`.
    Idle { user_id: String, actor: ActorId },
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
    sessions: LruCache<String, ActorRef<SessionMsg>>,
    users_by_actor: HashMap<ActorId, String>,
    obs_state: SessionManagerObs,
    obs: Arc<Obs<SessionManagerObs>>,
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
        let obs_state = SessionManagerObs {
            max_live: services.config.sessions.max_live,
            ..Default::default()
        };
        let obs = services
            .obs
            .register(&myself.get_cell(), "session_manager", &obs_state);
        Ok(SessionManagerState {
            services,
            sessions: LruCache::unbounded(),
            users_by_actor: HashMap::new(),
            obs_state,
            obs,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.services.obs.deregister(&myself.get_cell());
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
                reply,
            } => match state.session(&myself, &user_id).await {
                Ok(session) => forward(&session, SessionMsg::Apply(records, reply)),
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
            SessionManagerMsg::Idle { user_id, actor } => {
                if state
                    .sessions
                    .peek(&user_id)
                    .is_some_and(|s| s.get_id() == actor)
                    && let Some(session) = state.remove(&user_id)
                {
                    let _ = mailbox::tell(&session, SessionMsg::Passivate);
                    state.obs_state.num_passivated += 1;
                }
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
                .is_some_and(|s| s.get_id() == cell.get_id())
        {
            state.sessions.pop(&user_id);
        }
        if let Some(error) = failure {
            tracing::warn!(actor = %cell.get_id(), %error, "session failed; it restarts on its next message");
            state.obs_state.num_failed += 1;
            state.obs_state.last_failure = Some(error);
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
    /// Whether the user has a live or stored session. A store error counts as known, so the
    /// request goes through a session and reports the error there.
    fn known(&self, user_id: &str) -> bool {
        self.sessions.contains(user_id)
            || self
                .services
                .store
                .load(user_id)
                .map_or(true, |s| s.is_some())
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
        let session = self.sessions.pop(user_id)?;
        self.users_by_actor.remove(&session.get_id());
        Some(session)
    }

    async fn session(
        &mut self,
        myself: &ActorRef<SessionManagerMsg>,
        user_id: &str,
    ) -> Result<ActorRef<SessionMsg>, ApiError> {
        if let Some(session) = self.sessions.get(user_id) {
            return Ok(session.clone());
        }
        while self.sessions.len() >= self.services.config.sessions.max_live {
            let Some((_, evicted)) = self.sessions.pop_lru() else {
                break;
            };
            self.users_by_actor.remove(&evicted.get_id());
            let _ = mailbox::tell(&evicted, SessionMsg::Passivate);
            self.obs_state.num_evicted += 1;
        }
        let args = SessionArgs {
            user_id: user_id.to_owned(),
            services: self.services.clone(),
            manager: myself.clone(),
        };
        let (session, _) = Actor::spawn_linked(None, SessionActor, args, myself.get_cell())
            .await
            .map_err(|e| ApiError::unavailable(format!("session failed to start: {e}")))?;
        self.services.obs.label(&session.get_cell(), user_id);
        self.sessions.put(user_id.to_owned(), session.clone());
        self.users_by_actor
            .insert(session.get_id(), user_id.to_owned());
        self.obs_state.num_spawned += 1;
        Ok(session)
    }

    fn publish(&mut self) {
        self.obs_state.num_live = self.sessions.len();
        self.obs.publish(&self.obs_state);
    }
}
