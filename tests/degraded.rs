//! Degraded modes with real servers going away mid-test: Redis stopped and restarted (the node's
//! own instance, started by `scripts/services.sh`), and the S3 store cut off behind a proxy.
//! The node keeps serving, says what is down, and loses nothing.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// The `streamrec_cache_lookups_total` counter for `tier` and `result`.
async fn lookups(server: &Server, tier: &str, result: &str) -> f64 {
    let text = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let prefix = format!("streamrec_cache_lookups_total{{result=\"{result}\",tier=\"{tier}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Redis of this test's own, stopped however the test ends.
struct PrivateRedis(u16);

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        service("down", "redis", self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_recommendations_come_from_l1_and_the_model() {
    let (_guard, dir) = workdir();
    let port = free_addr().port();
    service("up", "redis", port);
    let _redis = PrivateRedis(port);
    let server = Server::start_with(
        &dir,
        &dir.join("data"),
        &[("STREAMREC__CACHE__URL", format!("redis://127.0.0.1:{port}"))],
    )
    .await;
    server.catalog((0..17).map(|i| format!("i{i}"))).await;
    let events: Vec<Value> = (0..30)
        .map(|i| {
            click(
                &format!("r{i}"),
                &format!("u{}", i % 3),
                &format!("i{}", i % 17),
            )
        })
        .collect();
    assert_eq!(server.post_events(events).await.0, 202);
    eventually(&server, "/v1/users/u0", |s, b| {
        s == 200 && b["num_events"] == 10
    })
    .await;
    let version = server.train().await;
    let path = "/v1/users/u0/recommendations?k=3";
    // Every model actor has swapped to the new version (a swap clears the cache).
    eventually(&server, path, |s, b| {
        s == 200 && b["model_version"] == version.as_str()
    })
    .await;
    let (status, first) = server.get(path).await;
    assert_eq!(status, 200, "{first}");
    let (_, again) = server.get(path).await;
    assert_eq!(again["items"], first["items"]);
    assert!(lookups(&server, "l1", "hit").await >= 1.0);

    service("down", "redis", port);
    eventually(&server, "/readyz", |s, b| {
        s == 200
            && b["dependencies"]["cache"]
                .as_str()
                .is_some_and(|c| c.starts_with("down"))
    })
    .await;
    // Served from L1, then, after the user's session changes, from the model: never an error.
    let (status, cached) = server.get(path).await;
    assert_eq!((status, &cached["items"]), (200, &first["items"]));
    assert_eq!(
        server.post_events(vec![click("r-new", "u0", "i5")]).await.0,
        202
    );
    eventually(&server, "/v1/users/u0", |s, b| {
        s == 200 && b["num_events"] == 11
    })
    .await;
    for user in ["u0", "u1", "u2", "nobody"] {
        let (status, body) = server
            .get(&format!("/v1/users/{user}/recommendations?k=3"))
            .await;
        assert_eq!(status, 200, "{user}: {body}");
        assert_eq!(
            body["items"].as_array().map(Vec::len),
            Some(3),
            "{user}: {body}"
        );
    }

    service("up", "redis", port);
    eventually(&server, "/readyz", |_, b| {
        b["dependencies"]["cache"] == "up"
    })
    .await;
    // The shared tier takes entries again once Redis is back.
    let cached = wait_until(
        async || {
            let _ = server.get("/v1/users/u2/recommendations?k=2").await;
            let mut redis = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                .expect("client")
                .get_multiplexed_async_connection()
                .await
                .expect("redis is back");
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("*")
                .query_async(&mut redis)
                .await
                .expect("keys");
            !keys.is_empty()
        },
        Duration::from_secs(20),
    )
    .await;
    assert!(cached, "nothing cached in Redis after it returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_s3_cut_off_the_node_serves_and_archives_everything_once_it_returns() {
    let (_guard, dir) = workdir();
    let endpoint = test_env("STREAMREC_TEST_S3_ENDPOINT");
    let target = endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("endpoint host:port");
    let proxy = Proxy::start(target).await;
    let prefix = unique("t");
    let server = Server::start_with(
        &dir,
        &dir.join("data"),
        &[
            (
                "STREAMREC__OBJECTS__URL",
                format!("s3://streamrec/{prefix}"),
            ),
            (
                "STREAMREC__OBJECTS__ENDPOINT",
                format!("http://{}", proxy.addr),
            ),
            ("STREAMREC__OBJECTS__ARCHIVE_INTERVAL", "200ms".to_owned()),
        ],
    )
    .await;
    let batch = |from: usize, to: usize| -> Vec<Value> {
        (from..to)
            .map(|i| {
                click(
                    &format!("s{i}"),
                    &format!("u{}", i % 4),
                    &format!("i{}", i % 9),
                )
            })
            .collect()
    };
    assert_eq!(server.post_events(batch(0, 40)).await.0, 202);
    let version = server.train().await;

    proxy.cut();
    eventually(&server, "/readyz", |s, b| {
        s == 200
            && b["dependencies"]["objects"]
                .as_str()
                .is_some_and(|o| o.starts_with("down"))
    })
    .await;
    // Events are still taken (the log is local) and served from; a training run cannot publish
    // its model and says so, and the active version stays.
    assert_eq!(server.post_events(batch(40, 80)).await.0, 202);
    eventually(&server, "/v1/users/u0", |s, b| {
        s == 200 && b["num_events"] == 20
    })
    .await;
    let (status, recs) = server.get("/v1/users/u1/recommendations?k=3").await;
    assert_eq!(
        (status, recs["model_version"].as_str()),
        (200, Some(version.as_str()))
    );
    let (status, body) = server
        .send(reqwest::Method::POST, "/v1/admin/train", None)
        .await;
    assert_eq!(status, 202, "{body}");
    eventually(&server, "/v1/admin/train", |s, b| {
        s == 200 && b["running"] == false
    })
    .await;
    let (_, models) = server.get("/v1/admin/models").await;
    assert_eq!(models["active"], version.as_str());

    proxy.restore();
    eventually(&server, "/readyz", |_, b| {
        b["dependencies"]["objects"] == "up"
    })
    .await;
    // Every event, before and during the outage, reaches the archive exactly once.
    let s3 = storage::S3ObjectStore::new("streamrec", &prefix, Some(&endpoint))
        .await
        .expect("s3");
    let (mut records, mut distinct) = (0, 0);
    let once = wait_until(
        async || {
            let archived = actors::archiver::read_archive(&s3)
                .await
                .expect("read archive");
            let mut ids: Vec<String> = archived.iter().map(|r| r.event.event_id.clone()).collect();
            ids.sort();
            ids.dedup();
            (records, distinct) = (archived.len(), ids.len());
            records == 80 && distinct == 80
        },
        Duration::from_secs(30),
    )
    .await;
    assert!(
        once,
        "archive holds {records} records ({distinct} distinct) of 80"
    );
    assert_eq!(
        json!(server.get("/v1/users/u3").await.1["num_events"]),
        json!(20)
    );
}
