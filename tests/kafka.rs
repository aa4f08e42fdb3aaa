//! End-to-end with Kafka: the real `streamrec` binary consuming the broker that
//! `scripts/services.sh` starts, fed and read by an ordinary Kafka client (librdkafka, with the
//! Java client's default partitioner). Each test has its own topic prefix and consumer group.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Value, json};
use support::*;

/// One test's slice of the broker.
struct Topics {
    brokers: String,
    prefix: String,
    group: String,
}

impl Topics {
    fn new(url: &str) -> Self {
        let id = unique("");
        Self {
            brokers: url.trim_start_matches("kafka://").to_owned(),
            prefix: format!("t{id}."),
            group: format!("g{id}"),
        }
    }

    fn name(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// Node settings that read these topics.
    fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "STREAMREC__EVENTS__URL",
                format!("kafka://{}", self.brokers),
            ),
            ("STREAMREC__EVENTS__TOPIC_PREFIX", self.prefix.clone()),
            ("STREAMREC__EVENTS__GROUP", self.group.clone()),
            (
                "STREAMREC__CLUSTER__SECRET",
                "kafka-test-cluster-secret".into(),
            ),
            ("STREAMREC__EVENTS__SESSION_TIMEOUT", "6s".into()),
            ("STREAMREC__CLUSTER__NODE_ID", NODE_ID.into()),
            ("STREAMREC__EVENTS__PRODUCE_TIMEOUT", "2s".into()),
        ]
    }

    fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", "10000")
            .create()
            .expect("producer")
    }

    /// Produces one message and waits for the broker's ack. A just-created topic can make the
    /// broker fail a first request: the peer retries a few times, as an application would.
    async fn produce(&self, producer: &FutureProducer, topic: &str, key: &str, value: &[u8]) {
        let name = self.name(topic);
        for attempt in 0.. {
            let sent = producer
                .send(
                    FutureRecord::to(&name).key(key).payload(value),
                    Duration::from_secs(10),
                )
                .await;
            match sent {
                Ok(_) => return,
                Err((error, _)) if attempt < 10 => {
                    eprintln!("produce to {name} failed ({error}); retrying");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err((error, _)) => panic!("the broker never acknowledged: {error}"),
            }
        }
    }

    /// Every message of `topic` from the beginning, read without a consumer group, until `n`
    /// arrived (or 20 s passed).
    fn read_all(
        &self,
        topic: &str,
        partitions: i32,
        n: usize,
    ) -> Vec<rdkafka::message::OwnedMessage> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("{}-reader", self.group))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition_offset(&self.name(topic), p, Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&list).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                out.push(m.detach());
            }
        }
        out
    }

    /// The group's committed offsets, summed over the partitions of `topic`.
    /// The offsets the nodes' group committed on `topic`, summed over its partitions.
    fn committed(&self, topic: &str, partitions: i32) -> i64 {
        self.committed_by(&self.group, topic, partitions)
    }

    /// The same for consumer group `group`.
    fn committed_by(&self, group: &str, topic: &str, partitions: i32) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .create()
            .expect("consumer");
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(&self.name(topic), p);
        }
        let committed = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .expect("committed offsets");
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum()
    }
}

/// The test binaries' partition count (see `support::streamrec`).
const PARTITIONS: i32 = 4;
/// The node id of a test's node (unless the test names its own).
const NODE_ID: &str = "kafka-test-node";

async fn kafka_node(dir: &Path, topics: &Topics) -> Server {
    Server::start_with(dir, &dir.join("data"), &topics.settings()).await
}

fn event(id: Option<&str>, user: &str, item: &str, kind: &str) -> Vec<u8> {
    let mut e = json!({"user_id": user, "item_id": item, "kind": kind});
    if let Some(id) = id {
        e["event_id"] = json!(id);
    }
    e.to_string().into_bytes()
}

async fn num_events(server: &Server, user: &str) -> u64 {
    let (_, body) = server.get(&format!("/v1/users/{user}")).await;
    body["num_events"].as_u64().unwrap_or(0)
}

fn item_ids(recs: &Value) -> Vec<String> {
    recs["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["item_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_producers_events_change_recommendations_and_bad_messages_go_to_the_dlq() {
    let (_guard, dir) = workdir();
    let topics = Topics::new(&test_env("STREAMREC_TEST_KAFKA"));
    let server = kafka_node(&dir, &topics).await;
    let producer = topics.producer();
    // The node created its topics; readiness reports the broker.
    eventually(&server, "/readyz", |_, b| {
        b["dependencies"]["events"] == "up"
    })
    .await;

    for i in 0..12 {
        let category = if i % 2 == 0 { "even" } else { "odd" };
        let item = json!({"item_id": format!("m{i}"), "title": format!("Movie {i}"), "categories": [category]});
        topics
            .produce(
                &producer,
                "product-updates",
                &format!("m{i}"),
                item.to_string().as_bytes(),
            )
            .await;
    }
    let mut history = 0;
    for u in 0..40 {
        for i in (0..12).filter(|i| (i + u) % 2 == 0 && (u + i) % 3 != 0) {
            let user = format!("u{u}");
            // No event id: the node derives one from the message's place in the topic.
            let value = event(None, &user, &format!("m{i}"), "click");
            topics
                .produce(&producer, "user-events", &user, &value)
                .await;
            history += 1;
        }
    }
    // Malformed messages between good ones, on the same partition as the user's events.
    let bad: [(&str, &[u8], &str); 3] = [
        ("user-events", b"{not json", "not a valid event object"),
        (
            "user-events",
            br#"{"user_id":"u0","item_id":"m1","kind":"teleport"}"#,
            "`kind` must be one of",
        ),
        (
            "product-updates",
            br#"{"item_id":"m99","title":""}"#,
            "`title` must be",
        ),
    ];
    for (topic, value, _) in bad {
        topics.produce(&producer, topic, "u0", value).await;
    }
    let purchase = event(Some("p1"), "u0", "m4", "purchase");
    topics
        .produce(&producer, "transaction-stream", "u0", &purchase)
        .await;

    let mut applied = 0;
    wait_until(
        async || {
            applied = 0;
            for u in 0..40 {
                applied += num_events(&server, &format!("u{u}")).await;
            }
            applied == history + 1
        },
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(applied, history + 1, "every valid event applied once");
    let (status, item) = server.get("/v1/items/m3").await;
    assert_eq!((status, item["categories"].clone()), (200, json!(["odd"])));
    assert_eq!(server.get("/v1/items/m99").await.0, 404);

    // Each malformed message sits in its topic's DLQ with the reason and the original bytes.
    let letters: Vec<_> = [("user-events", 2), ("product-updates", 1)]
        .into_iter()
        .flat_map(|(topic, n)| topics.read_all(&format!("{topic}.dlq"), PARTITIONS, n))
        .collect();
    assert_eq!(letters.len(), 3);
    for (topic, value, why) in bad {
        let letter = letters
            .iter()
            .find(|m| m.payload() == Some(value))
            .unwrap_or_else(|| panic!("{} not in the DLQ", String::from_utf8_lossy(value)));
        assert_eq!(letter.topic(), topics.name(&format!("{topic}.dlq")));
        let headers = letter.headers().expect("headers");
        let reason = headers
            .iter()
            .find(|h| h.key == "reason")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .expect("a reason header");
        assert!(reason.contains(why), "{reason}");
    }

    // The model learns from what came through Kafka; a click from a peer changes what the user
    // is recommended.
    server.train().await;
    let (status, before) = server.get("/v1/users/watcher/recommendations?k=4").await;
    assert_eq!(status, 200, "{before}");
    let top = item_ids(&before)[0].clone();
    let clicked = event(Some("w1"), "watcher", &top, "click");
    topics
        .produce(&producer, "user-events", "watcher", &clicked)
        .await;
    let after = eventually(&server, "/v1/users/watcher/recommendations?k=4", |s, b| {
        s == 200 && !item_ids(b).contains(&top)
    })
    .await;
    assert_eq!(item_ids(&after).len(), 4);

    // A deletion from product-updates takes the item out of the catalog.
    let delete = json!({"item_id": "m3", "deleted": true}).to_string();
    topics
        .produce(&producer, "product-updates", "m3", delete.as_bytes())
        .await;
    eventually(&server, "/v1/items/m3", |s, _| s == 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_product_update_goes_to_the_dlq_and_the_partition_goes_on() {
    let (_guard, dir) = workdir();
    let topics = Topics::new(&test_env("STREAMREC_TEST_KAFKA"));
    // The catalog in PostgreSQL, which refuses `\0` in TEXT and JSONB: the case that stalled.
    let mut settings = topics.settings();
    settings.push(("STREAMREC__CATALOG__URL", fresh_database().await));
    let server = Server::start_with(&dir, &dir.join("data"), &settings).await;
    let producer = topics.producer();
    eventually(&server, "/readyz", |_, b| {
        b["dependencies"]["events"] == "up"
    })
    .await;
    // One key: every message on the same partition, in this order.
    let poison: [&[u8]; 2] = [
        br#"{"item_id":"lamp","title":"Lamp\u0000"}"#,
        br#"{"item_id":"lamp","title":"Lamp","attributes":{"spec":{"colour":"red\u0000"}}}"#,
    ];
    for value in poison {
        topics
            .produce(&producer, "product-updates", "lamp", value)
            .await;
    }
    let good = json!({"item_id": "lamp", "title": "Lamp", "attributes": {"colour": "red"}});
    topics
        .produce(
            &producer,
            "product-updates",
            "lamp",
            good.to_string().as_bytes(),
        )
        .await;

    // The good update behind the poison ones is applied...
    let item = eventually(&server, "/v1/items/lamp", |s, _| s == 200).await;
    assert_eq!(item["attributes"]["colour"], "red", "{item}");
    // ...the poison ones sit in the DLQ with their reason...
    let letters = topics.read_all("product-updates.dlq", PARTITIONS, 2);
    assert_eq!(letters.len(), 2);
    for value in poison {
        let letter = letters
            .iter()
            .find(|m| m.payload() == Some(value))
            .unwrap_or_else(|| panic!("{} not in the DLQ", String::from_utf8_lossy(value)));
        let reason = letter
            .headers()
            .expect("headers")
            .iter()
            .find(|h| h.key == "reason")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .expect("a reason header");
        assert!(reason.contains("control characters"), "{reason}");
    }
    // ...and every offset is committed (by the node's own catalogue group, which reads
    // `product-updates` whole): nothing is replayed for ever.
    let group = format!("{}.catalog.{NODE_ID}", topics.group);
    let committed = async || topics.committed_by(&group, "product-updates", PARTITIONS) >= 3;
    assert!(
        wait_until(committed, Duration::from_secs(20)).await,
        "the partition is stuck"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_events_go_through_the_broker_on_the_java_clients_partition() {
    let (_guard, dir) = workdir();
    let topics = Topics::new(&test_env("STREAMREC_TEST_KAFKA"));
    let server = kafka_node(&dir, &topics).await;
    let users: Vec<String> = (0..16).map(|u| format!("user-{u}")).collect();
    let events: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, u)| click(&format!("e{i}"), u, "i1"))
        .collect();
    // The first post may wait for the node to create its topics.
    let mut refused = (0, Value::Null);
    let accepted = wait_for(
        async || {
            let (status, body) = server.post_events(events.clone()).await;
            if status == 202 {
                return Some(body);
            }
            refused = (status, body);
            None
        },
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|| panic!("{} {}", refused.0, refused.1));
    assert_eq!(accepted["accepted"], 16);
    let messages = topics.read_all("user-events", PARTITIONS, 16);
    assert_eq!(messages.len(), 16);
    let mut seen = HashMap::new();
    for m in &messages {
        let value: Value = serde_json::from_slice(m.payload().expect("value")).expect("json");
        let user = value["user_id"].as_str().expect("user").to_owned();
        assert_eq!(m.key(), Some(user.as_bytes()));
        // murmur2, as the Java client partitions: the same function the node uses.
        let expected = common::partition::partition_for(&user, PARTITIONS as u32) as i32;
        assert_eq!(m.partition(), expected, "{user}");
        seen.insert(user, value);
    }
    assert_eq!(seen.len(), 16);
    for user in &users {
        eventually(&server, &format!("/v1/users/{user}"), |s, b| {
            s == 200 && b["num_events"] == 1
        })
        .await;
    }
    // A retry of an acknowledged batch reaches the broker again but is applied once.
    assert_eq!(server.post_events(events.clone()).await.0, 202);
    let committed = async || topics.committed("user-events", PARTITIONS) >= 32;
    assert!(
        wait_until(committed, Duration::from_secs(20)).await,
        "the group never committed the retry"
    );
    for user in &users {
        assert_eq!(num_events(&server, user).await, 1, "{user}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_applies_every_event_once_after_restart() {
    let (_guard, dir) = workdir();
    let topics = Topics::new(&test_env("STREAMREC_TEST_KAFKA"));
    let server = kafka_node(&dir, &topics).await;
    let producer = topics.producer();
    let users: Vec<String> = (0..10).map(|u| format!("r{u}")).collect();
    let total = 1500;
    let mut expected: HashMap<&str, u64> = HashMap::new();
    let mut killed = None;
    for i in 0..total {
        let user = &users[i % users.len()];
        let value = event(
            Some(&format!("k{i}")),
            user,
            &format!("item{}", i % 23),
            "view",
        );
        topics.produce(&producer, "user-events", user, &value).await;
        *expected.entry(user).or_default() += 1;
        // Killed once it is visibly applying, with much of the stream still to come.
        if killed.is_none() && i >= 500 && num_events(&server, &users[0]).await > 0 {
            killed = Some(i);
        }
        if killed == Some(i) {
            break;
        }
    }
    let killed_at = killed.expect("the node applied events while they were produced");
    server.kill_9();
    for i in killed_at + 1..total {
        let user = &users[i % users.len()];
        let value = event(
            Some(&format!("k{i}")),
            user,
            &format!("item{}", i % 23),
            "view",
        );
        topics.produce(&producer, "user-events", user, &value).await;
        *expected.entry(user).or_default() += 1;
    }

    let server = kafka_node(&dir, &topics).await;
    for user in &users {
        let want = expected[user.as_str()];
        let reached = async || num_events(&server, user).await == want;
        assert!(
            wait_until(reached, Duration::from_secs(60)).await,
            "{user}: never reached {want}"
        );
    }
    // Offsets are committed only after apply: once all is applied they reach the end.
    let committed = async || topics.committed("user-events", PARTITIONS) >= total as i64;
    assert!(
        wait_until(committed, Duration::from_secs(20)).await,
        "offsets never reached the end"
    );
    server.kill_9();
    let server = kafka_node(&dir, &topics).await;
    // Nothing is applied twice: once the restarted bridge holds every partition again (after the
    // killed member's session timed out), it has read from the committed offsets, and what it
    // found there (nothing, or a replay its sessions drop) is applied before the counts below.
    let assigned = async || {
        let bridge = actor_state(&server, "kafka_bridge").await;
        let assigned = bridge["assignment"].as_array().map(|a| {
            let user_events = |p: &&Value| p.as_str().is_some_and(|p| p.contains("user-events/"));
            a.iter().filter(user_events).count()
        });
        assigned == Some(PARTITIONS as usize)
    };
    assert!(
        wait_until(assigned, Duration::from_secs(30)).await,
        "the restarted bridge never got its partitions: {}",
        actor_state(&server, "kafka_bridge").await
    );
    for user in &users {
        assert_eq!(
            num_events(&server, user).await,
            expected[user.as_str()],
            "{user}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_down_posts_get_503_and_consumers_resume_when_it_returns() {
    let (_guard, dir) = workdir();
    let port = free_addr().port();
    service("up", "kafka", port);
    let _broker = PrivateBroker(port);
    let topics = Topics::new(&format!("kafka://127.0.0.1:{port}"));
    let server = kafka_node(&dir, &topics).await;
    let post = |from: usize, to: usize| {
        (from..to)
            .map(|i| click(&format!("d{i}"), &format!("user{}", i % 5), "i1"))
            .collect::<Vec<Value>>()
    };
    let accepted = async || server.post_events(post(0, 50)).await.0 == 202;
    assert!(
        wait_until(accepted, Duration::from_secs(30)).await,
        "the node never accepted events"
    );
    // Serving: the group assigned the node its partitions and it applied what it was sent.
    for u in 0..5 {
        eventually(&server, &format!("/v1/users/user{u}"), |s, b| {
            s == 200 && b["num_events"] == 10
        })
        .await;
    }

    service("down", "kafka", port);
    let (status, body) = server.post_events(post(50, 100)).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (503, json!("unavailable")),
        "{body}"
    );
    eventually(&server, "/readyz", |s, b| {
        s == 200
            && b["dependencies"]["events"]
                .as_str()
                .is_some_and(|e| e.starts_with("down"))
    })
    .await;
    // Reads go on while the broker is away, past the group's session timeout (6 s) too: the
    // assignment is lost, but nobody else can have been given the partitions meanwhile.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        assert_eq!(
            server.get("/v1/users/user1/recommendations?k=3").await.0,
            200
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    service("up", "kafka", port);
    let accepted = async || server.post_events(post(50, 100)).await.0 == 202;
    assert!(
        wait_until(accepted, Duration::from_secs(30)).await,
        "the node never accepted events again"
    );
    for u in 0..5 {
        eventually(&server, &format!("/v1/users/user{u}"), |s, b| {
            s == 200 && b["num_events"] == 20
        })
        .await;
    }
    eventually(&server, "/readyz", |_, b| {
        b["dependencies"]["events"] == "up"
    })
    .await;
}

/// A broker of one test's own, stopped however the test ends.
struct PrivateBroker(u16);

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        service("down", "kafka", self.0);
    }
}

/// Reads `<prefix>cluster-status` from the beginning until `done` holds for what arrived so far
/// (or 20 s passed): the records as (key, JSON value).
fn read_statuses(
    topics: &Topics,
    done: impl Fn(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &topics.brokers)
        .set("group.id", format!("{}-status-reader", topics.group))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&topics.name("cluster-status"), 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&list).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while !done(&out) && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let value = serde_json::from_slice(m.payload().unwrap_or_default()).expect("json");
            out.push((key, value));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_meet_on_the_status_topic_and_a_leaving_node_says_so() {
    let (_guard, dir) = workdir();
    let topics = Topics::new(&test_env("STREAMREC_TEST_KAFKA"));
    let mut settings = topics.settings();
    settings.extend([
        ("STREAMREC__CLUSTER__NODE_ID", "node-s".to_owned()),
        ("STREAMREC__CLUSTER__STATUS_INTERVAL", "300ms".to_owned()),
        ("STREAMREC__CLUSTER__MEMBER_TIMEOUT", "3s".to_owned()),
    ]);
    let server = Server::start_with(&dir, &dir.join("data"), &settings).await;

    // The node heartbeats its status, keyed by its id, with its advertised address.
    let heartbeats = read_statuses(&topics, |seen| seen.len() >= 3);
    assert!(heartbeats.len() >= 3, "{heartbeats:?}");
    for (key, status) in &heartbeats {
        assert_eq!(key, "node-s");
        assert_eq!(status["node_id"], "node-s");
        assert_eq!(status["address"], server.addr.to_string());
        assert_eq!(status["leaving"], false);
    }

    // Another member's status (as a second node would publish it) joins the map, with the
    // partitions it claims; silent, it is dropped after `cluster.member_timeout`.
    let peer = json!({
        "node_id": "node-t", "address": "127.0.0.1:1", "partitions": {"3": "active"},
        "generation": 1, "at_ms": now_ms(), "leaving": false,
    });
    let producer = topics.producer();
    topics
        .produce(
            &producer,
            "cluster-status",
            "node-t",
            peer.to_string().as_bytes(),
        )
        .await;
    let view = eventually(&server, "/v1/admin/cluster", |_, view| {
        view["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["node_id"] == "node-t"))
    })
    .await;
    assert_eq!(view["node_id"], "node-s");
    let peer_member = view["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["node_id"] == "node-t"))
        .cloned();
    assert_eq!(
        peer_member,
        Some(json!({"node_id": "node-t", "address": "127.0.0.1:1", "partitions": [3]}))
    );
    // The members gauge counts both.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = server
            .http
            .get(server.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if metrics.lines().any(|l| l == "streamrec_cluster_members 2") {
            break;
        }
        assert!(Instant::now() < deadline, "never two members: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually(&server, "/v1/admin/cluster", |_, view| {
        view["members"]
            .as_array()
            .is_some_and(|m| m.iter().all(|m| m["node_id"] != "node-t"))
    })
    .await;
    // Alone in its group, the node owns (active) every partition: one gauge series each.
    let owns_all = async || {
        let metrics = server.http.get(server.url("/metrics")).send().await;
        let Ok(metrics) = metrics else { return false };
        let text = metrics.text().await.unwrap_or_default();
        (0..PARTITIONS).all(|p| {
            let line = format!("streamrec_cluster_partition_owned{{partition=\"{p}\"}} 2");
            text.lines().any(|l| l == line)
        })
    };
    assert!(
        wait_until(owns_all, Duration::from_secs(30)).await,
        "the ownership gauges never showed every partition active"
    );

    // Stopping, the node says it is leaving, so the others need not wait for it to go silent.
    assert!(server.terminate(Duration::from_secs(30)), "clean exit");
    let all = read_statuses(&topics, |seen| {
        seen.iter()
            .any(|(key, s)| key == "node-s" && s["leaving"] == true)
    });
    assert!(
        all.iter()
            .any(|(key, s)| key == "node-s" && s["leaving"] == true),
        "{all:?}"
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
