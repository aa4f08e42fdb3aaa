//! End-to-end disaster recovery: a node keeping its objects in S3 snapshots its database, takes
//! more events, archives them, then loses its whole data dir (SIGKILL, then the directory
//! removed). `streamrec restore` rebuilds the data dir from the snapshot and the archive, and the
//! node started on it serves every user exactly: the events before the snapshot from the
//! snapshot, those after it replayed from the archive, none twice. Prints how long the restore
//! and the replay took.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Events per user before the snapshot, and after it for the users that go on.
const BEFORE: u64 = 3;
const AFTER: u64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_disk_comes_back_exact_from_its_snapshot_and_the_archive() {
    let (_guard, dir) = workdir();
    let endpoint = test_env("STREAMREC_TEST_S3_ENDPOINT");
    let prefix = unique("restore-");
    let data = dir.join("data");
    let settings = vec![
        (
            "STREAMREC__OBJECTS__URL",
            format!("s3://streamrec/{prefix}"),
        ),
        ("STREAMREC__OBJECTS__ENDPOINT", endpoint.clone()),
        ("STREAMREC__OBJECTS__ARCHIVE_INTERVAL", "200ms".to_owned()),
        // Taken on demand below, at a known point.
        ("STREAMREC__OBJECTS__SNAPSHOT_INTERVAL", "0s".to_owned()),
        ("STREAMREC__CLUSTER__NODE_ID", "restored-node".to_owned()),
        // The PII key lives in the configuration, not in the data dir that is lost.
        (
            "STREAMREC__PII__KEYS__K1",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_owned(),
        ),
    ];
    let server = Server::start_with(&dir, &data, &settings).await;
    let users: Vec<String> = (0..30).map(|u| format!("dr-{u}")).collect();
    let mut expected = std::collections::BTreeMap::new();
    let mut batch = Vec::new();
    for user in &users {
        for i in 0..BEFORE {
            batch.push(click(&format!("{user}-b{i}"), user, &format!("i{i}")));
        }
        expected.insert(user.clone(), BEFORE);
    }
    assert_eq!(server.post_events(batch).await.0, 202);
    exact(&server, &expected).await;
    let (status, snapshot) = server
        .send(reqwest::Method::POST, "/v1/admin/snapshots", None)
        .await;
    assert_eq!(status, 200, "{snapshot}");
    assert!(
        snapshot["files"].as_array().is_some_and(|f| !f.is_empty()),
        "{snapshot}"
    );
    let (_, listed) = server.get("/v1/admin/snapshots").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    // After the snapshot: more events for two users in three, and users it never saw.
    let mut batch = Vec::new();
    for user in users
        .iter()
        .step_by(3)
        .chain(users.iter().skip(1).step_by(3))
    {
        for i in 0..AFTER {
            batch.push(click(&format!("{user}-a{i}"), user, &format!("j{i}")));
        }
        *expected.get_mut(user).expect("known") += AFTER;
    }
    for u in 0..5 {
        let user = format!("dr-new-{u}");
        batch.push(click(&format!("{user}-a0"), &user, "j0"));
        expected.insert(user, 1);
    }
    let after_snapshot = batch.len() as u64;
    assert_eq!(server.post_events(batch).await.0, 202);
    exact(&server, &expected).await;
    let total: u64 = expected.values().sum();
    let s3 = storage::S3ObjectStore::new("streamrec", &prefix, Some(&endpoint))
        .await
        .expect("s3");
    let mut archived = 0;
    let all_archived = wait_until(
        async || {
            archived = actors::archiver::read_archive_of(&s3, Some("restored-node"))
                .await
                .expect("read archive")
                .len() as u64;
            archived == total
        },
        Duration::from_secs(30),
    )
    .await;
    assert!(all_archived, "{archived} of {total} events archived");

    // The disk is lost.
    server.kill_9();
    std::fs::remove_dir_all(&data).expect("wipe the data dir");

    let started = Instant::now();
    let output = streamrec()
        .args(["restore", "--data-dir"])
        .arg(&data)
        .envs(settings.iter().map(|(k, v)| (*k, v)))
        .output()
        .expect("run restore");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let restore_took = started.elapsed();
    let restored: Value = serde_json::from_slice(&output.stdout).expect("a JSON summary");
    assert_eq!(restored["snapshot"], snapshot["key"], "{restored}");
    // Everything after the snapshot is replayed, never less; what the snapshot covers is not
    // (it may cover more than its manifest says: the offsets are read as it begins).
    let covered: u64 = snapshot["ingest_offsets"]
        .as_object()
        .expect("offsets")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert!(covered > 0, "{snapshot}");
    let replay = restored["events_to_replay"].as_u64().expect("a count");
    assert!(
        (after_snapshot..=total - covered).contains(&replay),
        "{replay} events to replay, {after_snapshot} came after the snapshot, which covers \
         {covered}: {restored}"
    );
    // A second restore never writes over the restored store.
    let again = streamrec()
        .args(["restore", "--data-dir"])
        .arg(&data)
        .envs(settings.iter().map(|(k, v)| (*k, v)))
        .output()
        .expect("run restore");
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    let started = Instant::now();
    let server = Server::start_with(&dir, &data, &settings).await;
    exact(&server, &expected).await;
    eprintln!(
        "restore: {} users, {total} events; restore took {:.2}s ({} bytes of snapshot), \
         start and replay of {replay} events until every user was exact {:.2}s",
        expected.len(),
        restore_took.as_secs_f64(),
        restored["snapshot_bytes"],
        started.elapsed().as_secs_f64()
    );
}

/// Waits until every user's event count is the one expected, read through the API.
async fn exact(server: &Server, expected: &std::collections::BTreeMap<String, u64>) {
    for (user, count) in expected {
        eventually(server, &format!("/v1/users/{user}"), |status, body| {
            status == 200 && body["num_events"].as_u64() == Some(*count)
        })
        .await;
    }
}
