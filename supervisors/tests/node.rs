//! A whole node on embedded stores in a temp dir: sessions passivate and wake up, the live cap
//! evicts, a panicking model actor fails only its request and is restarted, replays change
//! nothing, erasure is final.

use std::sync::Arc;
use std::time::Duration;

use actors::model::ModelMsg;
use actors::session_manager::SessionManagerObs;
use common::{Config, Event, EventKind, RecQuery};
use supervisors::Node;
use supervisors::supervisor::{FailureCounts, SupervisorObs};
use testkit::wait_until;

/// The test node, with the model pool's two workers and short training runs.
fn config(dir: &std::path::Path) -> Config {
    let mut config = testkit::config(dir);
    config.model.num_workers = 2;
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

async fn num_events(node: &Node, user: &str) -> u64 {
    node.user(user)
        .await
        .expect("get")
        .expect("known user")
        .num_events
}

/// The session manager's observable state.
fn manager(node: &Node) -> SessionManagerObs {
    node.observed("session_manager")
        .pop()
        .expect("a session manager")
}

/// The observable state of the supervisor of `kind`.
fn supervisor(node: &Node, kind: &str) -> SupervisorObs {
    node.observed(kind).pop().expect("the supervisor")
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
    assert!(manager(&node).num_live >= 1);

    let passivated = wait_until(
        async || manager(&node).num_live == 0,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        passivated,
        "idle session was not passivated: {:?}",
        manager(&node)
    );
    assert!(manager(&node).num_passivated >= 1);

    // A request wakes the session up, rehydrated from the store.
    let user = node.user("alice").await.expect("get").expect("known user");
    assert_eq!(user.num_events, 2);
    assert_eq!(manager(&node).num_live, 1);
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
    let manager = manager(&node);
    assert!(manager.num_live <= 2, "{manager:?}");
    assert!(manager.num_evicted >= 2, "{manager:?}");
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
    let mut config = config(dir.path());
    config.supervision.stuck_after.model = Duration::from_secs(7);
    let node = Node::start(config).await.expect("node starts");
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
        diversity: Default::default(),
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
        async || pool.workers().len() == 2 && pool.workers().iter().all(|w| w.get_id() != old_id),
        Duration::from_secs(10),
    )
    .await;
    assert!(restarted, "model actor was not restarted");
    let models = supervisor(&node, "model_supervisor");
    assert_eq!(models.num_restarts, 1, "{models:?}");
    let worker = &models.children[0];
    assert!(
        worker
            .last_failure
            .as_deref()
            .is_some_and(|f| f.contains("injected fault")),
        "{models:?}"
    );
    // Counted as a panic, neither an error nor a kill, in the child and in the total.
    let panic = FailureCounts {
        num_panics: 1,
        ..Default::default()
    };
    assert_eq!((models.failures, worker.failures), (panic, panic));
    // Each child's limit for one message comes from `[supervision.stuck_after]`.
    assert_eq!(worker.stuck_after_ms, Some(7000), "{models:?}");
    let root = supervisor(&node, "root_supervisor");
    let limit = |name: &str| {
        root.children
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.stuck_after_ms)
    };
    assert_eq!(limit("sessions"), Some(Some(60_000)), "{root:?}");
    assert_eq!(limit("models"), Some(None), "{root:?}");
    // Serving works again.
    node.recommend(
        "anyone",
        &RecQuery {
            k: 3,
            category: None,
            diversity: Default::default(),
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
    // Past events delivered again are recognised by their ids (within the dedupe window), erased
    // user or not; a new event counts, and only it.
    let after = node
        .post_events(vec![
            event("a", "bob", "i1"),
            event("c", "bob", "i3"),
            event("d", "bob", "i4"),
        ])
        .await
        .expect("append");
    assert_eq!((after.accepted, after.duplicates), (1, 2));
    assert!(node.wait_caught_up(Duration::from_secs(10)).await);
    assert_eq!(num_events(&node, "bob").await, 1);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_at_most_max_items_and_evicted_items_leave_popularity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.sessions.max_items = 3;
    config.sessions.max_recent = 3;
    let node = Node::start(config).await.expect("node starts");
    // Only catalogued items count toward popularity.
    for i in 0..10 {
        node.upsert_item(common::Item {
            item_id: format!("item{i}"),
            title: format!("Item {i}"),
            categories: Vec::new(),
            tags: Vec::new(),
            attributes: serde_json::Map::new(),
            available: true,
            updated_at: 1,
        })
        .await
        .expect("catalogued");
    }
    let events: Vec<Event> = (0..10)
        .map(|i| event(&format!("e{i}"), "many", &format!("item{i}")))
        .collect();
    for e in events {
        node.post_events(vec![e]).await.expect("append");
    }
    assert!(node.wait_caught_up(Duration::from_secs(10)).await);
    let stored = node
        .services()
        .store
        .load("many")
        .expect("load")
        .expect("stored");
    let data = actors::session::SessionData::decode(&stored).expect("decode");
    let mut kept: Vec<&str> = data.items.keys().map(String::as_str).collect();
    kept.sort_unstable();
    assert_eq!(kept, ["item7", "item8", "item9"]);
    let popularity = &node.services().popularity;
    popularity.refresh();
    let popular: Vec<String> = popularity
        .ranked()
        .iter()
        .filter(|(_, w)| *w > 0.0)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(popular, ["item7", "item8", "item9"]);
    node.shutdown().await;
}

const YEAR_MS: i64 = 365 * 86_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_dated_event_delivered_again_after_erasure_stays_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(config(dir.path())).await.expect("node starts");
    let future = Event {
        ts: common::now_millis() + YEAR_MS,
        ..event("f1", "zoe", "i1")
    };
    node.post_events(vec![future.clone()])
        .await
        .expect("append");
    assert!(node.wait_caught_up(Duration::from_secs(10)).await);
    node.erase_user("zoe").await.expect("erase");
    // Delivered again after the erasure (its date is still ahead): the log knows its id.
    // (tests/security.rs does the same across a restart of the process.)
    let again = node.post_events(vec![future]).await.expect("append");
    assert_eq!((again.accepted, again.duplicates), (0, 1));
    assert!(node.wait_caught_up(Duration::from_secs(10)).await);
    assert!(node.user("zoe").await.expect("get").is_none());
    let export = node.export_user("zoe").await.expect("export");
    assert_eq!(export["events"], serde_json::json!([]), "{export}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_dated_new_event_after_erasure_counts_in_sessions_and_training() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.model.train_source = common::config::TrainSource::Archive;
    config.objects.archive_interval = Duration::ZERO;
    let node = Node::start(config).await.expect("node starts");
    let now = common::now_millis();
    let history: Vec<Event> = (0..4)
        .map(|i| Event {
            ts: now,
            ..event(&format!("old{i}"), "yan", &format!("i{i}"))
        })
        .chain((0..4).map(|i| event(&format!("o{i}"), "other", &format!("i{i}"))))
        .collect();
    node.post_events(history).await.expect("append");
    assert!(node.wait_caught_up(Duration::from_secs(10)).await);
    node.archive_now().await.expect("archive");
    node.erase_user("yan").await.expect("erase");

    // Dated long before the erasure, but received after it: a new event.
    let back_dated = Event {
        ts: now - YEAR_MS,
        ..event("new", "yan", "i9")
    };
    let outcome = node.post_events(vec![back_dated]).await.expect("append");
    assert_eq!(outcome.accepted, 1);
    assert!(node.wait_caught_up(Duration::from_secs(10)).await);
    assert_eq!(num_events(&node, "yan").await, 1);
    let export = node.export_user("yan").await.expect("export");
    assert_eq!(export["events"][0]["event_id"], "new", "{export}");

    // Training from the archive: the erased events stay out by their receive time, the new one
    // (archived or still in the log's tail) counts.
    for archived in [false, true] {
        if archived {
            node.archive_now().await.expect("archive");
        }
        node.train(true).await.expect("train");
        let active = node.services().registry.active().expect("a model");
        assert_eq!(
            (active.meta.num_users, active.meta.num_interactions),
            (2, 5),
            "archived: {archived}"
        );
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_go_after_the_dedupe_window_once_the_log_holds_nothing_they_cover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.events.dedupe_window = Duration::from_secs(60);
    let node = Node::start(config).await.expect("node starts");
    let n = node.services().log.num_partitions();
    let p = |user: &str| common::partition::partition_for(user, n);
    // "kept" has events in the log; "ghost" lives in a partition the log holds nothing of.
    let ghost = (0..)
        .map(|i| format!("ghost{i}"))
        .find(|g| p(g) != p("kept"))
        .expect("a ghost");
    node.post_events(vec![event("k1", "kept", "i1")])
        .await
        .expect("append");
    assert!(node.wait_caught_up(Duration::from_secs(10)).await);
    node.erase_user("kept").await.expect("erase");
    node.erase_user(&ghost).await.expect("erase");
    let store = &node.services().store;

    let now = std::time::SystemTime::now();
    let run = actors::retention::retain_once(node.services(), now).expect("retention");
    assert_eq!(run.tombstones_pruned, 0, "the window has not passed");
    let later = now + Duration::from_secs(120);
    let run = actors::retention::retain_once(node.services(), later).expect("retention");
    assert_eq!(run.tombstones_pruned, 1);
    assert!(store.tombstone(&ghost).expect("read").is_none());
    assert!(
        store.tombstone("kept").expect("read").is_some(),
        "the log still holds what it covers"
    );
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
    assert!(
        run.objects
            .iter()
            .all(|k| k.starts_with("archive/topic=user-events/partition=")
                && k.ends_with(".parquet"))
    );
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
    from_archive.model.train_source = common::config::TrainSource::Archive;
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

/// Lookups of the recommendation cache since the process started (each nextest test is its own
/// process), over its first tier, which every lookup reaches first.
fn cache_lookups() -> u64 {
    let (hits, misses) = storage::cache::lookup_totals();
    hits + misses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recommendation_costs_one_cache_lookup_hit_or_miss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(config(dir.path())).await.expect("node starts");
    node.post_events(vec![event("e1", "carol", "i1"), event("e2", "dan", "i2")])
        .await
        .expect("append");
    assert!(node.wait_caught_up(Duration::from_secs(10)).await);
    let query = RecQuery::new(5, None).expect("valid");
    for user in ["carol", "never-seen"] {
        let before = cache_lookups();
        let first = node.recommend(user, &query).await.expect("recommend");
        assert_eq!(cache_lookups() - before, 1, "{user}: a miss is one lookup");
        let again = node.recommend(user, &query).await.expect("recommend");
        assert_eq!(
            cache_lookups() - before,
            2,
            "{user}: asking again is one lookup more"
        );
        assert_eq!(first, again);
    }
    node.shutdown().await;
}
