//! Offline evaluation: a temporal or random hold-out per user and ranking metrics @k. Used to label every
//! trained version with metrics (and, later, to gate a swap on them).

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::als::{Cell, Factors};
use crate::linalg::dot;

/// Ranking quality @k averaged over evaluated users.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub k: usize,
    pub users: usize,
    pub precision: f64,
    pub recall: f64,
    pub ndcg: f64,
    pub hit_rate: f64,
    /// Share of items that appear in at least one user's top k.
    pub coverage: f64,
}

impl Metrics {
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        let k = self.k;
        BTreeMap::from([
            (format!("precision@{k}"), self.precision),
            (format!("recall@{k}"), self.recall),
            (format!("ndcg@{k}"), self.ndcg),
            (format!("hit_rate@{k}"), self.hit_rate),
            (format!("coverage@{k}"), self.coverage),
            ("evaluated_users".to_owned(), self.users as f64),
        ])
    }
}

/// Per user with at least `min_positives` positive cells, the last `floor(fraction · n)`
/// positives by (timestamp, item) go to test; everything else stays in train.
pub fn temporal_split(
    cells: &[Cell],
    fraction: f64,
    min_positives: usize,
) -> (Vec<Cell>, Vec<Cell>) {
    let mut by_user: BTreeMap<u32, Vec<Cell>> = BTreeMap::new();
    for c in cells {
        by_user.entry(c.user).or_default().push(*c);
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (_, mut cells) in by_user {
        let (mut pos, neg): (Vec<Cell>, Vec<Cell>) = cells.drain(..).partition(|c| c.weight > 0.0);
        train.extend(neg);
        pos.sort_by_key(|c| (c.ts, c.item));
        let n_test = if pos.len() >= min_positives {
            (pos.len() as f64 * fraction).floor() as usize
        } else {
            0
        };
        let cut = pos.len() - n_test;
        test.extend(pos.drain(cut..));
        train.extend(pos);
    }
    (train, test)
}

/// Per user with at least `min_positives` positive cells, a random `floor(fraction · n)` of the
/// positives (seeded) go to test; everything else stays in train.
pub fn random_split(
    cells: &[Cell],
    fraction: f64,
    min_positives: usize,
    seed: u64,
) -> (Vec<Cell>, Vec<Cell>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut by_user: BTreeMap<u32, Vec<Cell>> = BTreeMap::new();
    for c in cells {
        by_user.entry(c.user).or_default().push(*c);
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (_, mut cells) in by_user {
        let (mut pos, neg): (Vec<Cell>, Vec<Cell>) = cells.drain(..).partition(|c| c.weight > 0.0);
        train.extend(neg);
        let n_test = if pos.len() >= min_positives {
            (pos.len() as f64 * fraction).floor() as usize
        } else {
            0
        };
        pos.shuffle(&mut rng);
        test.extend(pos.drain(..n_test));
        train.extend(pos);
    }
    (train, test)
}

/// Ranks every item for each test user (excluding the user's train items) and scores the top k.
pub fn evaluate(f: &Factors, num_items: usize, train: &[Cell], test: &[Cell], k: usize) -> Metrics {
    let d = f.dim;
    evaluate_with(num_items, train, test, k, |user| {
        let x = &f.users[user as usize * d..(user as usize + 1) * d];
        (0..num_items)
            .map(|i| dot(x, &f.items[i * d..(i + 1) * d]))
            .collect()
    })
}

/// Like [`evaluate`], for any model: `score(user)` gives a score for every item; an item scored
/// −∞ is not ranked (a user's list may then be shorter than `k`).
pub fn evaluate_with(
    num_items: usize,
    train: &[Cell],
    test: &[Cell],
    k: usize,
    mut score: impl FnMut(u32) -> Vec<f32>,
) -> Metrics {
    let mut seen: HashMap<u32, HashSet<u32>> = HashMap::new();
    for c in train {
        seen.entry(c.user).or_default().insert(c.item);
    }
    let mut relevant: BTreeMap<u32, HashSet<u32>> = BTreeMap::new();
    for c in test {
        relevant.entry(c.user).or_default().insert(c.item);
    }
    let mut m = Metrics {
        k,
        ..Default::default()
    };
    let mut recommended = HashSet::new();
    for (user, rel) in &relevant {
        let scores = score(*user);
        let skip = seen.get(user);
        let mut scored: Vec<(f32, u32)> = (0..num_items as u32)
            .filter(|i| skip.is_none_or(|s| !s.contains(i)))
            .map(|i| (scores[i as usize], i))
            .filter(|(s, _)| *s != f32::NEG_INFINITY)
            .collect();
        let top = k.min(scored.len());
        if top == 0 {
            // Nothing to rank still counts: the user got an empty list.
            m.users += 1;
            continue;
        }
        scored.select_nth_unstable_by(top - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.truncate(top);
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let hits: Vec<bool> = scored.iter().map(|(_, i)| rel.contains(i)).collect();
        let n_hits = hits.iter().filter(|h| **h).count() as f64;
        let dcg: f64 = hits
            .iter()
            .enumerate()
            .filter(|(_, h)| **h)
            .map(|(r, _)| 1.0 / (r as f64 + 2.0).log2())
            .sum();
        let idcg: f64 = (0..rel.len().min(k))
            .map(|r| 1.0 / (r as f64 + 2.0).log2())
            .sum();
        m.precision += n_hits / k as f64;
        m.recall += n_hits / rel.len() as f64;
        m.ndcg += dcg / idcg;
        m.hit_rate += f64::from(u8::from(n_hits > 0.0));
        m.users += 1;
        recommended.extend(scored.iter().map(|(_, i)| *i));
    }
    if m.users > 0 {
        let n = m.users as f64;
        m.precision /= n;
        m.recall /= n;
        m.ndcg /= n;
        m.hit_rate /= n;
    }
    m.coverage = if num_items > 0 {
        recommended.len() as f64 / num_items as f64
    } else {
        0.0
    };
    m
}

/// Each user's positive items in time order (by timestamp, then item index), by user index.
pub fn sequences(cells: &[Cell], num_users: usize) -> Vec<Vec<u32>> {
    let mut by_user: Vec<Vec<(i64, u32)>> = vec![Vec::new(); num_users];
    for c in cells.iter().filter(|c| c.weight > 0.0) {
        by_user[c.user as usize].push((c.ts, c.item));
    }
    by_user
        .into_iter()
        .map(|mut v| {
            v.sort_unstable();
            v.into_iter().map(|(_, i)| i).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(user: u32, item: u32, weight: f32, ts: i64) -> Cell {
        Cell {
            user,
            item,
            weight,
            ts,
        }
    }

    #[test]
    fn split_holds_out_the_latest_positives() {
        let cells: Vec<_> = (0..10)
            .map(|i| cell(0, i, 1.0, 100 - i64::from(i)))
            .chain([cell(1, 0, 1.0, 0)])
            .collect();
        let (train, test) = temporal_split(&cells, 0.2, 5);
        // Items 0 and 1 have the latest timestamps for user 0; user 1 has too few positives.
        let mut held: Vec<_> = test.iter().map(|c| (c.user, c.item)).collect();
        held.sort();
        assert_eq!(held, vec![(0, 0), (0, 1)]);
        assert_eq!(train.len(), 9);
    }

    #[test]
    fn perfect_ranking_scores_one() {
        // One user, 3 items in 1 dim: the held-out item scores highest.
        let f = Factors {
            dim: 1,
            users: vec![1.0],
            items: vec![0.1, 0.9, 0.5],
        };
        let m = evaluate(&f, 3, &[cell(0, 2, 1.0, 0)], &[cell(0, 1, 1.0, 1)], 1);
        assert_eq!(
            (m.users, m.precision, m.recall, m.ndcg, m.hit_rate),
            (1, 1.0, 1.0, 1.0, 1.0)
        );
    }
}
