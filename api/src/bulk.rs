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

use std::collections::HashMap;
use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::{ApiError, BatchError, ErrorCode, Event, EventInput, Item, ItemInput};
use futures::StreamExt;
use prometheus::{IntCounterVec, register_int_counter_vec};
use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use supervisors::Node;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use utoipa::ToSchema;

use crate::error::{AppError, ErrorBody, ErrorDetail, with_retry_after};

/// The media type of JSON lines.
pub const NDJSON: &str = "application/x-ndjson";
/// Refusals listed in a report; the rest are counted.
const MAX_LISTED_ERRORS: usize = 100;
/// Lines validated before they are stored together (events: one append, at most
/// `server.max_batch_events`).
const BATCH_LINES: usize = 1000;
/// Records per chunk of an export.
const EXPORT_PAGE: usize = 1000;
/// Chunks an export may hold ready ahead of a slow reader.
const EXPORT_AHEAD: usize = 4;
/// Most fields a profile may have (as `PUT /v1/users/{id}/profile`).
const MAX_PROFILE_FIELDS: usize = 64;

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

/// A line's content, validated.
#[derive(Serialize, Deserialize)]
enum Record {
    Item(Item),
    Profile { user_id: String, profile: Value },
    Event(Event),
}

/// A JSON object whose keys are unique, as a struct's fields are: `PUT /v1/items/{id}` reads its
/// body straight into `ItemInput`, which refuses a repeated field; a map would keep the last.
struct UniqueKeys(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
                let mut object = Map::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    if object.contains_key(&key) {
                        return Err(A::Error::custom(format!("duplicate field `{key}`")));
                    }
                    object.insert(key, value);
                }
                Ok(UniqueKeys(object))
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

fn invalid_json(e: serde_json::Error) -> String {
    format!("invalid JSON: {e}")
}

/// An item line: `item_id` and the body `PUT /v1/items/{item_id}` takes, validated by
/// `ItemInput::validate` as there.
fn item_line(text: &str, now: i64) -> Result<Item, String> {
    let UniqueKeys(mut object) = serde_json::from_str::<UniqueKeys>(text).map_err(invalid_json)?;
    let item_id = match object.remove("item_id") {
        Some(Value::String(id)) => id,
        Some(_) => return Err("`item_id` must be a string".into()),
        None => return Err("missing field `item_id`".into()),
    };
    let input: ItemInput =
        serde_json::from_value(Value::Object(object)).map_err(|e| format!("invalid item: {e}"))?;
    input.validate(&item_id, now)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileLine {
    user_id: String,
    profile: Map<String, Value>,
}

/// What `PUT /v1/users/{user_id}/profile` (`rest::put_profile`) accepts: a valid user id, an
/// object of at most 64 fields with the text rules of item attributes. The two must agree.
pub(crate) fn validate_profile(user_id: &str, profile: &Map<String, Value>) -> Result<(), String> {
    common::validate_id("user_id", user_id)?;
    if profile.len() > MAX_PROFILE_FIELDS {
        return Err(format!("a profile has at most {MAX_PROFILE_FIELDS} fields"));
    }
    common::validate_json("profile", profile)
}

fn profile_line(text: &str) -> Result<Record, String> {
    let line: ProfileLine = serde_json::from_str(text).map_err(invalid_json)?;
    validate_profile(&line.user_id, &line.profile)?;
    Ok(Record::Profile {
        user_id: line.user_id,
        profile: Value::Object(line.profile),
    })
}

/// An event line: one entry of `POST /v1/events`, through the very validation of a batch.
fn event_line(text: &str) -> Result<Event, String> {
    let value: Value = serde_json::from_str(text).map_err(invalid_json)?;
    let mut events = common::validate_batch(vec![value], 1, |value| {
        serde_json::from_value::<EventInput>(value).map_err(|e| e.to_string())
    })
    .map_err(|error| match error {
        BatchError::Invalid { message, .. } => message,
        other => ApiError::from(other).message,
    })?;
    events.pop().ok_or_else(|| "no event".to_owned())
}

fn parse_line(dataset: Dataset, text: &str) -> Result<Record, String> {
    match dataset {
        Dataset::Items => item_line(text, common::now_millis()).map(Record::Item),
        Dataset::Profiles => profile_line(text),
        Dataset::Events => event_line(text).map(Record::Event),
    }
}

/// A line of the body: its number, and its text or why it cannot be read.
type Line = (u64, Result<String, (ErrorCode, String)>);

/// The body as lines, read a chunk at a time: at most one line (up to `max_line` bytes) and one
/// chunk are held. A longer line is skipped to its end and refused.
struct Lines {
    body: BodyDataStream,
    buf: Vec<u8>,
    pos: usize,
    number: u64,
    max_line: usize,
    idle: Duration,
    done: bool,
    skipping: bool,
}

impl Lines {
    fn new(body: Body, max_line: usize, idle: Duration) -> Self {
        Self {
            body: body.into_data_stream(),
            buf: Vec::new(),
            pos: 0,
            number: 0,
            max_line,
            idle,
            done: false,
            skipping: false,
        }
    }

    /// The next non-blank line; `None` at the end of the body; `Err` when the body cannot be
    /// read on (broken, or silent for longer than `idle`).
    async fn next(&mut self) -> Result<Option<Line>, ApiError> {
        loop {
            if let Some(end) = self.buf[self.pos..].iter().position(|b| *b == b'\n') {
                let (start, stop) = (self.pos, self.pos + end);
                self.pos = stop + 1;
                self.number += 1;
                let raw = &self.buf[start..stop];
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                // A byte order mark, as some editors write at the start of a UTF-8 file.
                let raw = match self.number {
                    1 => raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw),
                    _ => raw,
                };
                if std::mem::take(&mut self.skipping) || raw.len() > self.max_line {
                    let message = format!(
                        "the line is longer than server.max_body_bytes ({} bytes)",
                        self.max_line
                    );
                    return Ok(Some((
                        self.number,
                        Err((ErrorCode::PayloadTooLarge, message)),
                    )));
                }
                if raw.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let text = match std::str::from_utf8(raw) {
                    Ok(text) => Ok(text.to_owned()),
                    Err(e) => Err((
                        ErrorCode::InvalidArgument,
                        format!("the line is not UTF-8 (byte {})", e.valid_up_to() + 1),
                    )),
                };
                return Ok(Some((self.number, text)));
            }
            self.buf.drain(..self.pos);
            self.pos = 0;
            if self.skipping || self.buf.len() > self.max_line {
                self.skipping = true;
                self.buf.clear();
            }
            if self.done {
                if self.buf.is_empty() && !self.skipping {
                    return Ok(None);
                }
                // The last line, without its newline.
                self.buf.push(b'\n');
                continue;
            }
            match tokio::time::timeout(self.idle, self.body.next()).await {
                Err(_) => {
                    return Err(ApiError::invalid(format!(
                        "the request body stalled for longer than server.request_timeout ({:?})",
                        self.idle
                    )));
                }
                Ok(None) => self.done = true,
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Some(Err(e))) => {
                    return Err(ApiError::invalid(format!(
                        "could not read the request body: {e}"
                    )));
                }
            }
        }
    }
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

/// Whether the request says its body is JSON lines (`application/x-ndjson`, or
/// `application/jsonl`, or `text/plain`), in UTF-8, not compressed.
fn check_headers(headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse = || {
        ApiError::invalid(format!(
            "the body must be JSON lines: send `Content-Type: {NDJSON}`"
        ))
    };
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(refuse)?;
    let mut parts = value.split(';').map(str::trim);
    let essence = parts.next().unwrap_or_default().to_ascii_lowercase();
    if !matches!(
        essence.as_str(),
        "application/x-ndjson" | "application/jsonl" | "text/plain"
    ) {
        return Err(refuse());
    }
    for param in parts {
        if let Some((name, charset)) = param.split_once('=')
            && name.trim().eq_ignore_ascii_case("charset")
            && !matches!(
                charset
                    .trim()
                    .trim_matches('"')
                    .to_ascii_lowercase()
                    .as_str(),
                "utf-8" | "utf8" | "us-ascii"
            )
        {
            return Err(ApiError::invalid("the body must be UTF-8"));
        }
    }
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING)
        && !encoding.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(ApiError::invalid(
            "a compressed body is not accepted: send it as it is",
        ));
    }
    Ok(())
}

fn flag(params: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::invalid(format!("`{name}` must be true or false"))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_line_is_read_as_put_reads_its_body() {
        let item =
            item_line(r#"{"item_id":"i1","title":"T","categories":["c","c"]}"#, 7).expect("valid");
        assert_eq!(
            (item.item_id.as_str(), item.categories, item.updated_at),
            ("i1", vec!["c".to_owned()], 7)
        );
        for bad in [
            r#"{"title":"T"}"#,
            r#"{"item_id":1,"title":"T"}"#,
            r#"{"item_id":"i1","title":"T","title":"U"}"#,
            r#"{"item_id":"i1","title":"T","colour":"red"}"#,
            r#"{"item_id":"i1","title":"  "}"#,
            r#"["i1"]"#,
            r#"{"item_id":"i1","title":"T"} x"#,
        ] {
            assert!(item_line(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn profile_and_event_lines_follow_their_endpoints() {
        assert!(profile_line(r#"{"user_id":"u","profile":{"age":3}}"#).is_ok());
        let many: Map<String, Value> = (0..65).map(|i| (format!("f{i}"), Value::from(i))).collect();
        let line = serde_json::json!({"user_id": "u", "profile": many}).to_string();
        assert!(profile_line(&line).is_err());
        assert!(profile_line(r#"{"user_id":"u","profile":[]}"#).is_err());
        assert!(profile_line(r#"{"user_id":"u","profile":{},"x":1}"#).is_err());
        let event = event_line(r#"{"user_id":"u","item_id":"i","kind":"click"}"#).expect("event");
        assert!(!event.event_id.is_empty());
        assert!(event_line(r#"{"user_id":"u","item_id":"i","kind":"poke"}"#).is_err());
        assert!(event_line(r#"{"user_id":"u","item_id":"i","kind":"click","ts":-1}"#).is_err());
    }

    #[tokio::test]
    async fn lines_are_numbered_and_long_or_broken_lines_refused_without_holding_them() {
        let chunks: Vec<std::io::Result<Bytes>> = vec![
            Ok(Bytes::from_static(
                b"\xEF\xBB\xBF{\"a\":1}\r\n\n  \nxxxxxxxx",
            )),
            Ok(Bytes::from_static(b"xxxxxxxxxxxx\n\xff\xfe\nlast")),
        ];
        let body = Body::from_stream(futures::stream::iter(chunks));
        let mut lines = Lines::new(body, 10, Duration::from_secs(5));
        let mut seen = Vec::new();
        while let Some((n, line)) = lines.next().await.expect("readable") {
            seen.push((n, line.map_err(|(code, _)| code)));
        }
        assert_eq!(
            seen,
            vec![
                (1, Ok("{\"a\":1}".to_owned())),
                (4, Err(ErrorCode::PayloadTooLarge)),
                (5, Err(ErrorCode::InvalidArgument)),
                (6, Ok("last".to_owned())),
            ]
        );
    }

    #[test]
    fn only_json_lines_in_utf8_are_read() {
        let headers = |pairs: &[(header::HeaderName, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(name.clone(), value.parse().expect("value"));
            }
            map
        };
        assert!(check_headers(&headers(&[(header::CONTENT_TYPE, NDJSON)])).is_ok());
        assert!(
            check_headers(&headers(&[(
                header::CONTENT_TYPE,
                "application/x-ndjson; charset=utf-8"
            )]))
            .is_ok()
        );
        for bad in [
            headers(&[]),
            headers(&[(header::CONTENT_TYPE, "application/json")]),
            headers(&[(header::CONTENT_TYPE, "text/plain; charset=latin1")]),
            headers(&[
                (header::CONTENT_TYPE, NDJSON),
                (header::CONTENT_ENCODING, "gzip"),
            ]),
        ] {
            assert!(check_headers(&bad).is_err(), "{bad:?}");
        }
    }
}
