//! The order-free item-to-item part: which items go together in users' histories, whatever the
//! order, learned the way EASE learns it (Steck 2019).
//!
//! With `X` the binary user × item matrix of positives and `G = XᵀX`, EASE's weights are
//! `B = I - P·diag(1/diag(P))`, `P = (G + λI)⁻¹`, with a zero diagonal: column `j` of `B` is
//! the ridge regression of item `j` on every other item. A user scores `Σ_{i ∈ history} B[i, ·]`
//! over their whole history: what their taste as a set implies, which is what a random hold-out
//! asks and what the sequential transitions miss.
//!
//! The dense solution needs `n²` memory and `n³` time, so it is used up to `dense_limit` items;
//! above that each item's column is the same ridge regression restricted to its `neighbours`
//! most co-occurring items (with `G` read from co-occurrence rows pruned to that many entries),
//! which costs `neighbours × items` memory and about `items × neighbours³` time. Both keep, per
//! item, its `top_k` strongest outgoing weights (by magnitude), stored and scored like the
//! transition table: `[items, top_k]` rows and weights. With neighbourhoods that cover every
//! co-occurring item the sparse solution is the dense one.

use serde::{Deserialize, Serialize};

use crate::linalg::{cholesky_solve, invert_spd};

/// Hyper-parameters of the item-to-item part.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemItemParams {
    /// Ridge penalty λ: larger favours popular, well-supported pairs. Default 200.
    pub lambda: f32,
    /// Weights kept per item (the strongest by magnitude). Default 100.
    pub top_k: usize,
    /// Items in each item's regression above `dense_limit`. Default 100.
    pub neighbours: usize,
    /// Largest catalogue solved in closed form (`n²` f64 memory). Default 3,000.
    pub dense_limit: usize,
}

impl Default for ItemItemParams {
    fn default() -> Self {
        Self {
            lambda: 200.0,
            top_k: 100,
            neighbours: 100,
            dense_limit: 3_000,
        }
    }
}

/// Per item, its strongest weights towards other items `(item, weight)`, strongest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ItemItem {
    pub params: ItemItemParams,
    pub rows: Vec<Vec<(u32, f32)>>,
}

impl ItemItem {
    /// Learns from `baskets`: each user's positive items (any order, no repeats).
    pub fn train(num_items: usize, baskets: &[Vec<u32>], params: ItemItemParams) -> Self {
        let rows = if num_items <= params.dense_limit {
            top_k_rows(
                &dense_weights(num_items, baskets, params.lambda),
                num_items,
                params.top_k,
            )
        } else {
            sparse_rows(num_items, baskets, params)
        };
        Self { params, rows }
    }

    /// Scores every item for a user whose positive items are `items` (each counted once).
    pub fn score(&self, items: &[u32], num_items: usize) -> Vec<f32> {
        let mut scores = vec![0f32; num_items];
        for &item in items {
            for &(to, w) in self.rows.get(item as usize).map_or(&[][..], Vec::as_slice) {
                if let Some(s) = scores.get_mut(to as usize) {
                    *s += w;
                }
            }
        }
        scores
    }

    /// How many (item, weight) pairs the table holds: at most `top_k` per item.
    pub fn len(&self) -> usize {
        self.rows.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Each user's positive items, by user: what both solvers read.
fn item_users(num_items: usize, baskets: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let mut users = vec![Vec::new(); num_items];
    for (u, basket) in baskets.iter().enumerate() {
        for &i in basket {
            users[i as usize].push(u as u32);
        }
    }
    users
}

/// The dense EASE weights `B`, row-major n × n (row = the item in the history).
pub fn dense_weights(num_items: usize, baskets: &[Vec<u32>], lambda: f32) -> Vec<f64> {
    let n = num_items;
    let mut p = vec![0f64; n * n];
    for basket in baskets {
        for &i in basket {
            let row = &mut p[i as usize * n..(i as usize + 1) * n];
            for &j in basket {
                row[j as usize] += 1.0;
            }
        }
    }
    for i in 0..n {
        p[i * n + i] += f64::from(lambda);
    }
    if !invert_spd(&mut p, n) {
        // Only λ <= 0 on an item nobody has can get here: no weights rather than nonsense.
        return vec![0.0; n * n];
    }
    let diag: Vec<f64> = (0..n).map(|j| p[j * n + j]).collect();
    for i in 0..n {
        for j in 0..n {
            let b = &mut p[i * n + j];
            *b = if i == j { 0.0 } else { -*b / diag[j] };
        }
    }
    p
}

/// The `k` largest-magnitude non-zero entries of each row of the row-major n × n `weights`.
pub fn top_k_rows(weights: &[f64], n: usize, k: usize) -> Vec<Vec<(u32, f32)>> {
    (0..n)
        .map(|i| {
            let row = weights[i * n..(i + 1) * n]
                .iter()
                .enumerate()
                .filter(|(_, w)| **w != 0.0)
                .map(|(j, &w)| (j as u32, w as f32));
            strongest(row.collect(), k)
        })
        .collect()
}

/// Keeps the `k` entries of largest magnitude, strongest first (ties by item).
fn strongest(mut row: Vec<(u32, f32)>, k: usize) -> Vec<(u32, f32)> {
    let order =
        |a: &(u32, f32), b: &(u32, f32)| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0));
    if row.len() > k && k > 0 {
        row.select_nth_unstable_by(k - 1, order);
    }
    row.truncate(k);
    row.sort_unstable_by(order);
    row
}

/// Per item, its `m` most co-occurring other items with their counts, sorted by item (for
/// lookups): `m × items` memory whatever the data.
fn pruned_cooccurrence(
    num_items: usize,
    baskets: &[Vec<u32>],
    users: &[Vec<u32>],
    m: usize,
) -> Vec<Vec<(u32, f32)>> {
    parallel_rows(num_items, |range| {
        let mut counts = vec![0f32; num_items];
        let mut touched = Vec::new();
        range
            .map(|j| {
                for &u in &users[j] {
                    for &i in &baskets[u as usize] {
                        if i as usize != j {
                            if counts[i as usize] == 0.0 {
                                touched.push(i);
                            }
                            counts[i as usize] += 1.0;
                        }
                    }
                }
                let row: Vec<(u32, f32)> =
                    touched.iter().map(|&i| (i, counts[i as usize])).collect();
                for &i in &touched {
                    counts[i as usize] = 0.0;
                }
                touched.clear();
                let mut row = strongest(row, m);
                row.sort_unstable_by_key(|e| e.0);
                row
            })
            .collect()
    })
}

/// Runs `f` over contiguous ranges of `0..n` on the available cores and concatenates the rows.
fn parallel_rows<T: Send>(n: usize, f: impl Fn(std::ops::Range<usize>) -> Vec<T> + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(8);
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let f = &f;
                s.spawn(move || f(start..(start + chunk).min(n)))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a solver thread panicked"))
            .collect()
    })
}

/// The bounded-memory solution: column `j` is the ridge regression of item `j` on its
/// `neighbours` most co-occurring items, then each row keeps its `top_k` strongest weights.
fn sparse_rows(
    num_items: usize,
    baskets: &[Vec<u32>],
    params: ItemItemParams,
) -> Vec<Vec<(u32, f32)>> {
    let users = item_users(num_items, baskets);
    let m = params.neighbours.max(1);
    let co = pruned_cooccurrence(num_items, baskets, &users, m);
    let lambda = f64::from(params.lambda);
    let lookup = |a: u32, b: u32| -> f64 {
        let find = |row: &[(u32, f32)], x: u32| {
            row.binary_search_by_key(&x, |e| e.0)
                .ok()
                .map(|p| f64::from(row[p].1))
        };
        find(&co[a as usize], b)
            .or_else(|| find(&co[b as usize], a))
            .unwrap_or(0.0)
    };
    // Columns: (target j, [(source a, B[a, j])]).
    let columns: Vec<Vec<(u32, f32)>> = parallel_rows(num_items, |range| {
        range
            .map(|j| {
                let neighbours = &co[j];
                let k = neighbours.len();
                if k == 0 {
                    return Vec::new();
                }
                let mut a = vec![0f64; k * k];
                for (x, &(ax, _)) in neighbours.iter().enumerate() {
                    a[x * k + x] = users[ax as usize].len() as f64 + lambda;
                    for (y, &(ay, _)) in neighbours.iter().enumerate().skip(x + 1) {
                        let g = lookup(ax, ay);
                        a[x * k + y] = g;
                        a[y * k + x] = g;
                    }
                }
                let mut b: Vec<f64> = neighbours.iter().map(|e| f64::from(e.1)).collect();
                if !cholesky_solve(&mut a, &mut b) {
                    return Vec::new();
                }
                neighbours
                    .iter()
                    .zip(b)
                    .filter(|(_, w)| *w != 0.0)
                    .map(|(&(i, _), w)| (i, w as f32))
                    .collect()
            })
            .collect()
    });
    drop(co);
    let mut rows: Vec<Vec<(u32, f32)>> = vec![Vec::new(); num_items];
    for (j, column) in columns.into_iter().enumerate() {
        for (i, w) in column {
            rows[i as usize].push((j as u32, w));
        }
    }
    rows.into_iter()
        .map(|row| strongest(row, params.top_k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Baskets over `n` items plus one user who has them all, so every pair co-occurs and a
    /// neighbourhood of every co-occurring item is every item.
    fn complete(n: usize, baskets: Vec<Vec<u32>>) -> Vec<Vec<u32>> {
        let mut baskets: Vec<Vec<u32>> = baskets
            .into_iter()
            .map(|mut b| {
                b.sort_unstable();
                b.dedup();
                b
            })
            .collect();
        baskets.push((0..n as u32).collect());
        baskets
    }

    fn params(lambda: f32, top_k: usize, neighbours: usize) -> ItemItemParams {
        ItemItemParams {
            lambda,
            top_k,
            neighbours,
            dense_limit: 0,
        }
    }

    #[test]
    fn items_bought_together_score_each_other() {
        // 0 and 1 always together, 2 and 3 always together.
        let baskets: Vec<Vec<u32>> = (0..10)
            .map(|u| if u % 2 == 0 { vec![0, 1] } else { vec![2, 3] })
            .collect();
        for p in [ItemItemParams::default(), params(1.0, 10, 10)] {
            let m = ItemItem::train(4, &baskets, ItemItemParams { lambda: 1.0, ..p });
            let s = m.score(&[0], 4);
            assert!(s[1] > 0.0 && s[1] > s[2] && s[1] > s[3], "{s:?}");
            assert_eq!(s[0], 0.0, "an item never recommends itself");
        }
    }

    #[test]
    fn memory_is_bounded_by_top_k_per_item() {
        let baskets: Vec<Vec<u32>> = (0..200u32)
            .map(|u| (0..30).map(|j| (u * 7 + j * 13) % 500).collect())
            .collect();
        for dense_limit in [0, 10_000] {
            let p = ItemItemParams {
                lambda: 10.0,
                top_k: 5,
                neighbours: 8,
                dense_limit,
            };
            let m = ItemItem::train(500, &baskets, p);
            assert_eq!(m.rows.len(), 500);
            assert!(m.rows.iter().all(|r| r.len() <= 5));
            assert!(m.len() <= 5 * 500);
        }
    }

    proptest! {
        /// With neighbourhoods that cover every item, the per-item regressions are the dense
        /// closed form, weight for weight.
        #[test]
        fn sparse_equals_dense_on_small_data(
            baskets in proptest::collection::vec(proptest::collection::vec(0u32..9, 1..6), 1..25),
            lambda in 0.5f32..50.0,
        ) {
            let n = 9;
            let baskets = complete(n, baskets);
            let dense = ItemItem::train(n, &baskets, ItemItemParams { dense_limit: n, ..params(lambda, n, n) });
            let sparse = ItemItem::train(n, &baskets, params(lambda, n, n));
            let full = dense_weights(n, &baskets, lambda);
            for i in 0..n {
                let mut row = vec![0f32; n];
                for &(j, w) in &sparse.rows[i] {
                    row[j as usize] = w;
                }
                for j in 0..n {
                    prop_assert!((f64::from(row[j]) - full[i * n + j]).abs() < 1e-5,
                        "B[{i},{j}]: sparse {} dense {}", row[j], full[i * n + j]);
                }
            }
            // And they score alike from any history.
            let history: Vec<u32> = baskets[0].clone();
            let (a, b) = (dense.score(&history, n), sparse.score(&history, n));
            for (x, y) in a.iter().zip(&b) {
                prop_assert!((x - y).abs() < 1e-4, "{a:?} vs {b:?}");
            }
        }

        /// Top-k keeps exactly the k strongest entries of each dense row.
        #[test]
        fn top_k_keeps_the_strongest_weights(
            baskets in proptest::collection::vec(proptest::collection::vec(0u32..12, 1..7), 1..30),
            k in 1usize..12,
        ) {
            let n = 12;
            let baskets = complete(n, baskets);
            let full = dense_weights(n, &baskets, 5.0);
            let rows = top_k_rows(&full, n, k);
            for (i, row) in rows.iter().enumerate() {
                prop_assert!(row.len() <= k);
                let weakest_kept = row.iter().map(|e| e.1.abs()).fold(f32::INFINITY, f32::min);
                for j in 0..n {
                    let w = full[i * n + j] as f32;
                    if !row.iter().any(|e| e.0 as usize == j) && w != 0.0 {
                        prop_assert!(w.abs() <= weakest_kept, "row {i}: dropped {w}, kept {weakest_kept}");
                    }
                }
            }
        }
    }

    #[test]
    fn dense_weights_solve_the_ease_problem() {
        // B = I - P diag(1/diag P): check (G + λI) B = G - diag(μ) with B's zero diagonal,
        // i.e. every off-diagonal entry of (G + λI)B - G vanishes.
        let n = 6;
        let baskets = complete(
            n,
            vec![
                vec![0, 1, 2],
                vec![1, 2],
                vec![3, 4],
                vec![0, 5],
                vec![2, 4, 5],
            ],
        );
        let lambda = 2.0;
        let b = dense_weights(n, &baskets, lambda);
        let mut g = vec![0f64; n * n];
        for basket in &baskets {
            for &i in basket {
                for &j in basket {
                    g[i as usize * n + j as usize] += 1.0;
                }
            }
        }
        for i in 0..n {
            assert_eq!(b[i * n + i], 0.0);
            for j in (0..n).filter(|&j| j != i) {
                // Column j: (G_{-j,-j} + λI) b = G_{-j,j}, row i of that system.
                let lhs: f64 = (0..n)
                    .filter(|&k| k != j)
                    .map(|k| {
                        (g[i * n + k] + if k == i { f64::from(lambda) } else { 0.0 }) * b[k * n + j]
                    })
                    .sum();
                assert!(
                    (lhs - g[i * n + j]).abs() < 1e-9,
                    "({i},{j}) {lhs} vs {}",
                    g[i * n + j]
                );
            }
        }
    }
}
