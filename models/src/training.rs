//! Training a version from collected data, free of actors and I/O: the blend chosen on
//! validation splits cut from the data, hold-out metrics, ALS, the item-to-item and transition
//! tables and the content maps, assembled into a [`ModelArtifact`]. The trainer actor collects
//! the data and runs this on the blocking pool; the MovieLens tools and tests call it directly.
//!
//! The blend is chosen as `streamrec eval` chooses it ([`crate::validation::choose`]): on a
//! temporal and a random validation split of everything the version trains on, as the version's
//! factors are fitted on everything. The hold-out metrics (and the activation gate that reads
//! them) judge that procedure without having it see the hold-out: a blend chosen on validation
//! splits of the hold-out's train part, with parts fitted on that part. (Choosing the served
//! blend one level down, on less data, cost MovieLens-100k's random split a tenth of its NDCG
//! through the API: `streamrec eval --served`.)

use crate::als::{Cell, Factors};
use crate::blend::{Blend, Weights, combine};
use crate::content::{ContentModel, ContentParams};
use crate::eval::{evaluate_with, random_split, sequences, temporal_split};
use crate::gate;
use crate::item_item::ItemItem;
use crate::linalg::dot;
use crate::transitions::Transitions;
use crate::validation::{Scored, Split, choose};
use crate::{HybridParams, Interactions, ModelArtifact, ModelMeta, TrainParams};

/// What one user's summed weight `total` on an item adds to the item's popularity (and, per
/// window, to its trending activity): the positive part, at most `cap`. Training and live
/// popularity share it so that a trained bias and a live count agree.
pub fn contribution(total: f64, cap: f64) -> f64 {
    total.clamp(0.0, cap.max(0.0))
}

/// Content features by row: `items[row]` of item `row`, `users[row]` of user `row`'s profile
/// (empty where unknown).
#[derive(Default)]
pub struct Content {
    pub items: Vec<Vec<String>>,
    pub users: Vec<Vec<String>>,
}

/// Fits a content map on the rows that have both interactions and features.
fn fit_content(
    tokens: &[Vec<String>],
    interacted: &[bool],
    factors: &[f32],
    dim: usize,
) -> ContentModel {
    let rows: Vec<u32> = (0..interacted.len() as u32)
        .filter(|&r| interacted[r as usize] && !tokens.get(r as usize).is_none_or(Vec::is_empty))
        .collect();
    let features: Vec<Vec<String>> = rows.iter().map(|&r| tokens[r as usize].clone()).collect();
    ContentModel::fit(&features, &rows, factors, dim, ContentParams::default())
}

/// Every part fitted on some cells.
struct Parts {
    num_items: usize,
    factors: Factors,
    transitions: Transitions,
    item_item: ItemItem,
    sequences: Vec<Vec<u32>>,
}

impl Parts {
    fn fit(
        data: &Interactions,
        cells: &[Cell],
        params: &TrainParams,
        hybrid: &HybridParams,
    ) -> Self {
        let num_items = data.items.len();
        let sequences = sequences(cells, data.users.len());
        Self {
            num_items,
            factors: crate::als::train(&data.with_cells(cells), params, |_, _| {}),
            transitions: Transitions::train(num_items, &sequences, hybrid.transitions),
            item_item: ItemItem::train(num_items, &sequences, hybrid.item_item),
            sequences,
        }
    }

    /// The raw scores of each part for a user of the data: CF, item-to-item, transitions.
    fn scores(&self, user: u32) -> [Vec<f32>; 3] {
        let d = self.factors.dim;
        let x = &self.factors.users[user as usize * d..(user as usize + 1) * d];
        let history = &self.sequences[user as usize];
        [
            (0..self.num_items)
                .map(|i| dot(x, &self.factors.items[i * d..(i + 1) * d]))
                .collect(),
            self.item_item.score(history, self.num_items),
            self.transitions.score(history, self.num_items),
        ]
    }
}

/// Fewer users held out than this, and a blend chosen on them is noise (a handful of users can
/// make any part look best): the configured blend is used instead.
const MIN_VALIDATION_USERS: usize = 50;

/// The blend that does best on a temporal and a random validation split of `cells`; `None` when
/// there is too little data to judge one on (fewer than [`MIN_VALIDATION_USERS`] held out).
fn choose_blend(
    data: &Interactions,
    cells: &[Cell],
    params: &TrainParams,
    hybrid: &HybridParams,
) -> Option<Blend> {
    let splits = [
        temporal_split(cells, 0.2, 5),
        random_split(cells, 0.2, 5, params.seed),
    ];
    let users = |cells: &[Cell]| {
        cells
            .iter()
            .map(|c| c.user)
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    if splits
        .iter()
        .any(|(_, validation)| users(validation) < MIN_VALIDATION_USERS)
    {
        return None;
    }
    let fitted: Vec<(Split, [crate::validation::Scores; 3])> = splits
        .iter()
        .map(|(fit, validation)| {
            let split = Split::new(data.items.len(), fit, validation);
            let parts = Parts::fit(data, fit, params, hybrid);
            let scores = split.parts(|u| parts.scores(u));
            (split, scores)
        })
        .collect();
    let reference: Vec<f64> = fitted
        .iter()
        .map(|(split, parts)| parts.iter().map(|p| split.alone(p)).fold(1e-9, f64::max))
        .collect();
    let scored: Vec<Scored<'_>> = fitted
        .iter()
        .zip(["temporal", "random"])
        .map(|((split, [a, b, c]), name)| Scored {
            name,
            split,
            parts: [a, b, c],
        })
        .collect();
    Some(choose(&scored, &reference).blend)
}

/// What a version is trained with, beside its data.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Timestamps (epoch ms) of the oldest and newest event of the data.
    pub range: Option<(i64, i64)>,
    pub params: TrainParams,
    pub hybrid: HybridParams,
    /// What one user's weight on an item adds to its popularity at most.
    pub max_user_weight: f64,
}

/// Trains a version with no active version to compare it with: see [`train_against`].
pub fn train(
    data: Interactions,
    content: Content,
    range: Option<(i64, i64)>,
    params: TrainParams,
    hybrid: HybridParams,
    max_user_weight: f64,
    progress: impl FnMut(usize, usize),
) -> ModelArtifact {
    let setup = Setup {
        range,
        params,
        hybrid,
        max_user_weight,
    };
    train_against(data, content, setup, None, progress)
}

/// Trains a version: the blend chosen on validation, hold-out metrics of the whole procedure
/// (a blend chosen and parts fitted without the hold-out), then ALS, the
/// item-to-item and transition tables and the content maps (items and user profiles) on
/// everything. An item without interactions gets its factors from its content. An item's
/// popularity (its bias) counts each user's weight up to `max_user_weight`, as live popularity
/// does. With too little data to validate on, the blend is `hybrid`'s CF and transitions.
/// (`MIN_VALIDATION_USERS` held out on each split.)
///
/// With an `active` version, both are also scored on the part of the hold-out the active version
/// never trained on ([`crate::gate`]): the metrics then hold `shared_users` and, with at least
/// [`crate::gate::MIN_SHARED_USERS`] of them, `shared_ndcg@10` and `active_shared_ndcg@10`.
pub fn train_against(
    data: Interactions,
    content: Content,
    setup: Setup,
    active: Option<&ModelArtifact>,
    progress: impl FnMut(usize, usize),
) -> ModelArtifact {
    let Setup {
        range,
        params,
        hybrid,
        max_user_weight,
    } = setup;
    let cells = data.cells();
    let (train_cells, test_cells) = temporal_split(&cells, 0.2, 5);
    let chosen_on = |cells: &[Cell]| {
        choose_blend(&data, cells, &params, &hybrid).unwrap_or_else(|| {
            let cf = hybrid.cf_weight;
            Blend::fixed(Weights::new(cf, 0.0, 1.0 - cf))
        })
    };
    let blend = chosen_on(&cells);
    let mut metrics = std::collections::BTreeMap::new();
    if !test_cells.is_empty() {
        let held_out_blend = chosen_on(&train_cells);
        let parts = Parts::fit(&data, &train_cells, &params, &hybrid);
        let candidate = |test: &[Cell]| {
            evaluate_with(data.items.len(), &train_cells, test, 10, |u| {
                let [cf, together, next] = parts.scores(u);
                let w = held_out_blend.weights(parts.sequences[u as usize].len());
                combine(cf, together, next, w)
            })
        };
        metrics = candidate(&test_cells).to_map();
        if let Some(active) = active {
            let fresh = gate::fresh(active, &test_cells);
            let users = gate::users(&fresh);
            metrics.insert(gate::SHARED_USERS.to_owned(), users as f64);
            if users >= gate::MIN_SHARED_USERS {
                let theirs = gate::evaluate_artifact(active, &data, &train_cells, &fresh, 10);
                metrics.insert(gate::SHARED_NDCG.to_owned(), candidate(&fresh).ndcg);
                metrics.insert(gate::ACTIVE_SHARED_NDCG.to_owned(), theirs.ndcg);
            }
        }
    }
    let mut factors = crate::als::train(&data, &params, progress);
    let mut popularity = vec![0.0f32; data.items.len()];
    let mut interacted = vec![false; data.items.len()];
    for cell in &cells {
        popularity[cell.item as usize] +=
            contribution(f64::from(cell.weight), max_user_weight) as f32;
        interacted[cell.item as usize] = true;
    }
    let d = params.dim;
    let content_map = fit_content(&content.items, &interacted, &factors.items, d);
    for (row, was) in interacted.iter().enumerate() {
        if !was {
            let v = content_map.embed(content.items.get(row).map_or(&[][..], Vec::as_slice));
            factors.items[row * d..(row + 1) * d].copy_from_slice(&v);
        }
    }
    // Users with positives only: one who only disliked things has a zero vector, which says
    // nothing about what a profile like theirs likes.
    let mut active_users = vec![false; data.users.len()];
    for cell in cells.iter().filter(|c| c.weight > 0.0) {
        active_users[cell.user as usize] = true;
    }
    let user_map = fit_content(&content.users, &active_users, &factors.users, d);
    let sequences = crate::eval::sequences(&cells, data.users.len());
    let transitions = Transitions::train(data.items.len(), &sequences, hybrid.transitions);
    let item_item_params = hybrid.item_item;
    let item_item = ItemItem::train(data.items.len(), &sequences, item_item_params);
    let meta = ModelMeta {
        version: format!("v{}", common::now_millis()),
        created_at: common::now_millis(),
        dim: params.dim,
        num_items: data.items.len(),
        num_users: data.users.len(),
        num_interactions: data.num_cells(),
        data_range: range,
        params,
        metrics,
        hybrid,
        item_item: Some(item_item_params),
        blend: Some(blend),
    };
    let mut artifact = ModelArtifact::build_hybrid(
        meta,
        data.items,
        factors.items,
        popularity,
        transitions.successors,
        item_item.rows,
    );
    artifact.content = content_map;
    artifact.user_content = user_map;
    artifact
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::pii::PersonalFields;

    fn data() -> (Interactions, Content) {
        let mut data = Interactions::default();
        for u in 0..12 {
            for i in 0..8 {
                if (u + i) % 3 != 0 {
                    let item = format!("{}{i}", if u % 2 == 0 { "m" } else { "b" });
                    data.add(&format!("u{u}"), &item, 1.0, i64::from(u * 10 + i));
                }
            }
        }
        data.add_item("cold-m");
        let items = data
            .items
            .iter()
            .map(|id| {
                vec![
                    if id.starts_with('b') {
                        "c:books"
                    } else {
                        "c:music"
                    }
                    .to_owned(),
                ]
            })
            .collect();
        let users = data
            .users
            .iter()
            .map(|u| {
                let n: u32 = u[1..].parse().unwrap_or(0);
                crate::content::profile_tokens(
                    &serde_json::json!({
                        "likes": if n.is_multiple_of(2) { "music" } else { "books" }
                    }),
                    PersonalFields::new(&[]),
                )
            })
            .collect();
        (data, Content { items, users })
    }

    fn run() -> ModelArtifact {
        let (data, content) = data();
        let params = TrainParams {
            dim: 4,
            iterations: 5,
            regularization: 0.1,
            alpha: 4.0,
            seed: 7,
        };
        train(
            data,
            content,
            None,
            params,
            HybridParams::default(),
            common::config::DEFAULT_MAX_USER_WEIGHT,
            |_, _| {},
        )
    }

    #[test]
    fn the_same_data_and_seed_give_the_same_version() {
        let (a, b) = (run(), run());
        assert_eq!(a.factors, b.factors);
        assert_eq!(a.successors, b.successors);
        assert_eq!(a.content, b.content);
        assert_eq!(a.meta.metrics, b.meta.metrics);
        assert_eq!(a.onnx.len(), b.onnx.len());
    }

    #[test]
    fn an_item_without_interactions_gets_factors_from_its_content() {
        let a = run();
        let row = a.item_index["cold-m"];
        let cold = a.item_vector(row);
        assert!(cold.iter().any(|v| *v != 0.0), "{cold:?}");
        // It sits with the items that share its content ("m"), not the others ("b").
        let mean_dot = |prefix: &str| {
            let rows: Vec<u32> = a
                .item_ids
                .iter()
                .enumerate()
                .filter(|(_, id)| id.starts_with(prefix) && id.as_str() != "cold-m")
                .map(|(r, _)| r as u32)
                .collect();
            rows.iter()
                .map(|&r| crate::linalg::dot(cold, a.item_vector(r)))
                .sum::<f32>()
                / rows.len() as f32
        };
        assert!(
            mean_dot("m") > mean_dot("b"),
            "{} vs {}",
            mean_dot("m"),
            mean_dot("b")
        );
    }

    #[test]
    fn a_profile_alone_places_a_user_near_users_like_them() {
        let a = run();
        let music_fan = a.user_content.embed(&crate::content::profile_tokens(
            &serde_json::json!({"likes": "music"}),
            PersonalFields::new(&[]),
        ));
        let score = |prefix: &str| {
            let rows: Vec<u32> = a
                .item_ids
                .iter()
                .enumerate()
                .filter(|(_, id)| id.starts_with(prefix))
                .map(|(r, _)| r as u32)
                .collect();
            rows.iter()
                .map(|&r| crate::linalg::dot(&music_fan, a.item_vector(r)))
                .sum::<f32>()
                / rows.len() as f32
        };
        assert!(score("m") > score("b"), "{} vs {}", score("m"), score("b"));
    }
}
