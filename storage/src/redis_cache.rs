//! Redis as the shared recommendation cache (L2) behind the in-process one (L1).
//!
//! A user's entries are one Redis hash, `streamrec:recs:{user}`, with a field per (model
//! version, k, category) and a TTL; past `cache.max_variants_per_user` fields the hash starts
//! over. When a session changes, its node drops the user from L1 at once, deletes the hash and
//! publishes the user id on `streamrec:invalidate`; every other node drops it from its L1 on
//! receipt. Redis being down never fails a request: L2 lookups time out
//! quickly, count as errors, and serving goes on from L1 and the model.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{RecQuery, Recommendations};
use futures::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::cache::{LOOKUPS, MemoryCache, RecCache};
use crate::error::{Result, StorageError};

const CHANNEL: &str = "streamrec:invalidate";
const KEY_PREFIX: &str = "streamrec:recs:";
/// Separates the parts of a hash field and of an invalidation message (ids never contain it).
const SEP: char = '\u{1f}';

pub struct TieredCache {
    l1: Arc<MemoryCache>,
    conn: ConnectionManager,
    ttl: Duration,
    /// Identifies this cache instance in invalidation messages, so it ignores its own.
    node_id: String,
    subscriber: tokio::task::JoinHandle<()>,
}

impl Drop for TieredCache {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

fn key(user_id: &str) -> String {
    format!("{KEY_PREFIX}{user_id}")
}

fn field(version: &str, query: &RecQuery) -> String {
    format!(
        "{version}{SEP}{}{SEP}{}",
        query.k,
        query.category.as_deref().unwrap_or("")
    )
}

impl TieredCache {
    /// Connects lazily: the node starts (and serves from L1) even while Redis is down.
    pub fn connect(url: &str, l1: MemoryCache, ttl: Duration, timeout: Duration) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| StorageError::Backend(format!("redis url: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| StorageError::Backend(format!("redis: {e}")))?;
        let l1 = Arc::new(l1);
        let node_id = uuid::Uuid::now_v7().to_string();
        let subscriber = tokio::spawn(subscribe(client, l1.clone(), node_id.clone()));
        Ok(Self {
            l1,
            conn,
            ttl,
            node_id,
            subscriber,
        })
    }

    fn publish(&self, user_or_all: String) {
        let mut conn = self.conn.clone();
        let message = format!("{}{SEP}{user_or_all}", self.node_id);
        let delete = (user_or_all != "*").then(|| key(&user_or_all));
        tokio::spawn(async move {
            let result: redis::RedisResult<()> = async {
                match delete {
                    Some(key) => conn.del::<_, ()>(key).await?,
                    None => clear_all(&mut conn).await?,
                }
                conn.publish::<_, _, ()>(CHANNEL, message).await
            }
            .await;
            if let Err(error) = result {
                tracing::warn!(%error, "redis invalidation failed; entries expire by TTL");
            }
        });
    }
}

async fn clear_all(conn: &mut ConnectionManager) -> redis::RedisResult<()> {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{KEY_PREFIX}*"))
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Applies other nodes' invalidations to this node's L1, reconnecting whenever Redis goes away.
async fn subscribe(client: redis::Client, l1: Arc<MemoryCache>, node_id: String) {
    loop {
        let result: redis::RedisResult<()> = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(CHANNEL).await?;
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let payload: String = message.get_payload()?;
                let Some((from, target)) = payload.split_once(SEP) else {
                    continue;
                };
                if from == node_id {
                    continue;
                }
                if target == "*" {
                    l1.clear()
                } else {
                    l1.invalidate(target)
                }
            }
            Ok(())
        }
        .await;
        if let Err(error) = result {
            tracing::debug!(%error, "redis invalidation channel lost; reconnecting");
        }
        // While disconnected, other nodes' invalidations are missed: L1's TTL bounds staleness.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[async_trait]
impl RecCache for TieredCache {
    async fn get(
        &self,
        user_id: &str,
        version: &str,
        query: &RecQuery,
    ) -> Option<Arc<Recommendations>> {
        if let Some(hit) = self.l1.get(user_id, version, query).await {
            return Some(hit);
        }
        let mut conn = self.conn.clone();
        let found: redis::RedisResult<Option<String>> =
            conn.hget(key(user_id), field(version, query)).await;
        let recs = match found {
            Ok(Some(json)) => serde_json::from_str::<Recommendations>(&json)
                .ok()
                .map(Arc::new),
            Ok(None) => None,
            Err(error) => {
                LOOKUPS.with_label_values(&["l2", "error"]).inc();
                tracing::debug!(%error, "redis lookup failed");
                return None;
            }
        };
        LOOKUPS
            .with_label_values(&["l2", if recs.is_some() { "hit" } else { "miss" }])
            .inc();
        if let Some(recs) = &recs {
            self.l1.store(user_id, version, query, recs.clone());
        }
        recs
    }

    async fn put(
        &self,
        user_id: &str,
        version: &str,
        query: &RecQuery,
        recs: Arc<Recommendations>,
    ) {
        self.l1.store(user_id, version, query, recs.clone());
        let Ok(json) = serde_json::to_string(recs.as_ref()) else {
            return;
        };
        let mut conn = self.conn.clone();
        let (key, field) = (key(user_id), field(version, query));
        let ttl = self.ttl.as_secs().max(1) as i64;
        let result: redis::RedisResult<()> = async {
            let (len,): (usize,) = redis::pipe()
                .hset(&key, &field, &json)
                .ignore()
                .expire(&key, ttl)
                .ignore()
                .hlen(&key)
                .query_async(&mut conn)
                .await?;
            // Past the per-user cap the user's results start over with this one.
            if len > self.l1.max_variants_per_user() {
                redis::pipe()
                    .atomic()
                    .del(&key)
                    .ignore()
                    .hset(&key, &field, &json)
                    .ignore()
                    .expire(&key, ttl)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await?;
            }
            Ok(())
        }
        .await;
        if let Err(error) = result {
            tracing::debug!(%error, "redis write failed");
        }
    }

    fn invalidate(&self, user_id: &str) {
        self.l1.invalidate(user_id);
        self.publish(user_id.to_owned());
    }

    fn clear(&self) {
        self.l1.clear();
        self.publish("*".to_owned());
    }

    async fn health(&self) -> std::result::Result<(), String> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| format!("redis: {e}"))
    }
}
