//! Redis as the shared recommendation cache (L2) behind the in-process one (L1), on one Redis
//! server or on a Redis Cluster.
//!
//! A user's entries are one Redis hash, `<cache.key_prefix>recs:<user>`, with a field per (model
//! version, k, category) and a TTL; past `cache.max_variants_per_user` fields the hash starts
//! over. Every command and pipeline touches that one key, so on a cluster each goes to the one
//! shard owning the user's slot, and no hash tag is needed. When a session changes, its node
//! drops the user from L1 at once, deletes the hash and publishes the user id on
//! `<cache.key_prefix>invalidate`; every other node drops it from its L1 on receipt. On a cluster
//! the channel is a sharded one (`SPUBLISH`, [`cluster`]): a plain `PUBLISH` would be copied to
//! every node of the cluster. A node that lost its subscription for a while (Redis restarted, a
//! failover) may have missed invalidations, so it drops its whole L1 once subscribed again.
//!
//! Redis being down never fails a request: L2 lookups time out quickly, count as errors, and
//! serving goes on from L1 and the model.

mod cluster;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::config::CacheConfig;
use common::{RecQuery, Recommendations};
use futures::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Value};

use crate::cache::{LOOKUPS, MemoryCache, RecCache};
use crate::error::{Result, StorageError};

/// Separates the parts of a hash field and of an invalidation message (ids never contain it).
const SEP: char = '\u{1f}';
/// How long a lost invalidation channel waits before subscribing again.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Where the shared tier lives, as `storage::backends` read it from `cache.url`.
#[derive(Clone, Copy, Debug)]
pub enum Redis<'a> {
    /// One server (or a primary behind a failover proxy), by its `redis://` URL.
    Server(&'a str),
    /// A Redis Cluster, by the URLs of some of its nodes.
    Cluster(&'a [String]),
}

/// The connection commands go through; both kinds route a one-key command to its server.
#[derive(Clone)]
enum Conn {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Server(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Server(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The names this cache uses in Redis, under `cache.key_prefix`.
#[derive(Clone, Debug)]
struct Names {
    /// Prepended to a user id to make the user's key.
    recs: String,
    channel: String,
}

impl Names {
    fn new(prefix: &str) -> Self {
        Self {
            recs: format!("{prefix}recs:"),
            channel: format!("{prefix}invalidate"),
        }
    }

    fn key(&self, user_id: &str) -> String {
        format!("{}{user_id}", self.recs)
    }

    /// The `SCAN` pattern of every user's key.
    fn all_keys(&self) -> String {
        format!("{}*", self.recs)
    }
}

pub struct TieredCache {
    l1: Arc<MemoryCache>,
    conn: Conn,
    names: Names,
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

/// The hash field of one query: a `diversity` other than none is a fourth part, so that the
/// plain ranking keeps the field it always had.
fn field(version: &str, query: &RecQuery) -> String {
    let mut field = format!(
        "{version}{SEP}{}{SEP}{}",
        query.k,
        query.category.as_deref().unwrap_or("")
    );
    if !query.diversity.is_none() {
        field += &format!("{SEP}{}", query.diversity.thousandths());
    }
    field
}

impl TieredCache {
    /// One Redis server under the default key prefix (`streamrec:`).
    pub fn connect(url: &str, l1: MemoryCache, ttl: Duration, timeout: Duration) -> Result<Self> {
        let config = CacheConfig {
            ttl,
            timeout,
            ..CacheConfig::default()
        };
        Self::open(Redis::Server(url), l1, &config)
    }

    /// Connects lazily: the node starts (and serves from L1) even while Redis is down. Takes
    /// `ttl`, `timeout` and `key_prefix` from `config`.
    pub fn open(redis: Redis<'_>, l1: MemoryCache, config: &CacheConfig) -> Result<Self> {
        let l1 = Arc::new(l1);
        let names = Names::new(&config.key_prefix);
        let node_id = uuid::Uuid::now_v7().to_string();
        let listener = Listener {
            l1: l1.clone(),
            node_id: node_id.clone(),
            channel: names.channel.clone(),
        };
        let (conn, subscriber) = match redis {
            Redis::Server(url) => {
                let client = redis::Client::open(url)
                    .map_err(|e| StorageError::Backend(format!("redis url: {e}")))?;
                let manager = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(config.timeout))
                    .set_connection_timeout(Some(config.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager)
                    .map_err(|e| StorageError::Backend(format!("redis: {e}")))?;
                let subscriber = tokio::spawn(listener.follow_server(client));
                (Conn::Server(conn), subscriber)
            }
            Redis::Cluster(nodes) => {
                let (conn, pushes) = cluster::connect(nodes, config.timeout)
                    .map_err(|e| StorageError::Backend(format!("redis cluster: {e}")))?;
                let subscriber = tokio::spawn(listener.follow_cluster(conn.clone(), pushes));
                (Conn::Cluster(conn), subscriber)
            }
        };
        Ok(Self {
            l1,
            conn,
            names,
            ttl: config.ttl,
            node_id,
            subscriber,
        })
    }

    fn publish(&self, user_or_all: String) {
        let mut conn = self.conn.clone();
        let names = self.names.clone();
        let message = format!("{}{SEP}{user_or_all}", self.node_id);
        let delete = (user_or_all != "*").then(|| names.key(&user_or_all));
        tokio::spawn(async move {
            let result: redis::RedisResult<()> = async {
                match delete {
                    Some(key) => conn.del::<_, ()>(key).await?,
                    None => clear_all(&mut conn, &names.all_keys()).await?,
                }
                let publish = match conn {
                    Conn::Server(_) => "PUBLISH",
                    Conn::Cluster(_) => "SPUBLISH",
                };
                redis::cmd(publish)
                    .arg(&names.channel)
                    .arg(message)
                    .query_async(&mut conn)
                    .await
            }
            .await;
            if let Err(error) = result {
                tracing::warn!(%error, "redis invalidation failed; entries expire by TTL");
            }
        });
    }
}

fn scan(cursor: u64, pattern: &str) -> Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(500);
    cmd
}

/// Deletes every key matching `pattern`: on each primary of a cluster, or on the one server.
async fn clear_all(conn: &mut Conn, pattern: &str) -> redis::RedisResult<()> {
    let conn = match conn {
        Conn::Cluster(conn) => return cluster::clear_all(conn, pattern).await,
        Conn::Server(conn) => conn,
    };
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = scan(cursor, pattern).query_async(conn).await?;
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

/// Applies other nodes' invalidations to this node's L1.
struct Listener {
    l1: Arc<MemoryCache>,
    node_id: String,
    channel: String,
}

impl Listener {
    fn apply(&self, payload: &str) {
        let Some((from, target)) = payload.split_once(SEP) else {
            return;
        };
        if from == self.node_id {
            return;
        }
        if target == "*" {
            self.l1.clear()
        } else {
            self.l1.invalidate(target)
        }
    }

    /// Called once subscribed: after the first time, what was published while the
    /// subscription was lost is unknown, and the L1 starts over.
    fn subscribed(&self, again: bool) {
        if again {
            tracing::info!("redis invalidation channel subscribed again; L1 cleared");
            self.l1.clear();
        }
    }

    /// Follows the channel on one server, subscribing again whenever Redis goes away.
    async fn follow_server(self, client: redis::Client) {
        let mut again = false;
        loop {
            let result: redis::RedisResult<()> = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&self.channel).await?;
                self.subscribed(again);
                again = true;
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    self.apply(&message.get_payload::<String>()?);
                }
                Ok(())
            }
            .await;
            if let Err(error) = result {
                tracing::debug!(%error, "redis invalidation channel lost; reconnecting");
            }
            tokio::time::sleep(RESUBSCRIBE_AFTER).await;
        }
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
        let found: redis::RedisResult<Option<String>> = conn
            .hget(self.names.key(user_id), field(version, query))
            .await;
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
        let (key, field) = (self.names.key(user_id), field(version, query));
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
