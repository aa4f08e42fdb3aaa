//! Choosing one configuration on validation splits cut from the training data, never on test.
//!
//! Two validation splits, temporal (what next) and random (what else), each fitted once per
//! hyper-parameter of each part. ALS is chosen alone (its shape also serves the cold-item
//! check); the blend ([`crate::validation::choose`]) jointly with the transitions' shape and the
//! item-to-item λ. The EASE baseline's λ is tuned on each split for its own sake.

use serde::Serialize;

use super::fitted::{EaseFits, Fitted, Model};
use crate::Interactions;
use crate::als::{Cell, TrainParams};
use crate::blend::Blend;
use crate::item_item::ItemItemParams;
use crate::transitions::{TransitionParams, Transitions};
use crate::validation::{Candidate, Scored, Scores, Split, choose, merit};

const ALS_GRID: [(usize, f32, f32); 3] = [(32, 1.0, 5.0), (64, 5.0, 5.0), (32, 5.0, 10.0)];
const WINDOWS: [usize; 2] = [20, 50];
const HALF_LIVES: [f32; 2] = [3.0, 10.0];
const LAMBDAS: [f32; 5] = [50.0, 100.0, 200.0, 400.0, 800.0];

/// The hyper-parameters picked on validation, and the figures that picked them.
#[derive(Clone, Debug, Serialize)]
pub struct Chosen {
    pub als: TrainParams,
    pub transitions: TransitionParams,
    pub item_item: ItemItemParams,
    pub blend: Blend,
    /// λ of the EASE baseline, tuned on the temporal and on the random validation split.
    pub ease_lambda: (f32, f32),
    /// NDCG@10 on the temporal and the random validation split of every part alone, the EASE
    /// baseline, and the best blends.
    pub validation: Vec<Candidate>,
}

fn als_params(i: usize, seed: u64) -> TrainParams {
    let (dim, regularization, alpha) = ALS_GRID[i];
    TrainParams {
        dim,
        iterations: 10,
        regularization,
        alpha,
        seed,
    }
}

/// Each part's scores on one validation split, by hyper-parameter.
struct Fits {
    split: Split,
    cf: Vec<Scores>,
    next: Vec<(TransitionParams, Scores)>,
    together: Vec<Scores>,
    /// NDCG of the dense EASE baseline by λ.
    ease: Vec<f64>,
}

impl Fits {
    fn new(data: &Interactions, fit: &[Cell], validation: &[Cell], seed: u64) -> Self {
        let num_items = data.items.len();
        let split = Split::new(num_items, fit, validation);
        let sequences = crate::eval::sequences(fit, data.users.len());
        let ease = EaseFits::new(num_items, &sequences, &LAMBDAS);
        let fitted = |i: usize| {
            Fitted::with_ease(
                data,
                fit,
                &als_params(i, seed),
                TransitionParams::default(),
                &ease,
                ItemItemParams {
                    lambda: LAMBDAS[0],
                    ..Default::default()
                },
                LAMBDAS[0],
            )
        };
        let mut f = fitted(0);
        let mut cf = vec![split.scores(|u| f.cf(u))];
        for i in 1..ALS_GRID.len() {
            let other = fitted(i);
            cf.push(split.scores(|u| other.cf(u)));
        }
        let mut next = Vec::new();
        for window in WINDOWS {
            let params = TransitionParams {
                window,
                ..Default::default()
            };
            f.transitions = Transitions::train(num_items, &f.sequences, params);
            for half_life in HALF_LIVES {
                f.transitions.params.half_life = half_life;
                next.push((f.transitions.params, split.scores(|u| f.next(u))));
            }
        }
        let mut together = Vec::new();
        let mut ease_ndcg = Vec::new();
        for lambda in LAMBDAS {
            f.item_item = ease.part(ItemItemParams {
                lambda,
                ..Default::default()
            });
            together.push(split.scores(|u| f.together(u)));
            f.ease = ease.full(lambda);
            ease_ndcg.push(split.alone(&split.scores(|u| f.score(Model::Ease, u))));
        }
        Self {
            split,
            cf,
            next,
            together,
            ease: ease_ndcg,
        }
    }
}

/// The index of the largest of `values` (the first of equals).
fn argmax(values: impl IntoIterator<Item = f64>) -> usize {
    values
        .into_iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |b, (i, v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

/// Searches the grid on the two validation splits `[temporal, random]`.
pub(super) fn tune(
    data: &Interactions,
    splits: &[(Vec<Cell>, Vec<Cell>); 2],
    seed: u64,
    say: &dyn Fn(&str),
) -> Chosen {
    let fits: Vec<Fits> = splits
        .iter()
        .zip(["temporal", "random"])
        .map(|((fit, validation), name)| {
            let f = Fits::new(data, fit, validation, seed);
            say(&format!("fitted every part on the {name} validation split"));
            f
        })
        .collect();
    let both = |score: &dyn Fn(&Fits) -> f64| -> Vec<f64> { fits.iter().map(score).collect() };
    let mut alone: Vec<(String, Vec<f64>)> = Vec::new();
    for (i, (d, reg, a)) in ALS_GRID.iter().enumerate() {
        let ndcg = both(&|f| f.split.alone(&f.cf[i]));
        alone.push((format!("als d={d} reg={reg} alpha={a}"), ndcg));
    }
    for (j, (p, _)) in fits[0].next.iter().enumerate() {
        let ndcg = both(&|f| f.split.alone(&f.next[j].1));
        let name = format!("transitions window={} half_life={}", p.window, p.half_life);
        alone.push((name, ndcg));
    }
    let top_k = ItemItemParams::default().top_k;
    for (l, lambda) in LAMBDAS.iter().enumerate() {
        let ndcg = both(&|f| f.split.alone(&f.together[l]));
        alone.push((format!("item-item λ={lambda} top_k={top_k}"), ndcg));
    }
    // The best single part of the hybrid on each split is the yardstick of the merit.
    let reference: Vec<f64> = (0..fits.len())
        .map(|s| alone.iter().map(|(_, n)| n[s]).fold(1e-9, f64::max))
        .collect();
    for (l, lambda) in LAMBDAS.iter().enumerate() {
        alone.push((format!("ease λ={lambda} (baseline)"), both(&|f| f.ease[l])));
    }
    let mut validation: Vec<Candidate> = alone
        .into_iter()
        .map(|(name, ndcg)| Candidate {
            merit: merit(&ndcg, &reference),
            name,
            ndcg,
        })
        .collect();
    let als = argmax((0..ALS_GRID.len()).map(|i| validation[i].merit));
    let ease_lambda = (
        LAMBDAS[argmax(fits[0].ease.iter().copied())],
        LAMBDAS[argmax(fits[1].ease.iter().copied())],
    );
    say("searching the blend");
    let mut best: Option<(usize, usize, crate::validation::Choice)> = None;
    for j in 0..fits[0].next.len() {
        for l in 0..LAMBDAS.len() {
            let scored: Vec<Scored<'_>> = fits
                .iter()
                .zip(["temporal", "random"])
                .map(|(f, name)| Scored {
                    name,
                    split: &f.split,
                    parts: [&f.cf[als], &f.together[l], &f.next[j].1],
                })
                .collect();
            let choice = choose(&scored, &reference);
            if best.as_ref().is_none_or(|b| choice.merit > b.2.merit) {
                best = Some((j, l, choice));
            }
        }
    }
    let (j, l, choice) = best.expect("a non-empty grid");
    let transitions = fits[0].next[j].0;
    let lambda = LAMBDAS[l];
    validation.extend(choice.candidates.into_iter().map(|c| Candidate {
        name: format!(
            "{} (window={} half_life={} λ={lambda})",
            c.name, transitions.window, transitions.half_life
        ),
        ..c
    }));
    Chosen {
        als: als_params(als, seed),
        transitions,
        item_item: ItemItemParams {
            lambda,
            ..Default::default()
        },
        blend: choice.blend,
        ease_lambda,
        validation,
    }
}
