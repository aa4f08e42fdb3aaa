//! Sequential item-to-item transitions: what people went on to like after an item.
//!
//! For every user's positives in time order, each later item within `window` steps counts as a
//! successor of an earlier one, weighted `decay^(gap-1)`, and (weighted `backward` times that)
//! the earlier one as a successor of the later: order matters, but taste that shows up in either
//! order still counts, which keeps the model sound when "next" is not what is asked. Counts are normalised by the square
//! roots of the predecessor's and the successor's totals, so neither very active items nor
//! blockbusters dominate, and only the `top_k` strongest successors per item are kept: the model
//! stays sparse (items × top_k) whatever the catalogue size.
//!
//! A user is scored from their own recent history, the most recent items weighted most
//! (half-life `half_life` steps): the signal a collaborative-filtering model misses when the
//! question is "what next" rather than "what overall".

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Hyper-parameters of the transition model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransitionParams {
    /// How many later items count as successors of an item. Default 20.
    pub window: usize,
    /// Weight of a successor `gap` steps later: `decay^(gap-1)`. Default 0.9.
    pub decay: f32,
    /// Successors kept per item. Default 300.
    pub top_k: usize,
    /// Half-life, in steps back from the latest, of a history item's weight. Default 3.
    pub half_life: f32,
    /// Weight of the reverse direction (an earlier item as successor of a later one). Default 0.5.
    #[serde(default = "default_backward")]
    pub backward: f32,
}

fn default_backward() -> f32 {
    0.5
}

impl TransitionParams {
    /// The recency weight of each item of a history in time order (latest last): the latest
    /// weighs 1, each `half_life` steps back half as much.
    pub fn history_weights(&self, len: usize) -> impl Iterator<Item = f32> + use<> {
        let half = self.half_life.max(f32::MIN_POSITIVE);
        (0..len).map(move |p| 0.5f32.powf((len - 1 - p) as f32 / half))
    }
}

impl Default for TransitionParams {
    fn default() -> Self {
        Self {
            window: 20,
            decay: 0.9,
            top_k: 300,
            half_life: 3.0,
            backward: default_backward(),
        }
    }
}

/// Per item, its strongest successors as `(item, weight)`, strongest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transitions {
    pub params: TransitionParams,
    pub successors: Vec<Vec<(u32, f32)>>,
}

impl Transitions {
    /// Learns from `sequences`: each user's positive items in time order.
    pub fn train(num_items: usize, sequences: &[Vec<u32>], params: TransitionParams) -> Self {
        let mut counts: Vec<HashMap<u32, f32>> = vec![HashMap::new(); num_items];
        let mut out_total = vec![0f32; num_items];
        let mut in_total = vec![0f32; num_items];
        for seq in sequences {
            for (a, &from) in seq.iter().enumerate() {
                let mut weight = 1.0;
                for &to in seq.iter().skip(a + 1).take(params.window) {
                    for (x, y, w) in [(from, to, weight), (to, from, weight * params.backward)] {
                        if w > 0.0 && x != y {
                            *counts[x as usize].entry(y).or_default() += w;
                            out_total[x as usize] += w;
                            in_total[y as usize] += w;
                        }
                    }
                    weight *= params.decay;
                }
            }
        }
        let successors = counts
            .into_iter()
            .enumerate()
            .map(|(from, row)| {
                let out = out_total[from].max(1.0).sqrt();
                let mut row: Vec<(u32, f32)> = row
                    .into_iter()
                    .map(|(to, c)| (to, c / out / in_total[to as usize].max(1.0).sqrt()))
                    .collect();
                row.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                row.truncate(params.top_k);
                row
            })
            .collect();
        Self { params, successors }
    }

    /// The recency weight of each item of a history in time order (latest last).
    pub fn history_weights(&self, len: usize) -> impl Iterator<Item = f32> + use<> {
        self.params.history_weights(len)
    }

    /// Scores every item for a user whose positives, in time order, are `history`.
    pub fn score(&self, history: &[u32], num_items: usize) -> Vec<f32> {
        let mut scores = vec![0f32; num_items];
        for (&item, w) in history.iter().zip(self.history_weights(history.len())) {
            if let Some(row) = self.successors.get(item as usize) {
                for &(to, t) in row {
                    if let Some(s) = scores.get_mut(to as usize) {
                        *s += w * t;
                    }
                }
            }
        }
        scores
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successors_follow_the_order_and_decay_with_the_gap() {
        let params = TransitionParams {
            window: 2,
            decay: 0.5,
            top_k: 10,
            half_life: 1.0,
            backward: 0.0,
        };
        let t = Transitions::train(4, &[vec![0, 1, 2, 3]], params);
        // 0 → 1 (gap 1, weight 1) and 0 → 2 (gap 2, weight 0.5); 3 is beyond the window.
        let from0: Vec<u32> = t.successors[0].iter().map(|(i, _)| *i).collect();
        assert_eq!(from0, vec![1, 2]);
        assert!(t.successors[0][0].1 > t.successors[0][1].1);
        assert!(t.successors[3].is_empty(), "nothing follows the last item");
        // Nothing ever leads back to an earlier item.
        assert!(t.successors[2].iter().all(|(i, _)| *i == 3));
    }

    #[test]
    fn recent_history_weighs_more() {
        let params = TransitionParams {
            window: 1,
            decay: 1.0,
            top_k: 10,
            half_life: 1.0,
            backward: 0.0,
        };
        // Two users: 0 → 2 and 1 → 3.
        let t = Transitions::train(4, &[vec![0, 2], vec![1, 3]], params);
        let s = t.score(&[0, 1], 4);
        assert!(
            s[3] > s[2],
            "the successor of the latest item ranks first: {s:?}"
        );
        let s = t.score(&[1, 0], 4);
        assert!(s[2] > s[3], "{s:?}");
    }

    #[test]
    fn the_reverse_direction_counts_only_when_weighted() {
        let train = |backward| {
            let params = TransitionParams {
                window: 1,
                backward,
                ..Default::default()
            };
            Transitions::train(3, &[vec![0, 1], vec![0, 1], vec![2, 1]], params)
        };
        assert!(train(0.0).successors[1].is_empty());
        let t = train(0.5);
        let back: Vec<u32> = t.successors[1].iter().map(|(i, _)| *i).collect();
        // 1 came after 0 twice and after 2 once: 0 leads the reverse list.
        assert_eq!(back, vec![0, 2], "{t:?}");
        assert!(t.successors[1][0].1 > t.successors[1][1].1);
    }

    #[test]
    fn keeps_only_the_strongest_successors() {
        let params = TransitionParams {
            top_k: 2,
            ..Default::default()
        };
        let seqs: Vec<Vec<u32>> = (1..6)
            .map(|i| vec![0, i])
            .chain([vec![0, 1], vec![0, 2]])
            .collect();
        let t = Transitions::train(6, &seqs, params);
        let kept: Vec<u32> = t.successors[0].iter().map(|(i, _)| *i).collect();
        assert_eq!(kept, vec![1, 2]);
    }

    use proptest::prelude::*;

    proptest! {
        /// Scores are non-negative, positive exactly on successors of the history, and the same
        /// sequences always give the same table (training is deterministic).
        #[test]
        fn scores_come_only_from_successors(
            sequences in proptest::collection::vec(proptest::collection::vec(0u32..12, 0..10), 0..12),
            history in proptest::collection::vec(0u32..12, 0..6),
        ) {
            let t = Transitions::train(12, &sequences, TransitionParams::default());
            prop_assert_eq!(&t, &Transitions::train(12, &sequences, TransitionParams::default()));
            let scores = t.score(&history, 12);
            let reachable: std::collections::HashSet<u32> = history
                .iter()
                .flat_map(|&h| t.successors[h as usize].iter().map(|(i, _)| *i))
                .collect();
            for (i, s) in scores.iter().enumerate() {
                prop_assert!(*s >= 0.0);
                prop_assert_eq!(*s > 0.0, reachable.contains(&(i as u32)), "item {}", i);
            }
        }
    }
}
