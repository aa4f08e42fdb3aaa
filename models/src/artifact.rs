//! A trained model version: metadata, the item table, factors and the ONNX scoring graph.
//!
//! Stored as four objects under `models/<version>/`: `meta.json`, `items.json` (ids and
//! popularity), `factors.bin` (little-endian f32, items × dim, for fold-in and reasons) and
//! `model.onnx`. A version without items (trained on no data) has no graph and serves
//! popularity only.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::als::TrainParams;
use crate::linalg::gram;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelMeta {
    pub version: String,
    /// Epoch milliseconds.
    pub created_at: i64,
    pub dim: usize,
    pub num_items: usize,
    pub num_users: usize,
    pub num_interactions: usize,
    /// Timestamps (epoch ms) of the oldest and newest training event.
    pub data_range: Option<(i64, i64)>,
    pub params: TrainParams,
    /// Hold-out metrics (`ndcg@10`, `recall@10`, ...), empty when there was too little data.
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Serialize, Deserialize)]
struct ItemTable {
    item_ids: Vec<String>,
    popularity: Vec<f32>,
}

pub struct ModelArtifact {
    pub meta: ModelMeta,
    pub item_ids: Vec<String>,
    pub item_index: HashMap<String, u32>,
    /// Row-major items × dim.
    pub factors: Vec<f32>,
    pub bias: Vec<f32>,
    pub popularity: Vec<f32>,
    /// `YᵀY` of the factors, for fold-in.
    pub gram: Vec<f64>,
    pub onnx: Vec<u8>,
}

/// Weight of popularity in the item bias: a tie-breaker for known users, the whole ranking for
/// a user with no interactions (zero vector).
const BIAS_SCALE: f32 = 1e-3;

impl ModelArtifact {
    pub fn build(
        meta: ModelMeta,
        item_ids: Vec<String>,
        factors: Vec<f32>,
        popularity: Vec<f32>,
    ) -> Self {
        let max = popularity.iter().copied().fold(0.0f32, f32::max);
        let bias = popularity
            .iter()
            .map(|p| {
                if max > 0.0 {
                    BIAS_SCALE * (1.0 + p.max(0.0)).ln() / (1.0 + max).ln()
                } else {
                    0.0
                }
            })
            .collect::<Vec<_>>();
        let onnx = if item_ids.is_empty() {
            Vec::new()
        } else {
            crate::onnx::scoring_graph(&factors, &bias, meta.dim, &meta.version)
        };
        Self::assemble(meta, item_ids, factors, bias, popularity, onnx)
    }

    fn assemble(
        meta: ModelMeta,
        item_ids: Vec<String>,
        factors: Vec<f32>,
        bias: Vec<f32>,
        popularity: Vec<f32>,
        onnx: Vec<u8>,
    ) -> Self {
        let item_index = item_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        let gram = gram(&factors, meta.dim);
        Self {
            meta,
            item_ids,
            item_index,
            factors,
            bias,
            popularity,
            gram,
            onnx,
        }
    }

    pub fn num_items(&self) -> usize {
        self.item_ids.len()
    }

    pub fn item_vector(&self, row: u32) -> &[f32] {
        let d = self.meta.dim;
        &self.factors[row as usize * d..(row as usize + 1) * d]
    }

    /// The user vector for live interactions (item id, summed weight); unknown items are skipped.
    pub fn fold_in<'a>(&self, interactions: impl IntoIterator<Item = (&'a str, f32)>) -> Vec<f32> {
        let rows: Vec<(u32, f32)> = interactions
            .into_iter()
            .filter_map(|(id, w)| self.item_index.get(id).map(|&row| (row, w)))
            .collect();
        let p = &self.meta.params;
        crate::als::fold_in(
            &self.factors,
            &self.gram,
            self.meta.dim,
            &rows,
            p.alpha,
            p.regularization,
        )
    }

    /// The objects to store, by file name.
    pub fn to_files(&self) -> Result<Vec<(&'static str, Vec<u8>)>, ModelError> {
        let items = ItemTable {
            item_ids: self.item_ids.clone(),
            popularity: self.popularity.clone(),
        };
        Ok(vec![
            ("items.json", to_json(&items)?),
            (
                "factors.bin",
                self.factors.iter().flat_map(|f| f.to_le_bytes()).collect(),
            ),
            ("model.onnx", self.onnx.clone()),
            // Last: a version whose meta exists is complete.
            ("meta.json", to_json(&self.meta)?),
        ])
    }

    pub fn from_files(
        meta: &[u8],
        items: &[u8],
        factors: &[u8],
        onnx: Vec<u8>,
    ) -> Result<Self, ModelError> {
        let bad = |e: &dyn std::fmt::Display| ModelError::Artifact(e.to_string());
        let meta: ModelMeta = serde_json::from_slice(meta).map_err(|e| bad(&e))?;
        let table: ItemTable = serde_json::from_slice(items).map_err(|e| bad(&e))?;
        let factors: Vec<f32> = factors
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if factors.len() != table.item_ids.len() * meta.dim
            || table.popularity.len() != table.item_ids.len()
        {
            return Err(ModelError::Artifact(format!(
                "version {} has inconsistent tables",
                meta.version
            )));
        }
        // Rebuild the bias exactly as at training time, so the graph and the tables agree.
        let rebuilt = Self::build(meta, table.item_ids, factors, table.popularity);
        Ok(Self { onnx, ..rebuilt })
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, ModelError> {
    serde_json::to_vec_pretty(value).map_err(|e| ModelError::Artifact(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_files() {
        let meta = ModelMeta {
            version: "v1".into(),
            created_at: 1,
            dim: 2,
            num_items: 2,
            num_users: 1,
            num_interactions: 2,
            data_range: Some((1, 2)),
            params: TrainParams {
                dim: 2,
                iterations: 1,
                regularization: 0.1,
                alpha: 1.0,
                seed: 1,
            },
            metrics: BTreeMap::new(),
        };
        let a = ModelArtifact::build(
            meta,
            vec!["a".into(), "b".into()],
            vec![1.0, 0.0, 0.0, 1.0],
            vec![3.0, 1.0],
        );
        assert!(a.bias[0] > a.bias[1]);
        let files: HashMap<_, _> = a.to_files().expect("files").into_iter().collect();
        let b = ModelArtifact::from_files(
            &files["meta.json"],
            &files["items.json"],
            &files["factors.bin"],
            files["model.onnx"].clone(),
        )
        .expect("loads");
        assert_eq!(
            (b.meta, b.factors, b.bias, b.onnx),
            (a.meta, a.factors, a.bias, a.onnx)
        );
    }
}
