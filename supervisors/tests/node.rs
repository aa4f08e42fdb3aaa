//! A whole node on embedded stores in a temp dir: sessions passivate and wake up, the live cap
//! evicts, a panicking model actor fails only its request and is restarted, replays change
//! nothing, erasure is final.

use std::sync::Arc;
use std::time::Duration;

use actors::model::ModelMsg;
use common::{Config, Event, EventKind, RecQuery};
use supervisors::Node;

fn config(dir: &std::path::Path) -> Config {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.events.num_partitions = 4;
    config.model.num_workers = 2;
    config.model.dim = 8;
    config.model.iterations = 4;
    config
}

fn event(id: &str, user: &str, item: &str) -> Event {
    Event {
        event_id: id.into(),
        user_id: user.into(),
        item_id: item.into(),
        kind: EventKind::Click,
        value: None,
        ts: 1,
    }
}

async fn wait_until(mut cond: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

async fn num_events(node: &Node, user: &str) -> u64 {
    node.user(user)
        .await
        .expect("get")
        .expect("known user")
        .num_events
}

/// The observable state of the first actor of `kind` in the tree.
fn obs(node: &Node, kind: &str) -> serde_json::Value {
    fn find(v: &serde_json::Value, kind: &str) -> Option<serde_json::Value> {
        if v["kind"] == kind {
            return Some(v["state"].clone());
        }
        v["children"].as_array()?.iter().find_map(|c| find(c, kind))
    }
    find(&node.actors(10_000), kind).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_passivate_and_wake_up_with_their_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.sessions.idle_timeout = Duration::from_millis(100);
    let node = Node::start(config).await.expect("node starts");
    node.post_events(vec![event("e1", "alice", "i1"), event("e2", "alice", "i2")])
        .await
        .expect("append");
    assert!(node.wait_caught_up(Duration::from_secs(10)).await);
    assert!(obs(&node, "session_manager")["num_live"].as_u64() >= Some(1));

    let passivated = wait_until(
        || obs(&node, "session_manager")["num_live"] == 0,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        passivated,
        "idle session was not passivated: {}",
        obs(&node, "session_manager")
    );
    assert!(obs(&node, "session_manager")["num_passivated"].as_u64() >= Some(1));

    // A request wakes the session up, rehydrated from the store.
    let user = node.user("alice").await.expect("get").expect("known user");
    assert_eq!(user.num_events, 2);
    assert_eq!(obs(&node, "session_manager")["num_live"], 1);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_session_cap_evicts_least_recently_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.sessions.max_live = 2;
    let node = Node::start(config).await.expect("node starts");
    for (i, user) in ["u1", "u2", "u3", "u4"].iter().enumerate() {
        node.post_events(vec![event(&format!("e{i}"), user, "i1")])
            .await
            .expect("append");
    }
    assert!(node.wait_caught_up(Duration::from_secs(10)).await);
    let manager = obs(&node, "session_manager");
    assert!(manager["num_live"].as_u64() <= Some(2), "{manager}");
    assert!(manager["num_evicted"].as_u64() >= Some(2), "{manager}");
    for user in ["u1", "u2", "u3", "u4"] {
        assert_eq!(
            node.user(user)
                .await
                .expect("get")
                .expect("known")
                .num_events,
            1
        );
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_model_actor_fails_its_request_and_is_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(config(dir.path())).await.expect("node starts");
    let pool = node.services().models.clone();
    let worker = pool.workers()[0].clone();
    let old_id = worker.get_id();

    worker.cast(ModelMsg::InjectPanic).expect("send");
    let req = actors::model::ModelRequest {
        interactions: vec![],
        history: vec![],
        profile: vec![],
        exclude: Default::default(),
        k: 5,
        category: None,
        vector: None,
    };
    let held = actors::call(
        &worker,
        "model worker",
        |r| ModelMsg::Recommend(req, r),
        Duration::from_secs(5),
    )
    .await;
    let error = held.expect_err("the request queued behind the panic fails");
    assert_eq!(error.code, common::ErrorCode::Unavailable);

    let restarted = wait_until(
        || pool.workers().len() == 2 && pool.workers().iter().all(|w| w.get_id() != old_id),
        Duration::from_secs(10),
    )
    .await;
    assert!(restarted, "model actor was not restarted");
    let models = obs(&node, "model_supervisor");
    assert_eq!(models["num_restarts"], 1, "{models}");
    assert!(
        models["children"][0]["last_failure"]
            .as_str()
            .is_some_and(|f| f.contains("injected fault")),
        "{models}"
    );
    // Serving works again.
    node.recommend(
        "anyone",
        &RecQuery {
            k: 3,
            category: None,
        },
    )
    .await
    .expect("recommendations after restart");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_events_change_nothing_and_erasure_is_final() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node: Arc<Node> = Node::start(config(dir.path())).await.expect("node starts");
    let first = node
        .post_events(vec![event("a", "bob", "i1"), event("b", "bob", "i2")])
        .await
        .expect("append");
    assert_eq!((first.accepted, first.duplicates), (2, 0));
    let again = node
        .post_events(vec![event("a", "bob", "i1"), event("c", "bob", "i3")])
        .await
        .expect("append");
    assert_eq!((again.accepted, again.duplicates), (1, 1));
    assert!(node.wait_caught_up(Duration::from_secs(10)).await);
    assert_eq!(num_events(&node, "bob").await, 3);

    node.erase_user("bob").await.expect("erase");
    assert!(node.user("bob").await.expect("get").is_none());
    // An event from before the erasure delivered again stays out; event ids are free again, so
    // a new event under a used id counts, and only it.
    // The erasure covers its own millisecond; a new event happens later.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let new = Event {
        ts: common::now_millis(),
        ..event("b", "bob", "i2")
    };
    let after = node
        .post_events(vec![event("a", "bob", "i1"), new])
        .await
        .expect("append");
    assert_eq!(after.accepted, 2);
    assert!(node.wait_caught_up(Duration::from_secs(10)).await);
    assert_eq!(num_events(&node, "bob").await, 1);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_is_archived_once_and_reads_back_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.objects.archive_interval = Duration::ZERO;
    let node = Node::start(config).await.expect("node starts");
    let posted: Vec<Event> = (0..30)
        .map(|i| {
            event(
                &format!("a{i}"),
                &format!("user{}", i % 7),
                &format!("i{i}"),
            )
        })
        .collect();
    node.post_events(posted.clone()).await.expect("append");

    let run = node.archive_now().await.expect("archive");
    assert_eq!(run.records, 30);
    assert!(!run.objects.is_empty() && run.objects.len() <= 4, "{run:?}");
    assert!(run.objects.iter().all(
        |k| k.starts_with("archive/events/user-events/partition=") && k.ends_with(".jsonl.gz")
    ));
    let ids = |records: &[storage::Record]| {
        let mut ids: Vec<String> = records.iter().map(|r| r.event.event_id.clone()).collect();
        ids.sort();
        ids
    };
    let archived = actors::archiver::read_archive(node.services().registry.objects())
        .await
        .expect("read back");
    let mut expected: Vec<String> = posted.iter().map(|e| e.event_id.clone()).collect();
    expected.sort();
    assert_eq!(ids(&archived), expected);
    assert!(
        archived.iter().all(|r| posted.contains(&r.event)),
        "an archived event differs from the posted one"
    );

    // Nothing new, nothing written; new events go to new objects only.
    assert_eq!(
        node.archive_now().await.expect("archive"),
        actors::archiver::ArchiveRun::default()
    );
    node.post_events(vec![event("b1", "user1", "x"), event("b2", "user2", "y")])
        .await
        .expect("append");
    let run = node.archive_now().await.expect("archive");
    assert_eq!(run.records, 2);
    let archived = actors::archiver::read_archive(node.services().registry.objects())
        .await
        .expect("read back");
    assert_eq!(archived.len(), 32);
    node.shutdown().await;
}

/// Copies a directory tree (the object store of one node into another's, as if shared).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_reads_the_archive_other_nodes_wrote_plus_its_own_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let a = Node::start(config(&a_dir)).await.expect("node a");
    let archived: Vec<Event> = (0..40)
        .map(|i| {
            event(
                &format!("a{i}"),
                &format!("user{}", i % 5),
                &format!("item{}", i % 8),
            )
        })
        .collect();
    a.post_events(archived).await.expect("append");
    assert_eq!(a.archive_now().await.expect("archive").records, 40);
    a.shutdown().await;
    drop(a);

    // Node b shares a's object store but has none of a's log.
    copy_tree(&a_dir.join("objects"), &b_dir.join("objects"));
    let mut from_archive = config(&b_dir);
    from_archive.model.train_source = "archive".into();
    let b = Node::start(from_archive).await.expect("node b");
    let own: Vec<Event> = (0..6)
        .map(|i| event(&format!("b{i}"), "user9", &format!("item{i}")))
        .collect();
    b.post_events(own.clone()).await.expect("append");
    // Posting a's events again adds nothing: an event id counts once.
    b.post_events(vec![event("a0", "user0", "item0")])
        .await
        .expect("append");
    let version = b.train(true).await.expect("train");
    let active = b.services().registry.active().expect("a model");
    assert_eq!(active.meta.version, version);
    // Training aggregates events into (user, item) cells: a's 40 events (from the archive) and
    // b's own 6 (from its log, not archived yet).
    let a_cells: std::collections::HashSet<(usize, usize)> =
        (0..40).map(|i| (i % 5, i % 8)).collect();
    assert_eq!(active.meta.num_interactions, a_cells.len() + own.len());
    assert_eq!(active.meta.num_users, 6);
    b.shutdown().await;
}
