//! User events: what clients post and what the event log carries.
//!
//! Clients send [`EventInput`]; it is validated once at the edge into an [`Event`], which always
//! has an `event_id` (client-given or server-assigned) so that every later replay is idempotent.

use serde::{Deserialize, Serialize};

/// What a user did to an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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

/// A user's summed weight on an item after one more event of weight `weight`. Positive events
/// add up; negative feedback (a dislike, a low rating) first cancels whatever positive total the
/// item had, so that an explicit "not for me" after a view or a click leaves the item disliked
/// (total below 0) rather than a little less liked. Positive events after it count as usual, so a
/// user who comes back to the item can like it again. Sessions and training sum events this way
/// alike, so that the live profile and the trained model agree on what a user disliked.
pub fn accumulate(total: f32, weight: f32) -> f32 {
    if weight < 0.0 {
        total.min(0.0) + weight
    } else {
        total + weight
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
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// Makes retries idempotent; the server assigns one when absent.
    #[serde(default)]
    #[schema(value_type = Option<crate::Id>)]
    pub event_id: Option<String>,
    #[schema(value_type = crate::Id)]
    pub user_id: String,
    #[schema(value_type = crate::Id)]
    pub item_id: String,
    #[schema(value_type = EventKind)]
    pub kind: String,
    /// A rating, a price: any finite number of magnitude at most 1e12.
    #[serde(default)]
    #[schema(minimum = -1e12, maximum = 1e12)]
    pub value: Option<f64>,
    /// Epoch milliseconds (up to year 3000); now when absent. `1700000000000.0` is accepted: it
    /// is an integer in JSON.
    #[serde(default, deserialize_with = "integral")]
    #[schema(minimum = 0, maximum = 32_503_680_000_000_i64)]
    pub ts: Option<i64>,
}

/// Why a batch of events is refused before any of it is stored.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchError {
    Empty,
    /// More than this many events.
    TooMany(usize),
    /// The first bad event.
    Invalid {
        index: usize,
        message: String,
    },
}

impl From<BatchError> for crate::ApiError {
    fn from(error: BatchError) -> Self {
        match error {
            BatchError::Empty => Self::invalid("`events` must contain at least one event"),
            BatchError::TooMany(max) => Self::new(
                crate::ErrorCode::PayloadTooLarge,
                format!("at most {max} events per request"),
            ),
            BatchError::Invalid { index, message } => {
                Self::invalid(format!("events[{index}]: {message}"))
            }
        }
    }
}

/// Validates a whole batch (1 to `max` events; `parse` turns each raw entry into an input) the
/// same way on every interface: all or nothing, the first bad entry named by its index.
pub fn validate_batch<T>(
    raw: Vec<T>,
    max: usize,
    parse: impl Fn(T) -> Result<EventInput, String>,
) -> Result<Vec<Event>, BatchError> {
    if raw.is_empty() {
        return Err(BatchError::Empty);
    }
    if raw.len() > max {
        return Err(BatchError::TooMany(max));
    }
    let now = crate::now_millis();
    raw.into_iter()
        .enumerate()
        .map(|(index, entry)| {
            parse(entry)
                .and_then(|input| input.validate(now, || uuid::Uuid::now_v7().to_string()))
                .map_err(|message| BatchError::Invalid { index, message })
        })
        .collect()
}

/// An optional integer that JSON may spell with a zero fraction (`12.0`), as some clients do.
fn integral<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Int(i64),
        Float(f64),
    }
    match Option::<Number>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Number::Int(i)) => Ok(Some(i)),
        Some(Number::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        Some(Number::Float(f)) => Err(serde::de::Error::custom(format!(
            "expected an integer, found {f}"
        ))),
    }
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

    #[test]
    fn a_timestamp_may_be_an_integral_float_but_nothing_else() {
        let parse = |ts: &str| {
            serde_json::from_str::<EventInput>(&format!(
                r#"{{"user_id":"u","item_id":"i","kind":"view","ts":{ts}}}"#
            ))
            .map(|e| e.ts)
        };
        assert_eq!(
            parse("1700000000000").expect("int"),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse("1275.0").expect("integral float"), Some(1275));
        assert_eq!(parse("null").expect("null"), None);
        assert!(parse("12.5").is_err());
        assert!(parse("\"12\"").is_err());
    }

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

    #[test]
    fn negative_feedback_overrides_earlier_positives_and_later_ones_count_again() {
        let fold = |kinds: &[(EventKind, Option<f64>)]| {
            kinds
                .iter()
                .fold(0.0, |total, (k, v)| accumulate(total, k.weight(*v)))
        };
        let (click, dislike) = ((EventKind::Click, None), (EventKind::Dislike, None));
        let low = (EventKind::Rating, Some(1.0));
        assert_eq!(fold(&[click, click]), 4.0);
        assert!(
            fold(&[click, click, dislike]) < 0.0,
            "a dislike is a dislike"
        );
        assert!(fold(&[(EventKind::Purchase, None), low]) < 0.0);
        assert!(fold(&[dislike, dislike]) < fold(&[dislike]));
        assert!(fold(&[dislike, click, click]) > 0.0, "liked again");
    }
}
