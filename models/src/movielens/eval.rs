//! The offline yardstick on MovieLens files, which `streamrec eval DIR` prints: how popularity,
//! ALS, transitions and their hybrid rank what users did next.
//!
//! Protocol: a rating >= 4 is a positive (weight 1), other ratings are dropped. Per user with n
//! positives, the last floor(0.2 n) by (timestamp, item id) are test; users with fewer than 5
//! positives stay in train. Every catalogue item is ranked per evaluated user, excluding the
//! user's train positives; metrics @10 are averaged over evaluated users. Hyper-parameters are
//! chosen on a validation split made the same way from the train set, never on test.

use std::path::Path;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::MovieLensError;
use crate::als::{self, Cell, Factors, TrainParams};
use crate::content::{ContentModel, ContentParams};
use crate::eval::{Metrics, evaluate_with, sequences, temporal_split};
use crate::transitions::{TransitionParams, Transitions, blend};
use crate::{Interactions, linalg};

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
    /// Temporal split (the protocol).
    pub results: Vec<Row>,
    /// The same models and hyper-parameters on a random 20% hold-out per user.
    pub random_split: Vec<Row>,
    pub cold_items: ColdReport,
    pub seconds: f64,
}

/// Items held out of training entirely: each evaluated user's positives among them, ranked among
/// them only.
#[derive(Debug, Serialize)]
pub struct ColdReport {
    pub held_out_items: usize,
    pub evaluated_users: usize,
    pub results: Vec<Row>,
}

/// How many items the cold-start check holds out (as in the yardstick for MovieLens-100k).
const COLD_ITEMS: usize = 289;

/// Per user with at least `min_positives` positives, a random `floor(fraction · n)` of them.
fn random_split(
    cells: &[Cell],
    fraction: f64,
    min_positives: usize,
    seed: u64,
) -> (Vec<Cell>, Vec<Cell>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut by_user: std::collections::BTreeMap<u32, Vec<Cell>> = Default::default();
    for c in cells {
        by_user.entry(c.user).or_default().push(*c);
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (_, mut cells) in by_user {
        let n_test = if cells.len() >= min_positives {
            (cells.len() as f64 * fraction).floor() as usize
        } else {
            0
        };
        cells.shuffle(&mut rng);
        test.extend(cells.drain(..n_test));
        train.extend(cells);
    }
    (train, test)
}

fn cold_items(
    data: &Interactions,
    items: &[common::Item],
    cells: &[Cell],
    als_params: &TrainParams,
    seed: u64,
) -> ColdReport {
    let num_items = data.items.len();
    let mut rows: Vec<u32> = (0..num_items as u32).collect();
    rows.shuffle(&mut StdRng::seed_from_u64(seed));
    let cold: std::collections::HashSet<u32> = rows
        .into_iter()
        .take(COLD_ITEMS.min(num_items / 5))
        .collect();
    let (test, train): (Vec<Cell>, Vec<Cell>) = cells.iter().partition(|c| cold.contains(&c.item));
    let factors = als::train(&data.with_cells(&train), als_params, |_, _| {});
    let d = factors.dim;
    let mut tokens: Vec<Vec<String>> = vec![Vec::new(); num_items];
    for item in items {
        if let Some(row) = data.item_index(&item.item_id) {
            tokens[row as usize] = crate::content::tokens(item.into());
        }
    }
    let warm: Vec<u32> = {
        let mut seen: Vec<u32> = train.iter().map(|c| c.item).collect();
        seen.sort_unstable();
        seen.dedup();
        seen
    };
    let warm_tokens: Vec<Vec<String>> = warm.iter().map(|&r| tokens[r as usize].clone()).collect();
    let content = ContentModel::fit(
        &warm_tokens,
        &warm,
        &factors.items,
        d,
        ContentParams::default(),
    );
    let content_vectors: Vec<Option<Vec<f32>>> = (0..num_items)
        .map(|r| {
            cold.contains(&(r as u32))
                .then(|| content.embed(&tokens[r]))
        })
        .collect();
    // Only cold items are candidates; CF alone has nothing for them, so its baseline is a random
    // order (seeded).
    let candidates = |scores: Vec<f32>| -> Vec<f32> {
        scores
            .into_iter()
            .enumerate()
            .map(|(r, s)| {
                if cold.contains(&(r as u32)) {
                    s
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect()
    };
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let random: Vec<f32> = (0..num_items).map(|_| rng.random()).collect();
    let content_score = |user: u32| -> Vec<f32> {
        let x = &factors.users[user as usize * d..(user as usize + 1) * d];
        candidates(
            content_vectors
                .iter()
                .map(|v| v.as_ref().map_or(0.0, |v| linalg::dot(x, v)))
                .collect(),
        )
    };
    let users: std::collections::HashSet<u32> = test.iter().map(|c| c.user).collect();
    ColdReport {
        held_out_items: cold.len(),
        evaluated_users: users.len(),
        results: vec![
            row(
                "random",
                evaluate_with(num_items, &train, &test, K, |_| candidates(random.clone())),
            ),
            row(
                "hybrid (content)",
                evaluate_with(num_items, &train, &test, K, content_score),
            ),
        ],
    }
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

/// Evaluates the models on the MovieLens files in `dir`, every random choice seeded by `seed`;
/// `say` hears what it is doing (the run takes a while on the full data set).
pub fn run(dir: &Path, seed: u64, say: impl Fn(&str)) -> Result<Report, MovieLensError> {
    let started = Instant::now();
    let (_, dataset) = super::load(dir)?;
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

    say("tuning on the validation split");
    let chosen = tune(
        &data,
        &[(fit, validation), random_split(&train, 0.2, 5, seed)],
        seed,
        &say,
    );
    say("fitting the chosen models on the train split");
    let fitted = Fitted::new(&data, &train, &chosen.als, chosen.transitions);
    let all_models = |fitted: &Fitted, train: &[Cell], test: &[Cell]| {
        vec![
            row("popularity", fitted.metrics(Model::Popularity, train, test)),
            row("als", fitted.metrics(Model::Als, train, test)),
            row(
                "transitions",
                fitted.metrics(Model::Transitions, train, test),
            ),
            row(
                "hybrid",
                fitted.metrics(Model::Hybrid(chosen.cf_weight), train, test),
            ),
        ]
    };
    say("the same models on a random split");
    let (random_train, random_test) = random_split(&cells, 0.2, 5, seed);
    let random_fitted = Fitted::new(&data, &random_train, &chosen.als, chosen.transitions);
    let random = all_models(&random_fitted, &random_train, &random_test);
    say("cold items: held out of training entirely, ranked from their content");
    let cold = cold_items(&data, &dataset.items, &cells, &chosen.als, seed);
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
        random_split: random,
        cold_items: cold,
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
            .map(|i| linalg::dot(x, &self.factors.items[i * d..(i + 1) * d]))
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
/// blend weight. Each point is scored on two validation splits cut from train: temporal, as the
/// protocol, and random. The choice is the best on the temporal one among the points that do at
/// least as well as ALS alone on the random one, so that it holds on more than one kind of split.
fn tune(
    data: &Interactions,
    splits: &[(Vec<Cell>, Vec<Cell>); 2],
    seed: u64,
    say: &dyn Fn(&str),
) -> Chosen {
    let mut best: Option<((bool, f64), Chosen)> = None;
    for (dim, regularization, alpha) in [(32, 1.0, 5.0), (64, 5.0, 5.0), (32, 5.0, 10.0)] {
        let als = TrainParams {
            dim,
            iterations: 10,
            regularization,
            alpha,
            seed,
        };
        // ALS does not depend on the transition window: train it once per split.
        let mut fitted: Vec<(Fitted, f64)> = splits
            .iter()
            .map(|(fit, validation)| {
                let f = Fitted::new(data, fit, &als, TransitionParams::default());
                let als_ndcg = f.metrics(Model::Als, fit, validation).ndcg;
                (f, als_ndcg.max(1e-9))
            })
            .collect();
        for window in [20, 50] {
            let transitions = TransitionParams {
                window,
                ..Default::default()
            };
            for (f, _) in &mut fitted {
                f.transitions = Transitions::train(f.num_items, &f.sequences, transitions);
            }
            for half_life in [3.0, 10.0] {
                for (f, _) in &mut fitted {
                    f.transitions.params.half_life = half_life;
                }
                for cf_weight in [0.4, 0.5, 0.6, 0.7] {
                    let ndcgs: Vec<f64> = fitted
                        .iter()
                        .zip(splits)
                        .map(|((f, _), (fit, validation))| {
                            f.metrics(Model::Hybrid(cf_weight), fit, validation).ndcg
                        })
                        .collect();
                    let robust = ndcgs[1] >= fitted[1].1;
                    // Robust points first, then by temporal NDCG.
                    let rank = (robust, ndcgs[0]);
                    if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                        best = Some((
                            rank,
                            Chosen {
                                als: als.clone(),
                                transitions: fitted[0].0.transitions.params,
                                cf_weight,
                                validation_ndcg: ndcgs[0],
                            },
                        ));
                    }
                }
            }
        }
        say(&format!(
            "ALS d={dim} reg={regularization} alpha={alpha} searched"
        ));
    }
    best.expect("the grid is not empty").1
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
