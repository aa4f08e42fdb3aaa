//! `streamrec eval DIR --served`: the check that the served model scores what `eval` reports.
//! For each split of the protocol, a node on embedded defaults in a scratch directory receives
//! the catalogue and the split's train positives as `rating` events, trains one version with the
//! configuration `eval` chose on validation, and serves `GET /v1/users/{id}/recommendations` over
//! HTTP on loopback; the lists it returns are scored by the function that scores the offline
//! models. Everything between the event and the list is the production path: journal, sessions,
//! the trainer (which chooses its own blend on validation cut from what it was sent), the ONNX
//! graph, the masks and the cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::{Config, EventKind};
use models::blend::Blend;
use models::movielens::eval::{Chosen, Report, ServedRow, row};
use models::movielens::protocol::{POSITIVE, Protocol, Split};
use supervisors::Node;

const K: usize = 10;

/// Serves each split of `protocol` from its own node and adds the figures to `report`.
pub async fn check(
    protocol: Arc<Protocol>,
    report: &mut Report,
    seed: u64,
    say: impl Fn(&str),
) -> anyhow::Result<()> {
    let offline = |rows: &[models::movielens::eval::Row]| {
        rows.iter()
            .find(|r| r.model == "hybrid")
            .cloned()
            .context("the report has no hybrid row")
    };
    for split in protocol.splits(seed) {
        say(&format!("serving the {} split through a node", split.name));
        let (version, blend, lists) = serve_split(&protocol, &split, &report.chosen).await?;
        let served = protocol.evaluate_lists(&split, &lists, K);
        let seen = protocol.train_items(&split);
        let seen_served = lists
            .iter()
            .map(|(user, list)| {
                let seen = seen.get(user);
                list.iter()
                    .filter(|i| seen.is_some_and(|s| s.contains(*i)))
                    .count()
            })
            .sum();
        let offline = offline(if split.name == "temporal" {
            &report.results
        } else {
            &report.random_split
        })?;
        report.served.push(ServedRow {
            split: split.name,
            version,
            users: lists.len(),
            short_lists: lists.values().filter(|l| l.len() < K).count(),
            seen_served,
            blend,
            served: row("hybrid (served)", served),
            offline,
        });
    }
    Ok(())
}

/// The configuration `eval` chose, as a node's: a MovieLens positive weighs 1 offline and, as a
/// rating of 4 or more, [`EventKind::weight`] in a node, so ALS's confidence `1 + alpha · weight`
/// takes `alpha` scaled by their ratio.
fn config(dir: &std::path::Path, chosen: &Chosen) -> Config {
    let mut config = Config {
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    config.server.listen = ([127, 0, 0, 1], 0).into();
    config.auth.enabled = false;
    // One client asks for every test user's list as fast as it can.
    config.auth.rate_limit_per_second = 0.0;
    let m = &mut config.model;
    m.retrain_interval = Duration::ZERO;
    m.dim = chosen.als.dim;
    m.iterations = chosen.als.iterations;
    m.regularization = chosen.als.regularization;
    m.alpha = chosen.als.alpha / EventKind::Rating.weight(Some(POSITIVE));
    m.seed = chosen.als.seed;
    m.transition_window = chosen.transitions.window;
    m.transition_half_life = chosen.transitions.half_life;
    m.transition_top_k = chosen.transitions.top_k;
    m.item_item_lambda = chosen.item_item.lambda;
    m.item_item_top_k = chosen.item_item.top_k;
    config
}

/// One split through a fresh node: the version it trained, the blend its trainer chose and each
/// test user's list.
async fn serve_split(
    protocol: &Protocol,
    split: &Split,
    chosen: &Chosen,
) -> anyhow::Result<(String, Option<Blend>, HashMap<String, Vec<String>>)> {
    let dir = std::env::temp_dir().join(format!(
        "streamrec-eval-{}-{}",
        std::process::id(),
        split.name
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let node = Node::start(config(&dir, chosen)).await?;
    let result = async {
        let err = |e: common::ApiError| anyhow::anyhow!(e.message);
        for item in &protocol.items {
            node.upsert_item(item.clone()).await.map_err(err)?;
        }
        for chunk in protocol.events(&split.train).chunks(5000) {
            node.post_events(chunk.to_vec()).await.map_err(err)?;
        }
        anyhow::ensure!(
            node.wait_caught_up(Duration::from_secs(600)).await,
            "the node did not apply the events within 10 minutes"
        );
        let version = node.train(true).await.map_err(err)?;
        let blend = node
            .models()
            .await
            .versions
            .into_iter()
            .find(|v| v.version == version)
            .and_then(|v| v.features?.blend);
        let lists = fetch_lists(&node, &protocol.test_users(split)).await?;
        Ok((version, blend, lists))
    }
    .await;
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Each user's list as `GET /v1/users/{id}/recommendations?k=10` returns it, from the node's
/// router behind a real listener on loopback.
async fn fetch_lists(
    node: &Arc<Node>,
    users: &[String],
) -> anyhow::Result<HashMap<String, Vec<String>>> {
    let listener = tokio::net::TcpListener::bind(node.config.server.listen).await?;
    let addr = listener.local_addr()?;
    let limits = api::listener::Limits::try_from(&*node.config)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::listener::serve(
        listener,
        api::router(node.clone())?,
        None,
        limits,
        async {
            let _ = stopped.await;
        },
    ));
    let client = reqwest::Client::new();
    let mut lists = HashMap::with_capacity(users.len());
    for user in users {
        let response = client
            .get(format!(
                "http://{addr}/v1/users/{user}/recommendations?k={K}"
            ))
            .send()
            .await?;
        let status = response.status();
        anyhow::ensure!(
            status.is_success(),
            "recommendations for {user}: {status} {}",
            response.text().await.unwrap_or_default()
        );
        let recs: common::Recommendations = response.json().await?;
        lists.insert(
            user.clone(),
            recs.items.into_iter().map(|r| r.item_id).collect(),
        );
    }
    let _ = stop.send(());
    server.await??;
    Ok(lists)
}
