//! Chooses each store's implementation from its configured backend. The one place where a
//! backend is picked: the URLs were parsed once, when the configuration was read, into the typed
//! values matched here; actors and gateways only ever see the traits.

use std::path::Path;
use std::sync::Arc;

use common::config::{
    CacheBackend, CacheConfig, CatalogBackend, CatalogConfig, ObjectsBackend, ObjectsConfig,
};

use crate::error::Result;
use crate::redis_cache::Redis;
use crate::{
    Catalog, Db, LocalObjectStore, MemoryCache, ObjectStore, PgCatalog, RecCache, RocksCatalog,
    S3ObjectStore, TieredCache,
};

pub async fn catalog(config: &CatalogConfig, db: &Arc<Db>) -> Result<Arc<dyn Catalog>> {
    Ok(match &config.url {
        CatalogBackend::Embedded => Arc::new(RocksCatalog::new(db.clone())),
        CatalogBackend::Postgres(url) => {
            Arc::new(PgCatalog::connect(url, config.max_connections, config.acquire_timeout).await?)
        }
    })
}

pub fn cache(config: &CacheConfig) -> Result<Arc<dyn RecCache>> {
    let l1 = MemoryCache::new(config.max_users, config.max_variants_per_user, config.ttl);
    Ok(match &config.url {
        CacheBackend::Memory => Arc::new(l1),
        CacheBackend::Redis(url) => Arc::new(TieredCache::open(Redis::Server(url), l1, config)?),
        CacheBackend::RedisCluster { nodes, .. } => {
            Arc::new(TieredCache::open(Redis::Cluster(nodes), l1, config)?)
        }
    })
}

pub async fn objects(config: &ObjectsConfig, data_dir: &Path) -> Result<Arc<dyn ObjectStore>> {
    Ok(match &config.url {
        ObjectsBackend::Embedded => Arc::new(LocalObjectStore::new(data_dir.join("objects"))?),
        ObjectsBackend::S3 { bucket, prefix } => {
            Arc::new(S3ObjectStore::new(bucket, prefix, config.endpoint.as_deref()).await?)
        }
    })
}
