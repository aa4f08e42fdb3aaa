//! How a node comes up: the stores it opens and the supervision tree it starts. This is the
//! composition root, the only place that knows which storage implementation backs which trait;
//! the rest of `node` is the facade the gateways call and never builds anything.

use std::sync::Arc;

use actors::archiver::{ArchiverActor, ArchiverMsg};
use actors::changes::ChangeFeed;
use actors::kafka_bridge::Role;
use actors::model::{ModelActor, ModelArgs};
use actors::push::{PushArgs, PushHub};
use actors::retention::RetentionActor;
use actors::session_manager::SessionManager;
use actors::snapshotter::{SnapshotActor, SnapshotArgs, SnapshotMsg};
use actors::trainer::{TrainerActor, TrainerMsg};
use actors::{ModelPool, ModelRegistry, ObsRegistry, Services, Slot, Users};
use anyhow::Context;
use cluster::Cluster;
use common::Config;
use ractor::{Actor, ActorRef};
use storage::snapshot::Snapshots;
use storage::{CatalogView, Db, EventSink, FileEventLog, RocksSessionStore, backends};

use crate::RestartPolicy;
use crate::supervisor::{ChildSpec, Supervisor, SupervisorArgs, SupervisorMsg};

/// The Kafka settings and producer, when Kafka takes the writes.
type KafkaWrites = (Arc<kafka::Settings>, kafka::Producer);

/// What [`open`] opened: the services every actor shares, the database to flush on shutdown,
/// and Kafka when configured (its bridge joins the tree).
pub(super) struct Stores {
    pub services: Arc<Services>,
    pub db: Arc<Db>,
    pub kafka: Option<KafkaWrites>,
    pub snapshots: Arc<Snapshots>,
}

/// The running tree: its root, the root's exit, and the slots of the actors the facade calls
/// directly.
pub(super) struct Tree {
    pub root: ActorRef<SupervisorMsg>,
    pub root_exit: tokio::task::JoinHandle<()>,
    pub trainer: Slot<TrainerMsg>,
    pub archiver: Slot<ArchiverMsg>,
    pub snapshotter: Slot<SnapshotMsg>,
    pub users: Arc<Users>,
}

/// Opens everything under `config.data_dir` and the configured backends.
pub(super) async fn open(config: &Arc<Config>) -> anyhow::Result<Stores> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    let db = Arc::new(
        Db::open_with(&dir.join("db"), config.events.dedupe_window).context("opening RocksDB")?,
    );
    let log = Arc::new(
        FileEventLog::open_with(&dir.join("events"), log_options(config), db.clone())
            .context("opening the event log")?,
    );
    // Kafka, when configured, takes the writes; the log then journals what the node consumed.
    let kafka = match kafka::Settings::from_config(&config.events) {
        Some(settings) => {
            let settings = Arc::new(settings);
            let producer =
                kafka::Producer::new(settings.clone()).context("creating the Kafka producer")?;
            Some((settings, producer))
        }
        None => None,
    };
    let sink: Arc<dyn EventSink> = match &kafka {
        Some((_, producer)) => Arc::new(producer.clone()),
        None => log.clone(),
    };
    let store = Arc::new(RocksSessionStore::new(db.clone()));
    let changelog: Option<Arc<dyn storage::Changelog>> = match &kafka {
        Some((settings, _)) => Some(Arc::new(
            kafka::changelog::ChangelogWriter::new(settings, db.store_id()?)
                .context("creating the changelog producer")?,
        )),
        None => None,
    };
    let history: Option<Arc<dyn storage::EventHistory>> = kafka.as_ref().map(|(settings, _)| {
        Arc::new(kafka::history::History::new(
            settings,
            &config.cluster.node_id,
        )) as _
    });
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
    let popularity = Arc::new(super::popularity::load(
        config,
        store.as_ref(),
        &catalog,
        kafka.is_some(),
    )?);
    let objects = backends::objects(&config.objects, dir)
        .await
        .context("opening the object store")?;
    let cache = backends::cache(&config.cache).context("opening the cache")?;
    let snapshots = Arc::new(Snapshots::new(
        db.clone(),
        objects.clone(),
        &config.cluster.node_id,
        dir.join("snapshots.tmp"),
        config.events.num_partitions,
    ));
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
        cache: cache.clone(),
        popularity,
        trending: Arc::new(actors::trending::Trending::new(
            config.trending.window,
            config.trending.windows,
            config.trending.max_user_weight,
        )),
        registry,
        models: ModelPool::default(),
        obs: Arc::new(ObsRegistry::default()),
        changes: ChangeFeed::new(cache),
        cluster: Arc::new(cluster(config, kafka.is_some())),
        changelog,
        history,
        journal_traces: Default::default(),
    });
    Ok(Stores {
        services,
        db,
        kafka,
        snapshots,
    })
}

/// Starts the supervision tree over `services`.
pub(super) async fn spawn(
    services: &Arc<Services>,
    kafka: Option<KafkaWrites>,
    snapshots: Arc<Snapshots>,
) -> anyhow::Result<Tree> {
    let (trainer, archiver, snapshotter) = (slot(), slot(), slot());
    let limits = &services.config.supervision.stuck_after;
    let users = Arc::new(Users::new(services.clone()));
    let mut children = root_children(services, &users, &trainer, &archiver);
    let s = services.clone();
    children.push(
        slotted("retention", || RetentionActor, move || s.clone(), slot())
            .stuck_after(limits.retention),
    );
    let s = services.clone();
    let snapshot_args = move || SnapshotArgs {
        services: s.clone(),
        snapshots: snapshots.clone(),
    };
    // An upload, like the archiver's: the archiver's limit.
    children.push(
        slotted(
            "snapshotter",
            || SnapshotActor,
            snapshot_args,
            snapshotter.clone(),
        )
        .stuck_after(limits.archiver),
    );
    if let Some((settings, producer)) = kafka {
        children.push(cluster_status(services, settings.clone()).stuck_after(limits.kafka));
        children.push(changelog_tail(services, settings.clone()).stuck_after(limits.kafka));
        children.push(popularity_publisher(services, settings.clone()).stuck_after(limits.kafka));
        for role in Role::ALL {
            let bridge = kafka_bridge(role, services, settings.clone(), producer.clone(), &users);
            children.push(bridge.stuck_after(limits.kafka));
        }
    }
    let args = supervisor_args(services, "root_supervisor", children);
    let (root, handle) = Actor::spawn(None, Supervisor, args)
        .await
        .context("starting the actor tree")?;
    Ok(Tree {
        root,
        root_exit: handle,
        trainer,
        archiver,
        snapshotter,
        users,
    })
}

/// The shard map. On the embedded log one node owns every partition; with Kafka a node owns
/// what the consumer group assigns it, nothing until then (see `actors::handoff`).
fn cluster(config: &Config, kafka: bool) -> Cluster {
    let (node_id, address) = (
        config.cluster.node_id.clone(),
        config.cluster.advertised(config.server.listen),
    );
    if kafka {
        Cluster::new(node_id, address, config.events.num_partitions)
    } else {
        Cluster::single(node_id, address, config.events.num_partitions)
    }
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
    ChildSpec::new(name, move |parent| {
        let (args, slot) = (args(), slot.clone());
        async move {
            let actor = parent.spawn(actor(), args).await?;
            slot.store(Some(Arc::new(actor.clone())));
            Ok(actor.get_cell())
        }
    })
    .on_exit(move || exit_slot.store(None))
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

fn root_children(
    services: &Arc<Services>,
    users: &Arc<Users>,
    trainer: &Slot<TrainerMsg>,
    archiver: &Slot<ArchiverMsg>,
) -> Vec<ChildSpec> {
    let limits = &services.config.supervision.stuck_after;
    let (s, u) = (services.clone(), users.clone());
    let push = slotted(
        "push",
        || PushHub,
        move || PushArgs {
            services: s.clone(),
            recommender: u.clone(),
        },
        users.push.clone(),
    )
    .stuck_after(limits.push);
    let s = services.clone();
    let sessions = slotted(
        "sessions",
        || SessionManager,
        move || s.clone(),
        users.sessions.clone(),
    )
    .stuck_after(limits.sessions);
    let s = services.clone();
    let train = slotted(
        "trainer",
        || TrainerActor,
        move || s.clone(),
        trainer.clone(),
    )
    .stuck_after(limits.trainer);
    let s = services.clone();

    let model_children: Vec<ChildSpec> = (0..services.config.model.num_workers)
        .map(|i| {
            let s = services.clone();
            let pool = services.models.clone();
            let exit_pool = pool.clone();
            ChildSpec::new(format!("model-{i}"), move |parent| {
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
                    let actor = parent.spawn(ModelActor, args).await?;
                    pool.set(i, Some(actor.clone()));
                    Ok(actor.get_cell())
                }
            })
            .on_exit(move || exit_pool.set(i, None))
            .stuck_after(limits.model)
        })
        .collect();
    let ingest_children: Vec<ChildSpec> = (0..services.log.num_partitions())
        .map(|partition| {
            let (s, slot) = (services.clone(), users.sessions.clone());
            ChildSpec::new(format!("ingest-{partition}"), move |parent| {
                let args = actors::ingest::IngestArgs {
                    partition,
                    services: s.clone(),
                    sessions: slot.clone(),
                };
                async move {
                    let actor = parent.spawn(actors::ingest::IngestActor, args).await?;
                    Ok(actor.get_cell())
                }
            })
            .stuck_after(limits.ingest)
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
        )
        .stuck_after(limits.archiver),
    ]
}

/// A Kafka consumer-group bridge: the one that feeds the node's log from the partitions it
/// owns, the one that passes `transaction-stream` on to `user-events`, or the one that feeds
/// its catalogue from all of `product-updates`.
fn kafka_bridge(
    role: Role,
    services: &Arc<Services>,
    settings: Arc<kafka::Settings>,
    producer: kafka::Producer,
    users: &Users,
) -> ChildSpec {
    let services = services.clone();
    let sessions = users.sessions.clone();
    let name = match role {
        Role::Users => "kafka",
        Role::Transactions => "kafka_transactions",
        Role::Catalog => "kafka_catalog",
    };
    ChildSpec::new(name, move |parent| {
        let args = actors::kafka_bridge::BridgeArgs {
            role,
            services: services.clone(),
            settings: settings.clone(),
            producer: producer.clone(),
            sessions: sessions.clone(),
        };
        async move {
            let actor = parent
                .spawn(actors::kafka_bridge::KafkaBridge, args)
                .await?;
            Ok(actor.get_cell())
        }
    })
}

/// The actor that follows the sessions changelog, so that changes made on other nodes reach
/// this node's change feed.
fn changelog_tail(services: &Arc<Services>, settings: Arc<kafka::Settings>) -> ChildSpec {
    let services = services.clone();
    ChildSpec::new("changelog_tail", move |parent| {
        let args = actors::changelog_tail::TailArgs {
            services: services.clone(),
            settings: settings.clone(),
        };
        async move {
            let actor = parent
                .spawn(actors::changelog_tail::ChangelogTailActor, args)
                .await?;
            Ok(actor.get_cell())
        }
    })
}

/// The actor that publishes what this node's partitions add to item popularity.
fn popularity_publisher(services: &Arc<Services>, settings: Arc<kafka::Settings>) -> ChildSpec {
    let services = services.clone();
    ChildSpec::new("popularity_publisher", move |parent| {
        let args = actors::popularity::publisher::PublisherArgs {
            services: services.clone(),
            settings: settings.clone(),
        };
        async move {
            let actor = parent
                .spawn(actors::popularity::publisher::PopularityPublisher, args)
                .await?;
            Ok(actor.get_cell())
        }
    })
}

/// The actor that publishes this node's ownership on the status topic and reads the others'.
fn cluster_status(services: &Arc<Services>, settings: Arc<kafka::Settings>) -> ChildSpec {
    let services = services.clone();
    ChildSpec::new("cluster", move |parent| {
        let args = actors::cluster_status::ClusterStatusArgs {
            services: services.clone(),
            settings: settings.clone(),
        };
        async move {
            let actor = parent
                .spawn(actors::cluster_status::ClusterStatusActor, args)
                .await?;
            Ok(actor.get_cell())
        }
    })
}

/// A child supervisor over `children`. It has no limit of its own: it handles its messages at
/// once, and watches its children's.
fn group(
    services: &Arc<Services>,
    name: &str,
    kind: &'static str,
    children: Vec<ChildSpec>,
) -> ChildSpec {
    let services = services.clone();
    ChildSpec::new(name, move |parent| {
        let args = supervisor_args(&services, kind, children.clone());
        async move {
            let actor = parent.spawn(Supervisor, args).await?;
            Ok(actor.get_cell())
        }
    })
}

/// A supervisor over `children` with the configured restart policy and heartbeat.
fn supervisor_args(
    services: &Services,
    kind: &'static str,
    children: Vec<ChildSpec>,
) -> SupervisorArgs {
    let supervision = &services.config.supervision;
    SupervisorArgs {
        kind,
        children,
        policy: RestartPolicy::from(supervision),
        heartbeat_interval: supervision.heartbeat_interval,
        obs: services.obs.clone(),
    }
}
