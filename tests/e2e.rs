//! End-to-end: the real `streamrec` binary on a free port with a temp data dir, driven over
//! HTTP and WebSocket like a client would, killed with SIGKILL and SIGTERM like production would.

mod support;

use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_recommendations_and_pushes_changes_over_websocket() {
    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;
    for i in 0..12 {
        let category = if i % 2 == 0 { "even" } else { "odd" };
        let (status, _) = server
            .send(
                reqwest::Method::PUT,
                &format!("/v1/items/m{i}"),
                Some(json!({"title": format!("Movie {i}"), "categories": [category]})),
            )
            .await;
        assert_eq!(status, 200);
    }
    let history: Vec<Value> = (0..40)
        .flat_map(|u| {
            (0..12)
                .filter(move |i| (i + u) % 2 == 0 && (u + i) % 3 != 0)
                .map(move |i| click(&format!("h{u}-{i}"), &format!("u{u}"), &format!("m{i}")))
        })
        .collect();
    for chunk in history.chunks(100) {
        assert_eq!(server.post_events(chunk.to_vec()).await.0, 202);
    }
    eventually(&server, "/v1/users/u0", |s, b| {
        s == 200 && b["num_events"].as_u64() > Some(0)
    })
    .await;
    server.train().await;

    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url("/v1/ws?user_id=watcher&k=4"))
        .await
        .expect("websocket");
    let (mut tx, mut rx) = ws.split();
    let first = next_json(&mut rx).await;
    assert_eq!(first["type"], "recommendations");
    assert_eq!(first["user_id"], "watcher");
    assert_eq!(first["items"].as_array().map(Vec::len), Some(4));
    let top = first["items"][0]["item_id"]
        .as_str()
        .expect("item")
        .to_owned();

    // Acting on the top item changes the user's recommendations: a push follows.
    assert_eq!(
        server
            .post_events(vec![
                click("w1", "watcher", &top),
                click("w2", "watcher", "m1")
            ])
            .await
            .0,
        202
    );
    let update = next_json(&mut rx).await;
    assert_eq!(update["type"], "recommendations");
    let ids: Vec<&str> = update["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["item_id"].as_str())
        .collect();
    assert!(
        !ids.contains(&top.as_str()) && !ids.contains(&"m1"),
        "seen items still recommended: {ids:?}"
    );
    let _ = tx
        .send(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;

    let (status, recs) = server.get("/v1/users/watcher/recommendations?k=4").await;
    assert_eq!(status, 200);
    assert_eq!(recs["items"], update["items"], "REST and push disagree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_event_and_applies_none_twice() {
    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;
    let users = ["ann", "ben", "cai", "dee", "eve"];
    let events: Vec<Value> = (0..300)
        .map(|i| {
            click(
                &format!("k{i}"),
                users[i % users.len()],
                &format!("item{}", i % 17),
            )
        })
        .collect();
    for chunk in events.chunks(60) {
        let (status, body) = server.post_events(chunk.to_vec()).await;
        assert_eq!((status, body["accepted"].clone()), (202, json!(60)));
    }
    // Killed right after the last acknowledgement: some events may not be applied yet.
    server.kill_9();

    let server = Server::start(&dir).await;
    for user in users {
        eventually(&server, &format!("/v1/users/{user}"), |s, b| {
            s == 200 && b["num_events"] == 60
        })
        .await;
    }
    // Replaying every event after the restart changes nothing.
    for chunk in events.chunks(100) {
        let (status, body) = server.post_events(chunk.to_vec()).await;
        assert_eq!(
            (status, body),
            (202, json!({"accepted": 0, "duplicates": 100}))
        );
    }
    server.kill_9();
    let server = Server::start(&dir).await;
    for user in users {
        let (status, body) = server.get(&format!("/v1/users/{user}")).await;
        assert_eq!(
            (status, body["num_events"].clone()),
            (200, json!(60)),
            "{user}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly_keeping_state() {
    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;
    assert_eq!(
        server
            .post_events(vec![click("t1", "tess", "a"), click("t2", "tess", "b")])
            .await
            .0,
        202
    );
    eventually(&server, "/v1/users/tess", |s, b| {
        s == 200 && b["num_events"] == 2
    })
    .await;
    assert!(
        server.terminate(Duration::from_secs(30)),
        "SIGTERM did not stop the node cleanly"
    );
    let server = Server::start(&dir).await;
    let (status, body) = server.get("/v1/users/tess").await;
    assert_eq!((status, body["num_events"].clone()), (200, json!(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_nothing_stored() {
    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;
    let (status, body) = server
        .post_events(vec![
            click("ok", "mallory", "i1"),
            json!({"user_id": "mallory", "item_id": "i1", "kind": "hack"}),
        ])
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_argument");
    assert_eq!(body["error"]["index"], 1);
    let (status, body) = server.get("/v1/users/mallory/recommendations?k=1000").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("invalid_argument"))
    );
    // Nothing of the rejected batch exists, even after a restart.
    server.kill_9();
    let server = Server::start(&dir).await;
    let (status, body) = server.get("/v1/users/mallory").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    let (status, body) = server.post_events(vec![click("ok", "mallory", "i1")]).await;
    assert_eq!(
        (status, body),
        (202, json!({"accepted": 1, "duplicates": 0}))
    );
}

/// Whether user `u` skipped item `i`: about one in three, pseudo-randomly (a periodic pattern
/// would be structure of its own for the model to find).
fn skipped(u: u64, i: u64) -> bool {
    (u * 1_000_003 + i * 7919).wrapping_mul(6_364_136_223_846_793_005) >> 61 < 3
}

/// Writes a small data set in RecBole's atomic layout: 30 users in two taste groups.
fn write_atomic_dataset(dir: &Path) {
    std::fs::create_dir_all(dir).expect("dir");
    let mut inter = String::from("user_id:token\titem_id:token\trating:float\ttimestamp:float\n");
    for u in 0..30 {
        for i in 0..10 {
            let item = if u % 2 == 0 { i } else { 10 + i };
            if !skipped(u, i) {
                inter.push_str(&format!(
                    "{u}\t{item}\t{}\t{}\n",
                    4 + (i % 2),
                    1_000_000 + u * 100 + i
                ));
            }
        }
    }
    std::fs::write(dir.join("tiny.inter"), inter).expect("write");
    let mut items =
        String::from("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n");
    for i in 0..20 {
        items.push_str(&format!(
            "{i}\tMovie {i}\t1990\t{}\n",
            if i < 10 { "Drama" } else { "Comedy Crime" }
        ));
    }
    std::fs::write(dir.join("tiny.item"), items).expect("write");
    std::fs::write(dir.join("tiny.user"), "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n0\t24\tM\twriter\t12345\n")
        .expect("write");
}

/// Runs a one-shot command. Two factors: on a data set this small and dense, more factors
/// memorise each user's unseen items as zeros instead of generalising to the taste group.
fn run_cli(args: &[&str], data: &Path) -> Value {
    let output = streamrec()
        .env("STREAMREC__MODEL__DIM", "2")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON summary on stdout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_train_then_serve_a_movielens_style_dataset() {
    let (_guard, dir) = workdir();
    let dataset = dir.join("tiny");
    write_atomic_dataset(&dataset);
    let data = dir.join("data");
    let summary = run_cli(
        &["import", "movielens", dataset.to_str().expect("utf8")],
        &data,
    );
    assert_eq!(summary["format"], "atomic");
    assert_eq!(
        (summary["items"].clone(), summary["users"].clone()),
        (json!(20), json!(1))
    );
    let accepted = summary["events_accepted"].as_u64().expect("count");
    let written = (0..30)
        .flat_map(|u| (0..10).map(move |i| (u, i)))
        .filter(|&(u, i)| !skipped(u, i))
        .count();
    assert_eq!(accepted, written as u64);
    let again = run_cli(
        &["import", "movielens", dataset.to_str().expect("utf8")],
        &data,
    );
    assert_eq!(
        (
            again["events_accepted"].clone(),
            again["events_duplicate"].clone()
        ),
        (json!(0), json!(accepted))
    );

    let trained = run_cli(&["train"], &data);
    let version = trained["active"].as_str().expect("version").to_owned();
    assert!(
        trained["metrics"]["ndcg@10"].as_f64().is_some(),
        "{trained}"
    );

    let server = Server::start(&dir).await;
    let (_, models) = server.get("/v1/admin/models").await;
    assert_eq!(models["active"], version.as_str());
    let (status, item) = server.get("/v1/items/12").await;
    assert_eq!(
        (status, item["categories"].clone()),
        (200, json!(["Comedy", "Crime"]))
    );
    // User 1 is in the comedy group (items 10-19): the comedy items it skipped rank first.
    let unseen: Vec<u64> = (0..10).filter(|&i| skipped(1, i)).map(|i| 10 + i).collect();
    assert!(
        !unseen.is_empty(),
        "the fixture must leave user 1 something to discover"
    );
    let (status, recs) = server
        .get(&format!("/v1/users/1/recommendations?k={}", unseen.len()))
        .await;
    assert_eq!(status, 200);
    let mut ids: Vec<u64> = recs["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["item_id"].as_str()?.parse().ok())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, unseen, "{recs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_postgres_redis_and_s3_keeps_its_catalog_and_models_there() {
    let (_guard, dir) = workdir();
    let database = fresh_database().await;
    let redis_url = test_env("STREAMREC_TEST_REDIS");
    let endpoint = test_env("STREAMREC_TEST_S3_ENDPOINT");
    let prefix = unique("e2e-");
    let settings = [
        ("STREAMREC__CATALOG__URL", database.clone()),
        ("STREAMREC__CACHE__URL", redis_url.clone()),
        (
            "STREAMREC__OBJECTS__URL",
            format!("s3://streamrec/{prefix}"),
        ),
        ("STREAMREC__OBJECTS__ENDPOINT", endpoint.clone()),
        ("STREAMREC__OBJECTS__ARCHIVE_INTERVAL", "200ms".to_owned()),
    ];
    let server = Server::start_with(&dir, &dir.join("data"), &settings).await;
    let (_, ready) = server.get("/readyz").await;
    assert_eq!(
        ready["dependencies"],
        json!({"events": "up", "catalog": "up", "cache": "up", "objects": "up"}),
        "{ready}"
    );

    for i in 0..6 {
        let body = json!({"title": format!("Film {i}"), "categories": [if i < 3 { "drama" } else { "comedy" }]});
        assert_eq!(
            server
                .send(reqwest::Method::PUT, &format!("/v1/items/f{i}"), Some(body))
                .await
                .0,
            200
        );
    }
    let history: Vec<Value> = (0..20)
        .flat_map(|u| {
            (0..3).map(move |i| {
                click(
                    &format!("p{u}-{i}"),
                    &format!("p{u}"),
                    &format!("f{}", if u % 2 == 0 { i } else { 3 + i }),
                )
            })
        })
        .collect();
    assert_eq!(server.post_events(history).await.0, 202);
    eventually(&server, "/v1/users/p19", |s, _| s == 200).await;
    let version = server.train().await;

    // The catalog is in PostgreSQL, the model in S3.
    let pool = sqlx::PgPool::connect(&database).await.expect("postgres");
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM items")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, 6);
    let s3 = storage::S3ObjectStore::new("streamrec", &prefix, Some(&endpoint))
        .await
        .expect("s3");
    let keys = storage::ObjectStore::list(&s3, &format!("models/{version}/"))
        .await
        .expect("list");
    assert!(
        keys.contains(&format!("models/{version}/model.onnx")),
        "{keys:?}"
    );
    // The event log is archived there too, and reads back whole.
    let mut archived = 0;
    let whole = wait_until(
        async || {
            let records = actors::archiver::read_archive(&s3)
                .await
                .expect("read archive");
            archived = records.len();
            archived == 60
        },
        Duration::from_secs(20),
    )
    .await;
    assert!(whole, "archive holds {archived} of 60 events");

    // Recommendations are cached in Redis and dropped from it when the user acts.
    let mut redis = redis::Client::open(redis_url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    // A user id of this run only: an entry left in Redis by an earlier run must not count.
    let newbie = unique("newbie-");
    let key = format!("streamrec:recs:{newbie}");
    assert_eq!(
        server.post_events(vec![click("n1", &newbie, "f0")]).await.0,
        202
    );
    eventually(&server, &format!("/v1/users/{newbie}"), |s, _| s == 200).await;
    let (status, first) = server
        .get(&format!("/v1/users/{newbie}/recommendations?k=2"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(first["model_version"], version.as_str());
    let cached: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("exists");
    assert!(cached, "recommendations were not written to Redis");
    assert_eq!(
        server.post_events(vec![click("n2", &newbie, "f1")]).await.0,
        202
    );
    let dropped = wait_until(
        async || {
            !redis::cmd("EXISTS")
                .arg(&key)
                .query_async::<bool>(&mut redis)
                .await
                .expect("exists")
        },
        Duration::from_secs(20),
    )
    .await;
    assert!(dropped, "the Redis entry survived a new event");
    server.kill_9();

    // A node with a fresh data dir finds the catalog in PostgreSQL and the model in S3.
    let server = Server::start_with(&dir, &dir.join("fresh"), &settings).await;
    let (status, item) = server.get("/v1/items/f4").await;
    assert_eq!((status, item["title"].clone()), (200, json!("Film 4")));
    let (_, models) = server.get("/v1/admin/models").await;
    assert_eq!(models["active"], version.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_keeps_serving_reads_and_rejects_catalog_writes_with_503() {
    let (_guard, dir) = workdir();
    let port = free_addr().port();
    service("up", "postgres", port);
    let database = format!("postgres://postgres@127.0.0.1:{port}/streamrec");
    let server = Server::start_with(
        &dir,
        &dir.join("data"),
        &[("STREAMREC__CATALOG__URL", database)],
    )
    .await;
    let put = |id: &str| json!({"title": format!("Item {id}"), "categories": ["c"]});
    assert_eq!(
        server
            .send(
                reqwest::Method::PUT,
                "/v1/items/before",
                Some(put("before"))
            )
            .await
            .0,
        200
    );
    assert_eq!(
        server
            .post_events(vec![click("d1", "dora", "before")])
            .await
            .0,
        202
    );

    service("down", "postgres", port);
    let ready = eventually(&server, "/readyz", |_, b| {
        b["dependencies"]["catalog"]
            .as_str()
            .is_some_and(|c| c.starts_with("down"))
    })
    .await;
    assert_eq!(
        ready["ready"], true,
        "a down catalog degrades the node, it does not stop serving: {ready}"
    );
    let (status, item) = server.get("/v1/items/before").await;
    assert_eq!((status, item["title"].clone()), (200, json!("Item before")));
    let (status, body) = server
        .send(
            reqwest::Method::PUT,
            "/v1/items/during",
            Some(put("during")),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (503, json!("unavailable")),
        "{body}"
    );
    let (status, _) = server.get("/v1/items/during").await;
    assert_eq!(status, 404, "a rejected write must not show up in the view");
    assert_eq!(
        server.get("/v1/users/dora/recommendations?k=2").await.0,
        200
    );

    service("up", "postgres", port);
    eventually(&server, "/readyz", |_, b| {
        b["dependencies"]["catalog"] == "up"
    })
    .await;
    assert_eq!(
        server
            .send(reqwest::Method::PUT, "/v1/items/after", Some(put("after")))
            .await
            .0,
        200
    );
    server.kill_9();
    // Everything acknowledged is in PostgreSQL: a fresh node sees it.
    let server = Server::start_with(
        &dir,
        &dir.join("fresh"),
        &[(
            "STREAMREC__CATALOG__URL",
            format!("postgres://postgres@127.0.0.1:{port}/streamrec"),
        )],
    )
    .await;
    for (id, expected) in [("before", 200), ("during", 404), ("after", 200)] {
        assert_eq!(
            server.get(&format!("/v1/items/{id}")).await.0,
            expected,
            "{id}"
        );
    }
    drop(server);
    service("down", "postgres", port);
    // The cluster was this test's alone (services.sh keeps it under /var/tmp, by port).
    let _ = std::fs::remove_dir_all(format!("/var/tmp/streamrec-services-pg-{port}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_model_swaps_in_under_load_without_a_failed_request_and_rolls_back() {
    let (_guard, dir) = workdir();
    // Every trained version passes the gate here; the gate itself is tested in the registry.
    let server = Server::start_with(
        &dir,
        &dir.join("data"),
        &[("STREAMREC__MODEL__MAX_REGRESSION", "1".to_owned())],
    )
    .await;
    let history: Vec<Value> = (0..300)
        .map(|i| {
            click(
                &format!("h{i}"),
                &format!("u{}", i % 15),
                &format!("m{}", (i * 7) % 40),
            )
        })
        .collect();
    assert_eq!(server.post_events(history).await.0, 202);
    eventually(&server, "/v1/users/u0", |s, b| {
        s == 200 && b["num_events"] == 20
    })
    .await;
    let first = server.train().await;

    // Load: readers and a writer, counting every answer that is not a success.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (stop, failures, requests) = (stop.clone(), failures.clone(), requests.clone());
        let (http, base) = (server.http.clone(), server.url(""));
        load.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let response = if worker == 0 {
                    let event = click(
                        &format!("w{i}"),
                        &format!("u{}", i % 15),
                        &format!("m{}", i % 40),
                    );
                    http.post(format!("{base}/v1/events"))
                        .json(&json!({ "events": [event] }))
                        .send()
                        .await
                } else {
                    http.get(format!("{base}/v1/users/u{}/recommendations?k=5", i % 20))
                        .send()
                        .await
                };
                requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match response {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => failures
                        .lock()
                        .expect("lock")
                        .push(format!("{}", r.status())),
                    Err(e) => failures.lock().expect("lock").push(e.to_string()),
                }
            }
        }));
    }
    // The swap happens under load: wait until the load is running.
    let under_load = async |more: u64| {
        let from = requests.load(std::sync::atomic::Ordering::Relaxed);
        let running = async || requests.load(std::sync::atomic::Ordering::Relaxed) >= from + more;
        assert!(
            wait_until(running, Duration::from_secs(20)).await,
            "the load stalled"
        );
    };
    under_load(50).await;
    let second = server.train().await;
    assert_ne!(second, first);
    eventually(&server, "/v1/users/u3/recommendations?k=5", |s, b| {
        s == 200 && b["model_version"] == second.as_str()
    })
    .await;

    let (status, body) = server
        .send(reqwest::Method::POST, "/v1/admin/models/rollback", None)
        .await;
    assert_eq!(
        (status, body["active"].as_str()),
        (200, Some(first.as_str())),
        "{body}"
    );
    eventually(&server, "/v1/users/u4/recommendations?k=5", |s, b| {
        s == 200 && b["model_version"] == first.as_str()
    })
    .await;
    under_load(50).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    let failures = failures.lock().expect("lock").clone();
    let total = requests.load(std::sync::atomic::Ordering::Relaxed);
    assert!(total > 100, "too little load to mean anything: {total}");
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {failures:?}",
        failures.len()
    );

    // Activating by name, and the errors: unknown versions, nothing left to roll back to.
    let (status, _) = server
        .send(
            reqwest::Method::POST,
            &format!("/v1/admin/models/{second}/activate"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (_, models) = server.get("/v1/admin/models").await;
    assert_eq!(models["active"], second.as_str());
    let (status, body) = server
        .send(reqwest::Method::POST, "/v1/admin/models/v0/activate", None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_websocket_watches_several_users_and_drops_them_on_request() {
    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;
    server.catalog((0..20).map(|i| format!("m{i}"))).await;
    let history: Vec<Value> = (0..60)
        .map(|i| {
            click(
                &format!("h{i}"),
                &format!("u{}", i % 6),
                &format!("m{}", (i * 5) % 20),
            )
        })
        .collect();
    assert_eq!(server.post_events(history).await.0, 202);
    server.train().await;

    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url("/v1/ws"))
        .await
        .expect("websocket");
    let (mut tx, mut rx) = ws.split();
    let send = |v: Value| tokio_tungstenite::tungstenite::Message::Text(v.to_string().into());
    for user in ["ann", "bob"] {
        tx.send(send(json!({"type": "subscribe", "user_id": user, "k": 3})))
            .await
            .expect("send");
        assert_eq!(
            next_json(&mut rx).await,
            json!({"type": "subscribed", "user_id": user})
        );
        let current = next_json(&mut rx).await;
        assert_eq!(
            (current["type"].as_str(), current["user_id"].as_str()),
            (Some("recommendations"), Some(user))
        );
        assert_eq!(current["items"].as_array().map(Vec::len), Some(3));
    }

    // A change for bob reaches this connection as bob's.
    assert_eq!(
        server
            .post_events(vec![click("b1", "bob", "m3"), click("b2", "bob", "m7")])
            .await
            .0,
        202
    );
    let push = next_json(&mut rx).await;
    assert_eq!(
        (push["type"].as_str(), push["user_id"].as_str()),
        (Some("recommendations"), Some("bob")),
        "{push}"
    );

    // After unsubscribing ann, her changes no longer arrive: the next message is our pong.
    tx.send(send(json!({"type": "unsubscribe", "user_id": "ann"})))
        .await
        .expect("send");
    assert_eq!(
        next_json(&mut rx).await,
        json!({"type": "unsubscribed", "user_id": "ann"})
    );
    assert_eq!(
        server
            .post_events(vec![click("a1", "ann", "m3"), click("a2", "ann", "m9")])
            .await
            .0,
        202
    );
    eventually(&server, "/v1/users/ann", |s, b| {
        s == 200 && b["num_events"] == 2
    })
    .await;
    // What is tested is an absence: a push for ann, had one been sent, would arrive within this
    // window and ahead of the pong. No state shows "nothing was sent", so this waits on purpose.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.send(send(json!({"type": "ping"}))).await.expect("send");
    assert_eq!(next_json(&mut rx).await, json!({"type": "pong"}));

    // Bad messages get an error with a stable code, and the connection stays up.
    for (bad, code) in [
        (json!({"type": "subscribe"}), "invalid_argument"),
        (
            json!({"type": "subscribe", "user_id": "x", "k": 0}),
            "invalid_argument",
        ),
        (json!({"type": "teleport"}), "invalid_argument"),
        (
            json!({"type": "unsubscribe", "user_id": "nobody"}),
            "not_found",
        ),
    ] {
        tx.send(send(bad.clone())).await.expect("send");
        let reply = next_json(&mut rx).await;
        assert_eq!(
            (reply["type"].as_str(), reply["error"]["code"].as_str()),
            (Some("error"), Some(code)),
            "{bad}: {reply}"
        );
    }
    tx.send(send(json!({"type": "ping"}))).await.expect("send");
    assert_eq!(next_json(&mut rx).await, json!({"type": "pong"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_prints_a_running_nodes_tree_and_one_actors_state() {
    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;
    let url = server.url("");
    let inspect = |args: &[&str]| {
        let out = streamrec()
            .arg("inspect")
            .args(args)
            .args(["--url", &url])
            .output()
            .expect("inspect runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, tree, err) = tokio::task::block_in_place(|| inspect(&[]));
    assert!(ok, "{err}");
    let line = tree
        .lines()
        .find(|l| l.trim_start().starts_with("model-0 [model] running"))
        .unwrap_or_else(|| panic!("{tree}"));
    let id = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("id="))
        .expect("an id");
    let (ok, one, err) = tokio::task::block_in_place(|| inspect(&[id]));
    assert!(ok, "{err}");
    let actor: Value = serde_json::from_str(&one).expect("json");
    assert_eq!(
        (actor["name"].as_str(), actor["kind"].as_str()),
        (Some("model-0"), Some("model"))
    );
    let (ok, _, err) = tokio::task::block_in_place(|| inspect(&["0.999999"]));
    assert!(!ok && err.contains("404"), "{err}");
}

/// The next graphql-transport-ws message that is not a keep-alive ping or pong.
async fn next_operation(rx: &mut WsRead) -> Value {
    loop {
        let message = next_json(rx).await;
        if !matches!(message["type"].as_str(), Some("ping" | "pong")) {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graphql_subscription_pushes_every_change() {
    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;
    server.catalog((0..16).map(|i| format!("m{i}"))).await;
    let history: Vec<Value> = (0..40)
        .map(|i| {
            click(
                &format!("h{i}"),
                &format!("u{}", i % 5),
                &format!("m{}", (i * 3) % 16),
            )
        })
        .collect();
    assert_eq!(server.post_events(history).await.0, 202);
    server.train().await;

    let (ws, response) = tokio_tungstenite::connect_async(server.graphql_ws_request())
        .await
        .expect("websocket");
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "graphql-transport-ws"
    );
    let (mut tx, mut rx) = ws.split();
    let send = |v: Value| tokio_tungstenite::tungstenite::Message::Text(v.to_string().into());
    // The token comes in the init payload, as browsers' GraphQL clients send it.
    let bearer = format!("Bearer {}", admin_token());
    tx.send(send(
        json!({"type": "connection_init", "payload": {"Authorization": bearer}}),
    ))
    .await
    .expect("send");
    assert_eq!(next_operation(&mut rx).await["type"], "connection_ack");
    // A subscription costs what a query costs: 100 items x 25 fields is over the limit. It is
    // refused for its id; the connection stays open.
    let fields: Vec<String> = (0..25).map(|i| format!("f{i}: itemId")).collect();
    let costly = format!(
        "subscription {{ recommendationsUpdated(userId: \"viewer\", k: 100) {{ items {{ {} }} }} }}",
        fields.join(" ")
    );
    tx.send(send(
        json!({"id": "0", "type": "subscribe", "payload": {"query": costly}}),
    ))
    .await
    .expect("send");
    let refused = next_operation(&mut rx).await;
    assert_eq!(
        (refused["type"].as_str(), refused["id"].as_str()),
        (Some("error"), Some("0")),
        "{refused}"
    );
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "invalid_argument",
        "{refused}"
    );
    tx.send(send(json!({
        "id": "1",
        "type": "subscribe",
        "payload": {"query": "subscription { recommendationsUpdated(userId: \"viewer\", k: 3) { userId modelVersion items { itemId reasons } } }"}
    })))
    .await
    .expect("send");
    let first = next_operation(&mut rx).await;
    assert_eq!(
        (first["type"].as_str(), first["id"].as_str()),
        (Some("next"), Some("1")),
        "{first}"
    );
    let recs = &first["payload"]["data"]["recommendationsUpdated"];
    assert_eq!(recs["userId"], "viewer");
    let top = recs["items"][0]["itemId"]
        .as_str()
        .expect("an item")
        .to_owned();

    assert_eq!(
        server
            .post_events(vec![click("v1", "viewer", &top)])
            .await
            .0,
        202
    );
    let update = next_operation(&mut rx).await;
    assert_eq!(update["type"], "next", "{update}");
    let items: Vec<&str> = update["payload"]["data"]["recommendationsUpdated"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["itemId"].as_str())
        .collect();
    assert!(
        !items.contains(&top.as_str()),
        "the clicked item is still recommended: {items:?}"
    );

    tx.send(send(json!({"id": "1", "type": "complete"})))
        .await
        .expect("send");
}
