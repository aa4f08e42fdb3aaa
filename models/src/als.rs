//! Implicit-feedback ALS (Hu, Koren & Volinsky 2008) with real-time fold-in.
//!
//! Each (user, item) pair carries a summed weight w. Positive w means preference 1 with
//! confidence `1 + alpha·w`; negative w (dislikes, low ratings) means preference 0 with confidence
//! `1 + alpha·|w|`: a disliked item is never a positive, and it pulls the user's vector (and the
//! item's) away from each other harder than an item the user never met. Every other pair is
//! preference 0 with confidence 1, which `YᵀY` accounts for without touching the zeros. The same per-user solve that training uses folds a live session
//! into a user vector, so a new event changes the next response without retraining.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::linalg::{add_outer, cholesky_solve, gram};

/// Hyper-parameters of a training run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainParams {
    pub dim: usize,
    pub iterations: usize,
    pub regularization: f32,
    pub alpha: f32,
    pub seed: u64,
}

/// Training data: aggregated (user, item) weights with the time of the last interaction.
#[derive(Clone, Debug, Default)]
pub struct Interactions {
    pub users: Vec<String>,
    pub items: Vec<String>,
    user_index: HashMap<String, u32>,
    item_index: HashMap<String, u32>,
    cells: HashMap<(u32, u32), (f32, i64)>,
}

/// One aggregated interaction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cell {
    pub user: u32,
    pub item: u32,
    pub weight: f32,
    pub ts: i64,
}

impl Interactions {
    /// Adds one event's weight to the (user, item) cell, in the order the user's events happened:
    /// negative feedback cancels the positive total before it, as in a live session
    /// ([`common::event::accumulate`]).
    pub fn add(&mut self, user: &str, item: &str, weight: f32, ts: i64) {
        let u = intern(&mut self.users, &mut self.user_index, user);
        let i = intern(&mut self.items, &mut self.item_index, item);
        let cell = self.cells.entry((u, i)).or_insert((0.0, ts));
        cell.0 = common::event::accumulate(cell.0, weight);
        cell.1 = cell.1.max(ts);
    }

    /// Makes sure an item has a row even without interactions (a catalogued item).
    pub fn add_item(&mut self, item: &str) {
        intern(&mut self.items, &mut self.item_index, item);
    }

    pub fn item_index(&self, item: &str) -> Option<u32> {
        self.item_index.get(item).copied()
    }

    pub fn user_index(&self, user: &str) -> Option<u32> {
        self.user_index.get(user).copied()
    }

    /// Cells in a deterministic order (user, item).
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells: Vec<_> = self
            .cells
            .iter()
            .map(|(&(user, item), &(weight, ts))| Cell {
                user,
                item,
                weight,
                ts,
            })
            .collect();
        cells.sort_unstable_by_key(|c| (c.user, c.item));
        cells
    }

    pub fn num_cells(&self) -> usize {
        self.cells.len()
    }

    /// A copy with the given cells only (same id tables).
    pub fn with_cells(&self, cells: &[Cell]) -> Self {
        Self {
            users: self.users.clone(),
            items: self.items.clone(),
            user_index: self.user_index.clone(),
            item_index: self.item_index.clone(),
            cells: cells
                .iter()
                .map(|c| ((c.user, c.item), (c.weight, c.ts)))
                .collect(),
        }
    }
}

fn intern(names: &mut Vec<String>, index: &mut HashMap<String, u32>, name: &str) -> u32 {
    if let Some(&i) = index.get(name) {
        return i;
    }
    let i = names.len() as u32;
    names.push(name.to_owned());
    index.insert(name.to_owned(), i);
    i
}

/// Learned factors, row-major.
#[derive(Clone, Debug)]
pub struct Factors {
    pub dim: usize,
    pub users: Vec<f32>,
    pub items: Vec<f32>,
}

/// Trains ALS; `progress(iteration, iterations)` is called after each sweep.
pub fn train(
    data: &Interactions,
    p: &TrainParams,
    mut progress: impl FnMut(usize, usize),
) -> Factors {
    let d = p.dim;
    let mut rng = StdRng::seed_from_u64(p.seed);
    let mut init = |n: usize| -> Vec<f32> {
        (0..n * d)
            .map(|_| (rng.random::<f32>() - 0.5) * 0.1)
            .collect()
    };
    let mut users = init(data.users.len());
    let mut items = init(data.items.len());
    let mut by_user: Vec<Vec<(u32, f32)>> = vec![Vec::new(); data.users.len()];
    let mut by_item: Vec<Vec<(u32, f32)>> = vec![Vec::new(); data.items.len()];
    for c in data.cells() {
        by_user[c.user as usize].push((c.item, c.weight));
        by_item[c.item as usize].push((c.user, c.weight));
    }
    for it in 0..p.iterations {
        sweep(&mut users, &items, &by_user, p);
        sweep(&mut items, &users, &by_item, p);
        progress(it + 1, p.iterations);
    }
    Factors {
        dim: d,
        users,
        items,
    }
}

/// Recomputes every row of `target` against the fixed `other`, in parallel.
fn sweep(target: &mut [f32], other: &[f32], rows: &[Vec<(u32, f32)>], p: &TrainParams) {
    let d = p.dim;
    let gram = gram(other, d);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let chunk_rows = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (chunk, rows) in target
            .chunks_mut(chunk_rows * d)
            .zip(rows.chunks(chunk_rows))
        {
            let gram = &gram;
            s.spawn(move || {
                for (x, row) in chunk.chunks_exact_mut(d).zip(rows) {
                    solve_row(x, other, gram, row, p.alpha, p.regularization);
                }
            });
        }
    });
}

/// The per-row least-squares solve shared by training and fold-in.
fn solve_row(x: &mut [f32], other: &[f32], gram: &[f64], row: &[(u32, f32)], alpha: f32, reg: f32) {
    let d = x.len();
    if row.is_empty() {
        x.fill(0.0);
        return;
    }
    let mut a = gram.to_vec();
    let mut b = vec![0.0f64; d];
    for &(j, w) in row {
        let y = &other[j as usize * d..(j as usize + 1) * d];
        let c = 1.0 + f64::from(alpha) * f64::from(w.abs());
        add_outer(&mut a, y, c - 1.0);
        if w > 0.0 {
            for (bk, &yk) in b.iter_mut().zip(y) {
                *bk += c * f64::from(yk);
            }
        }
    }
    for k in 0..d {
        a[k * d + k] += f64::from(reg);
    }
    if cholesky_solve(&mut a, &mut b) {
        for (xk, bk) in x.iter_mut().zip(&b) {
            *xk = *bk as f32;
        }
    } else {
        x.fill(0.0);
    }
}

/// Folds a user's live interactions (item row, summed weight) into a user vector against fixed
/// item factors. `gram` is `YᵀY` of those factors, computed once per model.
pub fn fold_in(
    items: &[f32],
    gram: &[f64],
    dim: usize,
    interactions: &[(u32, f32)],
    alpha: f32,
    reg: f32,
) -> Vec<f32> {
    let mut x = vec![0.0; dim];
    solve_row(&mut x, items, gram, interactions, alpha, reg);
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::dot;

    /// Two taste groups: users 0-9 like items a*, users 10-19 like items b*. Two factors cannot
    /// memorise who skipped what, so the model must generalise to the group.
    fn skipped(u: u64, i: u64) -> bool {
        (u * 1_000_003 + i * 7919).wrapping_mul(6_364_136_223_846_793_005) >> 61 < 3
    }

    fn two_groups() -> Interactions {
        let mut data = Interactions::default();
        for u in 0..20u64 {
            let group = if u < 10 { "a" } else { "b" };
            for i in 0..6u64 {
                // About a third skipped, pseudo-randomly: a periodic pattern would be
                // structure of its own for the model to find.
                if !skipped(u, i) {
                    data.add(&format!("u{u}"), &format!("{group}{i}"), 1.0, i as i64);
                }
            }
        }
        data
    }

    fn params() -> TrainParams {
        TrainParams {
            dim: 2,
            iterations: 10,
            regularization: 0.1,
            alpha: 4.0,
            seed: 7,
        }
    }

    #[test]
    fn learns_groups_and_is_deterministic() {
        let data = two_groups();
        let f = train(&data, &params(), |_, _| {});
        let again = train(&data, &params(), |_, _| {});
        assert_eq!(f.items, again.items);
        let d = f.dim;
        // Every group-a user that skipped some a-item scores that item above every b-item.
        let mut checked = 0;
        for u in (0..10).filter(|&u| (0..6).any(|i| !skipped(u, i))) {
            let row = data.user_index(&format!("u{u}")).expect("user") as usize;
            let x = &f.users[row * d..(row + 1) * d];
            let score = |item: &str| {
                let i = data.item_index(item).expect("item") as usize;
                dot(x, &f.items[i * d..(i + 1) * d])
            };
            let best_b = (0..6)
                .map(|i| score(&format!("b{i}")))
                .fold(f32::MIN, f32::max);
            for i in (0..6).filter(|&i| skipped(u, i)) {
                assert!(
                    score(&format!("a{i}")) > best_b + 0.2,
                    "u{u}: a{i} {} vs b {best_b}",
                    score(&format!("a{i}"))
                );
                checked += 1;
            }
        }
        assert!(
            checked >= 5,
            "the fixture must leave users items to discover ({checked})"
        );
    }

    #[test]
    fn a_dislike_pushes_the_item_away_from_the_user_even_after_a_view() {
        use common::EventKind::{Dislike, View};
        // A group-a user who viewed four a-items; what it did with a0 differs between runs.
        let score = |a0: &[common::EventKind]| {
            let mut data = two_groups();
            for i in 1..5 {
                data.add("fan", &format!("a{i}"), View.weight(None), i);
            }
            for kind in a0 {
                data.add("fan", "a0", kind.weight(None), 10);
            }
            let f = train(&data, &params(), |_, _| {});
            let (u, i) = (data.user_index("fan"), data.item_index("a0"));
            let (u, i) = (u.expect("user") as usize, i.expect("item") as usize);
            let d = f.dim;
            dot(&f.users[u * d..(u + 1) * d], &f.items[i * d..(i + 1) * d])
        };
        let (untouched, viewed) = (score(&[]), score(&[View]));
        let disliked = score(&[View, Dislike]);
        assert!(
            disliked < untouched - 0.1 && untouched < viewed,
            "disliked {disliked}, untouched {untouched}, viewed {viewed}"
        );
        assert!(
            score(&[Dislike, Dislike]) < disliked,
            "more dislikes, further"
        );
    }

    #[test]
    fn fold_in_follows_live_interactions() {
        let data = two_groups();
        let f = train(&data, &params(), |_, _| {});
        let g = gram(&f.items, f.dim);
        let b1 = data.item_index("b1").expect("item");
        let b2 = data.item_index("b2").expect("item");
        let x = fold_in(&f.items, &g, f.dim, &[(b1, 2.0), (b2, 1.0)], 4.0, 0.1);
        let d = f.dim;
        let s = |item: &str| {
            let i = data.item_index(item).expect("item") as usize;
            dot(&x, &f.items[i * d..(i + 1) * d])
        };
        assert!(s("b4") > s("a4"));
        assert!(
            fold_in(&f.items, &g, d, &[], 4.0, 0.1)
                .iter()
                .all(|v| *v == 0.0)
        );
    }
}
