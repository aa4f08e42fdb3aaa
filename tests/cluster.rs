//! End-to-end: three `streamrec` processes as one cluster on the broker `scripts/services.sh`
//! starts. The Kafka consumer group decides which node owns which partition of `user-events`;
//! any node answers for any user (forwarding to the owner), and a node killed with SIGKILL
//! loses nobody's events: once the group has reassigned its partitions, the survivors serve its
//! users with exactly the counts they had, restored from the sessions changelog, and so does the
//! node when it comes back on its old data dir.
//!
//! Then catalogue writes reach every node, a WebSocket on a node that does not own its user gets
//! the push for an event posted through a third node, and a rolling restart under a read load
//! fails no read.
//!
//! One test, since each step needs the cluster the one before it built. It prints what a run
//! measured (formation, kill to reassignment, kill to every count exact, restart to ownership,
//! push latency across nodes, reads during the rolling restart).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Partitions of `user-events` in this test: more than nodes, so that one node owns two.
const PARTITIONS: u32 = 4;
/// The header naming the node that served a user-scoped request.
const OWNER_HEADER: &str = "x-streamrec-owner";

/// Partition → owning node id.
type Owners = BTreeMap<u32, String>;

/// This test's slice of the broker: its own topic prefix and consumer group.
struct Topics {
    url: String,
    prefix: String,
    group: String,
}

impl Topics {
    fn new(url: &str) -> Self {
        let id = unique("");
        Self {
            url: url.to_owned(),
            prefix: format!("c{id}."),
            group: format!("g{id}"),
        }
    }

    /// The settings of node `node_id` listening on (and advertising) `addr`. Timers are short so
    /// that a kill is noticed in seconds: the group's session times out after 6 s, a silent
    /// member leaves the map after 4 s.
    fn settings(&self, node_id: &str, addr: SocketAddr) -> Vec<(&'static str, String)> {
        vec![
            ("STREAMREC__EVENTS__URL", self.url.clone()),
            ("STREAMREC__EVENTS__TOPIC_PREFIX", self.prefix.clone()),
            ("STREAMREC__EVENTS__GROUP", self.group.clone()),
            ("STREAMREC__EVENTS__NUM_PARTITIONS", PARTITIONS.to_string()),
            ("STREAMREC__EVENTS__SESSION_TIMEOUT", "6s".into()),
            ("STREAMREC__EVENTS__ASSIGN_SETTLE", "1s".into()),
            ("STREAMREC__CLUSTER__NODE_ID", node_id.to_owned()),
            ("STREAMREC__CLUSTER__ADVERTISE", addr.to_string()),
            (
                "STREAMREC__CLUSTER__SECRET",
                "cluster-test-shared-secret".into(),
            ),
            ("STREAMREC__CLUSTER__STATUS_INTERVAL", "500ms".into()),
            ("STREAMREC__CLUSTER__MEMBER_TIMEOUT", "4s".into()),
            // A move on tansu takes up to about 20 s (its rebalance rounds, the previous holder
            // letting go, the restore): a read waits that long rather than failing.
            ("STREAMREC__CLUSTER__HANDOFF_TIMEOUT", "30s".into()),
            // Longer than the handoff timeout, so that a request waiting for a moving partition
            // ends on the handoff timeout's 503, not on the request timeout.
            ("STREAMREC__SERVER__REQUEST_TIMEOUT", "40s".into()),
        ]
    }
}

/// One member: its identity, where it listens, and its process while it runs.
struct Node {
    id: String,
    addr: SocketAddr,
    /// Its log (`node.log`) and data dir (`data/`), kept across restarts.
    dir: PathBuf,
    server: Option<Server>,
}

impl Node {
    /// Starts (or restarts) the node on its own data dir and address.
    async fn start(&mut self, topics: &Topics) {
        let settings = topics.settings(&self.id, self.addr);
        let data = self.dir.join("data");
        self.server = Some(Server::start_at(&self.dir, &data, &settings, self.addr).await);
    }
}

/// The running nodes' servers.
fn live(nodes: &[Node]) -> Vec<&Server> {
    nodes.iter().filter_map(|n| n.server.as_ref()).collect()
}

fn partition(user: &str) -> u32 {
    common::partition::partition_for(user, PARTITIONS)
}

/// The end of every node's log, for a failure message.
fn logs(nodes: &[Node]) -> String {
    let tail = |node: &Node| {
        let log = std::fs::read_to_string(node.dir.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- {} ---\n{}",
            node.id,
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    };
    nodes.iter().map(tail).collect::<Vec<_>>().join("\n")
}

/// The owner of every partition, once every running node's `GET /v1/admin/cluster` says the same:
/// the running nodes, and only they, as members at their advertised addresses, every partition
/// active and owned by one of them, each member listing the partitions it owns. Otherwise, what
/// is not so yet.
async fn agreed_owners(nodes: &[Node]) -> Result<Owners, String> {
    let running: BTreeMap<String, String> = nodes
        .iter()
        .filter(|n| n.server.is_some())
        .map(|n| (n.id.clone(), n.addr.to_string()))
        .collect();
    let mut views: Vec<(&str, Owners)> = Vec::new();
    for node in nodes {
        let Some(server) = &node.server else {
            continue;
        };
        let (status, view) = server.get("/v1/admin/cluster").await;
        if status != 200 {
            return Err(format!("{}: {status} {view}", node.id));
        }
        let mut addresses = BTreeMap::new();
        let mut listed = BTreeMap::new();
        for member in view["members"].as_array().into_iter().flatten() {
            let id = member["node_id"].as_str().unwrap_or_default().to_owned();
            let mut partitions: Vec<u32> = member["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .map(|p| p as u32)
                .collect();
            partitions.sort_unstable();
            let address = member["address"].as_str().unwrap_or_default().to_owned();
            addresses.insert(id.clone(), address);
            listed.insert(id, partitions);
        }
        if addresses != running {
            return Err(format!("{} sees members {addresses:?}", node.id));
        }
        let mut owners = Owners::new();
        for p in view["partitions"].as_array().into_iter().flatten() {
            let owner = p["owner"].as_str().filter(|o| running.contains_key(*o));
            match (p["partition"].as_u64(), owner, p["state"].as_str()) {
                (Some(partition), Some(owner), Some("active")) => {
                    owners.insert(partition as u32, owner.to_owned());
                }
                _ => return Err(format!("{} sees partition {p}", node.id)),
            }
        }
        if owners.keys().copied().ne(0..PARTITIONS) {
            return Err(format!("{} sees partitions {owners:?}", node.id));
        }
        for (id, partitions) in &listed {
            let owned: Vec<u32> = owners
                .iter()
                .filter(|(_, owner)| *owner == id)
                .map(|(p, _)| *p)
                .collect();
            if *partitions != owned {
                return Err(format!(
                    "{} sees {id} listing {partitions:?} while owning {owned:?}",
                    node.id
                ));
            }
        }
        views.push((node.id.as_str(), owners));
    }
    let Some((_, first)) = views.first() else {
        return Err("no node runs".to_owned());
    };
    if let Some((id, other)) = views.iter().find(|(_, owners)| owners != first) {
        return Err(format!(
            "nodes disagree: {first:?}, and {id} sees {other:?}"
        ));
    }
    Ok(first.clone())
}

/// `GET /v1/users/{user}` from `server`: status, `x-streamrec-owner`, body.
async fn user_view(server: &Server, user: &str) -> (u16, Option<String>, Value) {
    let request = server.http.get(server.url(&format!("/v1/users/{user}")));
    let Ok(response) = request.send().await else {
        return (0, None, Value::Null);
    };
    let status = response.status().as_u16();
    let owner = response
        .headers()
        .get(OWNER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, owner, response.json().await.unwrap_or(Value::Null))
}

/// Whether every running node shows each user's exact count, served by the owner `owners` names
/// for the user's partition; otherwise the first answer that is not so.
async fn exact(
    nodes: &[Node],
    expected: &BTreeMap<String, u64>,
    owners: &Owners,
) -> Result<(), String> {
    for (user, want) in expected {
        let owner = &owners[&partition(user)];
        for node in nodes {
            let Some(server) = &node.server else {
                continue;
            };
            let (status, served_by, body) = user_view(server, user).await;
            let right = status == 200
                && body["num_events"].as_u64() == Some(*want)
                && served_by.as_deref() == Some(owner.as_str());
            if !right {
                return Err(format!(
                    "{user} (partition {}, owner {owner}, {want} events) from {}: {status}, \
                     {OWNER_HEADER} {served_by:?}, {body}",
                    partition(user),
                    node.id
                ));
            }
        }
    }
    Ok(())
}

/// A cluster that has settled: who owns what, and since when the nodes have agreed on it.
struct Settled {
    owners: Owners,
    agreed_at: Instant,
}

/// Waits until the running nodes agree on the owners, `also` holds for them, and every user's
/// count is exact from every node (with the owners unchanged meanwhile). Fails with the last
/// thing that was not so and the nodes' logs.
async fn settle(
    nodes: &[Node],
    expected: &BTreeMap<String, u64>,
    also: impl Fn(&Owners) -> bool,
    timeout: Duration,
    what: &str,
) -> Settled {
    let mut last = String::new();
    let mut agreed: Option<(Owners, Instant)> = None;
    let settled = wait_for(
        async || {
            let owners = match agreed_owners(nodes).await {
                Ok(owners) => owners,
                Err(why) => {
                    last = why;
                    return None;
                }
            };
            if agreed.as_ref().is_none_or(|(seen, _)| *seen != owners) {
                agreed = Some((owners.clone(), Instant::now()));
            }
            if !also(&owners) {
                last = format!("owners {owners:?}");
                return None;
            }
            if let Err(why) = exact(nodes, expected, &owners).await {
                last = why;
                return None;
            }
            match agreed_owners(nodes).await {
                Ok(again) if again == owners => Some(owners),
                Ok(again) => {
                    last = format!("owners moved from {owners:?} to {again:?}");
                    None
                }
                Err(why) => {
                    last = why;
                    None
                }
            }
        },
        timeout,
    )
    .await;
    let Some(owners) = settled else {
        panic!("{what}: not so within {timeout:?}: {last}\n{}", logs(nodes));
    };
    let agreed_at = agreed.map_or_else(Instant::now, |(_, at)| at);
    Settled { owners, agreed_at }
}

/// Posts `events` through `server` until the broker has acknowledged them (a retry with the same
/// event ids is safe: each is applied once).
async fn post(server: &Server, events: &[Value]) {
    let mut refused = (0, Value::Null);
    let accepted = wait_for(
        async || {
            let (status, body) = server.post_events(events.to_vec()).await;
            if status == 202 {
                return Some(body);
            }
            refused = (status, body);
            None
        },
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|| panic!("events never accepted: {} {}", refused.0, refused.1));
    assert_eq!(accepted["accepted"], events.len(), "{accepted}");
}

/// Round `round` of clicks: user `u` gets 1 + (u + round) % 3 of them, posted through
/// `through[(u + round) % through.len()]`, and `expected` counts them.
async fn post_round(
    through: &[&Server],
    users: &[String],
    round: usize,
    expected: &mut BTreeMap<String, u64>,
) {
    let mut batches: Vec<Vec<Value>> = vec![Vec::new(); through.len()];
    for (u, user) in users.iter().enumerate() {
        let n = 1 + (u + round) % 3;
        for k in 0..n {
            let id = format!("r{round}-{user}-{k}");
            let item = format!("item{}", (u + k) % 7);
            batches[(u + round) % through.len()].push(click(&id, user, &item));
        }
        *expected.entry(user.clone()).or_default() += n as u64;
    }
    for (server, batch) in through.iter().zip(&batches) {
        if !batch.is_empty() {
            post(server, batch).await;
        }
    }
}

fn owned_by<'a>(owners: &'a Owners, node_id: &'a str) -> impl Iterator<Item = u32> + 'a {
    owners
        .iter()
        .filter(move |(_, owner)| *owner == node_id)
        .map(|(p, _)| *p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_users_and_lose_none_when_one_is_killed_or_all_restart_in_turn() {
    let (_guard, root) = workdir();
    let topics = Topics::new(&test_env("STREAMREC_TEST_KAFKA"));
    let mut addresses = BTreeSet::new();
    while addresses.len() < 3 {
        addresses.insert(free_addr());
    }
    let mut nodes: Vec<Node> = addresses
        .into_iter()
        .enumerate()
        .map(|(i, addr)| {
            let dir = root.join(format!("node-{}", i + 1));
            std::fs::create_dir_all(&dir).expect("node dir");
            Node {
                id: format!("node-{}", i + 1),
                addr,
                dir,
                server: None,
            }
        })
        .collect();

    // (a) Three members, every partition active, the same owners seen from every node. Each
    // node owns one at least (the assignment is balanced): until then the group is still
    // rebalancing, a member that joined last holding nothing yet.
    let started = Instant::now();
    for node in &mut nodes {
        node.start(&topics).await;
    }
    let formed = settle(
        &nodes,
        &BTreeMap::new(),
        |now| nodes.iter().all(|n| owned_by(now, &n.id).next().is_some()),
        Duration::from_secs(90),
        "three nodes form one cluster",
    )
    .await;
    let owners = formed.owners;
    eprintln!(
        "cluster: three nodes started and agreed in {:.1}s: {owners:?}",
        started.elapsed().as_secs_f64()
    );

    // (b) Events for 40 users (every partition has some) posted through all three nodes; each
    // node answers for each user with the exact count, served by the owner of its partition.
    let users: Vec<String> = (0..40).map(|u| format!("user-{u}")).collect();
    let covered: BTreeSet<u32> = users.iter().map(|u| partition(u)).collect();
    assert_eq!(covered.len(), PARTITIONS as usize, "{covered:?}");
    let mut expected = BTreeMap::new();
    let posted = Instant::now();
    post_round(&live(&nodes), &users, 0, &mut expected).await;
    let owners = settle(
        &nodes,
        &expected,
        |_| true,
        Duration::from_secs(60),
        "every count exact from every node",
    )
    .await
    .owners;
    eprintln!(
        "cluster: {} events for {} users exact from all three nodes {:.1}s after the post",
        expected.values().sum::<u64>(),
        users.len(),
        posted.elapsed().as_secs_f64()
    );

    // (c) SIGKILL the node owning most partitions. Events keep coming through the survivors:
    // before the others notice, and after the dead member left the map while its partitions
    // move. Once the group reassigned them (after its session timeout) the survivors serve every
    // user exactly, the killed node's users restored from the changelog.
    let victim = (0..nodes.len())
        .max_by_key(|&i| owned_by(&owners, &nodes[i].id).count())
        .expect("three nodes");
    let victim_id = nodes[victim].id.clone();
    let moving: Vec<u32> = owned_by(&owners, &victim_id).collect();
    assert!(!moving.is_empty(), "{victim_id} owns nothing: {owners:?}");
    let killed = Instant::now();
    nodes[victim].server.take().expect("running").kill_9();
    post_round(&live(&nodes), &users, 1, &mut expected).await;
    let mut last = Value::Null;
    let dropped = wait_until(
        async || {
            for server in live(&nodes) {
                let (_, view) = server.get("/v1/admin/cluster").await;
                let members = view["members"].as_array();
                if members.is_none_or(|m| m.iter().any(|m| m["node_id"] == victim_id.as_str())) {
                    last = view;
                    return false;
                }
            }
            true
        },
        Duration::from_secs(60),
    )
    .await;
    assert!(
        dropped,
        "the survivors never dropped {victim_id}: {last}\n{}",
        logs(&nodes)
    );
    let dropped_after = killed.elapsed();
    post_round(&live(&nodes), &users, 2, &mut expected).await;
    let survived = settle(
        &nodes,
        &expected,
        |_| true,
        Duration::from_secs(90),
        "the survivors serve every user exactly",
    )
    .await;
    let exact_after = killed.elapsed();
    for p in &moving {
        assert_ne!(survived.owners[p], victim_id, "partition {p}");
    }
    eprintln!(
        "cluster: killed {victim_id} (partitions {moving:?}); dropped from the map after \
         {:.1}s, partitions reassigned and agreed after {:.1}s, all {} users exact on both \
         survivors after {:.1}s: {:?}",
        dropped_after.as_secs_f64(),
        survived
            .agreed_at
            .saturating_duration_since(killed)
            .as_secs_f64(),
        users.len(),
        exact_after.as_secs_f64(),
        survived.owners
    );

    // (d) The killed node comes back on its data dir and address: it owns partitions again,
    // and every count is still exact from all three, whatever its disk held from before.
    let restarted = Instant::now();
    nodes[victim].start(&topics).await;
    let ready_after = restarted.elapsed();
    let back = settle(
        &nodes,
        &expected,
        |now| owned_by(now, &victim_id).next().is_some(),
        Duration::from_secs(90),
        "the restarted node owns partitions and every count is exact",
    )
    .await;
    eprintln!(
        "cluster: restarted {victim_id} ready after {:.1}s, owning {:?} after {:.1}s, all exact \
         after {:.1}s: {:?}",
        ready_after.as_secs_f64(),
        owned_by(&back.owners, &victim_id).collect::<Vec<_>>(),
        back.agreed_at
            .saturating_duration_since(restarted)
            .as_secs_f64(),
        restarted.elapsed().as_secs_f64(),
        back.owners
    );

    // Events through all three, the restarted one included, still land exactly once.
    post_round(&live(&nodes), &users, 3, &mut expected).await;
    settle(
        &nodes,
        &expected,
        // The assignor may still move a partition meanwhile: counts stay exact whoever owns it.
        |_| true,
        Duration::from_secs(60),
        "every count exact after the restart",
    )
    .await;
    eprintln!(
        "cluster: {} events for {} users exact from all three nodes after the restart",
        expected.values().sum::<u64>(),
        users.len(),
    );

    // (e) Catalogue writes reach every node: items put through one node are served by all
    // (they go through `product-updates`, which every node reads whole).
    let items: Vec<String> = (0..7).map(|i| format!("item{i}")).collect();
    live(&nodes)[0].catalog(&items).await;
    live(&nodes)[0].catalog(["solo"]).await;
    for server in live(&nodes) {
        eventually(server, "/v1/items/item6", |s, _| s == 200).await;
    }
    // A push crosses nodes: a WebSocket on a node that does not own the user hears of an
    // event posted through the third node, applied by the owner.
    post_round(&live(&nodes), &users, 4, &mut expected).await;
    let owners = settle(
        &nodes,
        &expected,
        |_| true,
        Duration::from_secs(60),
        "round 4",
    )
    .await
    .owners;
    // Training reads every partition's events, whichever node journaled them (the broker's
    // tails, not only the training node's log): every node's version knows every user.
    for server in live(&nodes) {
        server.train().await;
        let (_, models) = server.get("/v1/admin/models").await;
        let newest = models["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .max_by_key(|v| v["created_at"].as_i64())
            .expect("a version");
        assert_eq!(
            newest["features"]["num_users"].as_u64(),
            Some(users.len() as u64),
            "{newest}"
        );
    }
    let user = users
        .iter()
        .find(|u| owners[&partition(u)] != nodes[0].id)
        .expect("a user node-1 does not own");
    let owner = &owners[&partition(user)];
    let third = nodes
        .iter()
        .find(|n| n.id != nodes[0].id && n.id != *owner)
        .and_then(|n| n.server.as_ref())
        .expect("a third node");
    let watcher = nodes[0].server.as_ref().expect("running");
    let url = watcher.ws_url(&format!("/v1/ws?user_id={user}&k=4"));
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket");
    let (_tx, mut rx) = futures::StreamExt::split(ws);
    let first = next_json(&mut rx).await;
    assert_eq!(first["type"], "recommendations", "{first}");
    let top = first["items"][0]["item_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no recommendation for {user}: {first}"))
        .to_owned();
    let pushed = Instant::now();
    post(third, &[click("push-1", user, &top)]).await;
    *expected.get_mut(user).expect("counted") += 1;
    let update = next_json(&mut rx).await;
    assert_eq!(update["type"], "recommendations", "{update}");
    let ids: Vec<&str> = update["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["item_id"].as_str())
        .collect();
    assert!(!ids.contains(&top.as_str()), "{top} still in {update}");
    eprintln!(
        "cluster: a WebSocket on {} for {user} (owned by {owner}) got the push {:.0} ms after \
         an event posted through a third node",
        nodes[0].id,
        pushed.elapsed().as_secs_f64() * 1000.0
    );

    // Trending counts the whole cluster: an item only the owner's user clicked trends on
    // every node.
    post(third, &[click("solo-1", user, "solo")]).await;
    *expected.get_mut(user).expect("counted") += 1;
    for server in live(&nodes) {
        eventually(server, "/v1/trending?k=50", |s, b| {
            s == 200
                && b["items"]
                    .as_array()
                    .is_some_and(|items| items.iter().any(|i| i["item_id"] == "solo"))
        })
        .await;
    }

    // Popularity counts every partition's users: every node holds every item clicked since it
    // was catalogued ("solo" by one user of one partition too), its own partitions' weights from
    // its store and the others' as their owners published them, so all agree on the total.
    let before_restarts = popularity_agrees(&nodes, items.len() + 1).await;

    // (f) A rolling restart (SIGTERM, one node at a time) under a steady read load on the other
    // nodes fails no read: a moving partition's requests wait for its new owner.
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let reads = Arc::new(AtomicU64::new(0));
    let slowest_ms = Arc::new(AtomicU64::new(0));
    for i in 0..nodes.len() {
        let others: Vec<(reqwest::Client, SocketAddr)> = nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .filter_map(|(_, n)| n.server.as_ref().map(|s| (s.http.clone(), n.addr)))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(read_load(
            others,
            users.clone(),
            stop.clone(),
            reads.clone(),
            slowest_ms.clone(),
            failures.clone(),
        ));
        let server = nodes[i].server.take().expect("running");
        assert!(
            server.terminate(Duration::from_secs(30)),
            "{} exits cleanly",
            nodes[i].id
        );
        nodes[i].start(&topics).await;
        settle(
            &nodes,
            &expected,
            |_| true,
            Duration::from_secs(90),
            "every count exact after a node restarted",
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        reader.await.expect("reader");
    }
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} failed reads: {failures:?}",
        failures.len()
    );
    eprintln!(
        "cluster: rolling restart of three nodes under load: {} reads, none failed, the slowest \
         {} ms (waiting for a moving partition); {:.1}s in all",
        reads.load(Ordering::Relaxed),
        slowest_ms.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    // Every node came back on its store and reread the others' weights: they agree still.
    let after_restarts = popularity_agrees(&nodes, items.len() + 1).await;
    eprintln!(
        "cluster: item popularity the same on every node: total {before_restarts:.2}, \
         {after_restarts:.2} after the rolling restart"
    );
}

/// Waits until every running node's popularity holds `num_items` items and the same total
/// weight (> 0); returns it.
async fn popularity_agrees(nodes: &[Node], num_items: usize) -> f64 {
    let mut last = Vec::new();
    let agreed = wait_until(
        async || {
            last.clear();
            for server in live(nodes) {
                let state = actor_state(server, "popularity_publisher").await;
                last.push((state["num_items"].as_u64(), state["total_weight"].as_f64()));
            }
            let totals: Vec<f64> = last.iter().filter_map(|(_, t)| *t).collect();
            last.iter().all(|(n, _)| *n == Some(num_items as u64))
                && totals.len() == last.len()
                && totals[0] > 0.0
                && totals
                    .iter()
                    .all(|t| (t - totals[0]).abs() < 1e-6 * totals[0])
        },
        Duration::from_secs(30),
    )
    .await;
    assert!(
        agreed,
        "nodes' popularity (items, total) never agreed: {last:?}\n{}",
        logs(nodes)
    );
    last[0].1.unwrap_or_default()
}

/// Reads every user's view from `nodes` in turn until `stop`, counting reads and recording any
/// that did not succeed.
async fn read_load(
    nodes: Vec<(reqwest::Client, SocketAddr)>,
    users: Vec<String>,
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    slowest_ms: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
) {
    for (n, user) in users.iter().cycle().enumerate() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (http, addr) = &nodes[n % nodes.len()];
        let started = Instant::now();
        let answer = http
            .get(format!("http://{addr}/v1/users/{user}"))
            .send()
            .await;
        reads.fetch_add(1, Ordering::Relaxed);
        slowest_ms.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        match answer {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                failures
                    .lock()
                    .expect("lock")
                    .push(format!("{user} from {addr}: {status} {body}"));
            }
            Err(e) => failures
                .lock()
                .expect("lock")
                .push(format!("{user} from {addr}: {e}")),
        }
    }
}
