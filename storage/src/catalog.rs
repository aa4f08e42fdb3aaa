//! The item catalog: a durable store behind the [`Catalog`] trait and the in-memory
//! [`CatalogView`] that serving reads. Writes go to the store first, then to the view, so the
//! view never shows what the store does not have.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use common::Item;
use parking_lot::RwLock;

use crate::db::{Cf, Db};
use crate::error::Result;

#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    async fn upsert(&self, item: &Item) -> Result<()>;
    /// Deletes the item and remembers the deletion; returns whether it existed.
    async fn delete(&self, item_id: &str, at: i64) -> Result<bool>;
    /// Every item and every deleted id, for the view at start-up.
    async fn load_all(&self) -> Result<(Vec<Item>, Vec<String>)>;
    /// A user's profile attributes (demographics and the like).
    async fn put_profile(&self, user_id: &str, profile: &serde_json::Value) -> Result<()>;
    async fn get_profile(&self, user_id: &str) -> Result<Option<serde_json::Value>>;
    async fn delete_profile(&self, user_id: &str) -> Result<()>;
    /// Every profile (training reads them all once per run).
    async fn profiles(&self) -> Result<Vec<(String, serde_json::Value)>>;
    /// Whether the backing service answers (`Err` says why not).
    async fn health(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// The embedded catalog, in the node's RocksDB.
pub struct RocksCatalog {
    db: Arc<Db>,
}

impl RocksCatalog {
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }
}

#[async_trait]
impl Catalog for RocksCatalog {
    async fn upsert(&self, item: &Item) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            self.db.cf(Cf::Items),
            item.item_id.as_bytes(),
            serde_json::to_vec(item)?,
        );
        batch.delete_cf(self.db.cf(Cf::DeletedItems), item.item_id.as_bytes());
        self.db.write(batch)
    }

    async fn delete(&self, item_id: &str, at: i64) -> Result<bool> {
        let existed = self.db.contains(Cf::Items, item_id.as_bytes())?;
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_cf(self.db.cf(Cf::Items), item_id.as_bytes());
        batch.put_cf(
            self.db.cf(Cf::DeletedItems),
            item_id.as_bytes(),
            at.to_be_bytes(),
        );
        self.db.write(batch)?;
        Ok(existed)
    }

    async fn load_all(&self) -> Result<(Vec<Item>, Vec<String>)> {
        let items = self
            .db
            .scan(Cf::Items)
            .map(|kv| Ok(serde_json::from_slice(&kv?.1)?))
            .collect::<Result<_>>()?;
        let deleted = self
            .db
            .scan(Cf::DeletedItems)
            .map(|kv| Ok(String::from_utf8_lossy(&kv?.0).into_owned()))
            .collect::<Result<_>>()?;
        Ok((items, deleted))
    }

    async fn put_profile(&self, user_id: &str, profile: &serde_json::Value) -> Result<()> {
        self.db.put(
            Cf::Profiles,
            user_id.as_bytes(),
            &serde_json::to_vec(profile)?,
        )
    }

    async fn get_profile(&self, user_id: &str) -> Result<Option<serde_json::Value>> {
        self.db
            .get(Cf::Profiles, user_id.as_bytes())?
            .map(|v| Ok(serde_json::from_slice(&v)?))
            .transpose()
    }

    async fn delete_profile(&self, user_id: &str) -> Result<()> {
        self.db.delete(Cf::Profiles, user_id.as_bytes())
    }

    async fn profiles(&self) -> Result<Vec<(String, serde_json::Value)>> {
        self.db
            .scan(Cf::Profiles)
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    serde_json::from_slice(&v)?,
                ))
            })
            .collect()
    }
}

#[derive(Default)]
struct ViewState {
    items: HashMap<String, Arc<Item>>,
    deleted: HashSet<String>,
}

/// What serving reads: every item in memory, and a version that changes on every write so that
/// derived data (availability and category masks) knows when to rebuild.
pub struct CatalogView {
    store: Arc<dyn Catalog>,
    state: RwLock<ViewState>,
    version: AtomicU64,
    /// Serialises writes so that the store and the view apply them in the same order.
    writes: tokio::sync::Mutex<()>,
}

impl CatalogView {
    pub async fn open(store: Arc<dyn Catalog>) -> Result<Self> {
        let (items, deleted) = store.load_all().await?;
        let state = ViewState {
            items: items
                .into_iter()
                .map(|i| (i.item_id.clone(), Arc::new(i)))
                .collect(),
            deleted: deleted.into_iter().collect(),
        };
        Ok(Self {
            store,
            state: RwLock::new(state),
            version: AtomicU64::new(1),
            writes: Default::default(),
        })
    }

    pub async fn upsert(&self, item: Item) -> Result<()> {
        let _write = self.writes.lock().await;
        self.store.upsert(&item).await?;
        let mut state = self.state.write();
        state.deleted.remove(&item.item_id);
        state.items.insert(item.item_id.clone(), Arc::new(item));
        self.version.fetch_add(1, Ordering::Release);
        Ok(())
    }

    pub async fn delete(&self, item_id: &str) -> Result<bool> {
        let _write = self.writes.lock().await;
        let existed = self.store.delete(item_id, common::now_millis()).await?;
        let mut state = self.state.write();
        state.items.remove(item_id);
        state.deleted.insert(item_id.to_owned());
        self.version.fetch_add(1, Ordering::Release);
        Ok(existed)
    }

    pub fn get(&self, item_id: &str) -> Option<Arc<Item>> {
        self.state.read().items.get(item_id).cloned()
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.state.read().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an item may be recommended: catalogued and available. Items seen only in events
    /// are never recommended: anyone may post events about any id.
    pub fn is_recommendable(&self, item_id: &str) -> bool {
        self.read().status(item_id).recommendable()
    }

    /// A consistent read of the whole view under one lock (mask building, filtering).
    pub fn read(&self) -> CatalogRead<'_> {
        CatalogRead {
            state: self.state.read(),
        }
    }

    /// The durable store behind the view (profiles are read from it directly).
    pub fn store(&self) -> &Arc<dyn Catalog> {
        &self.store
    }

    /// Every catalogued item id.
    pub fn item_ids(&self) -> Vec<String> {
        self.state.read().items.keys().cloned().collect()
    }
}

pub struct CatalogRead<'a> {
    state: parking_lot::RwLockReadGuard<'a, ViewState>,
}

impl CatalogRead<'_> {
    pub fn status(&self, item_id: &str) -> ItemStatus<'_> {
        if self.state.deleted.contains(item_id) {
            return ItemStatus::Deleted;
        }
        match self.state.items.get(item_id) {
            Some(item) => ItemStatus::Catalogued(item),
            None => ItemStatus::Uncatalogued,
        }
    }
}

pub enum ItemStatus<'a> {
    Deleted,
    Uncatalogued,
    Catalogued(&'a Item),
}

impl ItemStatus<'_> {
    pub fn recommendable(&self) -> bool {
        match self {
            ItemStatus::Deleted => false,
            ItemStatus::Uncatalogued => false,
            ItemStatus::Catalogued(item) => item.available,
        }
    }

    pub fn in_category(&self, category: &str) -> bool {
        matches!(self, ItemStatus::Catalogued(item) if item.categories.iter().any(|c| c == category))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, available: bool) -> Item {
        Item {
            item_id: id.into(),
            title: "t".into(),
            categories: vec!["c".into()],
            tags: vec![],
            attributes: Default::default(),
            available,
            updated_at: 0,
        }
    }

    #[tokio::test]
    async fn view_survives_reopen_and_tracks_deletions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Db::open(dir.path()).expect("db"));
        let view = CatalogView::open(Arc::new(RocksCatalog::new(db.clone())))
            .await
            .expect("view");
        view.upsert(item("a", true)).await.expect("upsert");
        view.upsert(item("b", false)).await.expect("upsert");
        assert!(view.delete("a").await.expect("delete"));
        assert!(!view.delete("zz").await.expect("delete"));
        let reopened = CatalogView::open(Arc::new(RocksCatalog::new(db)))
            .await
            .expect("view");
        assert!(reopened.get("a").is_none());
        assert!(!reopened.is_recommendable("a"));
        assert!(!reopened.is_recommendable("b"));
        assert!(!reopened.is_recommendable("never-catalogued"));
        reopened.upsert(item("a", true)).await.expect("upsert");
        assert!(reopened.is_recommendable("a"));
    }
}
