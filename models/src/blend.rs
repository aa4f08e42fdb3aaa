//! The hybrid's blend: each part's scores (collaborative filtering, item-to-item, transitions)
//! standardised over the catalogue, then weighted. Standardising puts parts of very different
//! scales on one footing, so a weight says how much a part counts whatever the data set.
//!
//! The weights are chosen on validation splits cut from the training data, and may depend on
//! the request: by the length of the user's history, since what is known of a user with five
//! positives and one with five hundred is not the same. The ONNX graph takes the weights as an
//! input, so a request's weights cost nothing to change.

use serde::{Deserialize, Serialize};

/// Weights of the standardised parts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    pub cf: f32,
    pub item_item: f32,
    pub transitions: f32,
}

impl Weights {
    pub const fn new(cf: f32, item_item: f32, transitions: f32) -> Self {
        Self {
            cf,
            item_item,
            transitions,
        }
    }

    /// The graph's `blend` input: CF, item-to-item, transitions.
    pub fn to_array(self) -> [f32; 3] {
        [self.cf, self.item_item, self.transitions]
    }
}

/// Weights by the length of the user's history: the entry with the largest `from` at most the
/// length applies (the first entry applies to shorter histories too).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Blend {
    pub by_history: Vec<(usize, Weights)>,
}

impl Blend {
    /// The same weights for every request.
    pub fn fixed(weights: Weights) -> Self {
        Self {
            by_history: vec![(0, weights)],
        }
    }

    /// The weights for a user with `history_len` positives.
    pub fn weights(&self, history_len: usize) -> Weights {
        self.by_history
            .iter()
            .take_while(|(from, _)| *from <= history_len)
            .last()
            .or(self.by_history.first())
            .map_or_else(Weights::default, |(_, w)| *w)
    }
}

/// Standardises `scores` to mean 0 and standard deviation 1 (all zeros if constant), as the graph
/// does (with the same epsilon).
pub fn standardize(scores: &mut [f32]) {
    let n = scores.len().max(1) as f64;
    let mean = scores.iter().map(|&s| f64::from(s)).sum::<f64>() / n;
    let var = scores
        .iter()
        .map(|&s| (f64::from(s) - mean).powi(2))
        .sum::<f64>()
        / n;
    let sd = var.sqrt() + f64::from(crate::onnx::STD_EPSILON);
    for s in scores {
        *s = ((f64::from(*s) - mean) / sd) as f32;
    }
}

/// The hybrid score of every item from the raw scores of each part: what the graph computes
/// before the item bias and the mask.
pub fn combine(
    mut cf: Vec<f32>,
    mut item_item: Vec<f32>,
    mut next: Vec<f32>,
    w: Weights,
) -> Vec<f32> {
    standardize(&mut cf);
    standardize(&mut item_item);
    standardize(&mut next);
    cf.iter()
        .zip(&item_item)
        .zip(&next)
        .map(|((c, i), t)| w.cf * c + w.item_item * i + w.transitions * t)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardized_scores_have_zero_mean_unit_spread() {
        let mut s = vec![1.0, 2.0, 3.0, 6.0];
        standardize(&mut s);
        let mean: f32 = s.iter().sum::<f32>() / 4.0;
        let var: f32 = s.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-4, "{s:?}");
        let mut flat = vec![2.0; 3];
        standardize(&mut flat);
        assert_eq!(flat, vec![0.0; 3]);
    }

    #[test]
    fn weights_follow_the_history_length() {
        let (short, long) = (Weights::new(0.2, 0.3, 0.5), Weights::new(0.4, 0.5, 0.1));
        let blend = Blend {
            by_history: vec![(0, short), (20, long)],
        };
        assert_eq!(blend.weights(0), short);
        assert_eq!(blend.weights(19), short);
        assert_eq!(blend.weights(20), long);
        assert_eq!(blend.weights(500), long);
        let late = Blend {
            by_history: vec![(5, short)],
        };
        assert_eq!(
            late.weights(1),
            short,
            "the first entry covers shorter histories"
        );
    }

    #[test]
    fn a_part_alone_ranks_as_its_raw_scores() {
        let cf = vec![0.1, 0.9, 0.5];
        let s = combine(
            cf,
            vec![3.0, 1.0, 2.0],
            vec![0.0; 3],
            Weights::new(1.0, 0.0, 0.0),
        );
        assert!(s[1] > s[2] && s[2] > s[0], "{s:?}");
    }
}
