//! The actors of a streamrec node. Each file holds one actor: its behaviour struct, `Args`,
//! `Msg`, private `State` and a serialisable `Obs` (observable state) kept in an
//! [`obs::Observed`], so that the console reads an actor without ever waiting on it.
//!
//! - [`session::SessionActor`]: one per active user; applies events, keeps the live profile.
//! - [`session_manager::SessionManager`]: spawns, routes to and passivates sessions.
//! - [`users::Users`]: the one way in for user-scoped work (recommend, read, erase, export,
//!   subscribe), and the only reader of the recommendation cache; no actor, a handle.
//! - [`changes::ChangeFeed`]: what changed (a user, the items, the model), for the cache and the
//!   push hub; no actor either.
//! - [`model::ModelActor`]: scores with ONNX Runtime on the blocking pool; a pool of them serves.
//!   What it runs is [`ranking::Ranker`], which is no actor: ranking steps, reasons, eligibility.
//! - [`ingest::IngestActor`]: one per log partition; routes events to sessions, commits offsets.
//! - [`push::PushHub`]: fans recommendation changes out to live subscribers.
//! - [`trainer::TrainerActor`]: retrains off the serving path and swaps the new version in.
//! - [`archiver::ArchiverActor`]: copies the event log to the object store, hourly.
//! - [`retention::RetentionActor`]: deletes log segments and tombstones nothing needs any more.
//! - [`snapshotter::SnapshotActor`]: snapshots the node's database to the object store, hourly.
//! - [`kafka_bridge::KafkaBridge`]: with Kafka configured, feeds the log from the consumer group.
//! - [`cluster_status::ClusterStatusActor`]: with Kafka configured, publishes this node's
//!   ownership on the status topic and reads the other members' into the shard map.

pub mod archiver;
pub mod changelog_tail;
pub mod changes;
pub mod cluster_status;
pub mod handoff;
pub mod ingest;
pub mod kafka_bridge;
pub mod mailbox;
pub mod model;
pub mod obs;
pub mod popularity;
pub mod push;
pub mod ranking;
pub mod registry;
pub mod retention;
pub mod session;
pub mod session_manager;
pub mod snapshotter;
#[cfg(test)]
mod testing;
pub mod trainer;
pub mod trending;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use common::Item;
use common::{ApiError, Config};
use ractor::{ActorRef, RpcReplyPort};
use storage::{CatalogView, EventLog, EventSink, RecCache, SessionStore};

pub use model::ModelPool;
pub use obs::ObsRegistry;
pub use popularity::Popularity;
pub use registry::ModelRegistry;
pub use users::Users;

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
    /// The node's log: the source of truth in embedded mode, the journal of what the node
    /// consumed in Kafka mode. Ingest actors apply it to sessions either way.
    pub log: Arc<dyn EventLog>,
    /// Where `POST /v1/events` writes: the log itself, or the Kafka producer.
    pub sink: Arc<dyn EventSink>,
    pub store: Arc<dyn SessionStore>,
    pub catalog: Arc<CatalogView>,
    pub cache: Arc<dyn RecCache>,
    pub popularity: Arc<Popularity>,
    pub trending: Arc<trending::Trending>,
    pub registry: Arc<ModelRegistry>,
    pub models: ModelPool,
    pub obs: Arc<ObsRegistry>,
    /// Sessions, catalogue writes and model swaps publish here; the cache and push hub listen.
    pub changes: changes::ChangeFeed,
    /// Which node owns which users (all of them, on a single node).
    pub cluster: Arc<cluster::Cluster>,
    /// With Kafka, where every session state and erasure is also recorded, so that the next
    /// owner of a partition can restore it (see [`handoff`]); none on the embedded log.
    pub changelog: Option<Arc<dyn storage::Changelog>>,
    /// With Kafka, every partition's events the broker still holds, for training (see
    /// [`trainer::collect`]); none on the embedded log, whose node has every event itself.
    pub history: Option<Arc<dyn storage::EventHistory>>,
    /// With Kafka, the trace contexts of journaled events on their way from the bridge to ingest
    /// (see [`ingest::JournalTraces`]).
    pub journal_traces: ingest::JournalTraces,
}

impl Services {
    /// Stores an item (from the items API or `product-updates`) and keeps served results
    /// eligible.
    pub async fn upsert_item(&self, item: Item) -> Result<(), ApiError> {
        let before = self.catalog.get(&item.item_id);
        let filters_changed = before
            .is_some_and(|b| b.available != item.available || b.categories != item.categories);
        self.catalog.upsert(item).await.map_err(ApiError::from)?;
        if filters_changed {
            self.changes.publish(changes::Changes::Items);
        }
        Ok(())
    }

    /// Deletes an item; it is never recommended again. Returns whether it existed.
    pub async fn delete_item(&self, item_id: &str) -> Result<bool, ApiError> {
        let existed = self.catalog.delete(item_id).await.map_err(ApiError::from)?;
        self.popularity.forget(item_id);
        self.changes.publish(changes::Changes::Items);
        Ok(existed)
    }

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
    match mailbox::ask(actor, build, Some(timeout)).await {
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
