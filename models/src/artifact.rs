//! A trained model version: metadata, the item table, factors and the ONNX scoring graph.
//!
//! Stored as objects under `models/<version>/`: `meta.json`, `items.json` (ids and popularity),
//! `factors.bin` (little-endian f32, items × dim, for fold-in and reasons), `transitions.bin`
//! (per item: u32 count, then (u32 row, f32 weight) successors; then, in versions with the
//! item-to-item part, the same for each item's item-to-item weights; absent in versions from
//! before the hybrid, which then score by CF alone), `content.json` (the map from item content to
//! factors, for items added after training; absent in older versions) and `model.onnx`. A
//! version without items (trained on no data) has no graph and serves popularity only.
//!
//! Versions from before the item-to-item part have no `blend` in their meta: they blend CF and
//! transitions by `hybrid.cf_weight`, and their stored graph (which takes no blend input) is
//! replaced on load by the current graph built from their tables, which scores them the same.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::als::TrainParams;
use crate::blend::{Blend, Weights};
use crate::content::ContentModel;
use crate::item_item::ItemItemParams;
use crate::linalg::gram;
use crate::scorer::Query;
use crate::transitions::TransitionParams;

/// How the hybrid blends its two parts.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct HybridParams {
    /// Weight of the standardised CF scores; the transition scores get the rest.
    pub cf_weight: f32,
    pub transitions: TransitionParams,
    /// How the item-to-item part is fitted; a version records it in [`ModelMeta::item_item`].
    #[serde(skip)]
    pub item_item: ItemItemParams,
}

impl Default for HybridParams {
    /// What versions trained before the hybrid are: CF alone.
    fn default() -> Self {
        Self {
            cf_weight: 1.0,
            transitions: TransitionParams::default(),
            item_item: ItemItemParams::default(),
        }
    }
}

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
    #[serde(default)]
    pub hybrid: HybridParams,
    /// The item-to-item part; absent in versions from before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_item: Option<ItemItemParams>,
    /// The blend of the three parts, chosen on validation; absent in versions from before the
    /// item-to-item part (see [`ModelMeta::blend`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blend: Option<Blend>,
}

impl ModelMeta {
    /// The version's blend: as chosen, else CF and transitions by `hybrid.cf_weight`.
    pub fn blend(&self) -> Blend {
        self.blend.clone().unwrap_or_else(|| {
            let cf = self.hybrid.cf_weight;
            Blend::fixed(Weights::new(cf, 0.0, 1.0 - cf))
        })
    }
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
    /// Per item row, its strongest successors (row, weight).
    pub successors: Vec<Vec<(u32, f32)>>,
    /// Per item row, its strongest item-to-item weights (row, weight); empty in older versions.
    pub neighbours: Vec<Vec<(u32, f32)>>,
    /// Mean item vector, for the CF score statistics of items outside the graph.
    pub mean_factor: Vec<f64>,
    /// Content → factors, for items the version has no row for.
    pub content: ContentModel,
    /// Profile → user factors, for users with a profile and no interactions yet.
    pub user_content: ContentModel,
    pub onnx: Vec<u8>,
}

/// Weight of popularity in the item bias: a tie-breaker for known users, the whole ranking for
/// a user with no interactions (zero vector).
const BIAS_SCALE: f32 = 1e-3;

impl ModelArtifact {
    /// A version of CF and transitions (no item-to-item part).
    pub fn build(
        meta: ModelMeta,
        item_ids: Vec<String>,
        factors: Vec<f32>,
        popularity: Vec<f32>,
        successors: Vec<Vec<(u32, f32)>>,
    ) -> Self {
        Self::build_hybrid(meta, item_ids, factors, popularity, successors, Vec::new())
    }

    /// A version of every part: CF factors, transition successors and item-to-item neighbours.
    pub fn build_hybrid(
        meta: ModelMeta,
        item_ids: Vec<String>,
        factors: Vec<f32>,
        popularity: Vec<f32>,
        successors: Vec<Vec<(u32, f32)>>,
        neighbours: Vec<Vec<(u32, f32)>>,
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
            crate::onnx::scoring_graph(
                &factors,
                &bias,
                meta.dim,
                &successors,
                &neighbours,
                &meta.version,
            )
        };
        let item_index = item_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        let gram = gram(&factors, meta.dim);
        let n = item_ids.len().max(1) as f64;
        let mut mean_factor = vec![0f64; meta.dim];
        for row in factors.chunks_exact(meta.dim.max(1)) {
            for (m, &f) in mean_factor.iter_mut().zip(row) {
                *m += f64::from(f) / n;
            }
        }
        Self {
            meta,
            item_ids,
            item_index,
            factors,
            bias,
            popularity,
            gram,
            successors,
            neighbours,
            mean_factor,
            content: ContentModel::default(),
            user_content: ContentModel::default(),
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

    /// A user's recent positive items (oldest first) as graph rows with recency weights; items
    /// the version does not know are skipped.
    pub fn history<'a>(&self, recent: impl IntoIterator<Item = &'a str>) -> Vec<(u32, f32)> {
        let rows: Vec<u32> = recent
            .into_iter()
            .filter_map(|id| self.item_index.get(id).copied())
            .collect();
        let weights = self.meta.hybrid.transitions.history_weights(rows.len());
        rows.into_iter().zip(weights).collect()
    }

    /// A user's positive items (item id, summed weight > 0) as graph rows of weight 1 each,
    /// each once: the item-to-item part's input, the whole history as a set. Items the version
    /// does not know, and non-positive weights, are skipped.
    pub fn liked<'a>(
        &self,
        interactions: impl IntoIterator<Item = (&'a str, f32)>,
    ) -> Vec<(u32, f32)> {
        let mut rows: Vec<u32> = interactions
            .into_iter()
            .filter(|(_, w)| *w > 0.0)
            .filter_map(|(id, _)| self.item_index.get(id).copied())
            .collect();
        rows.sort_unstable();
        rows.dedup();
        rows.into_iter().map(|r| (r, 1.0)).collect()
    }

    /// The blend weights for a user with these liked items.
    pub fn weights(&self, liked: &[(u32, f32)]) -> Weights {
        self.meta.blend().weights(liked.len())
    }

    /// The history item that most makes `row` a likely next item, with its contribution.
    pub fn strongest_predecessor(&self, row: u32, history: &[(u32, f32)]) -> Option<(u32, f32)> {
        history
            .iter()
            .filter_map(|&(h, w)| {
                let successors = self.successors.get(h as usize)?;
                let (_, t) = successors.iter().find(|(r, _)| *r == row)?;
                Some((h, w * t))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Hybrid scores, on the graph's scale, of items the version has no row for (added to the
    /// catalogue after training) from their content vectors: the CF part standardised with the
    /// exact mean and spread of the user's CF scores over the version's items (from the mean
    /// item vector and `YᵀY`); the item-to-item and transition parts at 0 (nothing is known to
    /// go with or lead to them) standardised with the statistics of the user's scores of each.
    pub fn score_unlisted(&self, query: &Query<'_>, vectors: &[&[f32]]) -> Vec<f32> {
        let n = self.num_items().max(1) as f64;
        let d = self.meta.dim;
        let u: Vec<f64> = query.user.iter().map(|&x| f64::from(x)).collect();
        let mean: f64 = u.iter().zip(&self.mean_factor).map(|(a, b)| a * b).sum();
        let mut second = 0.0;
        for i in 0..d {
            for j in 0..d {
                second += u[i] * self.gram[i * d + j] * u[j];
            }
        }
        let sd = (second / n - mean * mean).max(0.0).sqrt() + f64::from(crate::onnx::STD_EPSILON);
        // The standardised score of an item no row of `table` reaches from `list`.
        let zero_z = |table: &[Vec<(u32, f32)>], list: &[(u32, f32)]| {
            let mut sums: HashMap<u32, f64> = HashMap::new();
            for &(h, w) in list {
                for &(row, t) in table.get(h as usize).map_or(&[][..], Vec::as_slice) {
                    *sums.entry(row).or_default() += f64::from(w) * f64::from(t);
                }
            }
            let m = sums.values().sum::<f64>() / n;
            let var = sums.values().map(|v| v * v).sum::<f64>() / n - m * m;
            -m / (var.max(0.0).sqrt() + f64::from(crate::onnx::STD_EPSILON))
        };
        let next_z = zero_z(&self.successors, query.history);
        let together_z = zero_z(&self.neighbours, query.items);
        let w = query.weights;
        let rest = f64::from(w.item_item) * together_z + f64::from(w.transitions) * next_z;
        vectors
            .iter()
            .map(|v| {
                let cf: f64 = u.iter().zip(*v).map(|(a, &b)| a * f64::from(b)).sum();
                (f64::from(w.cf) * (cf - mean) / sd + rest) as f32
            })
            .collect()
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
            ("transitions.bin", {
                let mut tables = encode_successors(&self.successors);
                tables.extend(encode_successors(&self.neighbours));
                tables
            }),
            ("content.json", to_json(&self.content)?),
            ("user_content.json", to_json(&self.user_content)?),
            ("model.onnx", self.onnx.clone()),
            // Last: a version whose meta exists is complete.
            ("meta.json", to_json(&self.meta)?),
        ])
    }

    pub fn from_files(
        meta: &[u8],
        items: &[u8],
        factors: &[u8],
        transitions: Option<&[u8]>,
        content: Option<&[u8]>,
        user_content: Option<&[u8]>,
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
        let (successors, neighbours) = match transitions {
            Some(bytes) => decode_tables(bytes, table.item_ids.len()).ok_or_else(|| {
                ModelError::Artifact(format!("version {}: bad transitions.bin", meta.version))
            })?,
            None => (Vec::new(), Vec::new()),
        };
        // Rebuild the bias exactly as at training time, so the graph and the tables agree.
        let parse = |bytes: Option<&[u8]>| -> Result<ContentModel, ModelError> {
            bytes.map_or(Ok(ContentModel::default()), |b| {
                serde_json::from_slice(b).map_err(|e| bad(&e))
            })
        };
        let (content, user_content) = (parse(content)?, parse(user_content)?);
        let current = meta.blend.is_some();
        let rebuilt = Self::build_hybrid(
            meta,
            table.item_ids,
            factors,
            table.popularity,
            successors,
            neighbours,
        );
        // A graph from before the blend input cannot take today's inputs: use the rebuilt one.
        let onnx = if current { onnx } else { rebuilt.onnx.clone() };
        Ok(Self {
            onnx,
            content,
            user_content,
            ..rebuilt
        })
    }
}

fn encode_successors(successors: &[Vec<(u32, f32)>]) -> Vec<u8> {
    let mut out = Vec::new();
    for row in successors {
        out.extend((row.len() as u32).to_le_bytes());
        for (r, w) in row {
            out.extend(r.to_le_bytes());
            out.extend(w.to_le_bytes());
        }
    }
    out
}

/// The two neighbour tables of `transitions.bin`: the transitions and (when present) the
/// item-to-item weights, `num_items` rows each (or none); `None` if malformed.
type Tables = (Vec<Vec<(u32, f32)>>, Vec<Vec<(u32, f32)>>);

fn decode_tables(bytes: &[u8], num_items: usize) -> Option<Tables> {
    let mut rows = decode_successors(bytes, num_items)?;
    match rows.len() {
        0 => Some((Vec::new(), Vec::new())),
        n if n == num_items => Some((rows, Vec::new())),
        n if n == 2 * num_items => {
            let neighbours = rows.split_off(num_items);
            Some((rows, neighbours))
        }
        _ => None,
    }
}

/// Reads rows of `(row, weight)` lists; `None` if malformed or naming rows beyond `num_items`.
fn decode_successors(bytes: &[u8], num_items: usize) -> Option<Vec<Vec<(u32, f32)>>> {
    let mut words = bytes.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::new();
    while let Some(len) = words.next() {
        let len = u32::from_le_bytes(len) as usize;
        let mut row = Vec::with_capacity(len.min(1024));
        for _ in 0..len {
            let r = u32::from_le_bytes(words.next()?);
            let w = f32::from_le_bytes(words.next()?);
            if r as usize >= num_items {
                return None;
            }
            row.push((r, w));
        }
        out.push(row);
    }
    Some(out)
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, ModelError> {
    serde_json::to_vec_pretty(value).map_err(|e| ModelError::Artifact(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(version: &str, dim: usize, n: usize, blend: Option<Blend>) -> ModelMeta {
        ModelMeta {
            version: version.into(),
            created_at: 1,
            dim,
            num_items: n,
            num_users: 1,
            num_interactions: 2,
            data_range: Some((1, 2)),
            params: TrainParams {
                dim,
                iterations: 1,
                regularization: 0.1,
                alpha: 1.0,
                seed: 1,
            },
            metrics: BTreeMap::new(),
            hybrid: HybridParams {
                cf_weight: 0.6,
                ..Default::default()
            },
            item_item: blend.as_ref().map(|_| ItemItemParams::default()),
            blend,
        }
    }

    fn load(files: &HashMap<&str, Vec<u8>>) -> Result<ModelArtifact, ModelError> {
        ModelArtifact::from_files(
            &files["meta.json"],
            &files["items.json"],
            &files["factors.bin"],
            files.get("transitions.bin").map(Vec::as_slice),
            files.get("content.json").map(Vec::as_slice),
            files.get("user_content.json").map(Vec::as_slice),
            files["model.onnx"].clone(),
        )
    }

    #[test]
    fn round_trips_through_files() {
        let blend = Blend::fixed(Weights::new(0.3, 0.5, 0.2));
        let a = ModelArtifact::build_hybrid(
            meta("v1", 2, 2, Some(blend)),
            vec!["a".into(), "b".into()],
            vec![1.0, 0.0, 0.0, 1.0],
            vec![3.0, 1.0],
            vec![vec![(1, 0.5)], vec![]],
            vec![vec![(1, -0.25)], vec![(0, 0.75)]],
        );
        assert!(a.bias[0] > a.bias[1]);
        let files: HashMap<_, _> = a.to_files().expect("files").into_iter().collect();
        let b = load(&files).expect("loads");
        assert_eq!(
            (
                b.meta,
                b.factors,
                b.bias,
                b.successors,
                b.neighbours,
                b.onnx
            ),
            (
                a.meta,
                a.factors,
                a.bias,
                a.successors,
                a.neighbours,
                a.onnx
            )
        );
        assert_eq!(
            decode_tables(&files["transitions.bin"], 1),
            None,
            "rows beyond the items"
        );
        assert_eq!(decode_tables(&[1, 0, 0], 2), None, "a torn file");
        assert_eq!(
            decode_tables(&[0; 12], 2),
            None,
            "neither one table nor two"
        );
    }

    #[test]
    fn versions_from_before_the_item_to_item_part_load_and_score_as_they_did() {
        // A version as written before: no blend in its meta, one table, and a graph that takes
        // no blend input (any bytes here: it is replaced).
        let old = ModelArtifact::build(
            meta("v0", 2, 3, None),
            vec!["a".into(), "b".into(), "c".into()],
            vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5],
            vec![3.0, 1.0, 2.0],
            vec![vec![(1, 0.5)], vec![(2, 1.0)], vec![]],
        );
        let mut files: HashMap<_, _> = old.to_files().expect("files").into_iter().collect();
        let mut json: serde_json::Value =
            serde_json::from_slice(&files["meta.json"]).expect("json");
        assert!(json.get("blend").is_none() && json.get("item_item").is_none());
        json.as_object_mut().expect("object").remove("hybrid");
        files.insert("meta.json", serde_json::to_vec(&json).expect("json"));
        files.insert("model.onnx", b"an older graph".to_vec());
        let loaded = load(&files).expect("loads");
        assert!(loaded.neighbours.is_empty());
        assert_eq!(
            loaded.meta.blend().weights(10),
            Weights::new(1.0, 0.0, 0.0),
            "no hybrid in the meta: CF alone, as before the hybrid"
        );
        assert_eq!(
            loaded.onnx, old.onnx,
            "the graph is rebuilt from the tables"
        );
        let mut scorer =
            crate::Scorer::new(&loaded.onnx, 3, 2, 1).expect("ONNX Runtime (make setup)");
        let liked = loaded.liked([("a", 2.0), ("z", 1.0), ("b", -1.0)]);
        assert_eq!(
            liked,
            vec![(0, 1.0)],
            "unknown and disliked items are not liked"
        );
        let query = Query {
            user: &[1.0, 0.0],
            items: &liked,
            history: &loaded.history(["a"]),
            weights: loaded.weights(&liked),
        };
        let top = scorer.top_k(&query, &[0.0; 3], 3).expect("run");
        assert_eq!(top[0].0, 0);
    }

    #[test]
    fn items_outside_the_graph_score_on_the_graphs_scale() {
        use rand::{Rng, SeedableRng};
        let (n, dim) = (30, 4);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let factors: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect();
        let mut successors = vec![Vec::new(); n];
        successors[0] = vec![(1, 0.7), (2, 0.2)];
        successors[5] = vec![(1, 0.1), (9, 0.4)];
        let mut neighbours = vec![Vec::new(); n];
        neighbours[0] = vec![(3, 0.4), (4, -0.1)];
        neighbours[7] = vec![(3, 0.2), (11, 0.3)];
        let blend = Blend::fixed(Weights::new(0.4, 0.35, 0.25));
        let ids: Vec<String> = (0..n).map(|i| format!("i{i}")).collect();
        // No popularity: no bias, so the graph's score is the blend alone.
        let a = ModelArtifact::build_hybrid(
            meta("v", dim, n, Some(blend)),
            ids,
            factors,
            vec![0.0; n],
            successors,
            neighbours,
        );
        let mut scorer = crate::Scorer::new(&a.onnx, n, dim, 1).expect("ONNX Runtime (make setup)");
        let history = a.history(["i0", "i5"]);
        let liked = a.liked([("i0", 1.0), ("i5", 2.0), ("i7", 1.0)]);
        let query = Query {
            user: &[0.3, -0.2, 0.5, 0.1],
            items: &liked,
            history: &history,
            weights: a.weights(&liked),
        };
        let graph = scorer.top_k(&query, &vec![0.0; n], n).expect("run");
        // Item 20 has no transition or item-to-item score: scored from its vector alone, it
        // lands where the graph put it.
        let from_graph = graph.iter().find(|(r, _)| *r == 20).expect("item 20").1;
        let outside = a.score_unlisted(&query, &[a.item_vector(20)])[0];
        assert!(
            (from_graph - outside).abs() < 1e-4,
            "graph {from_graph}, outside {outside}"
        );
    }
}
