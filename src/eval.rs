//! `streamrec eval DIR`: the offline yardstick on MovieLens files.
//!
//! Protocol: a rating >= 4 is a positive (weight 1), other ratings are dropped. Per user with n
//! positives, the last floor(0.2 n) by (timestamp, item id) are test; users with fewer than 5
//! positives stay in train. Every catalogue item is ranked per evaluated user, excluding the
//! user's train positives; metrics @10 are averaged over evaluated users. Hyper-parameters are
//! chosen on a validation split made the same way from the train set, never on test.

use std::path::Path;
use std::time::Instant;

use models::als::{self, Factors, TrainParams};
use models::eval::{Metrics, evaluate_with, sequences, temporal_split};
use models::transitions::{TransitionParams, Transitions, blend};
use models::{Interactions, als::Cell};
use serde::Serialize;

use crate::movielens;

#[derive(Debug, Serialize)]
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
    pub results: Vec<Row>,
    pub seconds: f64,
}

/// The hyper-parameters picked on the validation split.
#[derive(Clone, Debug, Serialize)]
pub struct Chosen {
    pub als: TrainParams,
    pub transitions: TransitionParams,
    /// Weight of the standardised CF scores in the blend (the rest is transitions).
    pub cf_weight: f32,
    pub validation_ndcg: f64,
}

const K: usize = 10;

/// Item ids in numeric order when they are all numbers, else in text order, so that the
/// (timestamp, item id) tie-break of the protocol is the id's natural order.
fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

pub fn run(dir: &Path, seed: u64, progress: bool) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (_, dataset) = movielens::load(dir)?;
    let mut ids: Vec<&str> = dataset
        .items
        .iter()
        .map(|i| i.item_id.as_str())
        .chain(dataset.ratings.iter().map(|r| r.1.as_str()))
        .collect();
    ids.sort_unstable_by(|a, b| id_order(a, b));
    ids.dedup();
    let mut data = Interactions::default();
    for id in &ids {
        data.add_item(id);
    }
    for (user, item, rating, ts) in &dataset.ratings {
        if *rating >= 4.0 {
            data.add(user, item, 1.0, *ts);
        }
    }
    let num_items = data.items.len();
    let cells = data.cells();
    let (train, test) = temporal_split(&cells, 0.2, 5);
    let (fit, validation) = temporal_split(&train, 0.2, 5);

    let say = |what: &str| {
        if progress {
            eprintln!("eval: {what} ({:.1}s)", started.elapsed().as_secs_f64());
        }
    };
    say("tuning on the validation split");
    let chosen = tune(&data, &fit, &validation, seed, &say);
    say("fitting the chosen models on the train split");
    let fitted = Fitted::new(&data, &train, &chosen.als, chosen.transitions);
    let results = vec![
        row(
            "popularity",
            fitted.metrics(Model::Popularity, &train, &test),
        ),
        row("als", fitted.metrics(Model::Als, &train, &test)),
        row(
            "transitions",
            fitted.metrics(Model::Transitions, &train, &test),
        ),
        row(
            "hybrid",
            fitted.metrics(Model::Hybrid(chosen.cf_weight), &train, &test),
        ),
    ];
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
        results,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn row(model: &'static str, m: Metrics) -> Row {
    Row {
        model,
        precision: m.precision,
        recall: m.recall,
        ndcg: m.ndcg,
        hit_rate: m.hit_rate,
        coverage: m.coverage,
    }
}

#[derive(Clone, Copy)]
enum Model {
    Popularity,
    Als,
    Transitions,
    /// Standardised ALS and transition scores, the first weighted by the given weight.
    Hybrid(f32),
}

/// Every model fitted on one train split.
struct Fitted {
    num_items: usize,
    popularity: Vec<f32>,
    factors: Factors,
    transitions: Transitions,
    sequences: Vec<Vec<u32>>,
}

impl Fitted {
    fn new(
        data: &Interactions,
        train: &[Cell],
        als_params: &TrainParams,
        transition_params: TransitionParams,
    ) -> Self {
        let num_users = data.users.len();
        let num_items = data.items.len();
        let mut popularity = vec![0f32; num_items];
        for c in train {
            popularity[c.item as usize] += 1.0;
        }
        let factors = als::train(&data.with_cells(train), als_params, |_, _| {});
        let sequences = sequences(train, num_users);
        let transitions = Transitions::train(num_items, &sequences, transition_params);
        Self {
            num_items,
            popularity,
            factors,
            transitions,
            sequences,
        }
    }

    fn cf(&self, user: u32) -> Vec<f32> {
        let d = self.factors.dim;
        let x = &self.factors.users[user as usize * d..(user as usize + 1) * d];
        (0..self.num_items)
            .map(|i| models::linalg::dot(x, &self.factors.items[i * d..(i + 1) * d]))
            .collect()
    }

    fn score(&self, model: Model, user: u32) -> Vec<f32> {
        match model {
            Model::Popularity => self.popularity.clone(),
            Model::Als => self.cf(user),
            Model::Transitions => self
                .transitions
                .score(&self.sequences[user as usize], self.num_items),
            Model::Hybrid(cf_weight) => {
                let next = self
                    .transitions
                    .score(&self.sequences[user as usize], self.num_items);
                blend(self.cf(user), next, cf_weight)
            }
        }
    }

    fn metrics(&self, model: Model, train: &[Cell], test: &[Cell]) -> Metrics {
        evaluate_with(self.num_items, train, test, K, |u| self.score(model, u))
    }
}

/// A small grid, searched on validation: ALS shapes, the transition window and recency, and the
/// blend weight.
fn tune(
    data: &Interactions,
    fit: &[Cell],
    validation: &[Cell],
    seed: u64,
    say: &dyn Fn(&str),
) -> Chosen {
    let mut best: Option<Chosen> = None;
    for (dim, regularization, alpha) in [(32, 1.0, 5.0), (64, 5.0, 5.0), (32, 5.0, 10.0)] {
        let als = TrainParams {
            dim,
            iterations: 10,
            regularization,
            alpha,
            seed,
        };
        for window in [20, 50] {
            let mut fitted = Fitted::new(
                data,
                fit,
                &als,
                TransitionParams {
                    window,
                    ..Default::default()
                },
            );
            for half_life in [3.0, 5.0, 10.0] {
                fitted.transitions.params.half_life = half_life;
                for cf_weight in [0.3, 0.4, 0.5, 0.6, 0.7] {
                    let ndcg = fitted
                        .metrics(Model::Hybrid(cf_weight), fit, validation)
                        .ndcg;
                    if best.as_ref().is_none_or(|b| ndcg > b.validation_ndcg) {
                        best = Some(Chosen {
                            als: als.clone(),
                            transitions: fitted.transitions.params,
                            cf_weight,
                            validation_ndcg: ndcg,
                        });
                    }
                }
            }
        }
        say(&format!(
            "ALS d={dim} reg={regularization} alpha={alpha} searched"
        ));
    }
    best.expect("the grid is not empty")
}

/// The report as a text table.
pub fn table(report: &Report) -> String {
    let k = report.k;
    let mut out = format!(
        "{} users, {} items, {} positives; {} users evaluated @{k} ({:.1}s)\n",
        report.users, report.items, report.positives, report.evaluated_users, report.seconds
    );
    out += &format!(
        "{:<12} {:>12} {:>10} {:>8} {:>11} {:>12}\n",
        "model",
        format!("precision@{k}"),
        format!("recall@{k}"),
        format!("ndcg@{k}"),
        format!("hit_rate@{k}"),
        format!("coverage@{k}")
    );
    for r in &report.results {
        out += &format!(
            "{:<12} {:>12.4} {:>10.4} {:>8.4} {:>11.4} {:>12.4}\n",
            r.model, r.precision, r.recall, r.ndcg, r.hit_rate, r.coverage
        );
    }
    let c = &report.chosen;
    out += &format!(
        "chosen on validation (ndcg@{k} {:.4}): ALS d={} reg={} alpha={} iterations={}; transitions window={} half_life={}; cf_weight={}\n",
        c.validation_ndcg,
        c.als.dim,
        c.als.regularization,
        c.als.alpha,
        c.als.iterations,
        c.transitions.window,
        c.transitions.half_life,
        c.cf_weight
    );
    out
}
