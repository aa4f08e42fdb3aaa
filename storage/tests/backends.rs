//! The real backends against real servers started by `scripts/services.sh up` (the test command
//! does it): PostgreSQL catalog, Redis cache tier, S3 object store. Each test isolates itself (a
//! fresh database, a fresh key prefix, fresh ids); the degraded-mode test runs its own Redis so
//! that it can stop and restart it.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Item, RecQuery, Recommendations};
use storage::catalog::Catalog;
use storage::{
    CatalogView, MemoryCache, ObjectStore, PgCatalog, RecCache, S3ObjectStore, TieredCache,
};
use testkit::{fresh_database, test_env, unique, wait_until};

/// How long a test waits for Redis to come up, or for an invalidation to reach another node.
const WAIT: Duration = Duration::from_secs(10);

fn item(id: &str, available: bool) -> Item {
    Item {
        item_id: id.into(),
        title: format!("Title of {id}"),
        categories: vec!["c1".into(), "c2".into()],
        tags: vec!["t".into()],
        attributes: serde_json::json!({"year": 1999, "nested": {"a": [1, 2]}})
            .as_object()
            .cloned()
            .expect("object"),
        available,
        updated_at: 42,
    }
}

#[tokio::test]
async fn postgres_catalog_round_trips_items_deletions_and_profiles() {
    let url = fresh_database().await;
    let catalog = Arc::new(
        PgCatalog::connect(&url, 4, Duration::from_secs(5))
            .await
            .expect("connect and migrate"),
    );
    let view = CatalogView::open(catalog.clone()).await.expect("view");
    view.upsert(item("a", true)).await.expect("upsert");
    view.upsert(item("b", false)).await.expect("upsert");
    view.upsert(Item {
        title: "renamed".into(),
        ..item("b", true)
    })
    .await
    .expect("update");
    assert!(view.delete("a").await.expect("delete"));
    catalog
        .put_profile("u1", &serde_json::json!({"age": 30}))
        .await
        .expect("profile");

    // The rows are in PostgreSQL itself.
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let rows: Vec<(String, String, bool)> =
        sqlx::query_as("SELECT item_id, title, available FROM items ORDER BY item_id")
            .fetch_all(&pool)
            .await
            .expect("query");
    assert_eq!(rows, vec![("b".to_owned(), "renamed".to_owned(), true)]);
    let deleted: (i64,) = sqlx::query_as("SELECT count(*) FROM deleted_items WHERE item_id = 'a'")
        .fetch_one(&pool)
        .await
        .expect("query");
    assert_eq!(deleted.0, 1);

    // A second connection (another node, a restart) sees the same catalog.
    let again = PgCatalog::connect(&url, 2, Duration::from_secs(5))
        .await
        .expect("migrations are idempotent");
    let (items, deleted) = again.load_all().await.expect("load");
    assert_eq!(
        items,
        vec![Item {
            title: "renamed".into(),
            ..item("b", true)
        }]
    );
    assert_eq!(deleted, vec!["a".to_owned()]);
    assert_eq!(
        again.get_profile("u1").await.expect("get"),
        Some(serde_json::json!({"age": 30}))
    );
    again.delete_profile("u1").await.expect("delete profile");
    assert_eq!(again.get_profile("u1").await.expect("get"), None);
    // Hostile ids are data, not SQL.
    view.upsert(item("x'; DROP TABLE items; --", true))
        .await
        .expect("upsert");
    assert!(view.get("x'; DROP TABLE items; --").is_some());
    assert_eq!(again.load_all().await.expect("load").0.len(), 2);
}

#[tokio::test]
async fn postgres_data_errors_are_invalid_input_not_an_outage() {
    let url = fresh_database().await;
    let catalog = Arc::new(
        PgCatalog::connect(&url, 2, Duration::from_secs(5))
            .await
            .expect("connect and migrate"),
    );
    let view = CatalogView::open(catalog.clone()).await.expect("view");
    // What validation keeps out at the edges, written straight to the store: PostgreSQL refuses
    // a NUL in TEXT (22021), in a JSONB string (22P05) and in a JSONB key.
    let mut nul_attribute = item("n2", true);
    nul_attribute
        .attributes
        .insert("colour".into(), serde_json::json!("red\u{0}"));
    let mut nul_key = item("n3", true);
    nul_key
        .attributes
        .insert("k\u{0}".into(), serde_json::json!(1));
    let refused = [
        Item {
            title: "Lamp\u{0}".into(),
            ..item("n1", true)
        },
        nul_attribute,
        nul_key,
    ];
    for bad in refused {
        let error = view.upsert(bad.clone()).await.expect_err("refused");
        assert!(error.is_invalid_data(), "{}: {error}", bad.item_id);
        let api = common::ApiError::from(error);
        assert_eq!(api.code, common::ErrorCode::InvalidArgument, "{api:?}");
        assert!(
            view.get(&bad.item_id).is_none(),
            "the view took a refused write"
        );
    }
    let error = catalog
        .put_profile("u1", &serde_json::json!({"bio": "hi\u{0}"}))
        .await
        .expect_err("refused");
    assert!(error.is_invalid_data(), "{error}");
    // The store is fine: the next write goes through, and health says so.
    view.upsert(item("ok", true)).await.expect("upsert");
    assert_eq!(catalog.health().await, Ok(()));
    // A connection failure stays an outage.
    let down = PgCatalog::connect(
        "postgres://nobody@127.0.0.1:1/none",
        1,
        Duration::from_millis(200),
    )
    .await
    .err()
    .expect("no server on port 1");
    assert!(!down.is_invalid_data());
    assert_eq!(
        common::ApiError::from(down).code,
        common::ErrorCode::Unavailable
    );
}

#[tokio::test]
async fn s3_store_puts_gets_and_lists_under_its_prefix() {
    let endpoint = test_env("STREAMREC_TEST_S3_ENDPOINT");
    let prefix = unique("test-");
    let store = S3ObjectStore::new("streamrec", &prefix, Some(&endpoint))
        .await
        .expect("client");
    store.health().await.expect("bucket reachable");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    store
        .put("models/v1/model.onnx", big.clone())
        .await
        .expect("put");
    store
        .put("models/v1/meta.json", b"{}".to_vec())
        .await
        .expect("put");
    store
        .put("models/manifest.json", b"[]".to_vec())
        .await
        .expect("put");
    assert_eq!(
        store.get("models/v1/model.onnx").await.expect("get"),
        Some(big)
    );
    assert_eq!(store.get("models/v9/nothing").await.expect("get"), None);
    assert_eq!(
        store.list("models/v1/").await.expect("list"),
        vec![
            "models/v1/meta.json".to_owned(),
            "models/v1/model.onnx".to_owned()
        ]
    );
    // Another prefix in the same bucket sees none of it.
    let other = S3ObjectStore::new("streamrec", &unique("other-"), Some(&endpoint))
        .await
        .expect("client");
    assert!(other.list("models/").await.expect("list").is_empty());
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

fn tiered(url: &str) -> TieredCache {
    TieredCache::connect(
        url,
        MemoryCache::new(1000, 16, Duration::from_secs(60)),
        Duration::from_secs(60),
        Duration::from_millis(200),
    )
    .expect("client")
}

#[tokio::test]
async fn redis_tier_is_shared_between_nodes_and_invalidated_everywhere() {
    let url = test_env("STREAMREC_TEST_REDIS");
    let (a, b) = (tiered(&url), tiered(&url));
    let user = unique("user-");
    let q = RecQuery {
        k: 5,
        category: None,
        diversity: Default::default(),
    };
    a.put(&user, "v1", &q, recs(&user, "i1")).await;
    // Node b has nothing in L1 but finds it in Redis.
    assert_eq!(b.get(&user, "v1", &q).await, Some(recs(&user, "i1")));
    assert_eq!(
        b.get(&user, "v2", &q).await,
        None,
        "another model version misses"
    );
    let mut redis = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("streamrec:recs:{user}"))
        .query_async(&mut redis)
        .await
        .expect("hkeys");
    assert_eq!(fields.len(), 1);

    // A session change on node a drops the entry from Redis and from node b's L1. Node b's
    // subscription attaches in the background, so the invalidation is repeated until it lands.
    assert!(
        wait_until(
            async || {
                a.invalidate(&user);
                b.get(&user, "v1", &q).await.is_none()
            },
            WAIT
        )
        .await,
        "node b still serves the stale entry"
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!("streamrec:recs:{user}"))
        .query_async(&mut redis)
        .await
        .expect("exists");
    assert!(!exists);
}

#[tokio::test]
async fn redis_holds_at_most_max_variants_per_user() {
    let url = test_env("STREAMREC_TEST_REDIS");
    let cache = tiered(&url);
    let user = unique("user-");
    // A client cycling through `k` would otherwise grow the user's hash without bound.
    for k in 1..=100 {
        let q = RecQuery {
            k,
            category: None,
            diversity: Default::default(),
        };
        cache.put(&user, "v1", &q, recs(&user, "i1")).await;
    }
    let mut redis = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let len: usize = redis::cmd("HLEN")
        .arg(format!("streamrec:recs:{user}"))
        .query_async(&mut redis)
        .await
        .expect("hlen");
    assert!((1..=16).contains(&len), "{len} results held");
    let last = RecQuery {
        k: 100,
        category: None,
        diversity: Default::default(),
    };
    assert!(tiered(&url).get(&user, "v1", &last).await.is_some());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

fn start_redis(port: u16) -> Child {
    Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (installed by scripts/services.sh)")
}

#[tokio::test]
async fn redis_down_degrades_to_l1_and_recovers() {
    let port = free_port();
    let mut server = start_redis(port);
    let url = format!("redis://127.0.0.1:{port}");
    let cache = tiered(&url);
    assert!(
        wait_until(async || cache.health().await.is_ok(), WAIT).await,
        "redis did not come up"
    );
    let q = RecQuery {
        k: 3,
        category: None,
        diversity: Default::default(),
    };
    cache.put("u1", "v1", &q, recs("u1", "i1")).await;

    server.kill().expect("kill redis");
    server.wait().expect("reaped");
    assert!(cache.health().await.is_err());
    // L1 still serves what it has; misses and writes neither fail nor hang.
    let degraded = async {
        assert_eq!(cache.get("u1", "v1", &q).await, Some(recs("u1", "i1")));
        assert_eq!(cache.get("u2", "v1", &q).await, None);
        cache.put("u2", "v1", &q, recs("u2", "i2")).await;
        assert_eq!(cache.get("u2", "v1", &q).await, Some(recs("u2", "i2")));
    };
    tokio::time::timeout(Duration::from_secs(10), degraded)
        .await
        .expect("a down Redis must not hang requests");

    let mut server = start_redis(port);
    assert!(
        wait_until(async || cache.health().await.is_ok(), WAIT).await,
        "did not reconnect to redis"
    );
    cache.put("u3", "v1", &q, recs("u3", "i3")).await;
    let fresh = tiered(&url);
    assert_eq!(
        fresh.get("u3", "v1", &q).await,
        Some(recs("u3", "i3")),
        "writes after recovery reach Redis"
    );
    server.kill().expect("kill redis");
    let _ = server.wait();
}
