//! `streamrec import items|profiles|events FILE` and `streamrec export ...` against the real
//! binary serving: a file with a refused line makes the import fail with the report on stdout
//! and the line in the summary, the good lines are stored; an export to a file imports back.

mod support;

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};
use support::*;

fn run(args: &[&str], url: &str) -> Output {
    tokio::task::block_in_place(|| {
        streamrec()
            .args(args)
            .args(["--url", url])
            .output()
            .expect("runs")
    })
}

fn report(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report on stdout ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn write_lines(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_then_export_through_the_command_line() {
    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;
    let url = server.url("");
    let items = dir.join("items.ndjson");
    write_lines(
        &items,
        &[
            json!({"item_id": "i1", "title": "One", "categories": ["c"]}),
            json!({"item_id": "i2", "title": "Two"}),
            json!({"item_id": "i3", "title": ""}),
            json!({"item_id": "i4", "title": "Four", "available": false}),
        ],
    );
    let output = run(&["import", "items", items.to_str().expect("path")], &url);
    assert!(!output.status.success(), "a refused line fails the command");
    let answer = report(&output);
    assert_eq!(
        (
            &answer["accepted"],
            &answer["refused"],
            &answer["errors"][0]["line"]
        ),
        (&json!(3), &json!(1), &json!(3)),
        "{answer}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("3 accepted, 1 refused") && stderr.contains("line 3: invalid_argument"),
        "{stderr}"
    );
    assert_eq!(server.get("/v1/items/i4").await.0, 200);
    assert_eq!(server.get("/v1/items/i3").await.0, 404);

    let exported = dir.join("export/items.ndjson");
    std::fs::create_dir_all(exported.parent().expect("parent")).expect("dir");
    let output = run(
        &["export", "items", "-o", exported.to_str().expect("path")],
        &url,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&exported).expect("exported file");
    let ids: Vec<String> = text
        .lines()
        .map(|l| {
            let item: Value = serde_json::from_str(l).expect("json line");
            item["item_id"].as_str().expect("id").to_owned()
        })
        .collect();
    assert_eq!(ids, ["i1", "i2", "i4"]);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("3 lines exported"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The export imports back whole; events too, and reach the user's session.
    let output = run(&["import", "items", exported.to_str().expect("path")], &url);
    assert!(output.status.success());
    assert_eq!(report(&output)["accepted"], 3);
    let events = dir.join("events.ndjson");
    write_lines(&events, &[click("e1", "u1", "i1"), click("e2", "u1", "i2")]);
    let output = run(&["import", "events", events.to_str().expect("path")], &url);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(report(&output)["accepted"], 2);
    eventually(&server, "/v1/users/u1", |status, user| {
        status == 200 && user["num_events"] == 2
    })
    .await;
    let output = run(&["export", "events"], &url);
    assert!(output.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["event_id"], "e1");
}
