//! A streamrec node: the handle the binary starts and the gateways (REST, GraphQL, gRPC,
//! WebSocket) and tests call.
//!
//! Split so that each part can be read alone:
//! - [`tree`](self::tree): the composition root, opening the stores and starting the
//!   supervision tree; the only place that knows which storage implementation backs which trait;
//! - the facade, one `impl Node` per concern: `users` (events, recommendations, a user's view,
//!   subscriptions, erasure, export), `catalog` (items, profiles, trending), `models` (training,
//!   versions, activation, rollback) and `admin` (actors, operator actions, readiness, the
//!   console's snapshot, archiving).
//!
//! This file holds the [`Node`] itself and its life cycle: start, stop, shutdown.

use std::sync::Arc;
use std::time::Duration;

use actors::archiver::ArchiverMsg;
use actors::snapshotter::SnapshotMsg;
use actors::trainer::TrainerMsg;
use actors::{Services, Slot, Users};
use common::Config;
use ractor::ActorRef;
use storage::Db;
use tokio::sync::Mutex;

use crate::supervisor::SupervisorMsg;

/// Longest a node starting in a cluster waits for the first model another node trains.
const FIRST_MODEL_TIMEOUT: Duration = Duration::from_secs(600);

mod admin;
mod catalog;
mod models;
mod popularity;
mod tree;
mod users;

pub use actors::users::Subscription;
pub use admin::Readiness;
pub use catalog::{TrendingCategory, TrendingItem, TrendingView};

pub struct Node {
    pub config: Arc<Config>,
    services: Arc<Services>,
    db: Arc<Db>,
    root: ActorRef<SupervisorMsg>,
    root_exit: Mutex<Option<tokio::task::JoinHandle<()>>>,
    trainer: Slot<TrainerMsg>,
    archiver: Slot<ArchiverMsg>,
    snapshotter: Slot<SnapshotMsg>,
    users: Arc<Users>,
    /// With Kafka: where catalogue writes go first, so that every node's catalogue sees them.
    items: Option<kafka::Producer>,
}

/// Registers, before anything can count them, the metrics of what a healthy node may do rarely
/// or never (a child failing, a session evicted, a partition restored, a request forwarded or
/// waiting for a handoff, a model activated), each label value at 0: a counter's first increment
/// is then an increase that `rate()` and `increase()` see, not a series that appears already at
/// 1 and that they miss. The sessions and model gauges are exported from here on too.
/// `streamrec_dependency_up` is left out on purpose: absent until the first probe, never a
/// guessed 0 or 1. Once per process is enough; calling it again changes nothing.
fn register_metrics() {
    crate::supervisor::register_metrics();
    actors::session_manager::register_metrics();
    actors::registry::register_metrics();
    actors::users::register_metrics();
    actors::handoff::register_metrics();
}

impl Node {
    /// Opens everything under `config.data_dir` and starts the actor tree. Trains a first model
    /// (on whatever data exists, possibly none) if there is no model yet.
    pub async fn start(config: Config) -> anyhow::Result<Arc<Node>> {
        register_metrics();
        ::models::runtime::environment(config.model.onnxruntime_path.as_deref())?;
        let config = Arc::new(config);
        let tree::Stores {
            services,
            db,
            kafka,
            snapshots,
        } = tree::open(&config).await?;
        let items = kafka.as_ref().map(|(_, producer)| producer.clone());
        let tree = tree::spawn(&services, kafka, snapshots).await?;
        let node = Arc::new(Node {
            config,
            services,
            db,
            root: tree.root,
            root_exit: Mutex::new(Some(tree.root_exit)),
            trainer: tree.trainer,
            archiver: tree.archiver,
            snapshotter: tree.snapshotter,
            users: tree.users,
            items,
        });
        if node.services.registry.active().is_none() {
            tracing::info!("no model yet: training a first one");
            match node.train(true).await {
                Ok(_) => {}
                // Another node of the cluster is training the first one: it will be shared.
                Err(e) if e.code == common::ErrorCode::Conflict => node.first_model().await?,
                Err(e) => anyhow::bail!("first training failed: {}", e.message),
            }
        }
        Ok(node)
    }

    /// Waits for the version another node is training to be published, then activates it.
    async fn first_model(&self) -> anyhow::Result<()> {
        let registry = &self.services.registry;
        let deadline = tokio::time::Instant::now() + FIRST_MODEL_TIMEOUT;
        while !registry
            .refresh()
            .await
            .map_err(|e| anyhow::anyhow!("reading the model manifest: {}", e.message))?
        {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("no first model from the node holding the training lease");
            }
            tokio::time::sleep(actors::trainer::FOLLOW_INTERVAL).await;
        }
        self.services
            .models
            .reload_all()
            .await
            .map_err(|e| anyhow::anyhow!(e.message))
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// The entry point for user-scoped work, which the `users` part of the facade calls.
    pub fn users(&self) -> &Arc<Users> {
        &self.users
    }

    /// Resolves when the actor tree has stopped (on shutdown, or after an escalation at the root).
    pub async fn stopped(&self) {
        if let Some(handle) = self.root_exit.lock().await.take() {
            let _ = handle.await;
        }
    }

    /// Stops the tree (sessions' state and ingest offsets are durable after every batch) and
    /// makes every write durable.
    pub async fn shutdown(&self) {
        // Stopping the root kills its children without their `post_stop`: stop the cluster
        // status actor first, so that it tells the others this node is leaving.
        for child in self.root.get_children() {
            if self.services.obs.kind(&child) == "cluster_status"
                && let Err(error) = child
                    .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
                    .await
            {
                tracing::warn!(%error, "cluster status actor did not stop in time");
            }
        }
        tracing::info!("stopping the actor tree");
        if let Err(error) = self
            .root
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(15)))
            .await
        {
            tracing::warn!(%error, "actor tree did not stop in time");
        }
        if let Err(error) = self.db.flush() {
            tracing::error!(%error, "failed to flush RocksDB on shutdown");
        }
    }
}
