//! Bulk import and export of items, profiles and events as JSON lines (NDJSON), so that a
//! catalogue of 100,000 items is one request and not 100,000 `PUT`s.
//!
//! `POST /v1/admin/import/{dataset}` reads its body as a stream, a line at a time, and stores
//! the lines in batches (never the whole body in memory). Each line is read by exactly the rules
//! of its single endpoint (an item: `PUT /v1/items/{id}`; a profile: `PUT
//! /v1/users/{id}/profile`; an event: one entry of `POST /v1/events`) and stored through the same
//! path (the catalogue write path, the sealed profile store, the event sink with its fsync or
//! broker acknowledgement), so a line accepted here is one the single endpoint would accept, and
//! is stored whole or not at all. The answer is a report: how many lines were accepted and
//! refused, and why each refused one was, by line number.
//!
//! A refused line does not stop an import; with `?atomic=true` every line is validated first
//! (the valid ones spooled to a file under the data dir, not held in memory) and nothing is
//! stored unless every line is valid. An import that cannot go on (the store is down, the body
//! stalls or breaks) stops at a line and says so: every line before it is accounted for in the
//! report, nothing from it on was stored (a retry is safe: items and profiles are upserts, and
//! events with an `event_id` are deduplicated).
//!
//! `GET /v1/admin/export/{dataset}` streams the data set in the import format, so an export
//! imports back: items from the catalogue, profiles decrypted (the route is the admin's, who may
//! read them), events from this node's log (what it holds: with Kafka, the partitions it owns or
//! owned; the cluster's whole history is the archive), erased users' events left out.
//!
//! These routes are not under `server.request_timeout` (a large import takes longer than any
//! sensible total), but a body that sends nothing for that long ends the import.
//!
//! The module is cut by concern, so that each part can be read on its own: `lines` reads a body
//! as JSON lines and each line as its single endpoint reads it, `import` stores the lines in
//! batches (or spools them first for an atomic import) and writes the report, and `export`
//! streams a data set back in the import format. What both directions share stays here: the
//! data sets, the routes, the media type and the line counter.

mod export;
mod import;
mod lines;

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::routing::{get, post};
use common::ApiError;
use prometheus::{IntCounterVec, register_int_counter_vec};
use serde::Deserialize;
use supervisors::Node;
use utoipa::ToSchema;

// The handlers and their OpenAPI descriptions (`openapi` names them as `bulk::import` and
// `bulk::export`).
pub use self::export::{__path_export, export};
pub use self::import::{__path_import, import};

/// The media type of JSON lines.
pub const NDJSON: &str = "application/x-ndjson";

static LINES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "streamrec_bulk_lines_total",
        "Lines of bulk imports and exports by data set and outcome (accepted, refused, exported).",
        &["dataset", "outcome"]
    )
    .expect("metric registers once")
});

fn count_lines(dataset: Dataset, outcome: &str, lines: u64) {
    if lines > 0 {
        LINES
            .with_label_values(&[dataset.as_str(), outcome])
            .inc_by(lines);
    }
}

/// What can be imported and exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Dataset {
    /// One item a line: `{"item_id": ..}` and the fields of `PUT /v1/items/{item_id}`.
    Items,
    /// One profile a line: `{"user_id": .., "profile": {..}}`.
    Profiles,
    /// One event a line, as an entry of `POST /v1/events`.
    Events,
}

impl Dataset {
    fn parse(name: &str) -> Result<Self, ApiError> {
        match name {
            "items" => Ok(Self::Items),
            "profiles" => Ok(Self::Profiles),
            "events" => Ok(Self::Events),
            _ => Err(ApiError::not_found(format!(
                "no data set {name:?}: items, profiles or events"
            ))),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Items => "items",
            Self::Profiles => "profiles",
            Self::Events => "events",
        }
    }
}

/// The bulk routes, behind the gate (`auth::gate`) like every route, but outside the total
/// request timeout: the caller merges them after that layer.
pub fn routes(node: Arc<Node>, gate: Arc<crate::auth::Gate>) -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/admin/import/{dataset}", post(import))
        .route("/v1/admin/export/{dataset}", get(export))
        .layer(axum::middleware::from_fn_with_state(
            (node, gate),
            crate::auth::gate,
        ))
}
