//! What operators are given to watch a node: `deploy/prometheus/alerts.yaml` passes promtool
//! (its syntax, and its unit tests in `alerts.test.yaml`), and every `streamrec_*` metric that
//! the rules and the Grafana dashboard (`deploy/grafana/streamrec.json`) name is one a running
//! node exports, so that no panel stays empty and no alert waits forever on a misspelt series.
//!
//! promtool comes from Debian's `prometheus` package, which `scripts/setup.sh` installs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use support::*;

/// Metrics that only a node consuming from Kafka (`events.url = kafka://...`) exports: the
/// actors that set them run only there, and what they are labelled by exists only there. For
/// these the test checks that the source defines them (a literal name in a `.rs` file).
/// Everything else a single node exports from start (`supervisors::Node::start` registers the
/// counters of rare events at 0), even what only a cluster counts: restores, forwarded
/// requests, handoff waits.
const KAFKA_ONLY: &[&str] = &[
    // actors/src/cluster_status.rs: the status topic and the shard map (no such actor on a
    // single node).
    "streamrec_cluster_members",
    "streamrec_cluster_partitions_owned",
    // actors/src/kafka_bridge.rs: messages consumed, applied or dead-lettered, by topic (the
    // configured topics: nothing to register them with before the bridge runs).
    "streamrec_kafka_messages_total",
];

/// Series a node exports from start, before it has counted anything (so that the first count
/// is an increase `rate()` and `increase()` see), each with every label value it can have.
const FROM_START: &[&str] = &[
    r#"streamrec_supervisor_child_failures_total{failure="panic"}"#,
    r#"streamrec_supervisor_child_failures_total{failure="error"}"#,
    r#"streamrec_supervisor_child_failures_total{failure="kill"}"#,
    r#"streamrec_sessions_live"#,
    r#"streamrec_sessions_stopped_total{reason="passivated"}"#,
    r#"streamrec_sessions_stopped_total{reason="evicted"}"#,
    r#"streamrec_sessions_stopped_total{reason="released"}"#,
    r#"streamrec_sessions_stopped_total{reason="failed"}"#,
    r#"streamrec_model_activations_total"#,
    r#"streamrec_forwarded_requests_total{outcome="ok"}"#,
    r#"streamrec_forwarded_requests_total{outcome="error"}"#,
    r#"streamrec_handoff_waits_total"#,
    r#"streamrec_restores_total{kind="full"}"#,
    r#"streamrec_restores_total{kind="incremental"}"#,
    r#"streamrec_restore_seconds_count"#,
];

/// Series whose value a ready single node knows: a model is active, and the readiness probes
/// that found it ready found every embedded dependency up.
const WHEN_READY: &[(&str, f64)] = &[
    ("streamrec_model_active", 1.0),
    (r#"streamrec_dependency_up{dependency="events"}"#, 1.0),
    (r#"streamrec_dependency_up{dependency="catalog"}"#, 1.0),
    (r#"streamrec_dependency_up{dependency="cache"}"#, 1.0),
    (r#"streamrec_dependency_up{dependency="objects"}"#, 1.0),
];

/// Suffixes of the series of a histogram family.
const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `promtool args...` in the workspace root; fails the test with its output unless it
/// succeeds, or with how to install it if it is missing.
fn promtool(args: &[&str]) {
    let output = match Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not on PATH: scripts/setup.sh installs it (Debian's prometheus package)"
        ),
        Err(e) => panic!("promtool {args:?}: {e}"),
    };
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn alerting_rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "rules", "deploy/prometheus/alerts.yaml"]);
    promtool(&["test", "rules", "deploy/prometheus/alerts.test.yaml"]);
}

#[test]
fn every_alert_has_a_severity_and_a_runbook() {
    let rules = read("deploy/prometheus/alerts.yaml");
    let alerts: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    assert!(alerts.len() >= 8, "{} alerts", alerts.len());
    for alert in alerts {
        let name = alert.lines().next().unwrap_or_default();
        assert!(
            alert.contains("severity: page") || alert.contains("severity: warning"),
            "{name} has no severity (page or warning)"
        );
        assert!(alert.contains("runbook: "), "{name} has no runbook");
    }
}

/// Every `streamrec_[a-z0-9_]+` word in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    const PREFIX: &str = "streamrec_";
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices(PREFIX) {
        if text[..at].chars().next_back().is_some_and(word) {
            continue;
        }
        let rest = &text[at + PREFIX.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        if end > 0 {
            names.insert(format!("{PREFIX}{}", &rest[..end]));
        }
    }
    names
}

/// The PromQL of a dashboard: every target's `expr` and every query variable's query.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    fn walk(value: &Value, key: Option<&str>, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => map.iter().for_each(|(k, v)| walk(v, Some(k), out)),
            Value::Array(items) => items.iter().for_each(|v| walk(v, key, out)),
            Value::String(s) if matches!(key, Some("expr" | "query" | "definition")) => {
                out.push(s.clone());
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, None, &mut out);
    out
}

/// Metric families in a Prometheus text exposition, with their `# TYPE`; a family with a
/// `# HELP` line but no `# TYPE` is `untyped`.
fn exported_families(exposition: &str) -> BTreeMap<String, String> {
    let mut families = BTreeMap::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("#"), Some("TYPE"), Some(name), Some(kind)) => {
                families.insert(name.to_owned(), kind.to_owned());
            }
            (Some("#"), Some("HELP"), Some(name), _) => {
                families
                    .entry(name.to_owned())
                    .or_insert_with(|| "untyped".to_owned());
            }
            _ => {}
        }
    }
    families
}

/// The samples of a Prometheus text exposition: each series (`name{labels}`, as written) with
/// its value.
fn samples(exposition: &str) -> BTreeMap<&str, f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series, value.parse().ok()?))
        })
        .collect()
}

/// The family a series name belongs to: itself, or a histogram's (or summary's) name without
/// its `_bucket`/`_sum`/`_count` suffix.
fn family_of<'a>(name: &'a str, families: &BTreeMap<String, String>) -> Option<&'a str> {
    if families.contains_key(name) {
        return Some(name);
    }
    HISTOGRAM_SUFFIXES.iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        families
            .get(base)
            .is_some_and(|kind| kind == "histogram" || kind == "summary")
            .then_some(base)
    })
}

/// A series name without a histogram's `_bucket`/`_sum`/`_count` suffix.
fn series_family(name: &str) -> &str {
    HISTOGRAM_SUFFIXES
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// The `.rs` files under the workspace's `src` folders (every crate's, and the binary's).
fn workspace_sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                if !name.starts_with('.') && !matches!(&*name, "target" | "node_modules" | "data") {
                    walk(&path, out);
                }
            } else if name.ends_with(".rs") && path.components().any(|c| c.as_os_str() == "src") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    out
}

/// Drives a little of everything through the node: catalogue writes, events, reads, a training
/// run, a push to a WebSocket subscriber.
async fn drive_traffic(server: &Server) {
    server.catalog(["o1", "o2", "o3", "o4", "o5", "o6"]).await;
    let events: Vec<Value> = (0..6)
        .flat_map(|u| {
            (1..=6)
                .filter(move |i| (u + i) % 2 == 0)
                .map(move |i| click(&format!("e{u}-{i}"), &format!("u{u}"), &format!("o{i}")))
        })
        .collect();
    assert_eq!(server.post_events(events).await.0, 202);
    eventually(server, "/v1/users/u0", |s, b| {
        s == 200 && b["num_events"].as_u64() > Some(0)
    })
    .await;
    server.train().await;
    for user in ["u0", "u1", "u0", "nobody"] {
        let (status, body) = server
            .get(&format!("/v1/users/{user}/recommendations?k=3"))
            .await;
        assert_eq!(status, 200, "{user}: {body}");
    }

    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url("/v1/ws?user_id=watcher&k=3"))
        .await
        .expect("websocket");
    let (_tx, mut rx) = ws.split();
    let first = next_json(&mut rx).await;
    let top = first["items"][0]["item_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a first list: {first}"))
        .to_owned();
    // Acting on the top item takes it out of the list: a push follows.
    assert_eq!(
        server
            .post_events(vec![click("w1", "watcher", &top)])
            .await
            .0,
        202
    );
    let update = next_json(&mut rx).await;
    assert_eq!(update["type"], "recommendations", "{update}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_rules_name_is_exported_by_a_node() {
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/streamrec.json")).expect("dashboard json");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "the dashboard has no prometheus datasource variable"
    );
    let mut referenced = BTreeSet::new();
    for query in dashboard_queries(&dashboard) {
        referenced.extend(metric_names(&query));
    }
    assert!(
        referenced.contains("streamrec_http_request_duration_seconds_bucket"),
        "no request latency on the dashboard: {referenced:?}"
    );
    referenced.extend(metric_names(&read("deploy/prometheus/alerts.yaml")));

    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;

    // Before any traffic: the counters of rare events are exported, each label value, and the
    // gauges of a ready node say so.
    let scrape = async || {
        let response = reqwest::get(server.url("/metrics")).await.expect("scrape");
        assert_eq!(response.status(), 200);
        response.text().await.expect("metrics text")
    };
    let exposition = scrape().await;
    let at_start = samples(&exposition);
    let absent: Vec<&&str> = FROM_START
        .iter()
        .filter(|series| !at_start.contains_key(**series))
        .collect();
    assert!(
        absent.is_empty(),
        "not exported from start: {absent:?}\n{exposition}"
    );
    for (series, value) in WHEN_READY {
        assert_eq!(
            at_start.get(series),
            Some(value),
            "{series} on a ready node\n{exposition}"
        );
    }

    drive_traffic(&server).await;

    // Metrics appear when first counted, some after the request that counts them has answered
    // (a push, say): scrape until every expected one is there, then report what is missing.
    let exempt: BTreeSet<&str> = KAFKA_ONLY.iter().copied().collect();
    let mut missing = Vec::new();
    let mut families = BTreeMap::new();
    wait_until(
        async || {
            // As Prometheus scrapes: without a token.
            families = exported_families(&scrape().await);
            missing = referenced
                .iter()
                .filter(|name| family_of(name, &families).is_none())
                .filter(|name| !exempt.contains(series_family(name)))
                .cloned()
                .collect();
            missing.is_empty()
        },
        Duration::from_secs(20),
    )
    .await;
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported by the node: {missing:?}\nexported: {:?}",
        families.keys().collect::<Vec<_>>()
    );

    // The names only a Kafka cluster exports are real: defined in the source, and
    // still used by the dashboard or the rules (else they go from the list).
    let sources: Vec<String> = workspace_sources()
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .collect();
    assert!(!sources.is_empty(), "no workspace sources found");
    for name in exempt {
        assert!(
            sources.iter().any(|s| s.contains(&format!("\"{name}\""))),
            "{name} is defined nowhere in the workspace's sources"
        );
        assert!(
            referenced.iter().any(|r| series_family(r) == name),
            "{name} is no longer named in deploy/: drop it from the list"
        );
    }
}
