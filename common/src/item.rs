//! Catalog items: what `PUT /v1/items/{id}` takes and what the catalog stores.

use serde::{Deserialize, Serialize};

/// A catalog item as stored and returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Item {
    pub item_id: String,
    pub title: String,
    pub categories: Vec<String>,
    pub tags: Vec<String>,
    #[schema(value_type = Object)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub available: bool,
    /// Epoch milliseconds of the last write.
    pub updated_at: i64,
}

/// The body of an item upsert.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemInput {
    /// Not blank; at most 1024 characters.
    #[schema(min_length = 1, max_length = 1024, pattern = r"\S")]
    pub title: String,
    #[serde(default)]
    #[schema(value_type = Vec<crate::Id>, max_items = 64)]
    pub categories: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Vec<crate::Id>, max_items = 64)]
    pub tags: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub available: Option<bool>,
}

const MAX_LABELS: usize = 64;
const MAX_TITLE_CHARS: usize = 1024;

impl ItemInput {
    pub fn validate(self, item_id: &str, now: i64) -> Result<Item, String> {
        crate::validate_id("item_id", item_id)?;
        if self.title.trim().is_empty() || self.title.chars().count() > MAX_TITLE_CHARS {
            return Err(format!(
                "`title` must be 1 to {MAX_TITLE_CHARS} characters, not all blank"
            ));
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
