//! Long-lived connections: WebSockets (`/v1/ws`, GraphQL subscriptions), gRPC server streams
//! and the console's event stream. A request is over in seconds; these last as long as the
//! client likes, so two limits apply to them that a request does not need:
//!
//! - **per caller**: at most `server.max_streams_per_caller` open at once for one caller (the
//!   token's subject, or the client address without one), so that one caller cannot hold the
//!   node's connections or push work;
//! - **the token's lifetime**: a stream ends when the token that opened it stops being accepted
//!   (`exp` plus `auth.leeway`): a WebSocket closes with 4401, a gRPC stream ends with
//!   `UNAUTHENTICATED`, the event stream ends. The client reconnects with a fresh token.
//!
//! The gate attaches a [`Caller`] to every request it passes; a handler that starts a stream
//! takes a [`StreamGuard`] from it and keeps it for the stream's life.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::ws::{CloseFrame, Message};
use common::{ApiError, ErrorCode};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;

use crate::listener::ConnectionSlot;

/// WebSocket close code for a token that expired (graphql-transport-ws uses 4401 for
/// "unauthorized"; `/v1/ws` uses the same).
pub const CLOSE_EXPIRED: u16 = 4401;
/// WebSocket close code for a caller over `server.max_streams_per_caller`.
pub const CLOSE_TOO_MANY: u16 = 4429;
/// WebSocket close code for a client that said nothing within `server.stream_init_timeout`
/// (graphql-transport-ws: "Connection initialisation timeout").
pub const CLOSE_INIT_TIMEOUT: u16 = 4408;

/// The longest close reason a WebSocket close frame carries: a control frame's payload is at most
/// 125 bytes (RFC 6455), two of which hold the code.
pub const MAX_CLOSE_REASON: usize = 123;

/// A close frame with `code` and `reason`, the reason cut to [`MAX_CLOSE_REASON`] bytes at a
/// character boundary (a longer one would make the frame invalid). Reasons are the server's
/// words: never echo the client's input in them.
pub fn close(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

/// Open streams per caller.
pub struct Streams {
    max_per_caller: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl Streams {
    pub fn new(max_per_caller: usize) -> Arc<Self> {
        Arc::new(Self {
            max_per_caller,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn open(self: &Arc<Self>, caller: &Caller) -> Result<StreamGuard, ApiError> {
        let mut open = self.open.lock();
        let count = open.entry(caller.key.clone()).or_default();
        if *count >= self.max_per_caller {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "a caller may hold at most {} streams open at once (server.max_streams_per_caller)",
                    self.max_per_caller
                ),
            ));
        }
        *count += 1;
        let deadline = caller.expires_at.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        Ok(StreamGuard {
            streams: self.clone(),
            key: caller.key.clone(),
            deadline,
            _connection: caller.connection.clone(),
        })
    }

    /// Streams `key` holds open now.
    #[cfg(test)]
    fn count(&self, key: &str) -> usize {
        self.open.lock().get(key).copied().unwrap_or(0)
    }
}

/// Who a request comes from, as the gate resolved it.
#[derive(Clone)]
pub struct Caller {
    /// `sub:<subject>` with a token, `addr:<ip>` without: the rate limit's key too.
    pub key: String,
    /// When the caller's token stops being accepted; none without a token.
    pub expires_at: Option<SystemTime>,
    streams: Arc<Streams>,
    /// The listener's slot of the connection the request came on: a stream keeps it, so that
    /// upgraded connections count toward `server.max_connections` for as long as they live.
    connection: Option<ConnectionSlot>,
}

impl Caller {
    pub fn new(
        key: String,
        expires_at: Option<SystemTime>,
        streams: Arc<Streams>,
        connection: Option<ConnectionSlot>,
    ) -> Self {
        Self {
            key,
            expires_at,
            streams,
            connection,
        }
    }

    /// The same connection, now known by a token (a GraphQL WebSocket authenticated by its
    /// `connection_init`).
    pub fn authenticated(&self, sub: &str, expires_at: Option<SystemTime>) -> Self {
        Self {
            key: format!("sub:{sub}"),
            expires_at,
            ..self.clone()
        }
    }

    /// A place for one more stream, or `rate_limited` when the caller holds too many.
    pub fn open_stream(&self) -> Result<StreamGuard, ApiError> {
        self.streams.open(self)
    }
}

/// One open stream of a caller; dropping it frees the place.
pub struct StreamGuard {
    streams: Arc<Streams>,
    key: String,
    deadline: Option<tokio::time::Instant>,
    _connection: Option<ConnectionSlot>,
}

/// Resolves when the guard's token expires; never without a guard or a token.
pub fn expiry(guard: Option<&StreamGuard>) -> impl Future<Output = ()> + Send + use<> {
    sleep_until(guard.and_then(|g| g.deadline))
}

/// Resolves at `deadline`; never without one.
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// `stream` until the caller's token expires, then `last` (if any) and the end. The guard (and
/// so the caller's place) is held for as long as the stream lives.
pub fn until_expiry<S>(
    stream: S,
    guard: Option<StreamGuard>,
    last: Option<S::Item>,
) -> impl Stream<Item = S::Item> + Send + 'static
where
    S: Stream + Send + 'static,
    S::Item: Send + 'static,
{
    let expired = Box::pin(expiry(guard.as_ref()));
    let state = Some((Box::pin(stream), expired, guard, last));
    futures::stream::unfold(state, |state| async move {
        let (mut stream, mut expired, guard, last) = state?;
        tokio::select! {
            item = stream.next() => item.map(|item| (item, Some((stream, expired, guard, last)))),
            () = &mut expired => last.map(|last| (last, None)),
        }
    })
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock();
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn caller(streams: &Arc<Streams>, key: &str, expires_at: Option<SystemTime>) -> Caller {
        Caller::new(key.to_owned(), expires_at, streams.clone(), None)
    }

    #[test]
    fn a_close_reason_longer_than_123_bytes_is_cut_at_a_char_boundary() {
        let reason = |message: Message| match message {
            Message::Close(Some(frame)) => frame.reason.to_string(),
            other => panic!("not a close frame: {other:?}"),
        };
        assert_eq!(reason(close(4400, "short")), "short");
        let long = "é".repeat(100);
        let cut = reason(close(4400, &long));
        assert!(cut.len() <= MAX_CLOSE_REASON, "{} bytes", cut.len());
        assert_eq!(cut, "é".repeat(61));
        assert_eq!(
            reason(close(4400, &"a".repeat(200))).len(),
            MAX_CLOSE_REASON
        );
    }

    #[test]
    fn each_caller_gets_its_own_cap_and_places_come_back() {
        let streams = Streams::new(2);
        let alice = caller(&streams, "sub:alice", None);
        let first = alice.open_stream().expect("1");
        let _second = alice.open_stream().expect("2");
        let refused = alice.open_stream().err().expect("over the cap");
        assert_eq!(refused.code, ErrorCode::RateLimited);
        assert!(caller(&streams, "sub:bob", None).open_stream().is_ok());
        drop(first);
        assert_eq!(streams.count("sub:alice"), 1);
        assert!(alice.open_stream().is_ok());
        assert_eq!(streams.count("sub:bob"), 0, "freed when dropped");
    }

    #[tokio::test]
    async fn a_stream_expires_with_its_token() {
        let streams = Streams::new(4);
        let soon = SystemTime::now() + Duration::from_millis(400);
        let guard = caller(&streams, "sub:a", Some(soon))
            .open_stream()
            .expect("open");
        let expired = expiry(Some(&guard));
        tokio::pin!(expired);
        let early = tokio::time::timeout(Duration::from_millis(100), &mut expired).await;
        assert!(early.is_err(), "not before exp");
        tokio::time::timeout(Duration::from_secs(5), expired)
            .await
            .expect("expired at exp");
        let forever = caller(&streams, "addr:1.2.3.4", None)
            .open_stream()
            .expect("open");
        let never = tokio::time::timeout(Duration::from_millis(200), expiry(Some(&forever))).await;
        assert!(never.is_err(), "no token, no expiry");
    }
}
