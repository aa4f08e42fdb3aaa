//! Diversity on request: a list ranked from a pool larger than `k` (see
//! [`models::diversify::pool_size`]) re-ranked down to `k` by maximal marginal relevance
//! ([`models::diversify::mmr`], the function the offline evaluation measures). Items are similar by
//! their catalogue categories and their factor vectors: the model's row, or for an item the
//! version has no row for, its content vector. The pool has passed every filter already, so the
//! re-ranked list keeps them exactly. Each item's score becomes its marginal relevance on the
//! model's scale, so that the list is still best first by score.

use std::collections::HashMap;

use common::Recommendation;
use models::diversify::{ItemFeatures, mmr_scored};
use storage::catalog::ItemStatus;

use super::{Ranker, UnlistedItem};

/// The best `k` of `pool` (best first) by maximal marginal relevance at `diversity` (0 to 1),
/// each scored by its marginal relevance.
pub(super) fn rerank(
    ranker: &Ranker<'_>,
    mut pool: Vec<Recommendation>,
    k: usize,
    diversity: f32,
) -> Vec<Recommendation> {
    if pool.len() <= 1 {
        pool.truncate(k);
        return pool;
    }
    let artifact = ranker.artifact;
    let unlisted: HashMap<&str, &UnlistedItem> = if ranker.unlisted.is_empty() {
        HashMap::new()
    } else {
        let wanted: std::collections::HashSet<&str> =
            pool.iter().map(|r| r.item_id.as_str()).collect();
        ranker
            .unlisted
            .iter()
            .filter(|u| wanted.contains(u.item_id.as_str()))
            .map(|u| (u.item_id.as_str(), u))
            .collect()
    };
    let view = ranker.catalog.read();
    let features: Vec<ItemFeatures<'_>> = pool
        .iter()
        .map(|r| {
            let id = r.item_id.as_str();
            let categories = match view.status(id) {
                ItemStatus::Catalogued(item) => item.categories.as_slice(),
                _ => &[],
            };
            let vector = match artifact.item_index.get(id) {
                Some(&row) => Some(artifact.item_vector(row)),
                None => unlisted.get(id).map(|u| u.vector.as_slice()),
            };
            ItemFeatures { categories, vector }
        })
        .collect();
    let relevance: Vec<f32> = pool.iter().map(|r| r.score).collect();
    let picked = mmr_scored(&relevance, &features, diversity, k);
    drop(features);
    drop(view);
    let mut pool: Vec<Option<Recommendation>> = pool.into_iter().map(Some).collect();
    picked
        .into_iter()
        .filter_map(|(i, score)| {
            let item = pool.get_mut(i).and_then(Option::take)?;
            Some(Recommendation { score, ..item })
        })
        .collect()
}
