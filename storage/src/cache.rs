//! The recommendation cache. Entries are per user, holding one result per query (k, category),
//! so invalidating a user (whose session changed) is one removal. A model swap clears it all.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use common::{RecQuery, Recommendations};
use prometheus::{IntCounterVec, register_int_counter_vec};

static LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "streamrec_cache_lookups_total",
        "Recommendation cache lookups by tier and result.",
        &["tier", "result"]
    )
    .expect("metric registers once")
});

pub trait RecCache: Send + Sync + 'static {
    fn get(&self, user_id: &str, query: &RecQuery) -> Option<Arc<Recommendations>>;
    fn put(&self, user_id: &str, query: RecQuery, recs: Arc<Recommendations>);
    fn invalidate(&self, user_id: &str);
    fn clear(&self);
}

type UserEntry = Arc<HashMap<RecQuery, Arc<Recommendations>>>;

/// The in-process cache (L1): bounded by users, entries expire after a TTL.
pub struct MemoryCache {
    users: moka::sync::Cache<String, UserEntry>,
}

impl MemoryCache {
    pub fn new(max_users: u64, ttl: Duration) -> Self {
        Self {
            users: moka::sync::Cache::builder()
                .max_capacity(max_users)
                .time_to_live(ttl)
                .build(),
        }
    }
}

impl RecCache for MemoryCache {
    fn get(&self, user_id: &str, query: &RecQuery) -> Option<Arc<Recommendations>> {
        let hit = self
            .users
            .get(user_id)
            .and_then(|entry| entry.get(query).cloned());
        LOOKUPS
            .with_label_values(&["l1", if hit.is_some() { "hit" } else { "miss" }])
            .inc();
        hit
    }

    fn put(&self, user_id: &str, query: RecQuery, recs: Arc<Recommendations>) {
        // Copy-on-write: a user has few distinct queries, and readers never lock.
        let mut map = self
            .users
            .get(user_id)
            .map(|e| (*e).clone())
            .unwrap_or_default();
        map.insert(query, recs);
        self.users.insert(user_id.to_owned(), Arc::new(map));
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

    #[test]
    fn invalidation_drops_every_query_of_the_user() {
        let cache = MemoryCache::new(10, Duration::from_secs(60));
        let recs = Arc::new(Recommendations {
            user_id: "u".into(),
            model_version: "v".into(),
            items: vec![],
        });
        let q1 = RecQuery {
            k: 10,
            category: None,
        };
        let q2 = RecQuery {
            k: 5,
            category: Some("c".into()),
        };
        cache.put("u", q1.clone(), recs.clone());
        cache.put("u", q2.clone(), recs.clone());
        cache.put("w", q1.clone(), recs);
        assert!(cache.get("u", &q2).is_some());
        cache.invalidate("u");
        assert!(cache.get("u", &q1).is_none() && cache.get("u", &q2).is_none());
        assert!(cache.get("w", &q1).is_some());
    }
}
