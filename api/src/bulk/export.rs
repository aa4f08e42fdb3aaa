//! Exporting a data set as JSON lines in the import format, a page at a time through a short
//! channel, so that a slow reader slows the reading down instead of the node buffering the data
//! set (profiles are read from the store at once, before the answer starts, so that a store
//! that is down is a 503 and not a cut stream).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use common::ApiError;
use serde::Serialize;
use serde_json::{Map, Value};
use supervisors::Node;

use super::{Dataset, NDJSON, count_lines};
use crate::error::{AppError, ErrorBody};

/// Records per chunk of an export.
const EXPORT_PAGE: usize = 1000;
/// Chunks an export may hold ready ahead of a slow reader.
const EXPORT_AHEAD: usize = 4;

/// Exports a data set as JSON lines, in the import format: items from the catalogue, profiles
/// decrypted, events from this node's log (oldest first per partition; with Kafka, the
/// partitions this node owns or owned) without erased users' events.
#[utoipa::path(get, path = "/v1/admin/export/{dataset}", tag = "admin",
    params(("dataset" = inline(Dataset), Path, description = "What to export")),
    responses(
        (status = 200, description = "JSON lines, streamed", content_type = "application/x-ndjson", body = String),
        (status = 404, description = "No such data set", body = ErrorBody),
        (status = 503, description = "Unavailable; retry later", body = ErrorBody)))]
pub async fn export(
    State(node): State<Arc<Node>>,
    Path(dataset): Path<String>,
) -> Result<Response, AppError> {
    let dataset = Dataset::parse(&dataset)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(EXPORT_AHEAD);
    match dataset {
        Dataset::Items => {
            let mut ids = node.services().catalog.item_ids();
            ids.sort_unstable();
            tokio::spawn(export_items(node, ids, tx));
        }
        Dataset::Profiles => {
            // Read before answering, so that an unavailable store is a 503, not a cut stream.
            let profiles = node
                .services()
                .catalog
                .store()
                .profiles()
                .await
                .map_err(ApiError::from)?;
            tokio::spawn(export_profiles(profiles, tx));
        }
        Dataset::Events => {
            tokio::spawn(export_events(node, tx));
        }
    }
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    Ok(([(header::CONTENT_TYPE, NDJSON)], body).into_response())
}

/// Serialises one record a line onto `out`.
fn write_line<T: Serialize>(out: &mut Vec<u8>, record: &T) {
    // Serialising these types to a Vec cannot fail (string keys, no custom serialisers).
    if serde_json::to_writer(&mut *out, record).is_ok() {
        out.push(b'\n');
    }
}

/// Hands a page of lines to the response; false once the client has gone.
async fn send_page(
    tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    dataset: Dataset,
    page: Vec<u8>,
) -> bool {
    let lines = page.iter().filter(|b| **b == b'\n').count() as u64;
    if tx.send(Ok(page.into())).await.is_err() {
        return false;
    }
    count_lines(dataset, "exported", lines);
    true
}

/// An item as an import line: its id and the body of `PUT /v1/items/{item_id}`.
#[derive(Serialize)]
struct ItemLine<'a> {
    item_id: &'a str,
    title: &'a str,
    categories: &'a [String],
    tags: &'a [String],
    attributes: &'a Map<String, Value>,
    available: bool,
}

async fn export_items(
    node: Arc<Node>,
    ids: Vec<String>,
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) {
    for page in ids.chunks(EXPORT_PAGE) {
        let mut out = Vec::new();
        for id in page {
            // Deleted since the export began: left out.
            let Some(item) = node.get_item(id) else {
                continue;
            };
            write_line(
                &mut out,
                &ItemLine {
                    item_id: &item.item_id,
                    title: &item.title,
                    categories: &item.categories,
                    tags: &item.tags,
                    attributes: &item.attributes,
                    available: item.available,
                },
            );
        }
        if !send_page(&tx, Dataset::Items, out).await {
            return;
        }
    }
}

async fn export_profiles(
    profiles: Vec<(String, Value)>,
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) {
    for page in profiles.chunks(EXPORT_PAGE) {
        let mut out = Vec::new();
        for (user_id, profile) in page {
            write_line(
                &mut out,
                &serde_json::json!({ "user_id": user_id, "profile": profile }),
            );
        }
        if !send_page(&tx, Dataset::Profiles, out).await {
            return;
        }
    }
}

/// Every partition of this node's log up to its end when the export began, a page at a time,
/// leaving out what an erasure covers.
async fn export_events(node: Arc<Node>, tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) {
    let services = node.services();
    let log = &services.log;
    for partition in 0..log.num_partitions() {
        let end = *log.high_watermark(partition).borrow();
        let mut offset = log.first_offset(partition);
        while offset < end {
            let records = match log.read(partition, offset, EXPORT_PAGE).await {
                Ok(records) => records,
                Err(error) => {
                    tracing::error!(%error, partition, "event export could not read the log");
                    let _ = tx
                        .send(Err(std::io::Error::other(
                            "the event log could not be read",
                        )))
                        .await;
                    return;
                }
            };
            let Some(last) = records.last() else { break };
            offset = last.offset + 1;
            let mut tombstones = HashMap::new();
            let mut out = Vec::new();
            for record in records.iter().filter(|r| r.offset < end) {
                let user = record.event.user_id.as_str();
                let tombstone = match tombstones.get(user) {
                    Some(tombstone) => *tombstone,
                    None => {
                        let tombstone = services.store.tombstone(user).unwrap_or_else(|error| {
                            tracing::warn!(%error, "reading a tombstone failed: leaving the user's events out");
                            None
                        });
                        tombstones.insert(user.to_owned(), tombstone);
                        tombstone
                    }
                };
                if tombstone.is_some_and(|t| t.covers(record)) {
                    continue;
                }
                write_line(&mut out, &record.event);
            }
            if !send_page(&tx, Dataset::Events, out).await {
                return;
            }
        }
    }
}
