//! The cold-item check: items held out of training entirely, each evaluated user's positives
//! among them ranked among them only, from the items' content mapped to CF factors (what the
//! served model does for an item added after training).

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::eval::{ColdReport, K, row};
use crate::als::{self, Cell, TrainParams};
use crate::content::{ContentModel, ContentParams};
use crate::eval::evaluate_with;
use crate::{Interactions, linalg};

/// How many items the check holds out (as in the yardstick for MovieLens-100k).
const COLD_ITEMS: usize = 289;

pub(super) fn cold_items(
    data: &Interactions,
    items: &[common::Item],
    cells: &[Cell],
    als_params: &TrainParams,
    seed: u64,
) -> ColdReport {
    let num_items = data.items.len();
    let mut rows: Vec<u32> = (0..num_items as u32).collect();
    rows.shuffle(&mut StdRng::seed_from_u64(seed));
    let cold: HashSet<u32> = rows
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
    let users: HashSet<u32> = test.iter().map(|c| c.user).collect();
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
