//! Runs a model's scoring graph through ONNX Runtime. A `Scorer` is owned by one model actor
//! and used from its blocking pool; `top_k` takes `&mut self` because an ORT run does.

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::ModelError;

pub struct Scorer {
    session: Session,
    num_items: usize,
    dim: usize,
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

    /// The `k` best (item row, score) for one user: its CF vector and its recent history (item
    /// rows, oldest first, with recency weights), skipping masked (-inf) items.
    pub fn top_k(
        &mut self,
        user: &[f32],
        history: &[(u32, f32)],
        mask: &[f32],
        k: usize,
    ) -> Result<Vec<(u32, f32)>, ModelError> {
        let k = k.min(self.num_items);
        if k == 0 {
            return Ok(Vec::new());
        }
        if user.len() != self.dim || mask.len() != self.num_items {
            return Err(ModelError::Ort(format!(
                "input shapes [{}] and [{}] do not match the model ([{}], [{}])",
                user.len(),
                mask.len(),
                self.dim,
                self.num_items
            )));
        }
        if let Some((row, _)) = history.iter().find(|(r, _)| *r as usize >= self.num_items) {
            return Err(ModelError::Ort(format!(
                "history row {row} is out of range"
            )));
        }
        // An empty history is one entry of weight 0: same result, no zero-sized tensors.
        let (rows, weights): (Vec<i64>, Vec<f32>) = if history.is_empty() {
            (vec![0], vec![0.0])
        } else {
            history.iter().map(|&(r, w)| (i64::from(r), w)).unzip()
        };
        let k_input = [k as i64];
        let outputs = self.session.run(ort::inputs![
            "user" => TensorRef::from_array_view(([1usize, self.dim], user))?,
            "history" => TensorRef::from_array_view(([rows.len()], &rows[..]))?,
            "history_weight" => TensorRef::from_array_view(([weights.len()], &weights[..]))?,
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
    use crate::transitions::{TransitionParams, Transitions, blend};

    fn scorer(items: &[f32], bias: &[f32], dim: usize, t: &Transitions, cf_weight: f32) -> Scorer {
        let onnx = crate::onnx::scoring_graph(items, bias, dim, &t.successors, cf_weight, "test");
        Scorer::new(&onnx, bias.len(), dim, 1).expect("onnx runtime available (run make setup)")
    }

    #[test]
    fn graph_ranks_by_cf_alone_and_masks() {
        // 4 items in 2 dimensions; the user points along the first axis; no transitions.
        let items = [1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 2.0, 0.0];
        let t = Transitions::train(4, &[], TransitionParams::default());
        let mut scorer = scorer(&items, &[0.0; 4], 2, &t, 1.0);
        let top = scorer.top_k(&[1.0, 0.0], &[], &[0.0; 4], 3).expect("run");
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![3, 0, 1]);
        let masked = scorer
            .top_k(
                &[1.0, 0.0],
                &[],
                &[0.0, 0.0, f32::NEG_INFINITY, f32::NEG_INFINITY],
                4,
            )
            .expect("run");
        assert_eq!(masked.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn onnx_scores_equal_the_rust_scores() {
        let (n, dim) = (60, 8);
        let mut rng = StdRng::seed_from_u64(7);
        let items: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 1e-3).collect();
        let sequences: Vec<Vec<u32>> = (0..40)
            .map(|_| (0..12).map(|_| rng.random_range(0..n as u32)).collect())
            .collect();
        let t = Transitions::train(
            n,
            &sequences,
            TransitionParams {
                top_k: 7,
                ..Default::default()
            },
        );
        let user: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
        let history = [3u32, 17, 3, 42, 8];
        let weights: Vec<f32> = t.history_weights(history.len()).collect();
        let rows: Vec<(u32, f32)> = history.iter().copied().zip(weights).collect();
        for cf_weight in [0.0, 0.6, 1.0] {
            let mut scorer = scorer(&items, &bias, dim, &t, cf_weight);
            let got = scorer.top_k(&user, &rows, &vec![0.0; n], n).expect("run");
            let cf: Vec<f32> = (0..n)
                .map(|i| crate::linalg::dot(&user, &items[i * dim..(i + 1) * dim]))
                .collect();
            let want = blend(cf, t.score(&history, n), cf_weight);
            assert_eq!(got.len(), n);
            for (row, score) in got {
                let expected = want[row as usize] + bias[row as usize];
                assert!(
                    (score - expected).abs() < 1e-5,
                    "item {row}: onnx {score}, rust {expected}"
                );
            }
        }
    }

    #[test]
    fn history_rows_out_of_range_are_rejected() {
        let t = Transitions::train(2, &[], TransitionParams::default());
        let mut scorer = scorer(&[1.0, 0.0], &[0.0; 2], 1, &t, 0.5);
        assert!(scorer.top_k(&[1.0], &[(2, 1.0)], &[0.0; 2], 1).is_err());
    }
}
