//! Negative feedback when serving: what a user disliked pushes the items that go with it down.
//!
//! Training and fold-in treat a disliked item (net weight <= 0) as implicit ALS does: preference
//! 0 with extra confidence ([`crate::als`]). That moves the user's vector away from it, but never
//! past indifference, and a user who has only disliked things gets a zero vector: nothing to go
//! on. An explicit "not for me" asks for more: the items that go with the disliked ones should
//! come later, whatever else the user likes.
//!
//! "Go with" is the item-to-item table's (EASE: items that co-occur in users' histories), not
//! closeness in factor space: with as many factors as a small catalogue has items, ALS gives each
//! item a direction of its own and every cosine is near 0, while co-occurrence is there from the
//! first users. An [`Aversion`] sums the positive weights of the disliked items' rows per item,
//! and scales them so that the item that goes most with the dislikes goes down by [`PENALTY`], on
//! the graph's scale (standardised parts), through the request's mask: the trained graph and blend
//! stay as they are. A version without an item-to-item table only masks and folds in. The disliked
//! items themselves are masked as seen.

use std::collections::HashMap;

use crate::ModelArtifact;

/// How far down, in standard deviations of the blended score, the item that goes most with the
/// user's dislikes goes. Not tuned: the yardstick's protocol has no negative feedback.
pub const PENALTY: f32 = 1.0;

/// What a user's dislikes take off each item's score: (item row, penalty), penalties in
/// (0, [`PENALTY`]].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Aversion {
    pub penalties: Vec<(u32, f32)>,
}

impl Aversion {
    /// The aversion of a user with these interactions (item id, summed weight), from the items
    /// of weight <= 0 the version knows; `None` when nothing goes with them.
    pub fn of<'a>(
        artifact: &ModelArtifact,
        interactions: impl IntoIterator<Item = (&'a str, f32)>,
    ) -> Option<Self> {
        let disliked = interactions
            .into_iter()
            .filter(|(_, w)| *w <= 0.0)
            .filter_map(|(id, _)| artifact.item_index.get(id).copied());
        Self::new(&artifact.neighbours, disliked)
    }

    /// From item-to-item rows (`table[item]`: (other item, weight)) and the disliked rows.
    pub fn new(table: &[Vec<(u32, f32)>], disliked: impl IntoIterator<Item = u32>) -> Option<Self> {
        let mut sums: HashMap<u32, f32> = HashMap::new();
        for row in disliked {
            let row = table.get(row as usize).map_or(&[][..], Vec::as_slice);
            for &(to, w) in row.iter().filter(|(_, w)| *w > 0.0) {
                *sums.entry(to).or_default() += w;
            }
        }
        let max = sums.values().copied().fold(0f32, f32::max);
        let mut penalties: Vec<(u32, f32)> = sums
            .into_iter()
            .map(|(row, sum)| (row, PENALTY * sum / max))
            .collect();
        penalties.sort_unstable_by_key(|p| p.0);
        (max > 0.0).then_some(Self { penalties })
    }

    /// Takes the penalties off `scores` (one per item row; a -inf one stays -inf).
    pub fn apply(&self, scores: &mut [f32]) {
        for &(row, penalty) in &self.penalties {
            if let Some(s) = scores.get_mut(row as usize) {
                *s -= penalty;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_goes_with_the_dislikes_goes_down_in_proportion_and_the_rest_stays() {
        // Items 0-2 go together, 3-4 too; 0 and 3 are opposed (a negative weight).
        let table = vec![
            vec![(1, 0.4), (2, 0.2), (3, -0.5)],
            vec![(0, 0.4), (2, 0.3)],
            vec![(0, 0.2), (1, 0.3)],
            vec![(4, 0.6), (0, -0.5)],
            vec![(3, 0.6)],
        ];
        let a = Aversion::new(&table, [0]).expect("something goes with item 0");
        let mut scores = vec![0.0, 0.0, 0.0, 0.0, f32::NEG_INFINITY];
        a.apply(&mut scores);
        assert_eq!(scores[1], -PENALTY);
        assert_eq!(scores[2], -PENALTY / 2.0);
        assert_eq!(scores[3], 0.0, "an opposed item is not lifted");
        assert_eq!(scores[0], 0.0);
        assert_eq!(scores[4], f32::NEG_INFINITY);
        // Two dislikes: what goes with both goes down most.
        let both = Aversion::new(&table, [0, 1]).expect("neighbours");
        let most = both.penalties.iter().max_by(|a, b| a.1.total_cmp(&b.1));
        assert_eq!(most, Some(&(2, PENALTY)));
        assert!(Aversion::new(&table, [4, 9]).is_some_and(|a| a.penalties == [(3, PENALTY)]));
        assert!(Aversion::new(&[], [0]).is_none(), "no table, no aversion");
    }
}
