//! Every part of the hybrid, and the baselines, fitted on one train split and scored per user as
//! the served model scores: CF from the user's factors, item-to-item from their whole history,
//! transitions from their recent history, each standardised and blended.

use crate::als::{self, Cell, Factors, TrainParams};
use crate::blend::{Blend, combine};
use crate::eval::{Metrics, evaluate_with, sequences};
use crate::item_item::{ItemItem, ItemItemParams, dense_weights, top_k_rows};
use crate::transitions::{TransitionParams, Transitions};
use crate::{Interactions, linalg};

/// A model the evaluation ranks with.
#[derive(Clone, Copy)]
pub(super) enum Model<'a> {
    Popularity,
    Als,
    Transitions,
    ItemItem,
    /// The dense EASE baseline (every weight kept).
    Ease,
    Hybrid(&'a Blend),
}

/// Every model fitted on one train split.
pub(super) struct Fitted {
    pub num_items: usize,
    pub popularity: Vec<f32>,
    pub factors: Factors,
    pub transitions: Transitions,
    pub item_item: ItemItem,
    pub ease: ItemItem,
    /// Each user's positives in time order (the transitions' input; as a set, item-to-item's).
    pub sequences: Vec<Vec<u32>>,
}

/// The dense EASE solutions of one train split, by λ: the item-to-item part keeps the top-k of
/// each row, the baseline all of it.
pub(super) struct EaseFits {
    num_items: usize,
    solutions: Vec<(f32, Vec<f64>)>,
}

impl EaseFits {
    pub fn new(num_items: usize, sequences: &[Vec<u32>], lambdas: &[f32]) -> Self {
        let solutions = lambdas
            .iter()
            .map(|&l| (l, dense_weights(num_items, sequences, l)))
            .collect();
        Self {
            num_items,
            solutions,
        }
    }

    fn weights(&self, lambda: f32) -> &[f64] {
        &self
            .solutions
            .iter()
            .find(|(l, _)| *l == lambda)
            .expect("a fitted λ")
            .1
    }

    /// The item-to-item part for these parameters: the top-k rows of the dense solution (the
    /// catalogue is small enough for it).
    pub fn part(&self, params: ItemItemParams) -> ItemItem {
        ItemItem {
            params,
            rows: top_k_rows(self.weights(params.lambda), self.num_items, params.top_k),
        }
    }

    /// The EASE baseline: every weight.
    pub fn full(&self, lambda: f32) -> ItemItem {
        let n = self.num_items;
        ItemItem {
            params: ItemItemParams {
                lambda,
                top_k: n,
                ..Default::default()
            },
            rows: top_k_rows(self.weights(lambda), n, n),
        }
    }
}

impl Fitted {
    /// Fits every part on `train`; the item-to-item part and the EASE baseline at their λ.
    pub fn new(
        data: &Interactions,
        train: &[Cell],
        als_params: &TrainParams,
        transition_params: TransitionParams,
        item_item: ItemItemParams,
        ease_lambda: f32,
    ) -> Self {
        let num_items = data.items.len();
        let sequences = sequences(train, data.users.len());
        let lambdas: Vec<f32> = if item_item.lambda == ease_lambda {
            vec![ease_lambda]
        } else {
            vec![item_item.lambda, ease_lambda]
        };
        let ease = EaseFits::new(num_items, &sequences, &lambdas);
        Self::with_ease(
            data,
            train,
            als_params,
            transition_params,
            &ease,
            item_item,
            ease_lambda,
        )
    }

    /// Like [`Fitted::new`], with the EASE solutions already at hand.
    pub fn with_ease(
        data: &Interactions,
        train: &[Cell],
        als_params: &TrainParams,
        transition_params: TransitionParams,
        ease: &EaseFits,
        item_item: ItemItemParams,
        ease_lambda: f32,
    ) -> Self {
        let num_items = data.items.len();
        let mut popularity = vec![0f32; num_items];
        for c in train {
            popularity[c.item as usize] += 1.0;
        }
        let factors = als::train(&data.with_cells(train), als_params, |_, _| {});
        let sequences = sequences(train, data.users.len());
        let transitions = Transitions::train(num_items, &sequences, transition_params);
        Self {
            num_items,
            popularity,
            factors,
            transitions,
            item_item: ease.part(item_item),
            ease: ease.full(ease_lambda),
            sequences,
        }
    }

    pub fn cf(&self, user: u32) -> Vec<f32> {
        let d = self.factors.dim;
        let x = &self.factors.users[user as usize * d..(user as usize + 1) * d];
        (0..self.num_items)
            .map(|i| linalg::dot(x, &self.factors.items[i * d..(i + 1) * d]))
            .collect()
    }

    pub fn next(&self, user: u32) -> Vec<f32> {
        self.transitions
            .score(&self.sequences[user as usize], self.num_items)
    }

    pub fn together(&self, user: u32) -> Vec<f32> {
        self.item_item
            .score(&self.sequences[user as usize], self.num_items)
    }

    pub fn score(&self, model: Model<'_>, user: u32) -> Vec<f32> {
        match model {
            Model::Popularity => self.popularity.clone(),
            Model::Als => self.cf(user),
            Model::Transitions => self.next(user),
            Model::ItemItem => self.together(user),
            Model::Ease => self
                .ease
                .score(&self.sequences[user as usize], self.num_items),
            Model::Hybrid(blend) => {
                let w = blend.weights(self.sequences[user as usize].len());
                combine(self.cf(user), self.together(user), self.next(user), w)
            }
        }
    }

    pub fn metrics(&self, model: Model<'_>, train: &[Cell], test: &[Cell]) -> Metrics {
        evaluate_with(self.num_items, train, test, super::eval::K, |u| {
            self.score(model, u)
        })
    }
}
