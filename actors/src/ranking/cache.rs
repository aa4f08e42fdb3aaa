//! What a model actor keeps between requests for the version it has loaded: the eligibility
//! mask per category and the catalogued items the version has no row for (scored from their
//! content), each rebuilt when the version or the catalogue changes.

use std::collections::HashMap;
use std::sync::Arc;

use models::ModelArtifact;
use storage::CatalogView;

use super::eligible;

/// A recommendable catalogued item the loaded version has no row for, with its content vector.
pub struct UnlistedItem {
    pub item_id: String,
    pub categories: Vec<String>,
    pub vector: Vec<f32>,
}

/// The unlisted items of the loaded version, rebuilt when the catalog or the version changes.
#[derive(Default)]
pub struct UnlistedCache {
    key: Option<(String, u64)>,
    items: Arc<Vec<UnlistedItem>>,
}

impl UnlistedCache {
    pub fn get(
        &mut self,
        artifact: &ModelArtifact,
        catalog: &CatalogView,
    ) -> Arc<Vec<UnlistedItem>> {
        let key = (artifact.meta.version.clone(), catalog.version());
        if self.key.as_ref() != Some(&key) {
            let items = catalog
                .item_ids()
                .into_iter()
                .filter(|id| !artifact.item_index.contains_key(id))
                .filter_map(|id| catalog.get(&id))
                .filter(|item| item.available)
                .map(|item| UnlistedItem {
                    vector: artifact
                        .content
                        .embed(&models::content::tokens(item.as_ref().into())),
                    item_id: item.item_id.clone(),
                    categories: item.categories.clone(),
                })
                .filter(|u| u.vector.len() == artifact.meta.dim)
                .collect();
            self.items = Arc::new(items);
            self.key = Some(key);
        }
        self.items.clone()
    }
}

/// Eligibility masks of the loaded version by category, rebuilt when the catalog changes.
#[derive(Default)]
pub struct MaskCache {
    key: Option<(String, u64)>,
    by_category: HashMap<Option<String>, Arc<Vec<f32>>>,
}

impl MaskCache {
    pub fn get(
        &mut self,
        artifact: &ModelArtifact,
        catalog: &CatalogView,
        category: Option<&str>,
    ) -> Arc<Vec<f32>> {
        let key = (artifact.meta.version.clone(), catalog.version());
        if self.key.as_ref() != Some(&key) {
            self.key = Some(key);
            self.by_category.clear();
        }
        self.by_category
            .entry(category.map(str::to_owned))
            .or_insert_with(|| {
                let view = catalog.read();
                let mask = artifact.item_ids.iter().map(|id| {
                    if eligible(&view, id, category) {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                });
                Arc::new(mask.collect())
            })
            .clone()
    }
}
