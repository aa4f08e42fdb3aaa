//! The actors of a streamrec node. Each file holds one actor: its behaviour struct, `Args`,
//! `Msg`, private `State` and a serialisable `Obs` (observable state) published on a watch
//! channel, so that the console reads an actor without ever waiting on it.
//!
//! - [`session::SessionActor`]: one per active user; applies events, keeps the live profile.
//! - [`session_manager::SessionManager`]: spawns, routes to and passivates sessions.
//! - [`model::ModelActor`]: scores with ONNX Runtime on the blocking pool; a pool of them serves.
//! - [`ingest::IngestActor`]: one per log partition; routes events to sessions, commits offsets.
//! - [`push::PushHub`]: fans recommendation changes out to live subscribers.
//! - [`trainer::TrainerActor`]: retrains off the serving path and swaps the new version in.
//! - [`archiver::ArchiverActor`]: copies the event log to the object store, hourly.

pub mod archiver;
pub mod ingest;
pub mod model;
pub mod obs;
pub mod popularity;
pub mod push;
pub mod registry;
pub mod session;
pub mod session_manager;
pub mod trainer;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use common::{ApiError, Config};
use ractor::{ActorRef, RpcReplyPort};
use storage::{CatalogView, EventLog, RecCache, SessionStore};

pub use model::ModelPool;
pub use obs::ObsRegistry;
pub use popularity::Popularity;
pub use registry::ModelRegistry;

/// A replaceable reference to an actor that may restart: supervisors fill it on every spawn.
pub type Slot<M> = Arc<ArcSwapOption<ActorRef<M>>>;

/// Reads a slot, failing with `unavailable` while the actor is (re)starting.
pub fn slot_get<M: ractor::Message>(slot: &Slot<M>, what: &str) -> Result<ActorRef<M>, ApiError> {
    slot.load_full()
        .map(|r| (*r).clone())
        .ok_or_else(|| ApiError::unavailable(format!("{what} is restarting")))
}

/// Everything actors share: configuration, stores and the handles between actors.
pub struct Services {
    pub config: Arc<Config>,
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn SessionStore>,
    pub catalog: Arc<CatalogView>,
    pub cache: Arc<dyn RecCache>,
    pub popularity: Arc<Popularity>,
    pub registry: Arc<ModelRegistry>,
    pub models: ModelPool,
    pub obs: Arc<ObsRegistry>,
    pub sessions: Slot<session_manager::SessionManagerMsg>,
    pub push: Slot<push::PushMsg>,
}

impl Services {
    /// The active model version, the first part of every cache key (`none` before any model).
    pub fn model_version(&self) -> String {
        self.registry
            .active()
            .map_or_else(|| "none".to_owned(), |a| a.meta.version.clone())
    }
}

/// How long a caller waits on an actor before giving up with `unavailable`.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls an actor and maps every failure (dead actor, timeout, dropped reply) to `unavailable`.
pub async fn call<M, T>(
    actor: &ActorRef<M>,
    what: &str,
    build: impl FnOnce(RpcReplyPort<Result<T, ApiError>>) -> M,
    timeout: Duration,
) -> Result<T, ApiError>
where
    M: ractor::Message,
    T: Send + 'static,
{
    match actor.call(build, Some(timeout)).await {
        Ok(ractor::rpc::CallResult::Success(result)) => result,
        Ok(ractor::rpc::CallResult::Timeout) => {
            Err(ApiError::unavailable(format!("{what} timed out")))
        }
        Ok(ractor::rpc::CallResult::SenderError) => Err(ApiError::unavailable(format!(
            "{what} failed while handling the request"
        ))),
        Err(_) => Err(ApiError::unavailable(format!("{what} is not running"))),
    }
}
