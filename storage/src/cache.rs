//! The recommendation cache. Entries are per user, holding one result per (model version,
//! query), so invalidating a user (whose session changed) is one removal, and a new model
//! version never serves results of the old one. A user holds at most `max_variants_per_user`
//! results (the oldest goes first), so a client cycling through `k` and categories cannot grow
//! an entry without bound. [`MemoryCache`] is the in-process tier (L1);
//! [`TieredCache`](crate::redis_cache::TieredCache) puts Redis behind it (L2).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use common::{RecQuery, Recommendations};
use prometheus::{IntCounterVec, register_int_counter_vec};

pub(crate) static LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "streamrec_cache_lookups_total",
        "Recommendation cache lookups by tier and result (hit, miss, error).",
        &["tier", "result"]
    )
    .expect("metric registers once")
});

/// Lookups since start, over all tiers: (served from a cache, not served from any).
pub fn lookup_totals() -> (u64, u64) {
    let count = |tier: &str, result: &str| LOOKUPS.with_label_values(&[tier, result]).get();
    let lookups = count("l1", "hit") + count("l1", "miss");
    let hits = count("l1", "hit") + count("l2", "hit");
    (hits, lookups.saturating_sub(hits))
}

#[async_trait]
pub trait RecCache: Send + Sync + 'static {
    async fn get(
        &self,
        user_id: &str,
        version: &str,
        query: &RecQuery,
    ) -> Option<Arc<Recommendations>>;
    async fn put(&self, user_id: &str, version: &str, query: &RecQuery, recs: Arc<Recommendations>);
    /// Drops every entry of the user, here at once and on other tiers/nodes soon after.
    fn invalidate(&self, user_id: &str);
    /// Drops everything (a catalog filter changed).
    fn clear(&self);
    /// Whether the cache's backing service answers (`Err` says why not).
    async fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A user's results, oldest first.
type UserEntry = Arc<Vec<((String, RecQuery), Arc<Recommendations>)>>;

/// The in-process cache (L1): bounded by users and results per user, entries expire after a TTL.
pub struct MemoryCache {
    users: moka::sync::Cache<String, UserEntry>,
    max_variants: usize,
}

impl MemoryCache {
    pub fn new(max_users: u64, max_variants_per_user: usize, ttl: Duration) -> Self {
        Self {
            users: moka::sync::Cache::builder()
                .max_capacity(max_users)
                .time_to_live(ttl)
                .build(),
            max_variants: max_variants_per_user.max(1),
        }
    }

    /// Most results kept per user.
    pub fn max_variants_per_user(&self) -> usize {
        self.max_variants
    }

    pub(crate) fn lookup(
        &self,
        user_id: &str,
        version: &str,
        query: &RecQuery,
    ) -> Option<Arc<Recommendations>> {
        let entry = self.users.get(user_id)?;
        entry
            .iter()
            .find(|((v, q), _)| v == version && q == query)
            .map(|(_, recs)| recs.clone())
    }

    pub(crate) fn store(
        &self,
        user_id: &str,
        version: &str,
        query: &RecQuery,
        recs: Arc<Recommendations>,
    ) {
        // Copy-on-write: a user has few distinct queries, and readers never lock.
        let mut entry = self
            .users
            .get(user_id)
            .map(|e| (*e).clone())
            .unwrap_or_default();
        entry.retain(|((v, q), _)| !(v == version && q == query));
        if entry.len() >= self.max_variants {
            entry.drain(..=entry.len() - self.max_variants);
        }
        entry.push(((version.to_owned(), query.clone()), recs));
        self.users.insert(user_id.to_owned(), Arc::new(entry));
    }
}

#[async_trait]
impl RecCache for MemoryCache {
    async fn get(
        &self,
        user_id: &str,
        version: &str,
        query: &RecQuery,
    ) -> Option<Arc<Recommendations>> {
        let hit = self.lookup(user_id, version, query);
        LOOKUPS
            .with_label_values(&["l1", if hit.is_some() { "hit" } else { "miss" }])
            .inc();
        hit
    }

    async fn put(
        &self,
        user_id: &str,
        version: &str,
        query: &RecQuery,
        recs: Arc<Recommendations>,
    ) {
        self.store(user_id, version, query, recs);
    }

    fn invalidate(&self, user_id: &str) {
        self.users.invalidate(user_id);
    }

    fn clear(&self) {
        self.users.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn invalidation_drops_every_query_of_the_user() {
        let cache = MemoryCache::new(10, 8, Duration::from_secs(60));
        let recs = Arc::new(Recommendations {
            user_id: "u".into(),
            model_version: "v".into(),
            items: vec![],
        });
        let q1 = RecQuery {
            k: 10,
            category: None,
            diversity: Default::default(),
        };
        let q2 = RecQuery {
            k: 5,
            category: Some("c".into()),
            diversity: Default::default(),
        };
        cache.put("u", "v1", &q1, recs.clone()).await;
        cache.put("u", "v1", &q2, recs.clone()).await;
        cache.put("w", "v1", &q1, recs).await;
        assert!(cache.get("u", "v1", &q2).await.is_some());
        assert!(
            cache.get("u", "v2", &q2).await.is_none(),
            "another model version must miss"
        );
        cache.invalidate("u");
        assert!(
            cache.get("u", "v1", &q1).await.is_none() && cache.get("u", "v1", &q2).await.is_none()
        );
        assert!(cache.get("w", "v1", &q1).await.is_some());
    }

    #[tokio::test]
    async fn a_user_holds_at_most_max_variants_results_and_the_oldest_go() {
        let cache = MemoryCache::new(10, 3, Duration::from_secs(60));
        let recs = Arc::new(Recommendations {
            user_id: "u".into(),
            model_version: "v".into(),
            items: vec![],
        });
        let query = |k| RecQuery {
            k,
            category: None,
            diversity: Default::default(),
        };
        for k in 1..=10 {
            cache.put("u", "v1", &query(k), recs.clone()).await;
        }
        // Storing one again refreshes it instead of taking a second place.
        cache.put("u", "v1", &query(9), recs.clone()).await;
        let held: Vec<usize> = (1..=10)
            .filter(|&k| cache.lookup("u", "v1", &query(k)).is_some())
            .collect();
        assert_eq!(held, [8, 9, 10]);
    }
}
