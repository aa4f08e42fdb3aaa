//! The event archive as another ecosystem reads it: a node keeping its objects in S3 (the test
//! SeaweedFS) archives what it was sent through its real archiver; the Parquet objects are copied
//! out of the store with their keys as paths, and pyarrow reads them, each file alone and the
//! tree as one Hive-partitioned dataset (`topic=/partition=/hour=`), and finds every event once,
//! its fields, and the column types the archive promises.
//!
//! pyarrow comes from PyPI into the virtualenv `tools/parquet` of the tool cache, which
//! `scripts/setup.sh` installs (`STREAMREC_TEST_PYARROW` names another Python). Without it the
//! test says so and passes, except under `CI=true`, where it fails.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use storage::ObjectStore;
use support::*;

/// Reads every `.parquet` file under the directory `argv[1]`, alone and as a Hive-partitioned
/// dataset, and prints what it found as one JSON object.
const READER: &str = r#"
import json, pathlib, sys
import pyarrow as pa, pyarrow.dataset as ds, pyarrow.parquet as pq
root = pathlib.Path(sys.argv[1])
files = sorted(root.rglob("*.parquet"))
schema = pq.read_schema(files[0])
rows = []
for f in files:
    t = pq.read_table(f)
    for r in t.to_pylist():
        r["ts"] = round(r["ts"].timestamp() * 1000)
        r["received_ms"] = None if r["received_ms"] is None else round(r["received_ms"].timestamp() * 1000)
        rows.append(r)
tree = ds.dataset(root, format="parquet", partitioning="hive").to_table()
keys = tree.select(["topic", "partition", "offset"]).to_pylist()
print(json.dumps({
    "types": {f.name: str(f.type) for f in schema},
    "nullable": {f.name: f.nullable for f in schema},
    "compression": pq.ParquetFile(files[0]).metadata.row_group(0).column(0).compression,
    "files": len(files),
    "rows": rows,
    "tree_rows": tree.num_rows,
    "tree_topics": sorted({k["topic"] for k in keys}),
    "tree_ids": sorted(tree.column("event_id").to_pylist()),
}))
"#;

/// The Python with pyarrow, or `None` (outside CI) when it is not installed.
fn pyarrow_python() -> Option<PathBuf> {
    let python = std::env::var_os("STREAMREC_TEST_PYARROW")
        .map(PathBuf::from)
        .unwrap_or_else(|| tool_cache().join("tools/parquet/bin/python"));
    let works = Command::new(&python)
        .args(["-c", "import pyarrow"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Some(python);
    }
    let missing = format!(
        "pyarrow is not importable by {}: scripts/setup.sh (make setup) installs it from PyPI",
        python.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{missing}");
    eprintln!("skipped: {missing}");
    None
}

/// The project's tool cache, as `scripts/setup.sh` chooses it.
fn tool_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("STREAMREC_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("streamrec");
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/streamrec")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_reads_every_archived_event_from_the_parquet_archive() {
    let Some(python) = pyarrow_python() else {
        return;
    };
    let (_guard, dir) = workdir();
    let endpoint = test_env("STREAMREC_TEST_S3_ENDPOINT");
    let prefix = unique("archive-");
    let settings = vec![
        (
            "STREAMREC__OBJECTS__URL",
            format!("s3://streamrec/{prefix}"),
        ),
        ("STREAMREC__OBJECTS__ENDPOINT", endpoint.clone()),
        ("STREAMREC__OBJECTS__ARCHIVE_INTERVAL", "200ms".to_owned()),
        ("STREAMREC__CLUSTER__NODE_ID", "parquet-node.1".to_owned()),
    ];
    let server = Server::start_with(&dir, &dir.join("data"), &settings).await;

    // Users over several partitions; ratings carry a value, clicks none.
    let mut posted: BTreeMap<String, Value> = BTreeMap::new();
    let mut batch = Vec::new();
    for u in 0..25 {
        for i in 0..4 {
            let id = format!("pq-{u}-{i}");
            let user = format!("pq-user-{u}");
            let event = if i == 3 {
                json!({"event_id": id, "user_id": user, "item_id": format!("ïtem-{i}"),
                       "kind": "rating", "value": 4.5, "ts": 1_796_677_200_000_i64 + u})
            } else {
                click(&id, &user, &format!("item-{i}"))
            };
            posted.insert(id, event.clone());
            batch.push(event);
        }
    }
    assert_eq!(server.post_events(batch).await.0, 202);

    let s3 = storage::S3ObjectStore::new("streamrec", &prefix, Some(&endpoint))
        .await
        .expect("s3");
    let mut archived = 0;
    let all_archived = wait_until(
        async || {
            archived = actors::archiver::read_archive(&s3)
                .await
                .expect("read archive")
                .len();
            archived == posted.len()
        },
        Duration::from_secs(30),
    )
    .await;
    assert!(
        all_archived,
        "{archived} of {} events archived",
        posted.len()
    );
    let trained_from = actors::archiver::read_archive(&s3).await.expect("read");

    // The objects, their keys as paths, as a Spark or DuckDB job would find them in the bucket.
    let keys = s3.list("archive/").await.expect("list");
    assert!(!keys.is_empty());
    let out = dir.join("bucket");
    for key in &keys {
        assert!(
            key.starts_with("archive/topic=user-events/partition=")
                && key.contains("/hour=")
                && key.ends_with(".parquet")
                && key.contains("/parquet-node.1-"),
            "{key}"
        );
        let bytes = s3.get(key).await.expect("get").expect("listed");
        let path = out.join(key);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&path, bytes).expect("write");
    }
    server.kill_9();

    let output = Command::new(&python)
        .args(["-c", READER])
        .arg(out.join("archive"))
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "pyarrow failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");

    assert_eq!(read["files"], keys.len());
    assert_eq!(
        read["types"],
        json!({
            "event_id": "string", "user_id": "string", "item_id": "string", "kind": "string",
            "value": "double", "ts": "timestamp[ms, tz=UTC]",
            "received_ms": "timestamp[ms, tz=UTC]", "partition": "int32", "offset": "int64",
        }),
        "{read}"
    );
    assert_eq!(read["nullable"]["value"], true);
    assert_eq!(read["nullable"]["event_id"], false);
    assert_eq!(read["compression"], "SNAPPY");

    // Every event once, with the fields it was posted with.
    let rows = read["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), posted.len(), "{read}");
    let mut ids: Vec<&str> = rows
        .iter()
        .map(|r| r["event_id"].as_str().expect("an id"))
        .collect();
    ids.sort();
    assert_eq!(ids, posted.keys().map(String::as_str).collect::<Vec<_>>());
    for row in rows {
        let sent = &posted[row["event_id"].as_str().expect("an id")];
        for field in ["user_id", "item_id", "kind"] {
            assert_eq!(row[field], sent[field], "{row}");
        }
        assert_eq!(
            row["value"],
            sent.get("value").cloned().unwrap_or(Value::Null)
        );
        if let Some(ts) = sent.get("ts") {
            assert_eq!(&row["ts"], ts, "{row}");
        }
        assert!(row["received_ms"].as_i64().is_some(), "{row}");
        // The same record training reads back.
        let ours = trained_from
            .iter()
            .find(|r| r.event.event_id == row["event_id"])
            .expect("read back by the node");
        assert_eq!(row["offset"], ours.offset);
        assert_eq!(row["partition"], ours.partition);
        assert_eq!(row["received_ms"], json!(ours.received_ms));
        assert_eq!(row["ts"], ours.event.ts);
    }
    // Several partitions, and the tree as one Hive-partitioned table.
    let partitions: std::collections::BTreeSet<u64> = rows
        .iter()
        .filter_map(|r| r["partition"].as_u64())
        .collect();
    assert!(partitions.len() > 1, "{partitions:?}");
    assert_eq!(read["tree_rows"], posted.len());
    assert_eq!(read["tree_topics"], json!(["user-events"]));
    assert_eq!(read["tree_ids"], json!(posted.keys().collect::<Vec<_>>()));
}
