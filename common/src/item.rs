//! Catalog items: what `PUT /v1/items/{id}` takes and what the catalog stores, and the text
//! rules every string a client stores must follow.
//!
//! Control characters are invalid input everywhere a string is stored: PostgreSQL refuses `\0`
//! in `TEXT` and in `JSONB`, and an item that only one backend stores would be a message a
//! consumer retries for ever. One rule, checked at every edge (REST, GraphQL, gRPC, Kafka) by the
//! same functions: identifiers, labels, titles and JSON keys hold no control character at all
//! (Unicode `Cc`: C0, DEL, C1); free text (string values inside `attributes` and profiles) may
//! hold tab, line feed and carriage return, and no other control character.

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
    /// Not blank; at most 1024 characters; no control characters.
    #[schema(
        min_length = 1,
        max_length = 1024,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub title: String,
    #[serde(default)]
    #[schema(value_type = Vec<crate::Id>, max_items = 64)]
    pub categories: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Vec<crate::Id>, max_items = 64)]
    pub tags: Vec<String>,
    /// Any JSON values; keys without control characters, strings without control characters
    /// but tab and line breaks, at any depth.
    #[serde(default)]
    #[schema(value_type = JsonObject)]
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
        validate_label("title", &self.title)?;
        for (field, labels) in [("categories", &self.categories), ("tags", &self.tags)] {
            if labels.len() > MAX_LABELS {
                return Err(format!("`{field}` must have at most {MAX_LABELS} entries"));
            }
            for label in labels {
                crate::validate_id(field, label)?;
            }
        }
        validate_json("attributes", &self.attributes)?;
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

/// Checks a one-line string (a title, a JSON key): no control character at all.
pub fn validate_label(field: &str, value: &str) -> Result<(), String> {
    if value.chars().any(char::is_control) {
        return Err(format!("`{field}` must not contain control characters"));
    }
    Ok(())
}

/// The control characters free text may hold: tab, line feed, carriage return.
fn allowed_in_text(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r')
}

/// Checks free text: no control character but tab, line feed and carriage return.
pub fn validate_text(field: &str, value: &str) -> Result<(), String> {
    if value.chars().any(|c| c.is_control() && !allowed_in_text(c)) {
        return Err(format!(
            "`{field}` must not contain control characters other than tab and line breaks"
        ));
    }
    Ok(())
}

/// Checks every key (a label) and every string (free text) of a JSON object, at any depth,
/// without recursion (the parser bounds nesting; this check does not rely on it).
pub fn validate_json(
    field: &str,
    object: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    use serde_json::Value;
    let keys = |map: &serde_json::Map<String, Value>| {
        if map.keys().any(|k| k.chars().any(char::is_control)) {
            return Err(format!(
                "`{field}` keys must not contain control characters"
            ));
        }
        Ok(())
    };
    keys(object)?;
    let mut pending: Vec<&Value> = object.values().collect();
    while let Some(value) = pending.pop() {
        match value {
            Value::String(s) => validate_text(field, s)?,
            Value::Array(values) => pending.extend(values),
            Value::Object(map) => {
                keys(map)?;
                pending.extend(map.values());
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    Ok(())
}

/// [`validate_label`] as a regular expression (JSON Schema / ECMA syntax).
pub const LABEL_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";
/// [`validate_text`] as a regular expression.
pub const TEXT_PATTERN: &str = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$";

/// The OpenAPI schema of a JSON object [`validate_json`] accepts (item attributes, profiles),
/// so that the published document and the validation cannot disagree: an object whose keys
/// match [`LABEL_PATTERN`] and whose values are [`JsonValue`]s.
pub struct JsonObject;

impl JsonObject {
    pub fn builder() -> utoipa::openapi::ObjectBuilder {
        use utoipa::openapi::{ObjectBuilder, Ref, Type};
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(LABEL_PATTERN)),
            ))
            .additional_properties(Some(Ref::from_schema_name("JsonValue")))
    }
}

impl utoipa::PartialSchema for JsonObject {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        Self::builder().into()
    }
}

impl utoipa::ToSchema for JsonObject {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            <JsonValue as utoipa::ToSchema>::name().into_owned(),
            <JsonValue as utoipa::PartialSchema>::schema(),
        ));
    }
}

/// Any JSON value inside a [`JsonObject`], recursively.
pub struct JsonValue;

impl utoipa::PartialSchema for JsonValue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AnyOfBuilder, ArrayBuilder};
        use utoipa::openapi::{ObjectBuilder, Ref, Type};
        AnyOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(TEXT_PATTERN)),
            )
            .item(ArrayBuilder::new().items(Ref::from_schema_name("JsonValue")))
            .item(JsonObject::builder())
            .into()
    }
}

impl utoipa::ToSchema for JsonValue {}

fn dedup(mut labels: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    labels.retain(|l| seen.insert(l.clone()));
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_invalid_in_titles_and_attributes_at_any_depth() {
        let parse = |json: &str| {
            serde_json::from_str::<ItemInput>(json)
                .expect("json")
                .validate("i1", 7)
        };
        for bad in [
            r#"{"title":"Lamp\u0000"}"#,
            r#"{"title":"two\nlines"}"#,
            r#"{"title":"bell\u0007"}"#,
            r#"{"title":"c1\u0085"}"#,
            r#"{"title":"Lamp","attributes":{"colour":"red\u0000"}}"#,
            r#"{"title":"Lamp","attributes":{"k\u0000":"v"}}"#,
            r#"{"title":"Lamp","attributes":{"a":[{"b":{"c":["x\u001b"]}}]}}"#,
            r#"{"title":"Lamp","attributes":{"a":{"k\u0001ey":1}}}"#,
            r#"{"title":"Lamp","categories":["home\u0000"]}"#,
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(error.contains("control characters"), "{bad}: {error}");
        }
        // Free text keeps its tabs and line breaks; titles and keys stay one line.
        let ok = parse(r#"{"title":"Lamp","attributes":{"notes":"a\tb\r\nc","n":[1,null,true]}}"#);
        assert!(ok.is_ok(), "{ok:?}");
    }

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
