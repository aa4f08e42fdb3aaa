//! Runs a model's scoring graph through ONNX Runtime. A `Scorer` is owned by one model actor
//! and used from its blocking pool; `top_k` takes `&mut self` because an ORT run does.

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::ModelError;
use crate::blend::Weights;

pub struct Scorer {
    session: Session,
    num_items: usize,
    dim: usize,
}

/// What the graph scores one user from.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    /// The CF user vector.
    pub user: &'a [f32],
    /// Every positive item of the user (item rows, weight 1 each): the item-to-item input.
    pub items: &'a [(u32, f32)],
    /// The recent history (item rows, oldest first, with recency weights): the transitions'.
    pub history: &'a [(u32, f32)],
    /// The blend of the standardised parts for this request.
    pub weights: Weights,
}

/// An empty list as one entry of weight 0: the same scores, and no zero-sized tensors.
fn rows_and_weights(list: &[(u32, f32)]) -> (Vec<i64>, Vec<f32>) {
    if list.is_empty() {
        (vec![0], vec![0.0])
    } else {
        list.iter().map(|&(r, w)| (i64::from(r), w)).unzip()
    }
}

impl Scorer {
    pub fn new(
        onnx: &[u8],
        num_items: usize,
        dim: usize,
        intra_threads: usize,
    ) -> Result<Self, ModelError> {
        let env = crate::runtime::environment(None)?;
        let session = Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| ModelError::Ort(e.to_string()))?
            .with_intra_threads(intra_threads)
            .map_err(|e| ModelError::Ort(e.to_string()))?
            .commit_from_memory(onnx)?;
        Ok(Self {
            session,
            num_items,
            dim,
        })
    }

    pub fn num_items(&self) -> usize {
        self.num_items
    }

    /// The `k` best (item row, score) for one user, skipping masked (-inf) items.
    pub fn top_k(
        &mut self,
        query: &Query<'_>,
        mask: &[f32],
        k: usize,
    ) -> Result<Vec<(u32, f32)>, ModelError> {
        let k = k.min(self.num_items);
        if k == 0 {
            return Ok(Vec::new());
        }
        if query.user.len() != self.dim || mask.len() != self.num_items {
            return Err(ModelError::Ort(format!(
                "input shapes [{}] and [{}] do not match the model ([{}], [{}])",
                query.user.len(),
                mask.len(),
                self.dim,
                self.num_items
            )));
        }
        if let Some((row, _)) = query
            .history
            .iter()
            .chain(query.items)
            .find(|(r, _)| *r as usize >= self.num_items)
        {
            return Err(ModelError::Ort(format!(
                "history row {row} is out of range"
            )));
        }
        let (rows, weights) = rows_and_weights(query.history);
        let (items, item_weights) = rows_and_weights(query.items);
        let blend = query.weights.to_array();
        let k_input = [k as i64];
        let outputs = self.session.run(ort::inputs![
            "user" => TensorRef::from_array_view(([1usize, self.dim], query.user))?,
            "items" => TensorRef::from_array_view(([items.len()], &items[..]))?,
            "item_weight" => TensorRef::from_array_view(([item_weights.len()], &item_weights[..]))?,
            "history" => TensorRef::from_array_view(([rows.len()], &rows[..]))?,
            "history_weight" => TensorRef::from_array_view(([weights.len()], &weights[..]))?,
            "blend" => TensorRef::from_array_view(([3usize], &blend[..]))?,
            "mask" => TensorRef::from_array_view(([1usize, self.num_items], mask))?,
            "k" => TensorRef::from_array_view(([1usize], &k_input[..]))?,
        ])?;
        let (_, scores) = outputs["scores"].try_extract_tensor::<f32>()?;
        let (_, indices) = outputs["indices"].try_extract_tensor::<i64>()?;
        Ok(indices
            .iter()
            .zip(scores)
            .filter(|(_, s)| s.is_finite())
            .map(|(&i, &s)| (i as u32, s))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::blend::combine;
    use crate::item_item::{ItemItem, ItemItemParams};
    use crate::transitions::{TransitionParams, Transitions};

    fn scorer(items: &[f32], bias: &[f32], dim: usize, t: &Transitions, ii: &ItemItem) -> Scorer {
        let onnx = crate::onnx::scoring_graph(items, bias, dim, &t.successors, &ii.rows, "test");
        Scorer::new(&onnx, bias.len(), dim, 1).expect("onnx runtime available (run make setup)")
    }

    fn query<'a>(user: &'a [f32], weights: Weights) -> Query<'a> {
        Query {
            user,
            items: &[],
            history: &[],
            weights,
        }
    }

    #[test]
    fn graph_ranks_by_cf_alone_and_masks() {
        // 4 items in 2 dimensions; the user points along the first axis; no other part.
        let items = [1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 2.0, 0.0];
        let t = Transitions::train(4, &[], TransitionParams::default());
        let mut scorer = scorer(&items, &[0.0; 4], 2, &t, &ItemItem::default());
        let q = query(&[1.0, 0.0], Weights::new(1.0, 0.0, 0.0));
        let top = scorer.top_k(&q, &[0.0; 4], 3).expect("run");
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![3, 0, 1]);
        let mask = [0.0, 0.0, f32::NEG_INFINITY, f32::NEG_INFINITY];
        let masked = scorer.top_k(&q, &mask, 4).expect("run");
        assert_eq!(masked.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 1]);
    }

    /// A random model of `n` items: factors, biases, transitions and an item-to-item table.
    fn random_model(
        n: usize,
        dim: usize,
        seed: u64,
    ) -> (Vec<f32>, Vec<f32>, Transitions, ItemItem) {
        let mut rng = StdRng::seed_from_u64(seed);
        let items: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 1e-3).collect();
        let sequences: Vec<Vec<u32>> = (0..40)
            .map(|_| {
                let mut s: Vec<u32> = (0..12).map(|_| rng.random_range(0..n as u32)).collect();
                s.dedup();
                s
            })
            .collect();
        let t = Transitions::train(
            n,
            &sequences,
            TransitionParams {
                top_k: 7,
                ..Default::default()
            },
        );
        let baskets: Vec<Vec<u32>> = sequences
            .iter()
            .map(|s| {
                let mut b = s.clone();
                b.sort_unstable();
                b.dedup();
                b
            })
            .collect();
        let ii = ItemItem::train(
            n,
            &baskets,
            ItemItemParams {
                lambda: 5.0,
                top_k: 9,
                ..Default::default()
            },
        );
        (items, bias, t, ii)
    }

    #[test]
    fn onnx_scores_equal_the_rust_scores() {
        let (n, dim) = (60, 8);
        let (items, bias, t, ii) = random_model(n, dim, 7);
        let mut scorer = scorer(&items, &bias, dim, &t, &ii);
        let mut rng = StdRng::seed_from_u64(8);
        let user: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
        let history = [3u32, 17, 3, 42, 8];
        let weights: Vec<f32> = t.history_weights(history.len()).collect();
        let recent: Vec<(u32, f32)> = history.iter().copied().zip(weights).collect();
        let whole = [3u32, 17, 42, 8, 11, 29, 50];
        let liked: Vec<(u32, f32)> = whole.iter().map(|&i| (i, 1.0)).collect();
        for w in [
            Weights::new(0.0, 0.0, 1.0),
            Weights::new(0.0, 1.0, 0.0),
            Weights::new(0.6, 0.0, 0.4),
            Weights::new(0.3, 0.5, 0.2),
            Weights::new(1.0, 0.0, 0.0),
        ] {
            let q = Query {
                user: &user,
                items: &liked,
                history: &recent,
                weights: w,
            };
            let got = scorer.top_k(&q, &vec![0.0; n], n).expect("run");
            let cf: Vec<f32> = (0..n)
                .map(|i| crate::linalg::dot(&user, &items[i * dim..(i + 1) * dim]))
                .collect();
            let want = combine(cf, ii.score(&whole, n), t.score(&history, n), w);
            assert_eq!(got.len(), n);
            for (row, score) in got {
                let expected = want[row as usize] + bias[row as usize];
                assert!(
                    (score - expected).abs() < 1e-5,
                    "{w:?} item {row}: onnx {score}, rust {expected}"
                );
            }
        }
    }

    #[test]
    fn history_rows_out_of_range_are_rejected() {
        let t = Transitions::train(2, &[], TransitionParams::default());
        let mut scorer = scorer(&[1.0, 0.0], &[0.0; 2], 1, &t, &ItemItem::default());
        let w = Weights::new(0.5, 0.0, 0.5);
        let bad = [(2, 1.0)];
        let q = Query {
            history: &bad,
            ..query(&[1.0], w)
        };
        assert!(scorer.top_k(&q, &[0.0; 2], 1).is_err());
        let q = Query {
            items: &bad,
            ..query(&[1.0], w)
        };
        assert!(scorer.top_k(&q, &[0.0; 2], 1).is_err());
    }

    mod properties {
        use std::sync::{LazyLock, Mutex};

        use proptest::prelude::*;

        use super::*;

        const N: usize = 40;
        const DIM: usize = 4;

        type Model = ((Vec<f32>, Vec<f32>, Transitions, ItemItem), Mutex<Scorer>);

        /// One model for every case: an ONNX session per case would dominate.
        static MODEL: LazyLock<Model> = LazyLock::new(|| {
            let model = random_model(N, DIM, 11);
            let scorer = scorer(&model.0, &model.1, DIM, &model.2, &model.3);
            (model, Mutex::new(scorer))
        });

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// For any user, histories and blend, the graph's scores are the Rust scores.
            #[test]
            fn the_graph_scores_as_rust_does(
                user in proptest::collection::vec(-1.0f32..1.0, DIM),
                history in proptest::collection::vec(0..N as u32, 0..15),
                whole in proptest::collection::vec(0..N as u32, 0..25),
                (cf, ii, tr) in (0.0f32..1.0, 0.0f32..1.0, 0.0f32..1.0),
            ) {
                let ((items, bias, t, table), scorer) = &*MODEL;
                let w = Weights::new(cf, ii, tr);
                let recent: Vec<(u32, f32)> =
                    history.iter().copied().zip(t.history_weights(history.len())).collect();
                let liked: Vec<(u32, f32)> = whole.iter().map(|&i| (i, 1.0)).collect();
                let q = Query { user: &user, items: &liked, history: &recent, weights: w };
                let got = scorer.lock().expect("scorer").top_k(&q, &[0.0; N], N).expect("run");
                let cf_scores: Vec<f32> = (0..N)
                    .map(|i| crate::linalg::dot(&user, &items[i * DIM..(i + 1) * DIM]))
                    .collect();
                let want = combine(cf_scores, table.score(&whole, N), t.score(&history, N), w);
                prop_assert_eq!(got.len(), N);
                for (row, score) in got {
                    let expected = want[row as usize] + bias[row as usize];
                    prop_assert!((score - expected).abs() < 1e-5, "item {}: onnx {}, rust {}", row, score, expected);
                }
            }
        }
    }
}
