//! The offline yardstick on MovieLens files, which `streamrec eval DIR` prints: how popularity,
//! each part of the hybrid alone (ALS, item-to-item, transitions), an EASE baseline and the
//! hybrid rank what users did next (temporal split) and what else they liked (random split), and
//! how items nobody has touched rank from their content, and what diversity on request costs the
//! hybrid in NDCG and buys in intra-list diversity.
//!
//! Protocol: a rating >= 4 is a positive (weight 1), other ratings are dropped. Per user with n
//! positives, the last floor(0.2 n) by (timestamp, item id) are test; users with fewer than 5
//! positives stay in train. Every catalogue item is ranked per evaluated user, excluding the
//! user's train positives; metrics @10 are averaged over evaluated users. Hyper-parameters are
//! chosen on validation splits cut from the train set (temporal as the protocol, and random),
//! never on test: one configuration for both splits, the EASE baseline's λ tuned for each on its
//! own kind of validation split.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::MovieLensError;
use super::diversity::DiversityRow;
use super::fitted::{Fitted, Model};
use super::protocol::Protocol;
pub use super::tune::Chosen;
use super::tune::tune;
use crate::als::Cell;
use crate::eval::{Metrics, random_split, temporal_split};

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub model: &'static str,
    pub precision: f64,
    pub recall: f64,
    pub ndcg: f64,
    pub hit_rate: f64,
    pub coverage: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub users: usize,
    pub items: usize,
    pub positives: usize,
    pub evaluated_users: usize,
    pub k: usize,
    pub chosen: Chosen,
    /// Temporal split (the protocol).
    pub results: Vec<Row>,
    /// The same models and hyper-parameters on a random 20% hold-out per user.
    pub random_split: Vec<Row>,
    pub cold_items: ColdReport,
    /// The hybrid re-ranked for diversity, on each split.
    pub diversity: DiversityReport,
    /// The hybrid as a node serves it, when asked for (`streamrec eval --served`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub served: Vec<ServedRow>,
    pub seconds: f64,
}

/// A split's lists served through the API by a node trained on its train events, beside the
/// offline hybrid's figures on the same split.
#[derive(Debug, Serialize)]
pub struct ServedRow {
    pub split: &'static str,
    /// The version the node trained and served.
    pub version: String,
    /// Users asked for a list, and how many got fewer than k items.
    pub users: usize,
    pub short_lists: usize,
    /// Items served to a user who had them in train (the filters' exactness: always 0).
    pub seen_served: usize,
    /// The blend the node's trainer chose on its own validation splits.
    pub blend: Option<crate::blend::Blend>,
    pub served: Row,
    pub offline: Row,
}

/// The hybrid's top 10 re-ranked by maximal marginal relevance at each level of `diversity`.
#[derive(Debug, Serialize)]
pub struct DiversityReport {
    pub temporal: Vec<DiversityRow>,
    pub random: Vec<DiversityRow>,
}

/// Items held out of training entirely: each evaluated user's positives among them, ranked among
/// them only.
#[derive(Debug, Serialize)]
pub struct ColdReport {
    pub held_out_items: usize,
    pub evaluated_users: usize,
    pub results: Vec<Row>,
}

pub(super) const K: usize = 10;

/// Evaluates the models on the MovieLens files in `dir`, every random choice seeded by `seed`;
/// `say` hears what it is doing (the run takes a while on the full data set).
pub fn run(dir: &Path, seed: u64, say: impl Fn(&str)) -> Result<Report, MovieLensError> {
    run_on(&Protocol::load(dir)?, seed, say)
}

/// [`run`] on files already read.
pub fn run_on(
    protocol: &Protocol,
    seed: u64,
    say: impl Fn(&str),
) -> Result<Report, MovieLensError> {
    let started = Instant::now();
    let Protocol {
        items, data, cells, ..
    } = protocol;
    let num_items = data.items.len();
    let (train, test) = temporal_split(cells, 0.2, 5);
    let (fit, validation) = temporal_split(&train, 0.2, 5);

    say("tuning on validation splits cut from train");
    let chosen = tune(
        data,
        &[(fit, validation), random_split(&train, 0.2, 5, seed)],
        seed,
        &say,
    );
    let all_models = |fitted: &Fitted, train: &[Cell], test: &[Cell]| {
        let rows = [
            ("popularity", Model::Popularity),
            ("als", Model::Als),
            ("transitions", Model::Transitions),
            ("item-item", Model::ItemItem),
            ("ease (baseline)", Model::Ease),
            ("hybrid", Model::Hybrid(&chosen.blend)),
        ];
        rows.into_iter()
            .map(|(name, model)| row(name, fitted.metrics(model, train, test)))
            .collect::<Vec<_>>()
    };
    say("fitting the chosen models on the train split");
    let fit = |train: &[Cell], ease_lambda| {
        Fitted::new(
            data,
            train,
            &chosen.als,
            chosen.transitions,
            chosen.item_item,
            ease_lambda,
        )
    };
    let categories = super::diversity::categories(data, items);
    let hybrid = Model::Hybrid(&chosen.blend);
    let fitted = fit(&train, chosen.ease_lambda.0);
    let results = all_models(&fitted, &train, &test);
    say("the hybrid re-ranked for diversity");
    let temporal_diversity = super::diversity::rows(&fitted, hybrid, &categories, &train, &test);
    drop(fitted);
    say("the same models on a random split");
    let (random_train, random_test) = random_split(cells, 0.2, 5, seed);
    let fitted = fit(&random_train, chosen.ease_lambda.1);
    let random = all_models(&fitted, &random_train, &random_test);
    let random_diversity =
        super::diversity::rows(&fitted, hybrid, &categories, &random_train, &random_test);
    drop(fitted);
    say("cold items: held out of training entirely, ranked from their content");
    let cold = super::cold::cold_items(data, items, cells, &chosen.als, seed);
    let evaluated_users = test
        .iter()
        .map(|c| c.user)
        .collect::<std::collections::HashSet<_>>()
        .len();
    Ok(Report {
        users: data.users.len(),
        items: num_items,
        positives: cells.len(),
        evaluated_users,
        k: K,
        chosen,
        random_split: random,
        cold_items: cold,
        diversity: DiversityReport {
            temporal: temporal_diversity,
            random: random_diversity,
        },
        results,
        served: Vec::new(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

pub fn row(model: &'static str, m: Metrics) -> Row {
    Row {
        model,
        precision: m.precision,
        recall: m.recall,
        ndcg: m.ndcg,
        hit_rate: m.hit_rate,
        coverage: m.coverage,
    }
}

/// The report as a text table.
pub fn table(report: &Report) -> String {
    let k = report.k;
    let mut out = format!(
        "{} users, {} items, {} positives; {} users evaluated @{k} ({:.1}s)\n",
        report.users, report.items, report.positives, report.evaluated_users, report.seconds
    );
    out += &format!(
        "{:<17} {:>12} {:>10} {:>8} {:>11} {:>12}\n",
        "model",
        format!("precision@{k}"),
        format!("recall@{k}"),
        format!("ndcg@{k}"),
        format!("hit_rate@{k}"),
        format!("coverage@{k}")
    );
    for r in &report.results {
        out += &format!(
            "{:<17} {:>12.4} {:>10.4} {:>8.4} {:>11.4} {:>12.4}\n",
            r.model, r.precision, r.recall, r.ndcg, r.hit_rate, r.coverage
        );
    }
    let rows = |out: &mut String, rows: &[Row]| {
        for r in rows {
            *out += &format!(
                "{:<17} {:>12.4} {:>10.4} {:>8.4} {:>11.4} {:>12.4}\n",
                r.model, r.precision, r.recall, r.ndcg, r.hit_rate, r.coverage
            );
        }
    };
    out += "\nthe same models on a random 20% hold-out per user:\n";
    rows(&mut out, &report.random_split);
    out += &format!(
        "\ncold items: {} items held out of training, {} users ranked among them only:\n",
        report.cold_items.held_out_items, report.cold_items.evaluated_users
    );
    rows(&mut out, &report.cold_items.results);
    out += &format!(
        "\nthe hybrid re-ranked for diversity (maximal marginal relevance over the top {}; ild: intra-list diversity @{k}):\n{:>9} {:>14} {:>8} {:>12} {:>8}\n",
        crate::diversify::pool_size(k),
        "diversity",
        "temporal ndcg",
        "ild",
        "random ndcg",
        "ild"
    );
    let d = &report.diversity;
    for (t, r) in d.temporal.iter().zip(&d.random) {
        out += &format!(
            "{:>9.1} {:>14.4} {:>8.4} {:>12.4} {:>8.4}\n",
            t.diversity, t.ndcg, t.intra_list_diversity, r.ndcg, r.intra_list_diversity
        );
    }
    if !report.served.is_empty() {
        out += "\nthe hybrid served through the API by a node trained on each split's train events, beside the offline hybrid:\n";
        out += &format!(
            "{:<9} {:>12} {:>13} {:>14} {:>6} {:>6} {:>5}  version\n",
            "split", "served ndcg", "offline ndcg", "served recall", "users", "short", "seen"
        );
        for s in &report.served {
            out += &format!(
                "{:<9} {:>12.4} {:>13.4} {:>14.4} {:>6} {:>6} {:>5}  {}\n",
                s.split,
                s.served.ndcg,
                s.offline.ndcg,
                s.served.recall,
                s.users,
                s.short_lists,
                s.seen_served,
                s.version
            );
        }
        for s in &report.served {
            if let Some(blend) = &s.blend {
                out += &format!(
                    "{} split: the node's blend (cf, item-item, transitions) by history length:",
                    s.split
                );
                for (from, w) in &blend.by_history {
                    out += &format!(
                        " from {from}: ({}, {}, {});",
                        w.cf, w.item_item, w.transitions
                    );
                }
                out += "\n";
            }
        }
    }
    let c = &report.chosen;
    out += &format!(
        "\nchosen on validation: ALS d={} reg={} alpha={} iterations={}; transitions window={} half_life={}; item-item λ={} top_k={}; EASE baseline λ={} (temporal), {} (random)\n",
        c.als.dim,
        c.als.regularization,
        c.als.alpha,
        c.als.iterations,
        c.transitions.window,
        c.transitions.half_life,
        c.item_item.lambda,
        c.item_item.top_k,
        c.ease_lambda.0,
        c.ease_lambda.1,
    );
    out += "blend weights (cf, item-item, transitions) by history length:";
    for (from, w) in &c.blend.by_history {
        out += &format!(
            " from {from}: ({}, {}, {});",
            w.cf, w.item_item, w.transitions
        );
    }
    out += &format!(
        "\nvalidation ndcg@{k} of the candidates (merit: relative to the best single part, averaged over both splits; a blend more than 2% below it on either split is ranked by its worst shortfall, negative):\n{:>8} {:>8} {:>7}  candidate\n",
        "temporal", "random", "merit"
    );
    for v in &c.validation {
        out += &format!(
            "{:>8.4} {:>8.4} {:>7.4}  {}\n",
            v.ndcg[0], v.ndcg[1], v.merit, v.name
        );
    }
    out
}
