//! Catalog items: what `PUT /v1/items/{id}` takes and what the catalog stores.

use serde::{Deserialize, Serialize};

/// A catalog item as stored and returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub item_id: String,
    pub title: String,
    pub categories: Vec<String>,
    pub tags: Vec<String>,
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub available: bool,
    /// Epoch milliseconds of the last write.
    pub updated_at: i64,
}

/// The body of an item upsert.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemInput {
    pub title: String,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub available: Option<bool>,
}

const MAX_LABELS: usize = 64;
const MAX_TITLE_BYTES: usize = 1024;

impl ItemInput {
    pub fn validate(self, item_id: &str, now: i64) -> Result<Item, String> {
        crate::validate_id("item_id", item_id)?;
        if self.title.trim().is_empty() || self.title.len() > MAX_TITLE_BYTES {
            return Err(format!("`title` must be 1 to {MAX_TITLE_BYTES} bytes"));
        }
        for (field, labels) in [("categories", &self.categories), ("tags", &self.tags)] {
            if labels.len() > MAX_LABELS {
                return Err(format!("`{field}` must have at most {MAX_LABELS} entries"));
            }
            for label in labels {
                crate::validate_id(field, label)?;
            }
        }
        Ok(Item {
            item_id: item_id.to_owned(),
            title: self.title,
            categories: dedup(self.categories),
            tags: dedup(self.tags),
            attributes: self.attributes,
            available: self.available.unwrap_or(true),
            updated_at: now,
        })
    }
}

fn dedup(mut labels: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    labels.retain(|l| seen.insert(l.clone()));
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_and_defaults() {
        let input: ItemInput =
            serde_json::from_str(r#"{"title":"Heat","categories":["crime","crime"]}"#)
                .expect("json");
        let item = input.validate("i1", 7).expect("valid");
        assert!(item.available);
        assert_eq!(item.categories, vec!["crime"]);
        let blank: ItemInput = serde_json::from_str(r#"{"title":"  "}"#).expect("json");
        assert!(blank.validate("i1", 7).is_err());
    }
}
