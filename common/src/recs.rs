//! Recommendation results, the body of `GET /v1/users/{id}/recommendations` and of every push.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recommendation {
    pub item_id: String,
    pub score: f32,
    /// Why the item was chosen: `similar_to:<item_id>`, `collaborative_filtering`, `popular`.
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recommendations {
    pub user_id: String,
    pub model_version: String,
    pub items: Vec<Recommendation>,
}

/// What a recommendation request asks for; also the cache key within a user.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecQuery {
    pub k: usize,
    pub category: Option<String>,
    /// How far to trade relevance for variety; [`Diversity::NONE`] is the plain ranking.
    pub diversity: Diversity,
}

/// The `diversity` of a request, from 0 (the plain ranking) to 1 (variety only), kept in
/// thousandths so that it is an exact part of the cache key: requests that differ below a
/// thousandth get the same list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Diversity(u16);

impl Diversity {
    /// No re-ranking: the model's ranking as it is.
    pub const NONE: Self = Self(0);
    const SCALE: f64 = 1000.0;

    /// A checked diversity: a finite number from 0 to 1, rounded to thousandths.
    pub fn new(value: f64) -> Result<Self, String> {
        if !(value.is_finite() && (0.0..=1.0).contains(&value)) {
            return Err("`diversity` must be a number from 0 to 1".to_owned());
        }
        Ok(Self((value * Self::SCALE).round() as u16))
    }

    /// The value from 0 to 1.
    pub fn value(self) -> f32 {
        (f64::from(self.0) / Self::SCALE) as f32
    }

    /// The value in thousandths, as cache keys write it.
    pub fn thousandths(self) -> u16 {
        self.0
    }

    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

/// Largest `k` a client may ask for.
pub const MAX_K: usize = 100;

impl RecQuery {
    /// A checked query: `k` from 1 to [`MAX_K`], `category` a valid id.
    pub fn new(k: usize, category: Option<String>) -> Result<Self, String> {
        if !(1..=MAX_K).contains(&k) {
            return Err(format!("`k` must be an integer from 1 to {MAX_K}"));
        }
        if let Some(c) = &category {
            crate::validate_id("category", c)?;
        }
        Ok(Self {
            k,
            category,
            diversity: Diversity::NONE,
        })
    }

    /// The query with a checked `diversity` (see [`Diversity::new`]); `None` keeps the plain
    /// ranking.
    pub fn with_diversity(self, diversity: Option<f64>) -> Result<Self, String> {
        Ok(Self {
            diversity: diversity
                .map(Diversity::new)
                .transpose()?
                .unwrap_or_default(),
            ..self
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diversity_is_a_number_from_0_to_1_in_thousandths() {
        for bad in [-0.001, 1.001, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(Diversity::new(bad).is_err(), "{bad}");
        }
        assert_eq!(Diversity::new(0.0), Ok(Diversity::NONE));
        assert_eq!(Diversity::new(0.3).map(Diversity::thousandths), Ok(300));
        assert_eq!(Diversity::new(1.0).map(Diversity::value), Ok(1.0));
        // Below a thousandth is the same request, and the same cache key.
        assert_eq!(Diversity::new(0.3), Diversity::new(0.3001));
        let query = RecQuery::new(5, None).expect("valid");
        assert_eq!(query.clone().with_diversity(None), Ok(query.clone()));
        let diverse = query.clone().with_diversity(Some(0.3)).expect("valid");
        assert_ne!(diverse, query);
        assert!(query.with_diversity(Some(2.0)).is_err());
    }
}
