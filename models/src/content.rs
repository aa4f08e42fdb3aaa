//! Content → factor space: the part of the hybrid that knows items nobody interacted with.
//!
//! Every item is described by sparse binary features: its categories, tags, attribute values and
//! the words of its title. A ridge regression from those features to the CF item factors, fitted
//! on the items that have interactions, gives any item a factor vector from its content alone:
//! `x · W`. An item new to the catalogue is then scored like any other, against the same user
//! vector, and can be recommended before its first interaction.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// What describes an item.
#[derive(Clone, Copy, Debug)]
pub struct ItemContent<'a> {
    pub title: &'a str,
    pub categories: &'a [String],
    pub tags: &'a [String],
    pub attributes: &'a serde_json::Map<String, serde_json::Value>,
}

impl<'a> From<&'a common::Item> for ItemContent<'a> {
    fn from(item: &'a common::Item) -> Self {
        Self {
            title: &item.title,
            categories: &item.categories,
            tags: &item.tags,
            attributes: &item.attributes,
        }
    }
}

/// The features of an item, as tokens.
pub fn tokens(item: ItemContent<'_>) -> Vec<String> {
    let mut out: Vec<String> = item
        .categories
        .iter()
        .map(|c| format!("c:{c}"))
        .chain(item.tags.iter().map(|t| format!("t:{t}")))
        .collect();
    for (key, value) in item.attributes {
        match value {
            serde_json::Value::String(s) => {
                if s.len() <= 64 {
                    out.push(format!("a:{key}={s}"));
                }
                // Words of the value too ("01-Jan-1995" → jan, 1995), numbers also coarsened.
                for word in s
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty())
                {
                    out.push(format!("a:{key}:{}", word.to_lowercase()));
                    if let Ok(x) = word.parse::<f64>() {
                        out.extend(coarse(key, x));
                    }
                }
            }
            serde_json::Value::Bool(b) => out.push(format!("a:{key}={b}")),
            serde_json::Value::Number(n) => {
                out.push(format!("a:{key}={n}"));
                out.extend(n.as_f64().and_then(|x| coarse(key, x)));
            }
            _ => {}
        }
    }
    let lower = item.title.to_lowercase();
    out.extend(
        lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.chars().count() >= 3)
            .map(|w| format!("w:{w}")),
    );
    out.sort_unstable();
    out.dedup();
    out
}

/// The features of a user profile (a JSON object): its attribute values, as for items, except
/// its personal fields. This is the one place profiles become features, so nothing personal
/// reaches a content map, a model artifact or a log through them: every field `personal` names
/// (ignoring case), and everything under one at any depth, is left out.
pub fn profile_tokens(
    profile: &serde_json::Value,
    personal: common::pii::PersonalFields<'_>,
) -> Vec<String> {
    let Some(fields) = profile.as_object() else {
        return Vec::new();
    };
    // Only top-level scalars become features; a nested value is dropped whole, personal or not.
    let attributes: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .filter(|(name, value)| {
            !personal.is_personal(name) && !value.is_object() && !value.is_array()
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    tokens(ItemContent {
        title: "",
        categories: &[],
        tags: &[],
        attributes: &attributes,
    })
}

/// A number kept to three significant digits, rounded down (1995 → 1990, 0.1234 → 0.123), so
/// that near values share a feature.
fn coarse(key: &str, x: f64) -> Option<String> {
    if !x.is_finite() || x == 0.0 {
        return None;
    }
    let step = 10f64.powf(x.abs().log10().floor() - 2.0);
    Some(format!("a:{key}~{}", (x / step).floor() * step))
}

/// Hyper-parameters of the content model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContentParams {
    /// Ridge penalty. Default 50.
    pub regularization: f64,
    /// Features kept, the most frequent first (a feature must occur on 2 items). Default 2000.
    pub max_features: usize,
}

impl Default for ContentParams {
    fn default() -> Self {
        Self {
            regularization: 50.0,
            max_features: 2000,
        }
    }
}

/// A fitted map from features to factors.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContentModel {
    pub dim: usize,
    pub features: Vec<String>,
    /// Row-major (features + 1) × dim; the last row is the intercept.
    pub weights: Vec<f32>,
}

impl ContentModel {
    /// Fits on the items whose factor rows are known: `items[i]` has the tokens of row
    /// `rows[i]` of `factors` (row-major, `dim` wide).
    pub fn fit(
        items: &[Vec<String>],
        rows: &[u32],
        factors: &[f32],
        dim: usize,
        params: ContentParams,
    ) -> Self {
        let mut df: HashMap<&str, usize> = HashMap::new();
        for tokens in items {
            for t in tokens {
                *df.entry(t.as_str()).or_default() += 1;
            }
        }
        let mut features: Vec<(&str, usize)> = df.into_iter().filter(|(_, n)| *n >= 2).collect();
        features.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        features.truncate(params.max_features);
        // Sorted by name: `embed` finds a token by binary search.
        let mut features: Vec<String> = features.into_iter().map(|(t, _)| t.to_owned()).collect();
        features.sort_unstable();
        let index: HashMap<&str, usize> = features
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i))
            .collect();
        let f = features.len() + 1;
        // Normal equations: (XᵀX + λI) W = XᵀV, X binary with an intercept column.
        let mut a = vec![0f64; f * f];
        let mut b = vec![0f64; f * dim];
        for (tokens, &row) in items.iter().zip(rows) {
            let mut cols: Vec<usize> = tokens
                .iter()
                .filter_map(|t| index.get(t.as_str()).copied())
                .collect();
            cols.push(f - 1);
            let v = &factors[row as usize * dim..(row as usize + 1) * dim];
            for &i in &cols {
                for &j in &cols {
                    a[i * f + j] += 1.0;
                }
                for (k, &vk) in v.iter().enumerate() {
                    b[i * dim + k] += f64::from(vk);
                }
            }
        }
        for i in 0..f {
            a[i * f + i] += params.regularization;
        }
        let weights = if cholesky(&mut a, f) {
            let mut w = vec![0f32; f * dim];
            let mut column = vec![0f64; f];
            for k in 0..dim {
                for i in 0..f {
                    column[i] = b[i * dim + k];
                }
                substitute(&a, f, &mut column);
                for i in 0..f {
                    w[i * dim + k] = column[i] as f32;
                }
            }
            w
        } else {
            vec![0.0; f * dim]
        };
        Self {
            dim,
            features,
            weights,
        }
    }

    /// The model without the features `unwanted` names (their weight rows go with them), or `None`
    /// when it has none of them. Embedding tokens without those features gives the same vector
    /// from either model.
    pub fn without_features(&self, unwanted: impl Fn(&str) -> bool) -> Option<Self> {
        if !self.features.iter().any(|f| unwanted(f.as_str())) {
            return None;
        }
        let rows = self.features.len() + 1;
        let consistent = self.weights.len() == rows * self.dim;
        let mut features = Vec::with_capacity(self.features.len());
        let mut weights = Vec::with_capacity(self.weights.len());
        for (i, feature) in self.features.iter().enumerate() {
            if !unwanted(feature.as_str()) {
                features.push(feature.clone());
                if consistent {
                    weights.extend_from_slice(&self.weights[i * self.dim..(i + 1) * self.dim]);
                }
            }
        }
        if consistent {
            // The intercept row.
            weights.extend_from_slice(&self.weights[(rows - 1) * self.dim..]);
        }
        Some(Self {
            dim: self.dim,
            features,
            weights,
        })
    }

    /// The factor vector of an item from its tokens.
    pub fn embed(&self, tokens: &[String]) -> Vec<f32> {
        let f = self.features.len() + 1;
        let mut out = vec![0f32; self.dim];
        if self.weights.len() != f * self.dim {
            return out;
        }
        let mut add = |row: usize| {
            for (o, w) in out
                .iter_mut()
                .zip(&self.weights[row * self.dim..(row + 1) * self.dim])
            {
                *o += w;
            }
        };
        add(f - 1);
        for t in tokens {
            if let Ok(i) = self.features.binary_search(t) {
                add(i);
            }
        }
        out
    }
}

/// In-place Cholesky factorisation of the symmetric positive-definite `n`×`n` matrix `a`
/// (lower triangle holds L); false if it is not positive definite.
fn cholesky(a: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 {
            return false;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    true
}

/// Solves `L Lᵀ x = b` in place with the factor from [`cholesky`].
fn substitute(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= l[k * n + i] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(title: &str, categories: &[&str]) -> Vec<String> {
        let categories: Vec<String> = categories.iter().map(|c| (*c).to_owned()).collect();
        let attributes = serde_json::Map::from_iter([("year".to_owned(), serde_json::json!(1995))]);
        tokens(ItemContent {
            title,
            categories: &categories,
            tags: &[],
            attributes: &attributes,
        })
    }

    #[test]
    fn tokens_cover_categories_attributes_and_title_words() {
        let t = content("The Lion King (1994)", &["Animation"]);
        let expected = [
            "a:year=1995",
            "a:year~1990",
            "c:Animation",
            "w:1994",
            "w:king",
            "w:lion",
            "w:the",
        ];
        assert_eq!(t, expected);
        let date =
            serde_json::Map::from_iter([("released".to_owned(), serde_json::json!("01-Jan-1995"))]);
        let t = tokens(ItemContent {
            title: "",
            categories: &[],
            tags: &[],
            attributes: &date,
        });
        for token in [
            "a:released=01-Jan-1995",
            "a:released:jan",
            "a:released:1995",
            "a:released~1990",
        ] {
            assert!(t.contains(&token.to_owned()), "{token} not in {t:?}");
        }
    }

    #[test]
    fn an_unseen_item_lands_near_items_with_its_content() {
        // Two groups of items along two factor axes, told apart by category.
        let mut items = Vec::new();
        let mut factors = Vec::new();
        for i in 0..20 {
            let (cat, v) = if i % 2 == 0 {
                ("music", [1.0, 0.0])
            } else {
                ("books", [0.0, 1.0])
            };
            items.push(content(&format!("item {i}"), &[cat]));
            factors.extend(v);
        }
        let rows: Vec<u32> = (0..20).collect();
        let params = ContentParams {
            regularization: 0.1,
            ..Default::default()
        };
        let model = ContentModel::fit(&items, &rows, &factors, 2, params);
        let music = model.embed(&content("brand new", &["music"]));
        let books = model.embed(&content("brand new", &["books"]));
        assert!(music[0] > 0.8 && music[1].abs() < 0.2, "{music:?}");
        assert!(books[1] > 0.8 && books[0].abs() < 0.2, "{books:?}");
        // Unknown content leans to neither group (what all items share: intercept, year).
        let unknown = model.embed(&content("zzz", &["toys"]));
        assert!((unknown[0] - unknown[1]).abs() < 1e-4, "{unknown:?}");
        assert!(unknown[0] > 0.0 && unknown[0] < 0.5, "{unknown:?}");
    }

    #[test]
    fn personal_profile_fields_never_become_features() {
        let fields = ["email", "name", "notes"].map(String::from);
        let personal = common::pii::PersonalFields::new(&fields);
        let profile = serde_json::json!({
            "Email": "ada@example.org",
            "name": "Ada Lovelace",
            "NOTES": "prefers evenings",
            "contact": {"email": "ada@example.org"},
            "age": 36,
            "likes": "music",
        });
        let t = profile_tokens(&profile, personal);
        assert!(t.contains(&"a:age=36".to_owned()), "{t:?}");
        assert!(t.contains(&"a:likes=music".to_owned()), "{t:?}");
        assert!(
            t.iter()
                .all(|f| f.starts_with("a:age") || f.starts_with("a:likes")),
            "{t:?}"
        );
    }

    #[test]
    fn dropping_features_keeps_every_other_embedding() {
        let (items, factors): (Vec<Vec<String>>, Vec<f32>) = (0..12)
            .map(|i| {
                let t = vec![format!("a:k={}", i % 3), format!("a:email={}", i % 2)];
                (t, [(i % 3) as f32, (i % 2) as f32])
            })
            .fold((Vec::new(), Vec::new()), |(mut t, mut f), (ti, fi)| {
                t.push(ti);
                f.extend(fi);
                (t, f)
            });
        let rows: Vec<u32> = (0..12).collect();
        let model = ContentModel::fit(&items, &rows, &factors, 2, ContentParams::default());
        let fields = ["email".to_owned()];
        let personal = common::pii::PersonalFields::new(&fields);
        let clean = model
            .without_features(|f| personal.is_personal_token(f))
            .expect("had personal features");
        assert!(clean.features.iter().all(|f| !f.starts_with("a:email")));
        assert_eq!(clean.features.len() + 1, clean.weights.len() / 2);
        let tokens = vec!["a:k=1".to_owned()];
        assert_eq!(clean.embed(&tokens), model.embed(&tokens));
        assert!(
            clean
                .without_features(|f| personal.is_personal_token(f))
                .is_none()
        );
    }

    #[test]
    fn substitution_solves_the_factored_system() {
        // [[4, 2], [2, 3]] x = [2, 1] → x = [0.5, 0].
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        assert!(cholesky(&mut a, 2));
        let mut b = vec![2.0, 1.0];
        substitute(&a, 2, &mut b);
        assert!((b[0] - 0.5).abs() < 1e-12 && b[1].abs() < 1e-12, "{b:?}");
    }
}
