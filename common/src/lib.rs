//! The vocabulary every streamrec crate shares: events and items with their validation, the
//! error-code table that maps failures to HTTP (and later gRPC) statuses, typed configuration,
//! the partitioner and telemetry set-up.
//!
//! This crate is a leaf: it knows nothing of actors, storage engines or the model.

pub mod config;
pub mod error;
pub mod event;
pub mod item;
pub mod partition;
pub mod recs;
pub mod telemetry;

pub use config::Config;
pub use error::{ApiError, ErrorCode};
pub use event::{Event, EventInput, EventKind};
pub use item::{Item, ItemInput};
pub use recs::{RecQuery, Recommendation, Recommendations};

/// Milliseconds since the Unix epoch, the one time unit on the wire and at rest.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Checks an identifier (user, item or event id): non-empty, at most 256 bytes, no control
/// characters. Identifiers become storage keys, so a `\0` would break key prefixes.
pub fn validate_id(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("`{field}` must not be empty"));
    }
    if value.len() > 256 {
        return Err(format!("`{field}` must be at most 256 bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("`{field}` must not contain control characters"));
    }
    Ok(())
}
