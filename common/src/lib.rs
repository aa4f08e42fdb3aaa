//! The vocabulary every streamrec crate shares: events and items with their validation, the
//! error-code table that maps failures to HTTP and gRPC statuses, typed configuration, the
//! partitioner and telemetry set-up.
//!
//! This crate is a leaf: it knows nothing of actors, storage engines or the model.

pub mod config;
pub mod error;
pub mod event;
pub mod item;
pub mod partition;
pub mod pii;
pub mod recs;
pub mod telemetry;

pub use config::Config;
pub use error::{ApiError, ErrorCode};
pub use event::{BatchError, Event, EventInput, EventKind, validate_batch};
pub use item::{Item, ItemInput, validate_json, validate_label, validate_text};
pub use recs::{Diversity, RecQuery, Recommendation, Recommendations};

/// Milliseconds since the Unix epoch, the one time unit on the wire and at rest.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The UTC calendar date and second of the day of an epoch-millisecond time, for object keys
/// that sort by time (no time zone crate for that).
pub fn utc(ms: i64) -> (i64, i64, i64, i64) {
    let secs = ms.div_euclid(1000);
    let (days, second) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day, second)
}

/// Longest identifier, in characters.
pub const MAX_ID_CHARS: usize = 256;
/// [`validate_id`] as a regular expression (JSON Schema / ECMA syntax).
pub const ID_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]{1,256}$";

/// The OpenAPI schema of an identifier, for `#[schema(value_type = common::Id)]` on fields that
/// [`validate_id`] checks, so that the published schema and the validation cannot disagree.
pub struct Id;

impl utoipa::PartialSchema for Id {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_ID_CHARS))
            .pattern(Some(ID_PATTERN))
            .into()
    }
}

impl utoipa::ToSchema for Id {}

/// Checks an identifier (user, item or event id): non-empty, at most [`MAX_ID_CHARS`]
/// characters, no control characters. Identifiers become storage keys, so a `\0` would break key
/// prefixes. [`ID_PATTERN`] says the same to OpenAPI clients.
pub fn validate_id(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("`{field}` must not be empty"));
    }
    if value.chars().count() > MAX_ID_CHARS {
        return Err(format!(
            "`{field}` must be at most {MAX_ID_CHARS} characters"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("`{field}` must not contain control characters"));
    }
    Ok(())
}
