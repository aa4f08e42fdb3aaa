//! `streamrec inspect [ACTOR | --cluster] [--url URL] [--token JWT]`: the operator's view of a
//! running node from a shell, over the same admin API the console uses (the token needs the
//! `operator` role). Without an actor, one line per actor in the supervision tree (name, kind,
//! status, id, restarts, mailbox, uptime); with one, its snapshot as JSON; with `--cluster`, the
//! shard map of `GET /v1/admin/cluster`: the members and who owns which partition.

use anyhow::{Context, bail};
use serde_json::Value;

/// What to print.
pub enum What<'a> {
    Tree,
    Actor(&'a str),
    Cluster,
}

pub async fn run(url: &str, what: What<'_>, token: Option<&str>) -> anyhow::Result<()> {
    let base = url.trim_end_matches('/');
    let path = match what {
        What::Actor(id) => format!("{base}/v1/admin/actors/{id}"),
        What::Tree => format!("{base}/v1/admin/actors"),
        What::Cluster => format!("{base}/v1/admin/cluster"),
    };
    let mut request = reqwest::Client::new().get(&path);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("no node answers at {base}"))?;
    let status = response.status();
    let body: Value = response.json().await.context("the node sent no JSON")?;
    if !status.is_success() {
        bail!(
            "{status}: {}",
            body["error"]["message"].as_str().unwrap_or("error")
        );
    }
    match what {
        What::Actor(_) => println!("{}", serde_json::to_string_pretty(&body)?),
        What::Tree => print!("{}", tree(&body)),
        What::Cluster => print!("{}", cluster(&body)),
    }
    Ok(())
}

/// The shard map: a line per member, then runs of consecutive partitions that share an owner
/// and a state.
pub fn cluster(view: &Value) -> String {
    let str_of = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let members = view["members"].as_array().map_or(&[][..], Vec::as_slice);
    let mut out = format!(
        "node {} (generation {}), {} member{}\n",
        str_of(&view["node_id"]),
        view["generation"].as_u64().unwrap_or(0),
        members.len(),
        if members.len() == 1 { "" } else { "s" }
    );
    for member in members {
        let partitions: Vec<u64> = member["partitions"].as_array().map_or(Vec::new(), |ps| {
            ps.iter().filter_map(Value::as_u64).collect()
        });
        out.push_str(&format!(
            "  {} {} partitions {}\n",
            str_of(&member["node_id"]),
            str_of(&member["address"]),
            ranges(&partitions)
        ));
    }
    out.push_str("partitions:\n");
    // (first, last, owner, state) of each run.
    let mut runs: Vec<(u64, u64, String, String)> = Vec::new();
    for p in view["partitions"].as_array().map_or(&[][..], Vec::as_slice) {
        let (n, owner, state) = (
            p["partition"].as_u64().unwrap_or(0),
            str_of(&p["owner"]),
            str_of(&p["state"]),
        );
        match runs.last_mut() {
            Some(run) if run.1 + 1 == n && run.2 == owner && run.3 == state => run.1 = n,
            _ => runs.push((n, n, owner, state)),
        }
    }
    for (first, last, owner, state) in runs {
        out.push_str(&format!("  {} {owner} {state}\n", ranges(&[first, last])));
    }
    out
}

/// `0-3,6,8-9` for sorted partition numbers; `-` for none.
fn ranges(sorted: &[u64]) -> String {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for &n in sorted {
        match spans.last_mut() {
            Some(span) if span.1 + 1 == n || span.1 == n => span.1 = n,
            _ => spans.push((n, n)),
        }
    }
    if spans.is_empty() {
        return "-".into();
    }
    spans
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The tree as indented lines.
pub fn tree(node: &Value) -> String {
    fn walk(node: &Value, depth: usize, out: &mut String) {
        let failures: Vec<String> = ["panics", "errors", "kills"]
            .into_iter()
            .filter_map(|kind| {
                let n = node["state"][format!("num_{kind}")].as_u64()?;
                (n > 0).then(|| format!("{kind}={n}"))
            })
            .collect();
        let restarts = node["state"]["num_restarts"]
            .as_u64()
            .map(|n| {
                if failures.is_empty() {
                    format!(" restarts={n}")
                } else {
                    format!(" restarts={n} ({})", failures.join(" "))
                }
            })
            .unwrap_or_default();
        let mailbox = &node["mailbox"];
        let mailbox = mailbox["depth"]
            .as_u64()
            .map(|depth| {
                format!(
                    " mailbox={depth} msgs={} ({}/s)",
                    mailbox["handled"].as_u64().unwrap_or(0),
                    mailbox["rate"].as_f64().unwrap_or(0.0)
                )
            })
            .unwrap_or_default();
        let uptime = node["uptime_ms"]
            .as_i64()
            .map(|ms| format!(" up={}s", ms / 1000))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:indent$}{} [{}] {} id={}{restarts}{mailbox}{uptime}\n",
            "",
            node["name"].as_str().unwrap_or("-"),
            node["kind"].as_str().unwrap_or("?"),
            node["status"].as_str().unwrap_or("?"),
            node["id"].as_str().unwrap_or("?"),
            indent = depth * 2
        ));
        let children = node["children"].as_array().map_or(&[][..], Vec::as_slice);
        for child in children {
            walk(child, depth + 1, out);
        }
        let shown = children.len() as u64;
        if let Some(total) = node["num_children"].as_u64().filter(|t| *t > shown) {
            out.push_str(&format!(
                "{:indent$}… {} more\n",
                "",
                total - shown,
                indent = (depth + 1) * 2
            ));
        }
    }
    let mut out = String::new();
    walk(node, 0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_members_and_runs_of_partitions() {
        let view = serde_json::json!({
            "node_id": "n1", "generation": 4,
            "members": [
                {"node_id": "n1", "address": "10.0.0.1:8080", "partitions": [0, 1, 2, 5]},
                {"node_id": "n2", "address": "10.0.0.2:8080", "partitions": [3]},
            ],
            "partitions": [
                {"partition": 0, "owner": "n1", "state": "active"},
                {"partition": 1, "owner": "n1", "state": "active"},
                {"partition": 2, "owner": "n1", "state": "restoring"},
                {"partition": 3, "owner": "n2", "state": "active"},
                {"partition": 4, "owner": null, "state": "moving"},
                {"partition": 5, "owner": "n1", "state": "active"},
            ]
        });
        assert_eq!(
            cluster(&view),
            "node n1 (generation 4), 2 members\n  n1 10.0.0.1:8080 partitions 0-2,5\n  n2 10.0.0.2:8080 partitions 3\npartitions:\n  0-1 n1 active\n  2 n1 restoring\n  3 n2 active\n  4 - moving\n  5 n1 active\n"
        );
        assert_eq!(ranges(&[]), "-");
    }

    #[test]
    fn prints_one_indented_line_per_actor() {
        let tree_json = serde_json::json!({
            "name": null, "kind": "root_supervisor", "status": "running", "id": "0.1",
            "uptime_ms": 5000, "state": {"num_restarts": 2}, "num_children": 3,
            "children": [
                {"name": "push", "kind": "push_hub", "status": "running", "id": "0.2", "children": []},
                {"name": "models", "kind": "model_supervisor", "status": "running", "id": "0.3",
                 "children": [{"name": "model-0", "kind": "model", "status": "running", "id": "0.4"}]}
            ]
        });
        assert_eq!(
            tree(&tree_json),
            "- [root_supervisor] running id=0.1 restarts=2 up=5s\n  push [push_hub] running id=0.2\n  models [model_supervisor] running id=0.3\n    model-0 [model] running id=0.4\n  … 1 more\n"
        );
    }

    #[test]
    fn a_supervisor_shows_the_failures_behind_its_restarts() {
        let tree_json = serde_json::json!({
            "name": "models", "kind": "model_supervisor", "status": "running", "id": "0.3",
            "state": {"num_restarts": 3, "num_panics": 1, "num_errors": 0, "num_kills": 2},
        });
        assert_eq!(
            tree(&tree_json),
            "models [model_supervisor] running id=0.3 restarts=3 (panics=1 kills=2)\n"
        );
    }
}
