//! Chooses each store's implementation from its configured URL. The one place where a URL
//! scheme decides a backend: actors and gateways only ever see the traits.

use std::path::Path;
use std::sync::Arc;

use common::config::{CacheConfig, CatalogConfig, EMBEDDED, ObjectsConfig};

use crate::error::Result;
use crate::{
    Catalog, Db, LocalObjectStore, MemoryCache, ObjectStore, PgCatalog, RecCache, RocksCatalog,
    S3ObjectStore, TieredCache,
};

pub async fn catalog(config: &CatalogConfig, db: &Arc<Db>) -> Result<Arc<dyn Catalog>> {
    if config.url == EMBEDDED {
        return Ok(Arc::new(RocksCatalog::new(db.clone())));
    }
    Ok(Arc::new(
        PgCatalog::connect(&config.url, config.max_connections, config.acquire_timeout).await?,
    ))
}

pub fn cache(config: &CacheConfig) -> Result<Arc<dyn RecCache>> {
    let l1 = MemoryCache::new(config.max_users, config.max_variants_per_user, config.ttl);
    if config.url == "memory" {
        return Ok(Arc::new(l1));
    }
    Ok(Arc::new(TieredCache::connect(
        &config.url,
        l1,
        config.ttl,
        config.timeout,
    )?))
}

pub async fn objects(config: &ObjectsConfig, data_dir: &Path) -> Result<Arc<dyn ObjectStore>> {
    if config.url == EMBEDDED {
        return Ok(Arc::new(LocalObjectStore::new(data_dir.join("objects"))?));
    }
    Ok(Arc::new(
        S3ObjectStore::new(&config.url, config.endpoint.as_deref()).await?,
    ))
}
