//! Diversity on request, offline: the hybrid's top 10 re-ranked by [`crate::diversify::mmr`] (the
//! function serving uses) from its best [`pool_size`] candidates at a few levels of `diversity`,
//! scored by NDCG@10 and intra-list diversity (the same similarity: genres and ALS item factors).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::eval::K;
use super::fitted::{Fitted, Model};
use crate::Interactions;
use crate::als::Cell;
use crate::diversify::{ItemFeatures, intra_list_diversity, mmr, pool_size};

/// The levels of `diversity` the evaluation reports.
pub const LEVELS: [f32; 3] = [0.0, 0.3, 0.7];

/// The hybrid's lists at one level of `diversity`.
#[derive(Debug, Serialize)]
pub struct DiversityRow {
    pub diversity: f32,
    /// NDCG@10 against the hold-out.
    pub ndcg: f64,
    /// Mean over users of the mean pairwise `1 − similarity` within the top 10.
    pub intra_list_diversity: f64,
}

/// Each item's categories by item index, from the catalogue (none for an item it lacks).
pub(super) fn categories(data: &Interactions, items: &[common::Item]) -> Vec<Vec<String>> {
    let by_id: HashMap<&str, &[String]> = items
        .iter()
        .map(|i| (i.item_id.as_str(), i.categories.as_slice()))
        .collect();
    data.items
        .iter()
        .map(|id| by_id.get(id.as_str()).map_or_else(Vec::new, |c| c.to_vec()))
        .collect()
}

/// The hybrid of `fitted` at each level of [`LEVELS`], on the hold-out `test`.
pub(super) fn rows(
    fitted: &Fitted,
    model: Model<'_>,
    categories: &[Vec<String>],
    train: &[Cell],
    test: &[Cell],
) -> Vec<DiversityRow> {
    let d = fitted.factors.dim;
    let features: Vec<ItemFeatures<'_>> = (0..fitted.num_items)
        .map(|i| ItemFeatures {
            categories: categories.get(i).map_or(&[][..], Vec::as_slice),
            vector: fitted.factors.items.get(i * d..(i + 1) * d),
        })
        .collect();
    let mut seen: HashMap<u32, HashSet<u32>> = HashMap::new();
    for c in train {
        seen.entry(c.user).or_default().insert(c.item);
    }
    let mut relevant: BTreeMap<u32, HashSet<u32>> = BTreeMap::new();
    for c in test {
        relevant.entry(c.user).or_default().insert(c.item);
    }
    let mut sums = vec![(0.0f64, 0.0f64, 0usize); LEVELS.len()];
    let mut users = 0usize;
    for (user, rel) in &relevant {
        let scores = fitted.score(model, *user);
        let skip = seen.get(user);
        let mut pool: Vec<(f32, u32)> = (0..fitted.num_items as u32)
            .filter(|i| skip.is_none_or(|s| !s.contains(i)))
            .map(|i| (scores[i as usize], i))
            .collect();
        let n = pool_size(K).min(pool.len());
        if n == 0 {
            continue;
        }
        // The pool best first, ties by item index, as `eval` ranks.
        let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        pool.select_nth_unstable_by(n - 1, order);
        pool.truncate(n);
        pool.sort_by(order);
        let relevance: Vec<f32> = pool.iter().map(|(s, _)| *s).collect();
        let pool_features: Vec<ItemFeatures<'_>> =
            pool.iter().map(|(_, i)| features[*i as usize]).collect();
        let idcg: f64 = (0..rel.len().min(K))
            .map(|r| 1.0 / (r as f64 + 2.0).log2())
            .sum();
        for (level, sum) in LEVELS.iter().zip(&mut sums) {
            let picked = mmr(&relevance, &pool_features, *level, K);
            let dcg: f64 = picked
                .iter()
                .enumerate()
                .filter(|(_, p)| rel.contains(&pool[**p].1))
                .map(|(r, _)| 1.0 / (r as f64 + 2.0).log2())
                .sum();
            sum.0 += dcg / idcg;
            let list: Vec<ItemFeatures<'_>> = picked.iter().map(|&p| pool_features[p]).collect();
            if let Some(ild) = intra_list_diversity(&list) {
                sum.1 += ild;
                sum.2 += 1;
            }
        }
        users += 1;
    }
    LEVELS
        .iter()
        .zip(sums)
        .map(|(&diversity, (ndcg, ild, lists))| DiversityRow {
            diversity,
            ndcg: if users > 0 { ndcg / users as f64 } else { 0.0 },
            intra_list_diversity: if lists > 0 { ild / lists as f64 } else { 0.0 },
        })
        .collect()
}
