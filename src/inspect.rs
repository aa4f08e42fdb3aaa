//! `streamrec inspect [ACTOR] [--url URL] [--token JWT]`: the operator's view of a running node
//! from a shell, over the same admin API the console uses (the token needs the `operator` role).
//! Without an actor, one line per actor in the supervision tree (name, kind, status, id,
//! restarts, mailbox, uptime); with one, its snapshot as JSON.

use anyhow::{Context, bail};
use serde_json::Value;

pub async fn run(url: &str, actor: Option<&str>, token: Option<&str>) -> anyhow::Result<()> {
    let base = url.trim_end_matches('/');
    let path = match actor {
        Some(id) => format!("{base}/v1/admin/actors/{id}"),
        None => format!("{base}/v1/admin/actors"),
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
    if actor.is_some() {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print!("{}", tree(&body));
    }
    Ok(())
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
