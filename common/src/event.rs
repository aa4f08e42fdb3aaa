//! User events: what clients post and what the event log carries.
//!
//! Clients send [`EventInput`]; it is validated once at the edge into an [`Event`], which always
//! has an `event_id` (client-given or server-assigned) so that every later replay is idempotent.

use serde::{Deserialize, Serialize};

/// What a user did to an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    View,
    Click,
    AddToCart,
    Purchase,
    Rating,
    Dislike,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::View,
        EventKind::Click,
        EventKind::AddToCart,
        EventKind::Purchase,
        EventKind::Rating,
        EventKind::Dislike,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::View => "view",
            EventKind::Click => "click",
            EventKind::AddToCart => "add_to_cart",
            EventKind::Purchase => "purchase",
            EventKind::Rating => "rating",
            EventKind::Dislike => "dislike",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Implicit-feedback strength of one event. Negative means the user rejected the item.
    /// Ratings are on the MovieLens-like 1-5 scale: 4 and up are positive, 3 is weak, below is
    /// negative; a rating without a value counts as a weak positive.
    pub fn weight(self, value: Option<f64>) -> f32 {
        match self {
            EventKind::View => 1.0,
            EventKind::Click => 2.0,
            EventKind::AddToCart => 3.0,
            EventKind::Purchase => 5.0,
            EventKind::Rating => match value {
                Some(v) if v >= 4.0 => 4.0,
                Some(v) if v >= 3.0 => 1.0,
                Some(_) => -1.0,
                None => 1.0,
            },
            EventKind::Dislike => -1.0,
        }
    }
}

/// A validated event, as stored in the event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    pub user_id: String,
    pub item_id: String,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Epoch milliseconds.
    pub ts: i64,
}

impl Event {
    pub fn weight(&self) -> f32 {
        self.kind.weight(self.value)
    }
}

/// An event as a client sends it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    #[serde(default)]
    pub event_id: Option<String>,
    pub user_id: String,
    pub item_id: String,
    pub kind: String,
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(default)]
    pub ts: Option<i64>,
}

/// Latest accepted timestamp (year 3000) to catch seconds-vs-nanoseconds mistakes.
const MAX_TS_MILLIS: i64 = 32_503_680_000_000;

impl EventInput {
    /// Validates the input; `now` fills a missing timestamp, `new_id` a missing event id.
    pub fn validate(self, now: i64, new_id: impl FnOnce() -> String) -> Result<Event, String> {
        crate::validate_id("user_id", &self.user_id)?;
        crate::validate_id("item_id", &self.item_id)?;
        let event_id = match self.event_id {
            Some(id) => {
                crate::validate_id("event_id", &id)?;
                id
            }
            None => new_id(),
        };
        let kind = EventKind::parse(&self.kind).ok_or_else(|| {
            let kinds: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
            format!("`kind` must be one of {}", kinds.join(", "))
        })?;
        if let Some(v) = self.value
            && !(v.is_finite() && v.abs() <= 1e12)
        {
            return Err("`value` must be a finite number".into());
        }
        let ts = self.ts.unwrap_or(now);
        if !(0..=MAX_TS_MILLIS).contains(&ts) {
            return Err("`ts` must be epoch milliseconds between 0 and year 3000".into());
        }
        Ok(Event {
            event_id,
            user_id: self.user_id,
            item_id: self.item_id,
            kind,
            value: self.value,
            ts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> EventInput {
        serde_json::from_str(json).expect("valid json")
    }

    #[test]
    fn fills_defaults_and_accepts_every_kind() {
        for kind in EventKind::ALL {
            let e = input(&format!(
                r#"{{"user_id":"u","item_id":"i","kind":"{}"}}"#,
                kind.as_str()
            ))
            .validate(42, || "gen".into())
            .expect("valid");
            assert_eq!((e.kind, e.ts, e.event_id.as_str()), (kind, 42, "gen"));
        }
    }

    #[test]
    fn rejects_bad_fields() {
        let cases = [
            r#"{"user_id":"","item_id":"i","kind":"view"}"#,
            r#"{"user_id":"u","item_id":"i","kind":"teleport"}"#,
            r#"{"user_id":"u","item_id":"i","kind":"view","ts":-1}"#,
            r#"{"user_id":"u\u0000x","item_id":"i","kind":"view"}"#,
            r#"{"user_id":"u","item_id":"i","kind":"view","event_id":""}"#,
        ];
        for case in cases {
            assert!(input(case).validate(0, || "x".into()).is_err(), "{case}");
        }
    }

    #[test]
    fn negative_feedback_has_negative_weight() {
        assert!(EventKind::Dislike.weight(None) < 0.0);
        assert!(EventKind::Rating.weight(Some(1.0)) < 0.0);
        assert!(EventKind::Rating.weight(Some(5.0)) > EventKind::View.weight(None));
    }
}
