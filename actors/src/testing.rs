//! What the actors' unit tests share: a [`Services`] over real embedded stores in a temporary
//! directory (RocksDB, the file log, the local object store, the memory cache) and no model, so
//! the session and manager logic runs as it does in a node.

use std::sync::Arc;
use std::time::Duration;

use common::{Config, Event, EventKind};
use storage::{
    CatalogView, Db, FileEventLog, LocalObjectStore, MemoryCache, Record, RocksCatalog,
    RocksSessionStore,
};

use crate::changes::ChangeFeed;
use crate::{ModelPool, ModelRegistry, ObsRegistry, Popularity, Services};

pub struct TestServices {
    pub services: Arc<Services>,
    _dir: tempfile::TempDir,
}

pub async fn services(config: Config) -> TestServices {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Arc::new(Db::open_with(&dir.path().join("db"), Duration::from_secs(60)).expect("db"));
    let log = Arc::new(
        FileEventLog::open_with(
            &dir.path().join("events"),
            storage::log::LogOptions::new(config.events.num_partitions, false),
            db.clone(),
        )
        .expect("log"),
    );
    let catalog = Arc::new(
        CatalogView::open(Arc::new(RocksCatalog::new(db.clone())))
            .await
            .expect("catalog"),
    );
    let objects = Arc::new(LocalObjectStore::new(dir.path().join("objects")).expect("objects"));
    let cache = Arc::new(MemoryCache::new(1000, 8, Duration::from_secs(60)));
    let trending = crate::trending::Trending::new(
        config.trending.window,
        config.trending.windows,
        config.trending.max_user_weight,
    );
    let num_partitions = config.events.num_partitions;
    let services = Arc::new(Services {
        config: Arc::new(config),
        log: log.clone(),
        sink: log,
        store: Arc::new(RocksSessionStore::new(db)),
        catalog,
        cache: cache.clone(),
        popularity: Arc::new(Popularity::new(Vec::new())),
        trending: Arc::new(trending),
        registry: Arc::new(ModelRegistry::open(objects).await.expect("registry")),
        models: ModelPool::default(),
        obs: Arc::new(ObsRegistry::default()),
        changes: ChangeFeed::new(cache),
        cluster: Arc::new(cluster::Cluster::single(
            "test".into(),
            "127.0.0.1:0".into(),
            num_partitions,
        )),
        changelog: None,
        history: None,
        journal_traces: Default::default(),
    });
    TestServices {
        services,
        _dir: dir,
    }
}

/// A log record of a view of `item` by `user`.
pub fn record(offset: u64, user: &str, event_id: &str, item: &str) -> Record {
    Record {
        partition: 0,
        offset,
        received_ms: Some(common::now_millis()),
        event: Event {
            event_id: event_id.into(),
            user_id: user.into(),
            item_id: item.into(),
            kind: EventKind::View,
            ts: common::now_millis(),
            value: None,
        },
    }
}
