//! `[model]`: training and serving of the recommendation model.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{InvalidValue, Lenient, string_choice};
use super::{ConfigError, invalid};

/// The recommendation model: training and serving.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model actors serving inference in parallel. Default 2.
    #[serde(default = "num_workers")]
    pub num_workers: usize,
    /// ONNX Runtime intra-op threads per model actor. Default 1.
    #[serde(default = "intra_threads")]
    pub intra_threads: usize,
    /// Latent factors per user and item. Default 32.
    #[serde(default = "dim")]
    pub dim: usize,
    /// ALS sweeps per training run. Default 12.
    #[serde(default = "iterations")]
    pub iterations: usize,
    /// L2 regularisation of the factors. Default 0.1.
    #[serde(default = "regularization")]
    pub regularization: f32,
    /// Confidence scale of implicit feedback (c = 1 + alpha * weight). Default 4.0.
    #[serde(default = "alpha")]
    pub alpha: f32,
    /// Seed of the factor initialisation; the same data and seed give the same model. Default 42.
    #[serde(default = "seed")]
    pub seed: u64,
    /// Time between scheduled retrainings; `0s` turns the schedule off. Default 6h.
    #[serde(default = "retrain_interval", with = "humantime_serde")]
    pub retrain_interval: Duration,
    /// Path of `libonnxruntime.so`; found automatically when unset (see README). Default unset.
    #[serde(default)]
    pub onnxruntime_path: Option<PathBuf>,
    /// Weight of collaborative filtering in the hybrid score; the rest goes to sequential
    /// transitions (what tends to come next after the user's recent items). Default 0.5 (what
    /// `streamrec eval` chooses on MovieLens-100k validation splits).
    #[serde(default = "cf_weight")]
    pub cf_weight: f32,
    /// How many later items count as successors of an item in the transition model. Default 50.
    #[serde(default = "transition_window")]
    pub transition_window: usize,
    /// Half-life, in interactions back from the latest, of a history item's weight in the
    /// transition score. Default 3.
    #[serde(default = "transition_half_life")]
    pub transition_half_life: f32,
    /// Successors kept per item in the transition table. The graph holds items × this many
    /// (row, weight) pairs, 8 bytes each: lower it for very large catalogues. Default 300.
    #[serde(default = "transition_top_k")]
    pub transition_top_k: usize,
    /// L2 regularisation of the item-to-item weights (EASE's λ): higher trusts rare
    /// co-occurrences less. Default 200.
    #[serde(default = "item_item_lambda")]
    pub item_item_lambda: f32,
    /// Weights kept per item in the item-to-item table (items × this many in the graph).
    /// Default 100.
    #[serde(default = "item_item_top_k")]
    pub item_item_top_k: usize,
    /// How far a new version's hold-out NDCG@10 may fall below the active version's before it is
    /// kept out (stored, not activated). Default 0.05 (5%).
    #[serde(default = "max_regression")]
    pub max_regression: f64,
    /// What training reads: `log` (this node's event log) or `archive` (the event archive in the
    /// object store, written by every node, plus this node's not yet archived tail). Default `log`.
    #[serde(default)]
    pub train_source: TrainSource,
}

fn num_workers() -> usize {
    2
}
fn intra_threads() -> usize {
    1
}
fn dim() -> usize {
    32
}
fn iterations() -> usize {
    12
}
fn regularization() -> f32 {
    0.1
}
fn alpha() -> f32 {
    4.0
}
fn seed() -> u64 {
    42
}
fn retrain_interval() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn cf_weight() -> f32 {
    0.5
}
fn transition_window() -> usize {
    50
}
fn transition_half_life() -> f32 {
    3.0
}
fn transition_top_k() -> usize {
    300
}
fn item_item_lambda() -> f32 {
    200.0
}
fn item_item_top_k() -> usize {
    100
}
fn max_regression() -> f64 {
    0.05
}

impl Default for ModelConfig {
    fn default() -> Self {
        super::defaults()
    }
}

impl ModelConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.num_workers == 0 || self.intra_threads == 0 {
            return invalid("model.num_workers and model.intra_threads must be at least 1");
        }
        if !(2..=512).contains(&self.dim) {
            return invalid("model.dim must be between 2 and 512");
        }
        if !(0.0..=1.0).contains(&self.cf_weight)
            || self.transition_window == 0
            || self.transition_top_k == 0
            || self.transition_half_life.is_nan()
            || self.transition_half_life <= 0.0
        {
            return invalid(
                "model.cf_weight must be in [0, 1], model.transition_window and model.transition_half_life above 0",
            );
        }
        if !(self.item_item_lambda > 0.0 && self.item_item_lambda.is_finite())
            || self.item_item_top_k == 0
        {
            return invalid("model.item_item_lambda and model.item_item_top_k must be above 0");
        }
        if !(0.0..=1.0).contains(&self.max_regression) {
            return invalid("model.max_regression must be in [0, 1]");
        }
        Ok(())
    }
}

/// What training reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Lenient", into = "String")]
pub enum TrainSource {
    /// This node's event log.
    #[default]
    Log,
    /// The event archive in the object store, plus this node's not yet archived tail.
    Archive,
}

impl std::str::FromStr for TrainSource {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "log" => Ok(Self::Log),
            "archive" => Ok(Self::Archive),
            _ => Err(InvalidValue(
                "model.train_source must be `log` or `archive`".into(),
            )),
        }
    }
}

impl std::fmt::Display for TrainSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Log => "log",
            Self::Archive => "archive",
        })
    }
}

string_choice!(TrainSource);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_sizes_and_weights_stay_in_range() {
        assert!(ModelConfig::default().validate().is_ok());
        for bad in [
            |m: &mut ModelConfig| m.dim = 1,
            |m: &mut ModelConfig| m.num_workers = 0,
            |m: &mut ModelConfig| m.cf_weight = 1.5,
            |m: &mut ModelConfig| m.transition_half_life = f32::NAN,
            |m: &mut ModelConfig| m.max_regression = -0.1,
        ] {
            let mut model = ModelConfig::default();
            bad(&mut model);
            assert!(model.validate().is_err());
        }
        assert_eq!("archive".parse(), Ok(TrainSource::Archive));
        assert!("kafka".parse::<TrainSource>().is_err());
    }
}
