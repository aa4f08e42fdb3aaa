//! Diversity on request: a greedy maximal-marginal-relevance re-ranking of a candidate pool, and
//! the intra-list diversity it is measured by. One similarity for both, so that serving (the
//! ranker of `actors`) and the offline evaluation (`movielens::eval`) re-rank and measure alike.
//!
//! Two items are similar by their categories (Jaccard overlap) and by their factor vectors
//! (cosine, negative cosines counted as 0), the mean of whichever of the two both items have; 0
//! when they share neither kind. Relevance is min-max normalised over the pool, so that λ means
//! the same whatever the scale of the model's scores.

/// What the similarity of two items is read from.
#[derive(Clone, Copy, Debug, Default)]
pub struct ItemFeatures<'a> {
    /// The item's categories (none: the category part does not count for it).
    pub categories: &'a [String],
    /// The item's factor vector, if it has one.
    pub vector: Option<&'a [f32]>,
}

/// Similarity of two items in [0, 1]: the mean of the Jaccard overlap of their categories (when
/// both have some) and of the cosine of their vectors (when both have one, negatives as 0).
pub fn similarity(a: &ItemFeatures<'_>, b: &ItemFeatures<'_>) -> f32 {
    let parts = [
        jaccard(a.categories, b.categories),
        a.vector.zip(b.vector).and_then(|(x, y)| cosine(x, y)),
    ];
    let (sum, n) = parts
        .into_iter()
        .flatten()
        .fold((0.0f32, 0u32), |(s, n), p| (s + p, n + 1));
    if n == 0 { 0.0 } else { sum / n as f32 }
}

/// Jaccard overlap of two category lists taken as sets; `None` when either is empty.
fn jaccard(a: &[String], b: &[String]) -> Option<f32> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let distinct = |x: &[String]| {
        x.iter()
            .enumerate()
            .filter(|(i, c)| !x[..*i].contains(c))
            .count()
    };
    let shared = a
        .iter()
        .enumerate()
        .filter(|(i, c)| !a[..*i].contains(c) && b.contains(c))
        .count();
    let union = distinct(a) + distinct(b) - shared;
    Some(shared as f32 / union as f32)
}

/// Cosine of two vectors clamped to [0, 1]; `None` when either is zero or they differ in length.
fn cosine(a: &[f32], b: &[f32]) -> Option<f32> {
    if a.len() != b.len() {
        return None;
    }
    let norm = |x: &[f32]| x.iter().map(|v| v * v).sum::<f32>().sqrt();
    let (na, nb) = (norm(a), norm(b));
    if na <= 0.0 || nb <= 0.0 || !na.is_finite() || !nb.is_finite() {
        return None;
    }
    Some((crate::linalg::dot(a, b) / (na * nb)).clamp(0.0, 1.0))
}

/// Relevance min-max normalised to [0, 1] over the pool; a non-finite score counts as the
/// lowest, and a pool of equal scores is all 1.
pub fn normalise(relevance: &[f32]) -> Vec<f32> {
    let (lo, hi) = range(relevance).unwrap_or((0.0, 0.0));
    relevance
        .iter()
        .map(|&r| {
            if !r.is_finite() {
                0.0
            } else if hi <= lo {
                1.0
            } else {
                (r - lo) / (hi - lo)
            }
        })
        .collect()
}

/// Picks up to `k` of the candidates greedily by maximal marginal relevance: each step takes the
/// argmax of `(1 − λ)·rel(i) − λ·max_{j chosen} sim(i, j)`, `rel` the relevance normalised over
/// the pool, ties to the earlier candidate. Returns candidate indices in the order picked. With
/// `lambda` 0 that is the candidates by relevance, best first (the input order when it is
/// already so). `lambda` is clamped to [0, 1].
pub fn mmr(relevance: &[f32], features: &[ItemFeatures<'_>], lambda: f32, k: usize) -> Vec<usize> {
    mmr_scored(relevance, features, lambda, k)
        .into_iter()
        .map(|(i, _)| i)
        .collect()
}

/// Like [`mmr`], each pick with its marginal relevance on the scale of `relevance`: `lo + v ·
/// (hi − lo)` for the objective `v` at the step it was picked, `lo` and `hi` the pool's finite
/// extremes. The values never increase along the list (a candidate's objective can only fall as
/// the list grows), and with `lambda` 0 they are the relevances themselves.
pub fn mmr_scored(
    relevance: &[f32],
    features: &[ItemFeatures<'_>],
    lambda: f32,
    k: usize,
) -> Vec<(usize, f32)> {
    let n = relevance.len().min(features.len());
    let lambda = if lambda.is_finite() {
        lambda.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let rel = normalise(&relevance[..n]);
    let (lo, span) = range(&relevance[..n]).map_or((0.0, 0.0), |(lo, hi)| (lo, hi - lo));
    // The most similar chosen item so far, per candidate; `None` once chosen.
    let mut nearest: Vec<Option<f32>> = vec![Some(0.0); n];
    let mut picked = Vec::with_capacity(k.min(n));
    while picked.len() < k.min(n) {
        let mut best: Option<(usize, f32)> = None;
        for (i, near) in nearest.iter().enumerate() {
            let Some(near) = near else { continue };
            let value = (1.0 - lambda) * rel[i] - lambda * near;
            if best.is_none_or(|(_, b)| value > b) {
                best = Some((i, value));
            }
        }
        let Some((chosen, value)) = best else { break };
        nearest[chosen] = None;
        let score = if lambda == 0.0 && relevance[chosen].is_finite() {
            relevance[chosen]
        } else {
            lo + value * span
        };
        picked.push((chosen, score));
        if lambda > 0.0 {
            for (i, near) in nearest.iter_mut().enumerate() {
                if let Some(near) = near {
                    *near = near.max(similarity(&features[i], &features[chosen]));
                }
            }
        }
    }
    picked
}

/// The finite extremes of the pool's relevance, if any.
fn range(relevance: &[f32]) -> Option<(f32, f32)> {
    relevance
        .iter()
        .copied()
        .filter(|r| r.is_finite())
        .fold(None, |acc, r| match acc {
            None => Some((r, r)),
            Some((lo, hi)) => Some((lo.min(r), hi.max(r))),
        })
}

/// Intra-list diversity: the mean of `1 − sim` over every pair of the list; `None` for a list
/// of fewer than two items.
pub fn intra_list_diversity(items: &[ItemFeatures<'_>]) -> Option<f64> {
    let mut sum = 0.0f64;
    let mut pairs = 0usize;
    for (i, a) in items.iter().enumerate() {
        for b in &items[i + 1..] {
            sum += 1.0 - f64::from(similarity(a, b));
            pairs += 1;
        }
    }
    (pairs > 0).then(|| sum / pairs as f64)
}

/// How many candidates to re-rank for a list of `k`: enough to have something to diversify with.
pub fn pool_size(k: usize) -> usize {
    (3 * k).max(50)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn similarity_is_the_mean_of_the_parts_both_items_have() {
        let (ab, b, c) = (strings(&["a", "b"]), strings(&["b"]), strings(&["c"]));
        let x = ItemFeatures {
            categories: &ab,
            vector: Some(&[1.0, 0.0]),
        };
        let y = ItemFeatures {
            categories: &b,
            vector: Some(&[1.0, 0.0]),
        };
        // Jaccard 1/2, cosine 1.
        assert!((similarity(&x, &y) - 0.75).abs() < 1e-6);
        // Categories only: no vector on one side.
        let z = ItemFeatures {
            categories: &c,
            vector: None,
        };
        assert_eq!(similarity(&x, &z), 0.0);
        // Opposite vectors count as 0, not negative.
        let w = ItemFeatures {
            categories: &[],
            vector: Some(&[-1.0, 0.0]),
        };
        assert_eq!(similarity(&x, &w), 0.0);
        // Nothing in common to compare: 0.
        assert_eq!(similarity(&ItemFeatures::default(), &x), 0.0);
        assert!((similarity(&x, &x) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn diversity_puts_another_category_second() {
        // Three of category x ahead of one of y: with λ = 0.5 the y item comes second.
        let (x, y) = (strings(&["x"]), strings(&["y"]));
        let features = [&x, &x, &x, &y].map(|c| ItemFeatures {
            categories: c,
            vector: None,
        });
        let relevance = [1.0, 0.9, 0.8, 0.7];
        assert_eq!(mmr(&relevance, &features, 0.0, 3), [0, 1, 2]);
        assert_eq!(mmr(&relevance, &features, 0.5, 3), [0, 3, 1]);
        let ild = |picked: &[usize]| {
            intra_list_diversity(&picked.iter().map(|&i| features[i]).collect::<Vec<_>>())
                .expect("a list")
        };
        assert_eq!(ild(&[0, 1, 2]), 0.0);
        assert!((ild(&[0, 3, 1]) - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn relevance_is_normalised_over_the_pool() {
        assert_eq!(normalise(&[10.0, 5.0, 0.0]), [1.0, 0.5, 0.0]);
        assert_eq!(normalise(&[3.0, 3.0]), [1.0, 1.0]);
        assert_eq!(normalise(&[2.0, f32::NEG_INFINITY, 0.0]), [1.0, 0.0, 0.0]);
        // The same ranking whatever the scale of the scores.
        let (x, y) = (strings(&["x"]), strings(&["y"]));
        let features = [&x, &x, &y].map(|c| ItemFeatures {
            categories: c,
            vector: None,
        });
        let small = mmr(&[0.003, 0.002, 0.001], &features, 0.3, 3);
        let large = mmr(&[3000.0, 2000.0, 1000.0], &features, 0.3, 3);
        assert_eq!(small, large);
    }

    /// Candidates: relevance best first, categories and factor vectors, one of each per item.
    type Pool = (Vec<f32>, Vec<Vec<String>>, Vec<Option<Vec<f32>>>);

    /// Random candidates: relevance best first, a category from a few, a small vector.
    fn pool() -> impl Strategy<Value = Pool> {
        (1usize..40).prop_flat_map(|n| {
            (
                proptest::collection::vec(-5.0f32..5.0, n),
                proptest::collection::vec(
                    proptest::collection::vec(
                        prop_oneof![Just("a"), Just("b"), Just("c"), Just("d")],
                        0..3,
                    )
                    .prop_map(|v| strings(&v)),
                    n,
                ),
                proptest::collection::vec(
                    proptest::option::weighted(0.8, proptest::collection::vec(-1.0f32..1.0, 3)),
                    n,
                ),
            )
                .prop_map(|(mut rel, cats, vectors)| {
                    rel.sort_by(|a, b| b.total_cmp(a));
                    (rel, cats, vectors)
                })
        })
    }

    fn features<'a>(
        cats: &'a [Vec<String>],
        vectors: &'a [Option<Vec<f32>>],
    ) -> Vec<ItemFeatures<'a>> {
        cats.iter()
            .zip(vectors)
            .map(|(c, v)| ItemFeatures {
                categories: c,
                vector: v.as_deref(),
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn diversity_zero_keeps_the_ranking((rel, cats, vectors) in pool(), k in 0usize..50) {
            let f = features(&cats, &vectors);
            let picked = mmr(&rel, &f, 0.0, k);
            prop_assert_eq!(picked, (0..k.min(rel.len())).collect::<Vec<_>>());
            // And the scores are the relevances themselves.
            for (i, score) in mmr_scored(&rel, &f, 0.0, k) {
                prop_assert_eq!(score, rel[i]);
            }
        }

        #[test]
        fn diversity_picks_distinct_candidates(
            (rel, cats, vectors) in pool(),
            k in 0usize..50,
            lambda in 0.0f32..=1.0,
        ) {
            let f = features(&cats, &vectors);
            let picked = mmr(&rel, &f, lambda, k);
            prop_assert_eq!(picked.len(), k.min(rel.len()));
            let mut sorted = picked.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), picked.len(), "duplicates in {:?}", picked);
            prop_assert!(picked.iter().all(|&i| i < rel.len()));
            // The most relevant candidate is always first.
            if let Some(&first) = picked.first() {
                prop_assert!(lambda >= 1.0 || rel[first] == rel[0]);
            }
            // Scores on the relevance scale, never increasing along the list.
            let scored = mmr_scored(&rel, &f, lambda, k);
            prop_assert!(scored.windows(2).all(|w| w[0].1 >= w[1].1), "{:?}", scored);
            prop_assert_eq!(scored.iter().map(|(i, _)| *i).collect::<Vec<_>>(), picked);
            if let Some((_, top)) = scored.first() {
                prop_assert!(*top <= rel[0] + 1e-4);
            }
        }

        #[test]
        fn full_diversity_takes_the_candidate_least_like_those_chosen(
            (rel, cats, vectors) in pool(),
            k in 2usize..10,
        ) {
            // λ = 1: relevance no longer counts, so the first pick is the first candidate (a
            // tie) and the second the candidate least like it.
            let f = features(&cats, &vectors);
            let picked = mmr(&rel, &f, 1.0, k);
            if rel.len() >= 2 {
                prop_assert_eq!(picked[0], 0);
                let second = similarity(&f[picked[1]], &f[0]);
                for j in 1..rel.len() {
                    prop_assert!(second <= similarity(&f[j], &f[0]), "{} beats {}", j, picked[1]);
                }
            }
            let list: Vec<ItemFeatures<'_>> = picked.iter().map(|&i| f[i]).collect();
            if let Some(ild) = intra_list_diversity(&list) {
                prop_assert!((0.0..=1.0 + 1e-9).contains(&ild), "{}", ild);
            }
        }
    }

    #[test]
    fn diversity_raises_list_diversity_on_random_pools_in_expectation() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut base, mut diverse) = (0.0, 0.0);
        for _ in 0..200 {
            let n = 50;
            let mut rel: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
            rel.sort_by(|a, b| b.total_cmp(a));
            let cats: Vec<Vec<String>> = (0..n)
                .map(|_| vec![format!("c{}", rng.random_range(0..5))])
                .collect();
            let vectors: Vec<Option<Vec<f32>>> = (0..n)
                .map(|_| Some((0..4).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()))
                .collect();
            let f = features(&cats, &vectors);
            let ild = |lambda| {
                let picked: Vec<ItemFeatures<'_>> = mmr(&rel, &f, lambda, 10)
                    .into_iter()
                    .map(|i| f[i])
                    .collect();
                intra_list_diversity(&picked).expect("ten items")
            };
            base += ild(0.0);
            diverse += ild(0.3);
        }
        assert!(diverse > base, "{diverse} <= {base}");
    }
}
