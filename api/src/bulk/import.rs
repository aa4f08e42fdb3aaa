//! Storing an import: the lines `lines` has read and validated go to the store a batch at a
//! time, through the same paths as their single endpoints (with `atomic=true`, to a spool file
//! first, and to the store only once every line is valid); the answer is an [`ImportReport`]
//! that accounts for every line read.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use supervisors::Node;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use utoipa::ToSchema;

use super::lines::{Lines, Record, check_headers, parse_line};
use super::{Dataset, count_lines};
use crate::error::{AppError, ErrorBody, ErrorDetail, with_retry_after};

/// Refusals listed in a report; the rest are counted.
const MAX_LISTED_ERRORS: usize = 100;
/// Lines validated before they are stored together (events: one append, at most
/// `server.max_batch_events`).
const BATCH_LINES: usize = 1000;

/// One refused line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct LineError {
    /// The line number, from 1 (blank lines count, and are skipped).
    pub line: u64,
    /// `invalid_argument`, or `payload_too_large` for a line longer than
    /// `server.max_body_bytes`.
    pub code: String,
    pub message: String,
}

/// What an import did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ImportReport {
    /// Lines read (blank lines are not counted).
    pub lines: u64,
    /// Lines stored. Events: durably appended (or already stored: see `duplicates`).
    pub accepted: u64,
    /// Accepted events whose `event_id` was already stored; not applied twice.
    pub duplicates: u64,
    /// Lines refused: nothing of them was stored.
    pub refused: u64,
    /// The first refusals (at most 100), by line.
    pub errors: Vec<LineError>,
    /// Refusals not listed in `errors`.
    pub errors_omitted: u64,
    /// With `atomic=true`: `false` when a line was refused (nothing was stored), `true` once
    /// every line is stored; absent if the store failed meanwhile (see `stopped_at_line`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<bool>,
    /// Set when the import stopped early (the store unavailable, the body stalled or broken):
    /// nothing from this line on was stored, every line before it is accounted for above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at_line: Option<u64>,
    /// Why the import stopped early (the answer then has this error's status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
}

impl ImportReport {
    fn refuse(&mut self, line: u64, code: ErrorCode, message: String) {
        self.refused += 1;
        if self.errors.len() < MAX_LISTED_ERRORS {
            self.errors.push(LineError {
                line,
                code: code.as_str().to_owned(),
                message,
            });
        } else {
            self.errors_omitted += 1;
        }
    }
}

/// Imports JSON lines: items, profiles or events. Each line is validated as its single
/// endpoint validates it and stored whole or not at all; the report names every refused line
/// (the first 100 listed). With `atomic=true` nothing is stored unless every line is valid.
#[utoipa::path(post, path = "/v1/admin/import/{dataset}", tag = "admin",
    params(
        ("dataset" = inline(Dataset), Path, description = "What the lines are"),
        ("atomic" = Option<bool>, Query, description = "Store nothing unless every line is valid (the valid lines are spooled to disk until the end)"),
    ),
    request_body(description = "JSON lines: an item (`item_id` and the body of `PUT /v1/items/{item_id}`), a profile (`{\"user_id\":..,\"profile\":{..}}`) or an event (an entry of `POST /v1/events`) a line; blank lines are skipped; each line at most `server.max_body_bytes`",
        content(("application/x-ndjson"), (String = "text/plain"))),
    responses(
        (status = 200, description = "The body was read to its end: what was accepted and refused, by line", body = ImportReport),
        (status = 400, description = "Not JSON lines (content type, encoding), or the body broke or stalled (the report so far, with `error`)", body = ErrorBody),
        (status = 404, description = "No such data set", body = ErrorBody),
        (status = 503, description = "The store is unavailable: stopped at `stopped_at_line`, every line before it accounted for; retrying is safe", body = ImportReport)))]
pub async fn import(
    State(node): State<Arc<Node>>,
    Path(dataset): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = (|| {
        let dataset = Dataset::parse(&dataset)?;
        let atomic = flag(&params, "atomic")?;
        check_headers(&headers)?;
        Ok::<_, ApiError>((dataset, atomic))
    })();
    let (dataset, atomic) = match started {
        Ok(started) => started,
        Err(error) => return AppError::from(error).into_response(),
    };
    let (report, stopped) = run_import(&node, dataset, atomic, body).await;
    count_lines(dataset, "accepted", report.accepted);
    count_lines(dataset, "refused", report.refused);
    tracing::info!(
        dataset = dataset.as_str(),
        atomic,
        num_accepted = report.accepted,
        num_refused = report.refused,
        stopped = stopped.is_some(),
        "bulk import"
    );
    let status = stopped.map_or(StatusCode::OK, |code| {
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    });
    let response = (status, Json(report)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        with_retry_after(response, Duration::from_secs(1))
    } else {
        response
    }
}

fn flag(params: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::invalid(format!("`{name}` must be true or false"))),
    }
}

/// The report, and the code of the error that stopped the import early, if one did.
async fn run_import(
    node: &Node,
    dataset: Dataset,
    atomic: bool,
    body: Body,
) -> (ImportReport, Option<ErrorCode>) {
    let config = &node.config.server;
    let mut lines = Lines::new(body, config.max_body_bytes, config.request_timeout);
    let mut run = Import {
        node,
        dataset,
        report: ImportReport::default(),
        batch: Vec::new(),
        batch_size: match dataset {
            Dataset::Events => BATCH_LINES.min(config.max_batch_events),
            _ => BATCH_LINES,
        },
    };
    let stopped = import_lines(&mut run, &mut lines, atomic).await;
    let mut report = run.report;
    let mut code = None;
    if let Err(Stop { line, error }) = stopped {
        code = Some(error.code);
        report.stopped_at_line = Some(line);
        let detail = ErrorDetail {
            code: error.code.as_str().to_owned(),
            message: error.message,
            index: None,
        };
        report.error = serde_json::to_value(detail).ok();
    }
    report.errors.sort_by_key(|e| e.line);
    (report, code)
}

async fn import_lines(run: &mut Import<'_>, lines: &mut Lines, atomic: bool) -> Result<(), Stop> {
    let mut spool = if atomic {
        let spool = Spool::create(&run.node.config.data_dir).await;
        Some(spool.map_err(|e| Stop {
            line: 1,
            error: spool_error(e),
        })?)
    } else {
        None
    };
    loop {
        let next = match lines.next().await {
            Ok(next) => next,
            Err(error) => {
                // The lines read whole before the body failed are stored as any others (not in
                // an atomic import, which stores nothing), so that the report accounts for each.
                let stop = Stop {
                    line: lines.number + 1,
                    error,
                };
                match spool {
                    None => run.flush().await?,
                    Some(_) => run.report.stored = Some(false),
                }
                return Err(stop);
            }
        };
        let Some((line, text)) = next else { break };
        run.report.lines += 1;
        let record = text.and_then(|text| {
            parse_line(run.dataset, &text).map_err(|m| (ErrorCode::InvalidArgument, m))
        });
        match (record, &mut spool) {
            (Err((code, message)), _) => run.report.refuse(line, code, message),
            // Once a line is refused nothing will be stored: the rest is only validated.
            (Ok(_), Some(_)) if run.report.refused > 0 => {}
            (Ok(record), Some(spool)) => spool.write(line, &record).await.map_err(|e| Stop {
                line,
                error: spool_error(e),
            })?,
            (Ok(record), None) => run.push(line, record).await?,
        }
    }
    let Some(mut spool) = spool else {
        return run.flush().await;
    };
    if run.report.refused > 0 {
        run.report.stored = Some(false);
        return Ok(());
    }
    let mut spooled = spool.read().await.map_err(|e| Stop {
        line: 1,
        error: spool_error(e),
    })?;
    // The first line not yet stored, should the spool fail.
    let mut pending = 1;
    loop {
        let text = match spooled.next_line().await {
            Ok(Some(text)) => text,
            Ok(None) => break,
            Err(e) => {
                return Err(Stop {
                    line: pending,
                    error: spool_error(e),
                });
            }
        };
        let (line, record): (u64, Record) = serde_json::from_str(&text).map_err(|e| Stop {
            line: pending,
            error: spool_error(std::io::Error::other(e)),
        })?;
        if run.batch.is_empty() {
            pending = line;
        }
        run.push(line, record).await?;
    }
    run.flush().await?;
    run.report.stored = Some(true);
    Ok(())
}

/// Why an import stopped before the end of its body.
struct Stop {
    line: u64,
    error: ApiError,
}

/// An import under way: validated lines wait in `batch` and are stored a batch at a time.
struct Import<'a> {
    node: &'a Node,
    dataset: Dataset,
    report: ImportReport,
    batch: Vec<(u64, Record)>,
    batch_size: usize,
}

impl Import<'_> {
    async fn push(&mut self, line: u64, record: Record) -> Result<(), Stop> {
        self.batch.push((line, record));
        if self.batch.len() >= self.batch_size {
            self.flush().await?;
        }
        Ok(())
    }

    /// Stores the batch. An item or a profile is one write each (whole or not at all); the
    /// events of a batch are one append (all or none). A store's refusal of one line's data
    /// refuses that line; any other failure stops the import at the first line not stored.
    async fn flush(&mut self) -> Result<(), Stop> {
        let batch = std::mem::take(&mut self.batch);
        let Some(&(first, _)) = batch.first() else {
            return Ok(());
        };
        if self.dataset == Dataset::Events {
            let events = batch
                .into_iter()
                .filter_map(|(_, record)| match record {
                    Record::Event(event) => Some(event),
                    _ => None,
                })
                .collect::<Vec<_>>();
            let count = events.len() as u64;
            let outcome = self
                .node
                .post_events(events)
                .await
                .map_err(|error| Stop { line: first, error })?;
            self.report.accepted += count;
            self.report.duplicates += outcome.duplicates as u64;
            return Ok(());
        }
        for (line, record) in batch {
            let stored = match record {
                Record::Item(item) => self.node.upsert_item(item).await,
                Record::Profile { user_id, profile } => {
                    self.node.put_profile(&user_id, &profile).await
                }
                Record::Event(_) => Ok(()),
            };
            match stored {
                Ok(()) => self.report.accepted += 1,
                Err(error) if error.code == ErrorCode::InvalidArgument => {
                    self.report.refuse(line, error.code, error.message)
                }
                Err(error) => return Err(Stop { line, error }),
            }
        }
        Ok(())
    }
}

/// The valid lines of an atomic import, on disk under the data dir until every line has been
/// read; removed when dropped.
struct Spool {
    path: PathBuf,
    file: tokio::io::BufWriter<tokio::fs::File>,
}

impl Spool {
    async fn create(data_dir: &FsPath) -> std::io::Result<Self> {
        let dir = data_dir.join("tmp");
        tokio::fs::create_dir_all(&dir).await?;
        let stamp = common::now_millis();
        for attempt in 0..1000u32 {
            let path = dir.join(format!("import-{stamp}-{attempt}.ndjson"));
            match tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
            {
                Ok(file) => {
                    return Ok(Self {
                        path,
                        file: tokio::io::BufWriter::new(file),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("no free name for an import spool"))
    }

    async fn write(&mut self, line: u64, record: &Record) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(&(line, record))?;
        text.push(b'\n');
        self.file.write_all(&text).await
    }

    /// The spooled lines, in order, for the store pass.
    async fn read(
        &mut self,
    ) -> std::io::Result<tokio::io::Lines<tokio::io::BufReader<tokio::fs::File>>> {
        self.file.flush().await?;
        let file = tokio::fs::File::open(&self.path).await?;
        Ok(tokio::io::BufReader::new(file).lines())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::warn!(%error, path = %self.path.display(), "could not remove an import spool");
        }
    }
}

fn spool_error(error: std::io::Error) -> ApiError {
    tracing::error!(%error, "import spool failed");
    ApiError::unavailable("the node could not spool the import to disk")
}
