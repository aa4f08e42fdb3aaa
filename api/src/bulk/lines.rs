//! The body of an import as JSON lines, and each line read by the rules of its single endpoint
//! (an item: `PUT /v1/items/{id}`; a profile: `PUT /v1/users/{id}/profile`; an event: one entry
//! of `POST /v1/events`) into a [`Record`]. A line that cannot be read is refused with its
//! number and why; what happens to the readable ones is `import`'s business.

use std::fmt;
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::http::{HeaderMap, header};
use common::{ApiError, BatchError, ErrorCode, Event, EventInput, Item, ItemInput};
use futures::StreamExt;
use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::{Dataset, NDJSON};

/// Most fields a profile may have (as `PUT /v1/users/{id}/profile`).
const MAX_PROFILE_FIELDS: usize = 64;

/// Whether the request says its body is JSON lines (`application/x-ndjson`, or
/// `application/jsonl`, or `text/plain`), in UTF-8, not compressed.
pub(super) fn check_headers(headers: &HeaderMap) -> Result<(), ApiError> {
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

/// A line of the body: its number, and its text or why it cannot be read.
pub(super) type Line = (u64, Result<String, (ErrorCode, String)>);

/// The body as lines, read a chunk at a time: at most one line (up to `max_line` bytes) and one
/// chunk are held. A longer line is skipped to its end and refused.
pub(super) struct Lines {
    body: BodyDataStream,
    buf: Vec<u8>,
    pos: usize,
    pub(super) number: u64,
    max_line: usize,
    idle: Duration,
    done: bool,
    skipping: bool,
}

impl Lines {
    pub(super) fn new(body: Body, max_line: usize, idle: Duration) -> Self {
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
    pub(super) async fn next(&mut self) -> Result<Option<Line>, ApiError> {
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

/// A line's content, validated.
#[derive(Serialize, Deserialize)]
pub(super) enum Record {
    Item(Item),
    Profile { user_id: String, profile: Value },
    Event(Event),
}

/// A line of `dataset`, read by the rules of its single endpoint.
pub(super) fn parse_line(dataset: Dataset, text: &str) -> Result<Record, String> {
    match dataset {
        Dataset::Items => item_line(text, common::now_millis()).map(Record::Item),
        Dataset::Profiles => profile_line(text),
        Dataset::Events => event_line(text).map(Record::Event),
    }
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

#[cfg(test)]
mod tests {
    use axum::body::Bytes;

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
