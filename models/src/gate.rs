//! The activation gate's evidence: the candidate and the active version scored on the same
//! fresh hold-out. Each version's own hold-out metric comes from its own data, so comparing the
//! two says as much about the data as about the models; here both rank the same users' same
//! held-out positives, from the same histories.
//!
//! The shared hold-out is the candidate's temporal hold-out restricted to events after the
//! active version's `data_range` end: neither version trained on them. The active version is
//! scored from its artifact as its graph scores it before the item bias (fold-in, item-to-item
//! and transition tables, its blend), on its own catalogue; items it does not know rank last.

use std::collections::HashSet;

use crate::als::Cell;
use crate::blend::combine;
use crate::eval::{Metrics, evaluate_with, sequences};
use crate::linalg::dot;
use crate::{Interactions, ModelArtifact};

/// Fewer users with fresh held-out positives than this, and the comparison is noise: the gate
/// falls back to each version's own hold-out metric.
pub const MIN_SHARED_USERS: usize = 50;
/// The candidate's NDCG@10 on the shared hold-out.
pub const SHARED_NDCG: &str = "shared_ndcg@10";
/// The active version's NDCG@10 on the shared hold-out.
pub const ACTIVE_SHARED_NDCG: &str = "active_shared_ndcg@10";
/// How many users the shared hold-out has (recorded also when too few to compare on).
pub const SHARED_USERS: &str = "shared_users";

/// The held-out cells neither `active` nor the candidate trained on: those after the active
/// version's newest training event (all of them if it trained on nothing).
pub fn fresh(active: &ModelArtifact, test: &[Cell]) -> Vec<Cell> {
    let since = active.meta.data_range.map_or(i64::MIN, |(_, end)| end);
    test.iter().filter(|c| c.ts > since).copied().collect()
}

/// The number of users with held-out cells.
pub fn users(test: &[Cell]) -> usize {
    test.iter().map(|c| c.user).collect::<HashSet<_>>().len()
}

/// `artifact`'s metrics @k for the users of `test`, each scored from their `train` cells, over
/// the items of `data` (items the artifact does not know score lowest).
pub fn evaluate_artifact(
    artifact: &ModelArtifact,
    data: &Interactions,
    train: &[Cell],
    test: &[Cell],
    k: usize,
) -> Metrics {
    let sequences = sequences(train, data.users.len());
    let mut by_user: Vec<Vec<(&str, f32)>> = vec![Vec::new(); data.users.len()];
    for c in train {
        by_user[c.user as usize].push((data.items[c.item as usize].as_str(), c.weight));
    }
    let rows: Vec<Option<u32>> = data
        .items
        .iter()
        .map(|id| artifact.item_index.get(id).copied())
        .collect();
    evaluate_with(data.items.len(), train, test, k, |user| {
        let history = sequences[user as usize]
            .iter()
            .map(|&i| data.items[i as usize].as_str());
        let own = score(artifact, &by_user[user as usize], history);
        rows.iter()
            .map(|row| row.map_or(f32::NEG_INFINITY, |r| own[r as usize]))
            .collect()
    })
}

/// The blended score of each of the artifact's items for a user with these interactions
/// (item id, summed weight) and positive history (oldest first): what its graph computes
/// before the item bias and the mask.
pub fn score<'a>(
    artifact: &ModelArtifact,
    interactions: &[(&'a str, f32)],
    history: impl IntoIterator<Item = &'a str>,
) -> Vec<f32> {
    let n = artifact.num_items();
    let x = artifact.fold_in(interactions.iter().copied());
    let liked = artifact.liked(interactions.iter().copied());
    let recent = artifact.history(history);
    let cf = (0..n as u32)
        .map(|i| dot(&x, artifact.item_vector(i)))
        .collect();
    let spread = |table: &[Vec<(u32, f32)>], from: &[(u32, f32)]| {
        let mut scores = vec![0f32; n];
        for &(row, w) in from {
            for &(to, t) in table.get(row as usize).map_or(&[][..], Vec::as_slice) {
                if let Some(s) = scores.get_mut(to as usize) {
                    *s += w * t;
                }
            }
        }
        scores
    };
    let together = spread(&artifact.neighbours, &liked);
    let next = spread(&artifact.successors, &recent);
    combine(cf, together, next, artifact.weights(&liked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blend::{Blend, Weights};
    use crate::training::{Content, Setup, train, train_against};
    use crate::{HybridParams, TrainParams};

    /// 120 users in two taste groups ("m" and "b" items), each liking 10 of their group's 12
    /// items in an order of their own, one event every 1000 ms: the events from 8000 on are the
    /// last fifth of every user's positives, the temporal hold-out.
    fn data(until: i64) -> Interactions {
        let mut data = Interactions::default();
        for u in 0..120u32 {
            let group = if u % 2 == 0 { "m" } else { "b" };
            for pos in 0..10u32 {
                let ts = i64::from(pos) * 1000;
                if ts < until {
                    let item = (pos * 5 + u / 2) % 12;
                    data.add(&format!("u{u}"), &format!("{group}{item}"), 1.0, ts);
                }
            }
        }
        data
    }

    fn setup(until: i64) -> Setup {
        Setup {
            range: Some((0, until - 1000)),
            params: TrainParams {
                dim: 4,
                iterations: 5,
                regularization: 0.1,
                alpha: 4.0,
                seed: 7,
            },
            hybrid: HybridParams::default(),
            max_user_weight: common::config::DEFAULT_MAX_USER_WEIGHT,
        }
    }

    /// A version trained on the events before `until`.
    fn version(until: i64) -> ModelArtifact {
        let s = setup(until);
        train(
            data(until),
            Content::default(),
            s.range,
            s.params,
            s.hybrid,
            s.max_user_weight,
            |_, _| {},
        )
    }

    /// A version of `good`'s items whose only part is an item-to-item table that sends every
    /// item to the other taste group's items, yet whose own hold-out metric says it is perfect.
    fn misled(good: &ModelArtifact) -> ModelArtifact {
        let group = |row: usize| good.item_ids[row].starts_with('m');
        let neighbours = (0..good.num_items())
            .map(|r| {
                (0..good.num_items())
                    .filter(|&o| group(o) != group(r))
                    .map(|o| (o as u32, 1.0))
                    .collect()
            })
            .collect();
        let mut meta = good.meta.clone();
        meta.metrics.insert("ndcg@10".into(), 1.0);
        meta.blend = Some(Blend::fixed(Weights::new(0.0, 1.0, 0.0)));
        ModelArtifact::build_hybrid(
            meta,
            good.item_ids.clone(),
            good.factors.clone(),
            good.popularity.clone(),
            good.successors.clone(),
            neighbours,
        )
    }

    #[test]
    fn two_versions_on_one_hold_out_rank_by_their_scores_not_their_own_metrics() {
        let mut good = version(8000);
        let bad = misled(&good);
        // As if its own hold-out had been a harder one: its own metric says nothing here.
        good.meta.metrics.insert("ndcg@10".into(), 0.5);
        let all = data(i64::MAX);
        let (train_cells, test) = crate::eval::temporal_split(&all.cells(), 0.2, 5);
        let shared = fresh(&good, &test);
        assert_eq!(shared.len(), test.len(), "the hold-out is after 7000");
        assert!(users(&shared) >= MIN_SHARED_USERS);
        let on = |a: &ModelArtifact| evaluate_artifact(a, &all, &train_cells, &shared, 10).ndcg;
        let (g, b) = (on(&good), on(&bad));
        assert!(
            bad.meta.metrics["ndcg@10"] > good.meta.metrics["ndcg@10"],
            "the worse one's own metric is the higher"
        );
        assert!(g > b + 0.1, "good {g} vs bad {b}");
    }

    #[test]
    fn a_candidate_is_scored_beside_the_active_version_on_the_fresh_hold_out() {
        let good = version(8000);
        let bad = misled(&good);
        let s = setup(i64::MAX);
        let against = |active: &ModelArtifact| {
            train_against(
                data(i64::MAX),
                Content::default(),
                s.clone(),
                Some(active),
                |_, _| {},
            )
            .meta
            .metrics
        };
        let m = against(&bad);
        assert_eq!(m[SHARED_USERS], 120.0);
        assert!(m[SHARED_NDCG] > m[ACTIVE_SHARED_NDCG] + 0.1, "{m:?}");
        // Against a version that trained on everything, nothing is fresh: no figures to compare.
        let mut late = misled(&good);
        late.meta.data_range = Some((0, 9000));
        let m = against(&late);
        assert_eq!(m[SHARED_USERS], 0.0);
        assert!(!m.contains_key(SHARED_NDCG) && !m.contains_key(ACTIVE_SHARED_NDCG));
    }
}
