//! GraphQL subscriptions over graphql-transport-ws: the caller authenticates first, then every
//! operation is rate-limited and costed like an HTTP request.
//!
//! juniper's connection runs whatever document a `subscribe` message carries, and offers no hook
//! before it does; so frames are read here first:
//!
//! - **Authentication before anything else.** Before `connection_init` only `ping` (answered with
//!   `pong`, as the protocol allows at any time) and `pong` are read; `connection_init`'s payload
//!   (or the token of the upgrade request) is authenticated here before any other frame is read.
//!   A frame that is not a protocol message closes the socket with 4400; any other message closes
//!   it with 4401 Unauthorized, as the protocol answers operations before `connection_ack`,
//!   without reading it further (a document from an unknown caller is never costed); a refused
//!   token closes it with 4403 Forbidden.
//! - **Every operation is charged** to the caller's bucket of the gate's rate limiter, the one
//!   HTTP requests spend, then costed (`cost::check`). An operation over the rate gets an
//!   `error` message with `rate_limited`, one too deep or too costly `invalid_argument`; neither
//!   reaches juniper, and the connection stays open.
//!
//! - **Connection limits** (`streams.rs`): the upgrade takes one of its caller's stream places
//!   (429 before upgrading when it holds too many): its token's subject, or its address until
//!   `connection_init` names it, when the place moves to the subject (close 4429, the protocol's
//!   "too many requests" code reused for too many streams, when that subject holds too many).
//!   `connection_init` must arrive within `server.stream_init_timeout` (else close 4408, the
//!   protocol's initialisation timeout); the connection closes with 4401 when the caller's token
//!   expires.
//! - **Close frames** carry at most 123 bytes of reason (`streams::close`), in the server's
//!   words: never the client's input.
//!
//! WebSocket-level pings and pongs are the transport's business (axum answers pings) and are
//! not handed to the protocol.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use common::{ApiError, ErrorCode};
use futures::channel::mpsc;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt, future, stream};
use juniper::{DefaultScalarValue, Variables};
use juniper_graphql_ws::ConnectionConfig;
use juniper_graphql_ws::graphql_transport_ws::{ClientMessage, Connection, Input, Output};
use serde_json::json;

use super::cost::{self, Sizes};
use super::schema::{Ctx, Schema};
use crate::auth::Gate;
use crate::error::graphql_ws_refusal as refusal;
use crate::streams::{
    CLOSE_EXPIRED, CLOSE_INIT_TIMEOUT, CLOSE_TOO_MANY, StreamGuard, close, expiry,
};

/// Operations one connection may run at once.
const MAX_IN_FLIGHT: usize = 16;

/// Who a connection serves, once authenticated.
pub struct Admitted {
    pub ctx: Ctx,
    /// The caller's bucket in the gate's rate limiter.
    pub rate_key: String,
    /// The caller's place among its streams, held while the connection lives; it also says when
    /// the caller's token expires. None when streams are not counted (no caller known).
    pub guard: Option<StreamGuard>,
}

/// A client frame that could not be read as a protocol message: the connection closes (4400).
#[derive(Debug, thiserror::Error)]
#[error("invalid message: {0}")]
pub struct InvalidFrame(String);

/// One client frame, already parsed (`Err` closes the connection with 4400, as the protocol says).
struct Frame(Result<Input<DefaultScalarValue>, InvalidFrame>);

impl TryFrom<Frame> for Input<DefaultScalarValue> {
    type Error = InvalidFrame;

    fn try_from(frame: Frame) -> Result<Self, InvalidFrame> {
        frame.0
    }
}

/// The bytes of a protocol message, or what the frame means to the connection.
enum Raw {
    Bytes(Vec<u8>),
    Close,
    /// A WebSocket ping or pong.
    Control,
}

fn raw(message: Message) -> Raw {
    match message {
        Message::Text(text) => Raw::Bytes(text.as_bytes().to_vec()),
        Message::Binary(bytes) => Raw::Bytes(bytes.to_vec()),
        Message::Close(_) => Raw::Close,
        Message::Ping(_) | Message::Pong(_) => Raw::Control,
    }
}

fn parse(message: Message) -> Option<Result<Input<DefaultScalarValue>, InvalidFrame>> {
    match raw(message) {
        Raw::Bytes(bytes) => Some(serde_json::from_slice(&bytes).map(Input::Message).map_err(
            |e| match malformed(&e) {
                Message::Close(Some(frame)) => InvalidFrame(frame.reason.to_string()),
                _ => InvalidFrame("invalid message".into()),
            },
        )),
        Raw::Close => Some(Ok(Input::Close)),
        Raw::Control => None,
    }
}

/// What a client may send before `connection_init`.
enum Opening {
    Init(Variables<DefaultScalarValue>),
    /// `ping` (answered with `pong`) or `pong`: allowed at any time by the protocol.
    Ping,
    Pong,
}

/// Why a frame is not a protocol message, in the server's words: serde's messages quote the
/// client's input, which a close reason must not echo.
fn malformed(e: &serde_json::Error) -> Message {
    close(
        4400,
        &format!(
            "invalid message: {:?} error at line {}, column {}",
            e.classify(),
            e.line(),
            e.column()
        ),
    )
}

/// The first messages: `connection_init` with its payload, or a ping or pong; any other
/// message is read no further than its `type`.
fn opening(bytes: &[u8]) -> Result<Opening, Message> {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    let kind = serde_json::from_slice::<Kind<'_>>(bytes).map_err(|e| malformed(&e))?;
    match kind.kind.as_ref() {
        "connection_init" => {}
        "ping" => return Ok(Opening::Ping),
        "pong" => return Ok(Opening::Pong),
        _ => return Err(close(4401, "Unauthorized")),
    }
    match serde_json::from_slice(bytes) {
        Ok(ClientMessage::ConnectionInit { payload }) => Ok(Opening::Init(payload)),
        Ok(_) => Err(close(4401, "Unauthorized")),
        Err(e) => Err(malformed(&e)),
    }
}

/// Serves one connection: `authenticate` gets the payload of `connection_init`, which must
/// arrive within `init_timeout`; then operations are charged, costed and run.
pub async fn serve<A, F>(
    socket: WebSocket,
    schema: Arc<Schema>,
    sizes: Arc<Sizes>,
    gate: Arc<Gate>,
    authenticate: A,
    init_timeout: Duration,
) where
    A: FnOnce(Variables<DefaultScalarValue>) -> F,
    F: Future<Output = Result<Admitted, ApiError>>,
{
    let (mut ws_tx, mut ws_rx) = socket.split();
    let admitted = admit(&mut ws_tx, &mut ws_rx, authenticate, init_timeout).await;
    let admitted = match admitted {
        Ok(admitted) => admitted,
        Err(refused) => {
            if let Some(close) = refused {
                let _ = ws_tx.send(close).await;
            }
            return;
        }
    };
    pump(ws_tx, ws_rx, schema, sizes, gate, admitted).await;
}

/// Admission: pings are answered until `connection_init` comes (within `init_timeout`), whose
/// payload `authenticate` turns into the connection's caller. `Err` holds the close frame to
/// send, if any.
async fn admit<A, F>(
    ws_tx: &mut SplitSink<WebSocket, Message>,
    ws_rx: &mut SplitStream<WebSocket>,
    authenticate: A,
    init_timeout: Duration,
) -> Result<Admitted, Option<Message>>
where
    A: FnOnce(Variables<DefaultScalarValue>) -> F,
    F: Future<Output = Result<Admitted, ApiError>>,
{
    let init = async {
        loop {
            let Some(Ok(message)) = ws_rx.next().await else {
                return Err(None);
            };
            let bytes = match raw(message) {
                Raw::Control => continue,
                Raw::Close => return Err(None),
                Raw::Bytes(bytes) => bytes,
            };
            match opening(&bytes).map_err(Some)? {
                Opening::Init(payload) => return Ok(payload),
                Opening::Pong => {}
                Opening::Ping => {
                    let pong = Message::Text(json!({"type": "pong"}).to_string().into());
                    if ws_tx.send(pong).await.is_err() {
                        return Err(None);
                    }
                }
            }
        }
    };
    let payload = match tokio::time::timeout(init_timeout, init).await {
        Err(_) => {
            return Err(Some(close(
                CLOSE_INIT_TIMEOUT,
                "Connection initialisation timeout",
            )));
        }
        Ok(payload) => payload?,
    };
    authenticate(payload).await.map_err(|error| {
        let code = match error.code {
            ErrorCode::RateLimited => CLOSE_TOO_MANY,
            _ => 4403,
        };
        Some(close(code, &error.message))
    })
}

/// The message pump of an admitted connection: client frames to juniper (each operation charged
/// and costed first), juniper's replies and refusals to the client, until either side ends or the
/// caller's token expires.
async fn pump(
    mut ws_tx: SplitSink<WebSocket, Message>,
    ws_rx: SplitStream<WebSocket>,
    schema: Arc<Schema>,
    sizes: Arc<Sizes>,
    gate: Arc<Gate>,
    admitted: Admitted,
) {
    let Admitted {
        ctx,
        rate_key,
        guard,
    } = admitted;
    let config = ConnectionConfig::new(ctx).with_max_in_flight_operations(MAX_IN_FLIGHT);
    let (juniper_tx, juniper_rx) = Connection::new(schema, config).split();
    // Bounded: a client that floods refused operations without reading loses refusals, not
    // the node's memory.
    let (mut refused_tx, refused_rx) = mpsc::channel(16);

    // juniper acknowledges the connection that was authenticated here.
    let init = Input::Message(ClientMessage::ConnectionInit {
        payload: Variables::new(),
    });
    let frames = ws_rx
        .take_while(|r| future::ready(r.is_ok()))
        .filter_map(move |r| {
            let frame = r.ok().and_then(parse);
            if let Some(Ok(Input::Message(ClientMessage::Subscribe { id, payload }))) = &frame {
                let refused = match gate.limiter.as_ref().map(|l| l.check(&rate_key)) {
                    Some(Err(_)) => Some(refusal(
                        id,
                        ErrorCode::RateLimited,
                        "too many operations; slow down",
                    )),
                    _ => cost::check(&payload.query, &sizes)
                        .err()
                        .map(|why| refusal(id, ErrorCode::InvalidArgument, &why.to_string())),
                };
                if let Some(refused) = refused {
                    if refused_tx.try_send(refused).is_err() {
                        tracing::debug!(
                            id,
                            "graphql-ws refusal dropped: the client is not reading"
                        );
                    }
                    return future::ready(None);
                }
            }
            future::ready(frame.map(|f| Ok::<_, Infallible>(Frame(f))))
        });
    let input = stream::once(future::ready(Ok(Frame(Ok(init)))))
        .chain(frames)
        .forward(juniper_tx.sink_map_err(|e| match e {}));

    let replies = juniper_rx.map(|output| match output {
        Output::Message(message) => serde_json::to_string(&message)
            .map(|text| Message::Text(text.into()))
            .unwrap_or_else(|_| close(1011, "could not serialise a reply")),
        Output::Close { code, message } => close(code, &message),
    });
    let output = async move {
        let mut replies = stream::select(replies, refused_rx);
        let expired = expiry(guard.as_ref());
        tokio::pin!(expired);
        loop {
            let message = tokio::select! {
                () = &mut expired => close(CLOSE_EXPIRED, "the token has expired"),
                message = replies.next() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            let last = matches!(message, Message::Close(_));
            if ws_tx.send(message).await.is_err() || last {
                break;
            }
        }
        // The caller's place is held until the connection ends.
        drop(guard);
    };

    // Either side ending ends the connection.
    future::select(std::pin::pin!(input), std::pin::pin!(output)).await;
}
