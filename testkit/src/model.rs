//! Fixtures for what the model side needs: version metadata, small artifacts built from given
//! factors, and a catalog backend that keeps nothing (an in-memory `CatalogView` over it is all a
//! ranking test needs, without RocksDB).

use common::Item;
use models::{ModelArtifact, ModelMeta, TrainParams};
use storage::catalog::Catalog;

/// The metadata of version `version`: `num_items` items of `dim` factors, trained on nothing,
/// with no metrics and the default hybrid blend. Tests change what they need with
/// `ModelMeta { metrics, ..meta(..) }`.
pub fn meta(version: &str, dim: usize, num_items: usize) -> ModelMeta {
    ModelMeta {
        version: version.into(),
        created_at: 0,
        dim,
        num_items,
        num_users: 0,
        num_interactions: 0,
        data_range: None,
        params: TrainParams {
            dim,
            iterations: 0,
            regularization: 0.1,
            alpha: 4.0,
            seed: 0,
        },
        metrics: Default::default(),
        hybrid: Default::default(),
        item_item: None,
        blend: None,
    }
}

/// A version of `ids` with these item `factors` (`meta.dim` per item, in the order of `ids`),
/// equal popularity and these transition `successors`.
pub fn artifact(
    meta: ModelMeta,
    ids: &[&str],
    factors: Vec<f32>,
    successors: Vec<Vec<(u32, f32)>>,
) -> ModelArtifact {
    assert_eq!(factors.len(), ids.len() * meta.dim, "dim factors per item");
    let ids: Vec<String> = ids.iter().map(|&id| id.to_owned()).collect();
    let popularity = vec![1.0; ids.len()];
    ModelArtifact::build(meta, ids, factors, popularity, successors)
}

/// A catalog backend that accepts every write and keeps nothing: a `CatalogView` opened on it
/// starts empty and holds what the test puts in.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullCatalog;

#[async_trait::async_trait]
impl Catalog for NullCatalog {
    async fn upsert(&self, _: &Item) -> storage::error::Result<()> {
        Ok(())
    }
    async fn delete(&self, _: &str, _: i64) -> storage::error::Result<bool> {
        Ok(true)
    }
    async fn load_all(&self) -> storage::error::Result<(Vec<Item>, Vec<String>)> {
        Ok((Vec::new(), Vec::new()))
    }
    async fn put_profile(&self, _: &str, _: &serde_json::Value) -> storage::error::Result<()> {
        Ok(())
    }
    async fn get_profile(&self, _: &str) -> storage::error::Result<Option<serde_json::Value>> {
        Ok(None)
    }
    async fn profiles(&self) -> storage::error::Result<Vec<(String, serde_json::Value)>> {
        Ok(Vec::new())
    }
    async fn delete_profile(&self, _: &str) -> storage::error::Result<()> {
        Ok(())
    }
}
