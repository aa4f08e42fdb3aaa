//! `streamrec eval --served`: the real binary evaluates the models offline, then serves each
//! split from a node (events in, a version trained, lists fetched over HTTP) and scores what the
//! API served beside what the offline hybrid scored.

mod support;

use std::path::Path;

use serde_json::Value;
use support::*;

/// A pseudo-random number in 0..n from a seed (a fixed, patternless sequence).
fn pick(seed: u64, n: u64) -> u64 {
    (seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407)
        >> 33)
        % n
}

/// MovieLens' classic layout: 450 users in three taste groups of 20 films each; each user rates
/// 16 films, 13 of their group's (ratings 4 and 5, an occasional 2) and 3 of any.
fn write_dataset(dir: &Path) {
    std::fs::create_dir_all(dir).expect("dir");
    let genres = ["Comedy", "Drama", "Horror"];
    let mut data = String::new();
    for u in 0..450u64 {
        let group = u % 3;
        let mut rated = std::collections::BTreeSet::new();
        let mut n = 0;
        while rated.len() < 16 {
            n += 1;
            let item = if rated.len() < 13 {
                group * 20 + pick(u * 1000 + n, 20)
            } else {
                pick(u * 7000 + n, 60)
            };
            if rated.insert(item) {
                let rating = match pick(u * 31 + item, 10) {
                    0 => 2,
                    r => 4 + r % 2,
                };
                let ts = 880_000_000 + u * 3_600 + rated.len() as u64 * 60;
                data += &format!("{}\t{}\t{rating}\t{ts}\n", u + 1, item + 1);
            }
        }
    }
    std::fs::write(dir.join("u.data"), data).expect("write");
    let items: String = (0..60)
        .map(|i| {
            let mut flags = vec!["0"; 19];
            flags[[5, 8, 11][i / 20]] = "1";
            format!(
                "{}|{} film {i} (1995)|01-Jan-1995||http://x|{}\n",
                i + 1,
                genres[i / 20],
                flags.join("|")
            )
        })
        .collect();
    std::fs::write(dir.join("u.item"), items).expect("write");
}

fn ndcg(rows: &Value, model: &str) -> f64 {
    rows.as_array()
        .expect("rows")
        .iter()
        .find(|r| r["model"] == model)
        .and_then(|r| r["ndcg"].as_f64())
        .unwrap_or_else(|| panic!("no {model} row in {rows}"))
}

#[test]
fn the_served_model_scores_what_eval_reports() {
    let (_guard, dir) = workdir();
    write_dataset(&dir.join("ml"));
    let output = streamrec()
        .args(["eval", "--served", "--json", "--seed", "5"])
        .arg(dir.join("ml"))
        .env("TMPDIR", &dir)
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "eval failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let served = report["served"].as_array().expect("served rows");
    assert_eq!(
        served
            .iter()
            .map(|s| s["split"].clone())
            .collect::<Vec<_>>(),
        ["temporal", "random"]
    );
    for (s, rows) in served
        .iter()
        .zip([&report["results"], &report["random_split"]])
    {
        let split = &s["split"];
        // Every user with something held out (more than the default rate limit lets one caller
        // ask for at once) got a full list, none with a film they rated.
        assert!(s["users"].as_u64() > Some(400), "{split}: {s}");
        assert_eq!(
            (&s["short_lists"], &s["seen_served"]),
            (&0.into(), &0.into()),
            "{split}: {s}"
        );
        assert_eq!(
            s["offline"]["ndcg"].as_f64(),
            Some(ndcg(rows, "hybrid")),
            "{split}"
        );
        // The served lists score what the offline hybrid scores (the node chooses its blend on
        // validation cut from what it was sent, one level deeper than eval: near, not equal),
        // and find what popularity cannot: the taste groups a random hold-out asks about.
        let (served, offline) = (
            s["served"]["ndcg"].as_f64().expect("ndcg"),
            ndcg(rows, "hybrid"),
        );
        let popularity = ndcg(rows, "popularity");
        assert!(
            (served / offline - 1.0).abs() <= 0.1,
            "{split}: served {served}, offline {offline}"
        );
        assert!(
            served > popularity,
            "{split}: served {served}, popularity {popularity}"
        );
        assert!(
            s["version"].as_str().is_some_and(|v| v.starts_with('v')),
            "{s}"
        );
    }
    let random = &served[1];
    assert!(
        random["served"]["ndcg"].as_f64() > Some(3.0 * ndcg(&report["random_split"], "popularity")),
        "{random}"
    );
    // Each split's node worked in its own scratch directory and left nothing behind.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("streamrec-eval-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
