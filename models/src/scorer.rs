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

    /// The `k` best (item row, score) for one user vector, skipping masked (-inf) items.
    pub fn top_k(
        &mut self,
        user: &[f32],
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
        let k_input = [k as i64];
        let outputs = self.session.run(ort::inputs![
            "user" => TensorRef::from_array_view(([1usize, self.dim], user))?,
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
    use super::*;

    #[test]
    fn graph_scores_masks_and_ranks() {
        // 4 items in 2 dimensions; the user points along the first axis.
        let items = [1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 2.0, 0.0];
        let bias = [0.0, 0.0, 0.0, 0.1];
        let onnx = crate::onnx::scoring_graph(&items, &bias, 2, "test");
        let mut scorer =
            Scorer::new(&onnx, 4, 2, 1).expect("onnx runtime available (run make setup)");
        let top = scorer.top_k(&[1.0, 0.0], &[0.0; 4], 3).expect("run");
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![3, 0, 1]);
        assert!((top[0].1 - 2.1).abs() < 1e-6);
        let masked = scorer
            .top_k(
                &[1.0, 0.0],
                &[0.0, 0.0, f32::NEG_INFINITY, f32::NEG_INFINITY],
                4,
            )
            .expect("run");
        assert_eq!(masked.iter().map(|t| t.0).collect::<Vec<_>>(), vec![0, 1]);
    }
}
