//! The Redis tier through `cache.url`, on the Redis Cluster `scripts/services.sh up redis-cluster`
//! starts (`STREAMREC_TEST_REDIS_CLUSTER`) and, for the same cases, on the single server
//! (`STREAMREC_TEST_REDIS`). Each test keeps to its own key prefix, and so its own invalidation
//! channel. The failover test starts a cluster of its own on free ports (it stops one of its
//! primaries, which would disturb the other tests), restarts the stopped instance once reads are
//! served again, and removes the cluster at the end.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config::{CacheBackend, CacheConfig};
use common::{RecQuery, Recommendations};
use redis::FromRedisValue;
use storage::RecCache;
use testkit::{test_env, unique, wait_for, wait_until};

/// How long a test waits for a connection, or for an invalidation to reach another node.
const WAIT: Duration = Duration::from_secs(10);
/// How long a failover may take: the cluster notices a silent primary after its 3 s node
/// timeout, then a replica is elected.
const FAILOVER: Duration = Duration::from_secs(30);

fn query(k: usize) -> RecQuery {
    RecQuery {
        k,
        category: None,
        diversity: Default::default(),
    }
}

fn recs(user: &str, item: &str) -> Arc<Recommendations> {
    Arc::new(Recommendations {
        user_id: user.into(),
        model_version: "v1".into(),
        items: vec![common::Recommendation {
            item_id: item.into(),
            score: 0.5,
            reasons: vec!["popular".into()],
        }],
    })
}

/// A node's cache on `url`, as `storage::backends` builds it from the configuration.
struct Node {
    cache: Arc<dyn RecCache>,
    config: CacheConfig,
}

impl Node {
    fn new(url: &str, key_prefix: &str) -> Self {
        let config = CacheConfig {
            url: url.parse().expect("cache url"),
            key_prefix: key_prefix.into(),
            timeout: Duration::from_millis(200),
            ttl: Duration::from_secs(60),
            ..CacheConfig::default()
        };
        config.validate().expect("valid cache config");
        let cache = storage::backends::cache(&config).expect("cache");
        Self { cache, config }
    }

    /// Another node on the same Redis and prefix.
    fn peer(&self) -> Self {
        Self::new(&self.config.url.to_string(), &self.config.key_prefix)
    }

    async fn connected(self) -> Self {
        assert!(
            wait_until(async || self.cache.health().await.is_ok(), WAIT).await,
            "redis at {} does not answer",
            self.config.url
        );
        self
    }

    fn key(&self, user: &str) -> String {
        format!("{}recs:{user}", self.config.key_prefix)
    }

    /// A command sent straight to Redis (to every primary of a cluster for `KEYS`).
    async fn redis<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        match &self.config.url {
            CacheBackend::Redis(url) => {
                let client = redis::Client::open(url.as_str()).expect("url");
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("redis");
                cmd.query_async(&mut conn).await.expect("command")
            }
            CacheBackend::RedisCluster { nodes, .. } => {
                let client = redis::cluster::ClusterClient::new(nodes.clone()).expect("nodes");
                let mut conn = client.get_async_connection().await.expect("cluster");
                cmd.query_async(&mut conn).await.expect("command")
            }
            CacheBackend::Memory => unreachable!("a Redis test"),
        }
    }

    async fn keys(&self) -> Vec<String> {
        self.redis(redis::cmd("KEYS").arg(format!("{}*", self.config.key_prefix)))
            .await
    }
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|_| unique("user-")).collect()
}

/// Node `a` invalidates `user` until node `b`, which held it, misses it: `b` subscribes in the
/// background, and an invalidation published before that never reaches it.
async fn invalidated_everywhere(a: &Node, b: &Node, user: &str) -> bool {
    wait_until(
        async || {
            a.cache.invalidate(user);
            b.cache.get(user, "v1", &query(5)).await.is_none()
        },
        WAIT,
    )
    .await
}

async fn shared_between_nodes_and_invalidated_everywhere(url: &str) {
    let a = Node::new(url, &unique("t-")).connected().await;
    let b = a.peer().connected().await;
    // Enough users for every shard of a cluster to hold some.
    let users = users(24);
    for user in &users {
        a.cache.put(user, "v1", &query(5), recs(user, "i1")).await;
    }
    for user in &users {
        // Node b has nothing in L1 but finds it in Redis.
        assert_eq!(
            b.cache.get(user, "v1", &query(5)).await,
            Some(recs(user, "i1"))
        );
    }
    assert_eq!(
        b.cache.get(&users[0], "v2", &query(5)).await,
        None,
        "another model version misses"
    );
    let fields: Vec<String> = a.redis(redis::cmd("HKEYS").arg(a.key(&users[0]))).await;
    assert_eq!(fields.len(), 1);
    assert_eq!(a.keys().await.len(), users.len());

    // A session change on node a drops the entry from Redis and from node b's L1.
    for user in &users {
        assert!(
            invalidated_everywhere(&a, &b, user).await,
            "node b still serves {user}"
        );
    }
    assert_eq!(a.keys().await, Vec::<String>::new());
}

async fn holds_at_most_max_variants_per_user(url: &str) {
    let cache = Node::new(url, &unique("t-")).connected().await;
    let user = unique("user-");
    // A client cycling through `k` would otherwise grow the user's hash without bound.
    for k in 1..=100 {
        cache
            .cache
            .put(&user, "v1", &query(k), recs(&user, "i1"))
            .await;
    }
    let len: usize = cache.redis(redis::cmd("HLEN").arg(cache.key(&user))).await;
    assert!((1..=16).contains(&len), "{len} results held");
    let fresh = cache.peer().connected().await;
    assert!(fresh.cache.get(&user, "v1", &query(100)).await.is_some());
}

async fn clear_drops_every_user_everywhere(url: &str) {
    let a = Node::new(url, &unique("t-")).connected().await;
    let b = a.peer().connected().await;
    let users = users(24);
    for user in &users {
        a.cache.put(user, "v1", &query(5), recs(user, "i1")).await;
        assert!(b.cache.get(user, "v1", &query(5)).await.is_some());
    }
    // Once b hears a's invalidations, one clear reaches it.
    let (first, rest) = users.split_first().expect("users");
    assert!(invalidated_everywhere(&a, &b, first).await);
    a.cache.clear();
    assert!(
        wait_until(
            async || {
                for user in rest {
                    if b.cache.get(user, "v1", &query(5)).await.is_some() {
                        return false;
                    }
                }
                a.keys().await.is_empty()
            },
            WAIT
        )
        .await,
        "a clear left entries in node b's L1 or in Redis"
    );
}

#[tokio::test]
async fn redis_cluster_tier_is_shared_between_nodes_and_invalidated_everywhere() {
    shared_between_nodes_and_invalidated_everywhere(&test_env("STREAMREC_TEST_REDIS_CLUSTER"))
        .await;
}

#[tokio::test]
async fn redis_cluster_holds_at_most_max_variants_per_user() {
    holds_at_most_max_variants_per_user(&test_env("STREAMREC_TEST_REDIS_CLUSTER")).await;
}

#[tokio::test]
async fn redis_cluster_clear_drops_every_user_on_every_shard() {
    clear_drops_every_user_everywhere(&test_env("STREAMREC_TEST_REDIS_CLUSTER")).await;
}

#[tokio::test]
async fn redis_server_tier_keeps_to_its_key_prefix() {
    shared_between_nodes_and_invalidated_everywhere(&test_env("STREAMREC_TEST_REDIS")).await;
}

#[tokio::test]
async fn redis_server_clear_drops_every_user_of_its_prefix() {
    let url = test_env("STREAMREC_TEST_REDIS");
    let other = Node::new(&url, &unique("t-")).connected().await;
    other.cache.put("u", "v1", &query(5), recs("u", "i1")).await;
    clear_drops_every_user_everywhere(&url).await;
    assert_eq!(
        other.keys().await.len(),
        1,
        "a clear reached another prefix"
    );
}

/// A six-instance cluster of the test's own, on ports no other server uses, removed on drop.
struct OwnCluster {
    base: u16,
}

impl OwnCluster {
    fn start() -> Self {
        let cluster = Self { base: free_base() };
        cluster.up();
        cluster
    }

    /// Starts what is not running and waits until the cluster is healthy.
    fn up(&self) {
        assert!(self.services("up"), "services.sh up redis-cluster failed");
    }

    fn services(&self, action: &str) -> bool {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh");
        let status = Command::new("bash")
            .arg(script)
            .args([action, "redis-cluster"])
            .env("STREAMREC_REDIS_CLUSTER_PORT", self.base.to_string())
            .stdout(Stdio::null())
            .status()
            .expect("services.sh runs");
        status.success()
    }

    fn ports(&self) -> impl Iterator<Item = u16> {
        self.base..self.base + 6
    }

    fn url(&self) -> String {
        let nodes: Vec<String> = self.ports().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", nodes.join(","))
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        if !self.services("down") {
            eprintln!(
                "services.sh down redis-cluster failed on port {}",
                self.base
            );
        }
    }
}

/// Six consecutive ports, and their cluster bus ports (+10000), that nothing listens on.
fn free_base() -> u16 {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let offset = (std::process::id() % 700) as u16 * 10;
    (0..700)
        .map(|i| 21000 + (offset + i * 10) % 7000)
        .find(|base| (*base..base + 6).all(|p| free(p) && free(p + 10000)))
        .expect("free ports")
}

/// What one instance says about itself.
async fn info(port: u16, field: &str) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO").query_async(&mut conn).await.ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

async fn keyslot(node: &Node, key: &str) -> u16 {
    node.redis(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
        .await
}

/// The port of the primary serving `slot`, from `CLUSTER NODES`.
async fn primary_of(node: &Node, slot: u16) -> u16 {
    let nodes: String = node.redis(redis::cmd("CLUSTER").arg("NODES")).await;
    nodes
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let serves = fields.get(8..)?.iter().any(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                let (from, to) = (from.parse::<u16>(), to.parse::<u16>());
                matches!((from, to), (Ok(f), Ok(t)) if (f..=t).contains(&slot))
            });
            let port = fields.get(1)?.split('@').next()?.rsplit_once(':')?.1;
            if fields.get(2)?.contains("master") && serves {
                port.parse().ok()
            } else {
                None
            }
        })
        .expect("a primary serves every slot")
}

/// Every primary's replica has applied everything written so far.
async fn replicated(cluster: &OwnCluster) -> bool {
    for port in cluster.ports() {
        if info(port, "role").await.as_deref() != Some("master") {
            continue;
        }
        let offset = info(port, "master_repl_offset").await;
        let replica = info(port, "slave0").await.unwrap_or_default();
        let caught_up = replica
            .split(',')
            .find_map(|kv| kv.strip_prefix("offset="))
            .zip(offset.as_deref())
            .is_some_and(|(replica, primary)| replica == primary);
        if !caught_up {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_serves_reads_through_a_primary_failover() {
    let cluster = OwnCluster::start();
    let url = cluster.url();
    let writer = Node::new(&url, &unique("t-")).connected().await;
    let reader = writer.peer().connected().await;

    // The primary to stop is the one serving the invalidation channel, so that both the data
    // of its shard and the invalidations of every shard go through the failover.
    let channel_slot = keyslot(&writer, &format!("{}invalidate", writer.config.key_prefix)).await;
    let victim = primary_of(&writer, channel_slot).await;
    let (mut on_victim, mut elsewhere) = (Vec::new(), Vec::new());
    while on_victim.len() < 8 || elsewhere.len() < 8 {
        let user = unique("user-");
        let slot = keyslot(&writer, &writer.key(&user)).await;
        if primary_of(&writer, slot).await == victim {
            on_victim.push(user);
        } else {
            elsewhere.push(user);
        }
    }
    for user in on_victim.iter().chain(&elsewhere) {
        writer
            .cache
            .put(user, "v1", &query(5), recs(user, "i1"))
            .await;
    }
    assert!(
        wait_until(async || replicated(&cluster).await, WAIT).await,
        "replicas did not catch up"
    );
    // The reader hears the writer's invalidations before the failover.
    let spare = &on_victim[0];
    assert_eq!(
        reader.cache.get(spare, "v1", &query(5)).await,
        Some(recs(spare, "i1"))
    );
    assert!(invalidated_everywhere(&writer, &reader, spare).await);
    let on_victim = &on_victim[1..];

    let pid = info(victim, "process_id").await.expect("victim's pid");
    let killed = Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let stopped = Instant::now();

    // The writer serves its own entries from L1 at once, whatever Redis does.
    let q = query(5);
    for user in on_victim {
        let read = tokio::time::timeout(Duration::from_secs(1), writer.cache.get(user, "v1", &q));
        assert_eq!(
            read.await.expect("an L1 read waits for nothing"),
            Some(recs(user, "i1"))
        );
    }
    // A node with an empty L1 reads the other shards throughout, and the stopped primary's
    // shard once its replica took over and the client refreshed its slots.
    let fresh = reader.peer();
    for user in &elsewhere {
        assert!(
            wait_until(
                async || fresh.cache.get(user, "v1", &query(5)).await.is_some(),
                WAIT
            )
            .await,
            "another shard's entry is not served during the failover"
        );
    }
    let elsewhere_served = stopped.elapsed();
    let served_again = wait_for(
        async || {
            for user in on_victim {
                fresh.cache.get(user, "v1", &query(5)).await?;
            }
            Some(stopped.elapsed())
        },
        FAILOVER,
    )
    .await
    .expect("the stopped primary's entries are not served again");
    eprintln!(
        "primary {victim} stopped: other shards served after {elsewhere_served:?}, its own \
         entries after {served_again:?}"
    );
    assert!(
        wait_until(async || fresh.cache.health().await.is_ok(), FAILOVER).await,
        "the cluster is not healthy after the failover"
    );

    // Invalidations reach other nodes again, whether they subscribed before the failover (the
    // subscription moved with the channel's shard) or after it.
    for (node, users) in [(&reader, &on_victim[..3]), (&fresh, &on_victim[3..6])] {
        for user in users {
            assert!(
                node.cache.get(user, "v1", &query(5)).await.is_some(),
                "{user} is not served after the failover"
            );
            assert!(
                invalidated_everywhere(&writer, node, user).await,
                "an invalidation after the failover did not reach the other node"
            );
        }
    }

    // The stopped instance comes back as the new primary's replica.
    cluster.up();
    assert_eq!(info(victim, "role").await.as_deref(), Some("slave"));
    assert!(
        fresh
            .cache
            .get(&elsewhere[0], "v1", &query(5))
            .await
            .is_some()
    );
}
