//! A streamrec node: opens the stores, builds the supervision tree and offers the operations
//! the gateways serve. It is the composition root: the only place that knows which storage
//! implementation backs which trait.

use std::sync::Arc;
use std::time::Duration;

use actors::archiver::{ArchiveRun, ArchiverActor, ArchiverMsg};
use actors::model::{ModelActor, ModelArgs};
use actors::push::{PushHub, PushMsg, RecsWatch};
use actors::retention::RetentionActor;
use actors::session::UserView;
use actors::session_manager::{SessionManager, SessionManagerMsg};
use actors::trainer::{TrainerActor, TrainerMsg, TrainerObs};
use actors::{
    CALL_TIMEOUT, ModelPool, ModelRegistry, ObsRegistry, Popularity, Services, Slot, call, mailbox,
    slot_get,
};
use anyhow::Context;
use common::{ApiError, Config, Event, Item, RecQuery, Recommendations};
use ractor::{Actor, ActorRef};
use serde::Serialize;
use storage::{
    AppendOutcome, CatalogView, Db, EventSink, FileEventLog, RocksSessionStore, backends,
};
use tokio::sync::Mutex;

use crate::RestartPolicy;
use crate::supervisor::{ChildSpec, Supervisor, SupervisorArgs, SupervisorMsg};

pub struct Node {
    pub config: Arc<Config>,
    services: Arc<Services>,
    db: Arc<Db>,
    root: ActorRef<SupervisorMsg>,
    root_exit: Mutex<Option<tokio::task::JoinHandle<()>>>,
    trainer: Slot<TrainerMsg>,
    archiver: Slot<ArchiverMsg>,
}

/// `GET /readyz`: what is up and what is not.
/// A live subscription to one user's recommendations (see [`Node::subscribe`]). Changes come on
/// `updates`; one may equal `current` (a recompute that changed nothing visible). Pass `id` to
/// [`Node::unsubscribe`] when done.
pub struct Subscription {
    pub id: u64,
    pub current: Arc<Recommendations>,
    pub updates: RecsWatch,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// The node can serve: a model is loaded and sessions run. A dependency being down makes
    /// the node degraded (see `dependencies`), not unready: it keeps serving around it.
    pub ready: bool,
    pub model_loaded: bool,
    pub model_workers: usize,
    pub sessions: bool,
    /// `up`, or `down: <why>`, for `events`, `catalog`, `cache` and `objects`.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub dependencies: std::collections::BTreeMap<&'static str, String>,
}

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

fn slot<M>() -> Slot<M> {
    Arc::default()
}

/// A child spec that spawns `actor` with `args()` and keeps `slot` pointing at it.
fn slotted<A>(
    name: &str,
    actor: fn() -> A,
    args: impl Fn() -> A::Arguments + Send + Sync + 'static,
    slot: Slot<A::Msg>,
) -> ChildSpec
where
    A: Actor,
{
    let exit_slot = slot.clone();
    ChildSpec::new(name, move |sup| {
        let (args, slot) = (args(), slot.clone());
        async move {
            let (actor, _) = Actor::spawn_linked(None, actor(), args, sup).await?;
            slot.store(Some(Arc::new(actor.clone())));
            Ok(actor.get_cell())
        }
    })
    .on_exit(move || exit_slot.store(None))
}

impl Node {
    /// Opens everything under `config.data_dir` and starts the actor tree. Trains a first model
    /// (on whatever data exists, possibly none) if there is no model yet.
    pub async fn start(config: Config) -> anyhow::Result<Arc<Node>> {
        models::runtime::environment(config.model.onnxruntime_path.as_deref())?;
        let config = Arc::new(config);
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
        let db = Arc::new(
            Db::open_with(&dir.join("db"), config.events.dedupe_window)
                .context("opening RocksDB")?,
        );
        let log = Arc::new(
            FileEventLog::open_with(&dir.join("events"), log_options(&config), db.clone())
                .context("opening the event log")?,
        );
        // Kafka, when configured, takes the writes; the log then journals what the node consumed.
        let kafka = match kafka::Settings::from_config(&config.events) {
            Some(settings) => {
                let settings = Arc::new(settings);
                let producer = kafka::Producer::new(settings.clone())
                    .context("creating the Kafka producer")?;
                Some((settings, producer))
            }
            None => None,
        };
        let sink: Arc<dyn EventSink> = match &kafka {
            Some((_, producer)) => Arc::new(producer.clone()),
            None => log.clone(),
        };
        let store = Arc::new(RocksSessionStore::new(db.clone()));
        let pii = Arc::new(
            storage::pii::PiiCipher::from_config(&config.pii, &config.data_dir)
                .context("loading the PII keys")?,
        );
        let catalog_store: Arc<dyn storage::Catalog> = Arc::new(storage::pii::SealedCatalog::new(
            backends::catalog(&config.catalog, &db)
                .await
                .context("connecting to the catalog store")?,
            pii,
        ));
        let catalog = Arc::new(
            CatalogView::open(catalog_store)
                .await
                .context("loading the catalog")?,
        );
        // Only catalogued items have a popularity: stats of ids nobody catalogued (or since
        // deleted) stay out of the map.
        let popularity = Arc::new(Popularity::new(
            storage::SessionStore::item_stats(store.as_ref())?
                .into_iter()
                .filter(|(id, count)| *count > 0.0 && catalog.get(id).is_some())
                .collect(),
        ));
        let objects = backends::objects(&config.objects, dir)
            .await
            .context("opening the object store")?;
        let registry = Arc::new(
            ModelRegistry::open(objects)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?,
        );
        let services = Arc::new(Services {
            config: config.clone(),
            log,
            sink,
            store,
            catalog,
            cache: backends::cache(&config.cache).context("opening the cache")?,
            popularity,
            trending: Arc::new(actors::trending::Trending::new(
                config.trending.window,
                config.trending.windows,
                config.trending.max_user_weight,
            )),
            registry,
            models: ModelPool::default(),
            obs: Arc::new(ObsRegistry::default()),
            sessions: slot(),
            push: slot(),
        });
        let (trainer, archiver) = (slot(), slot());
        let mut children = root_children(&services, &trainer, &archiver);
        let s = services.clone();
        children.push(slotted(
            "retention",
            || RetentionActor,
            move || s.clone(),
            slot(),
        ));
        if let Some((settings, producer)) = kafka {
            children.push(kafka_bridge(&services, settings, producer));
        }
        let args = SupervisorArgs {
            kind: "root_supervisor",
            children,
            policy: RestartPolicy::default(),
            obs: services.obs.clone(),
        };
        let (root, handle) = Actor::spawn(None, Supervisor, args)
            .await
            .context("starting the actor tree")?;
        let node = Arc::new(Node {
            config,
            services,
            db,
            root,
            root_exit: Mutex::new(Some(handle)),
            trainer,
            archiver,
        });
        if node.services.registry.active().is_none() {
            tracing::info!("no model yet: training a first one");
            node.train(true)
                .await
                .map_err(|e| anyhow::anyhow!("first training failed: {}", e.message))?;
        }
        Ok(node)
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

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

    pub fn get_item(&self, item_id: &str) -> Option<Arc<Item>> {
        self.services.catalog.get(item_id)
    }

    pub async fn upsert_item(&self, item: Item) -> Result<(), ApiError> {
        self.services.upsert_item(item).await
    }

    /// Deletes an item; it is never recommended again. Returns whether it existed.
    pub async fn delete_item(&self, item_id: &str) -> Result<bool, ApiError> {
        self.services.delete_item(item_id).await
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

    /// Starts a training run; with `wait`, returns the new version once it is active.
    pub async fn train(&self, wait: bool) -> Result<String, ApiError> {
        let trainer = slot_get(&self.trainer, "trainer")?;
        let timeout = if wait {
            Duration::from_secs(3600)
        } else {
            CALL_TIMEOUT
        };
        call(
            &trainer,
            "trainer",
            |reply| TrainerMsg::Train {
                wait,
                reply: Some(reply),
            },
            timeout,
        )
        .await
    }

    /// Whether a training run is going, and how the last one ended: the trainer's observable
    /// state, read without sending it a message.
    pub fn training(&self) -> Result<TrainerObs, ApiError> {
        let trainer = slot_get(&self.trainer, "trainer")?;
        self.services
            .obs
            .state(&trainer.get_cell())
            .and_then(|state| serde_json::from_value(state).ok())
            .ok_or_else(|| ApiError::unavailable("the trainer is not available"))
    }

    /// Archives the event log to the object store now (it also runs every
    /// `objects.archive_interval`).
    pub async fn archive_now(&self) -> Result<ArchiveRun, ApiError> {
        let archiver = slot_get(&self.archiver, "archiver")?;
        call(
            &archiver,
            "archiver",
            |reply| ArchiverMsg::Run(Some(reply)),
            Duration::from_secs(600),
        )
        .await
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

    /// Makes a stored model version the active one on every model actor.
    pub async fn activate(&self, version: &str) -> Result<(), ApiError> {
        actors::trainer::activate(&self.services, version).await
    }

    /// Returns to the version that was active before the current one; returns it.
    pub async fn rollback(&self) -> Result<String, ApiError> {
        let previous = self.services.registry.previous().await.ok_or_else(|| {
            ApiError::new(
                common::ErrorCode::Conflict,
                "no earlier active version to roll back to",
            )
        })?;
        self.activate(&previous).await?;
        Ok(previous)
    }

    pub async fn models(&self) -> actors::registry::Manifest {
        self.services.registry.manifest().await
    }

    /// What the console shows, in one JSON value: the tree, the models, ingestion per partition
    /// and the cache.
    pub async fn snapshot(&self) -> serde_json::Value {
        let log = &self.services.log;
        let partitions: Vec<serde_json::Value> = (0..log.num_partitions())
            .map(|p| {
                let end = *log.high_watermark(p).borrow();
                let committed = log.committed(storage::INGEST, p).unwrap_or(0);
                serde_json::json!({"partition": p, "committed": committed, "lag": end.saturating_sub(committed)})
            })
            .collect();
        let events: u64 = partitions
            .iter()
            .filter_map(|p| p["committed"].as_u64())
            .sum();
        let lag: u64 = partitions.iter().filter_map(|p| p["lag"].as_u64()).sum();
        let tree = self.actors(200);
        fn dead_letters(node: &serde_json::Value) -> u64 {
            if node["kind"] == "kafka_bridge" {
                return node["state"]["num_dead_letters"].as_u64().unwrap_or(0);
            }
            node["children"]
                .as_array()
                .map_or(0, |c| c.iter().map(dead_letters).sum())
        }
        let (hits, misses) = storage::cache::lookup_totals();
        serde_json::json!({
            "tree": tree,
            "models": self.models().await,
            "ingest": {
                "events": events,
                "lag": lag,
                "dead_letters": dead_letters(&tree),
                "partitions": partitions,
            },
            "cache": {"hits": hits, "misses": misses},
        })
    }

    /// One actor's snapshot by id.
    pub fn actor(&self, id: &str) -> Result<serde_json::Value, ApiError> {
        let obs = &self.services.obs;
        let (cell, _) = obs
            .find(&self.root.get_cell(), id)
            .ok_or_else(|| ApiError::not_found(format!("no actor {id}")))?;
        Ok(obs.describe(&cell))
    }

    /// An operator action on a live actor:
    /// - `restart`: its supervisor stops it and starts it again from its spec (children of a
    ///   supervisor only);
    /// - `stop`: it stops and stays stopped (its supervisor records the exit; the root cannot be
    ///   stopped this way);
    /// - `passivate`: a session writes its state out and stops; the next message wakes it.
    pub async fn act_on_actor(&self, id: &str, action: &str) -> Result<(), ApiError> {
        let action = match action {
            "restart" => ActorAction::Restart,
            "stop" => ActorAction::Stop,
            "passivate" => ActorAction::Passivate,
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown action {other:?}; use restart, stop or passivate"
                )));
            }
        };
        let obs = &self.services.obs;
        let root = self.root.get_cell();
        let (cell, parent) = obs
            .find(&root, id)
            .ok_or_else(|| ApiError::not_found(format!("no actor {id}")))?;
        let conflict = |m: String| ApiError::new(common::ErrorCode::Conflict, m);
        tracing::info!(
            actor = id,
            action = ?action,
            kind = obs.kind(&cell),
            "operator action"
        );
        match action {
            ActorAction::Restart => {
                let parent = parent
                    .filter(|p| obs.kind(p).ends_with("supervisor"))
                    .ok_or_else(|| conflict(format!("{id} has no supervisor to restart it")))?;
                let name = obs
                    .label_of(&cell)
                    .ok_or_else(|| conflict(format!("{id} has no name in its supervisor")))?;
                let supervisor: ActorRef<SupervisorMsg> = parent.into();
                match mailbox::ask(
                    &supervisor,
                    |reply| SupervisorMsg::Restart(name, reply),
                    Some(CALL_TIMEOUT),
                )
                .await
                {
                    Ok(ractor::rpc::CallResult::Success(Ok(()))) => Ok(()),
                    Ok(ractor::rpc::CallResult::Success(Err(e))) => Err(conflict(e)),
                    _ => Err(ApiError::unavailable("the supervisor did not answer")),
                }
            }
            ActorAction::Stop => {
                if parent.is_none() {
                    return Err(conflict(
                        "the root supervisor stops only with the node".into(),
                    ));
                }
                cell.stop(Some("stopped by operator".into()));
                Ok(())
            }
            ActorAction::Passivate => {
                if obs.kind(&cell) != "session" {
                    return Err(conflict(format!("{id} is not a session")));
                }
                let session: ActorRef<actors::session::SessionMsg> = cell.into();
                mailbox::tell(&session, actors::session::SessionMsg::Passivate)
                    .map_err(|_| ApiError::unavailable("the session is stopping"))
            }
        }
    }

    /// The live supervision tree as JSON.
    pub fn actors(&self, max_children: usize) -> serde_json::Value {
        self.services.obs.tree(&self.root.get_cell(), max_children)
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

    pub async fn readiness(&self) -> Readiness {
        let dependencies = self.probe_dependencies().await;
        self.readiness_with(dependencies)
    }

    /// Each dependency's health, probed now (at most a second each, all at once): `up`, or
    /// `down: <why>`, for `events`, `catalog`, `cache` and `objects`.
    pub async fn probe_dependencies(&self) -> std::collections::BTreeMap<&'static str, String> {
        let s = &self.services;
        let (events, catalog, cache, objects) = tokio::join!(
            probe(s.sink.health()),
            probe(s.catalog.store().health()),
            probe(s.cache.health()),
            probe(s.registry.health()),
        );
        [
            ("events", events),
            ("catalog", catalog),
            ("cache", cache),
            ("objects", objects),
        ]
        .into()
    }

    /// Readiness now, with dependencies probed by the caller (`/readyz` reuses recent probes).
    pub fn readiness_with(
        &self,
        dependencies: std::collections::BTreeMap<&'static str, String>,
    ) -> Readiness {
        let model_loaded = self.services.registry.active().is_some();
        let model_workers = self.services.models.workers().len();
        let sessions = self.services.sessions.load().is_some();
        let ready = model_loaded && model_workers > 0 && sessions;
        Readiness {
            ready,
            model_loaded,
            model_workers,
            sessions,
            dependencies,
        }
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

/// What an operator can do to a live actor.
#[derive(Clone, Copy, Debug)]
enum ActorAction {
    Restart,
    Stop,
    Passivate,
}

/// The log's layout and retention: segments go once ingest, and the archive when archiving is
/// on, have committed them. With archiving off nothing else keeps history, and
/// `events.retention` alone bounds what the log holds.
fn log_options(config: &Config) -> storage::log::LogOptions {
    let mut groups = vec![storage::INGEST.to_owned()];
    if !config.objects.archive_interval.is_zero() {
        groups.push(storage::ARCHIVE.to_owned());
    }
    storage::log::LogOptions {
        retention: config.events.retention,
        retention_groups: groups,
        ..storage::log::LogOptions::new(config.events.num_partitions, config.events.fsync)
    }
}

/// `up`, or `down: <why>`, within a second.
async fn probe(check: impl std::future::Future<Output = Result<(), String>>) -> String {
    match tokio::time::timeout(Duration::from_secs(1), check).await {
        Ok(Ok(())) => "up".to_owned(),
        Ok(Err(why)) => format!("down: {why}"),
        Err(_) => "down: no answer within 1s".to_owned(),
    }
}

fn root_children(
    services: &Arc<Services>,
    trainer: &Slot<TrainerMsg>,
    archiver: &Slot<ArchiverMsg>,
) -> Vec<ChildSpec> {
    let s = services.clone();
    let push = slotted("push", || PushHub, move || s.clone(), services.push.clone());
    let s = services.clone();
    let sessions = slotted(
        "sessions",
        || SessionManager,
        move || s.clone(),
        services.sessions.clone(),
    );
    let s = services.clone();
    let train = slotted(
        "trainer",
        || TrainerActor,
        move || s.clone(),
        trainer.clone(),
    );
    let s = services.clone();

    let model_children: Vec<ChildSpec> = (0..services.config.model.num_workers)
        .map(|i| {
            let s = services.clone();
            let pool = services.models.clone();
            let exit_pool = pool.clone();
            ChildSpec::new(format!("model-{i}"), move |sup| {
                let (s, pool) = (s.clone(), pool.clone());
                async move {
                    let args = ModelArgs {
                        registry: s.registry.clone(),
                        catalog: s.catalog.clone(),
                        popularity: s.popularity.clone(),
                        trending: s.trending.clone(),
                        trending_boost: s.config.trending.boost,
                        intra_threads: s.config.model.intra_threads,
                        obs: s.obs.clone(),
                    };
                    let (actor, _) = Actor::spawn_linked(None, ModelActor, args, sup).await?;
                    pool.set(i, Some(actor.clone()));
                    Ok(actor.get_cell())
                }
            })
            .on_exit(move || exit_pool.set(i, None))
        })
        .collect();
    let ingest_children: Vec<ChildSpec> = (0..services.log.num_partitions())
        .map(|partition| {
            let s = services.clone();
            ChildSpec::new(format!("ingest-{partition}"), move |sup| {
                let args = actors::ingest::IngestArgs {
                    partition,
                    services: s.clone(),
                };
                async move {
                    let (actor, _) =
                        Actor::spawn_linked(None, actors::ingest::IngestActor, args, sup).await?;
                    Ok(actor.get_cell())
                }
            })
        })
        .collect();
    vec![
        push,
        sessions,
        group(services, "models", "model_supervisor", model_children),
        group(services, "ingest", "ingest_supervisor", ingest_children),
        train,
        slotted(
            "archiver",
            || ArchiverActor,
            move || s.clone(),
            archiver.clone(),
        ),
    ]
}

/// The Kafka consumer-group bridge that feeds the node's log.
fn kafka_bridge(
    services: &Arc<Services>,
    settings: Arc<kafka::Settings>,
    producer: kafka::Producer,
) -> ChildSpec {
    let services = services.clone();
    ChildSpec::new("kafka", move |sup| {
        let args = actors::kafka_bridge::BridgeArgs {
            services: services.clone(),
            settings: settings.clone(),
            producer: producer.clone(),
        };
        async move {
            let (actor, _) =
                Actor::spawn_linked(None, actors::kafka_bridge::KafkaBridge, args, sup).await?;
            Ok(actor.get_cell())
        }
    })
}

/// A child supervisor over `children`.
fn group(
    services: &Arc<Services>,
    name: &str,
    kind: &'static str,
    children: Vec<ChildSpec>,
) -> ChildSpec {
    let obs = services.obs.clone();
    ChildSpec::new(name, move |sup| {
        let args = SupervisorArgs {
            kind,
            children: children.clone(),
            policy: RestartPolicy::default(),
            obs: obs.clone(),
        };
        async move {
            let (actor, _) = Actor::spawn_linked(None, Supervisor, args, sup).await?;
            Ok(actor.get_cell())
        }
    })
}
