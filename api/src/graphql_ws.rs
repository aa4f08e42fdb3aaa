//! GraphQL subscriptions over graphql-transport-ws, with the same cost limits as HTTP queries.
//!
//! juniper's connection runs whatever document a `subscribe` message carries, and offers no hook
//! before it does; so frames are read here first. A `subscribe` whose document is too deep or too
//! costly (`query_cost::check`) is answered with an `error` message for its id and never reaches
//! juniper; every other frame passes through. WebSocket-level pings and pongs are the transport's
//! business (axum answers pings) and are not handed to the protocol.
//!
//! Connection limits (`streams.rs`): `connection_init` must be handled within
//! `server.stream_init_timeout` (else close 4408); the connection then holds one of its caller's
//! streams ([`Admission`]: close 4429 when the caller holds too many), and closes with 4401 when
//! the caller's token expires.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use common::ApiError;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt, future, stream};
use juniper::DefaultScalarValue;
use juniper_graphql_ws::Init;
use juniper_graphql_ws::graphql_transport_ws::{ClientMessage, Connection, Input, Output};
use serde_json::json;
use tokio::sync::oneshot;

use crate::auth::Verified;
use crate::graphql::{Ctx, Schema};
use crate::streams::{
    CLOSE_EXPIRED, CLOSE_INIT_TIMEOUT, CLOSE_TOO_MANY, Caller, StreamGuard, expiry,
};

/// What `connection_init` decides about a connection's place among its caller's streams: made
/// by the upgrade, completed by the init handler, read by [`serve`].
pub struct Admission {
    caller: Option<Caller>,
    /// Taken at the upgrade when the caller was known then.
    guard: Option<StreamGuard>,
    tx: oneshot::Sender<Result<StreamGuard, ApiError>>,
}

/// The [`serve`] end of an [`Admission`].
pub type Admitted = oneshot::Receiver<Result<StreamGuard, ApiError>>;

impl Admission {
    pub fn new(caller: Option<Caller>, guard: Option<StreamGuard>) -> (Self, Admitted) {
        let (tx, rx) = oneshot::channel();
        (Self { caller, guard, tx }, rx)
    }

    /// The caller proved who they are in `connection_init`: counted, and bounded by, that token.
    pub fn verified(&mut self, verified: &Verified) {
        self.caller = self
            .caller
            .as_ref()
            .map(|caller| caller.authenticated(&verified.principal.sub, Some(verified.expires_at)));
    }

    /// Takes the caller's place (or refuses: the connection then closes with 4429).
    pub fn admit(self) -> Result<(), ApiError> {
        let guard = match (self.guard, &self.caller) {
            (Some(guard), _) => Ok(guard),
            (None, Some(caller)) => caller.open_stream(),
            (None, None) => return Ok(()),
        };
        let refused = guard.as_ref().err().cloned();
        let _ = self.tx.send(guard);
        refused.map_or(Ok(()), Err)
    }
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

fn parse(message: Message) -> Option<Result<Input<DefaultScalarValue>, InvalidFrame>> {
    let bytes = match message {
        Message::Text(text) => text.as_bytes().to_vec(),
        Message::Binary(bytes) => bytes.to_vec(),
        Message::Close(_) => return Some(Ok(Input::Close)),
        Message::Ping(_) | Message::Pong(_) => return None,
    };
    Some(
        serde_json::from_slice(&bytes)
            .map(Input::Message)
            .map_err(|e| InvalidFrame(e.to_string())),
    )
}

/// The `error` message refusing a subscription, in the shape juniper gives validation errors.
fn refusal(id: &str, why: &str) -> Message {
    let body = json!({
        "id": id,
        "type": "error",
        "payload": [{"message": why, "extensions": {"code": "invalid_argument"}}],
    });
    Message::Text(body.to_string().into())
}

pub async fn serve<I>(
    socket: WebSocket,
    schema: std::sync::Arc<Schema>,
    init: I,
    admitted: Admitted,
    init_timeout: Duration,
) where
    I: Init<DefaultScalarValue, Ctx> + Send,
{
    let (mut ws_tx, ws_rx) = socket.split();
    let (juniper_tx, juniper_rx) = Connection::new(schema, init).split();
    // Bounded: a client that floods refused subscriptions without reading loses refusals, not
    // the node's memory.
    let (mut refused_tx, refused_rx) = mpsc::channel(16);

    let input = ws_rx
        .take_while(|r| future::ready(r.is_ok()))
        .filter_map(move |r| {
            let frame = r.ok().and_then(parse);
            if let Some(Ok(Input::Message(ClientMessage::Subscribe { id, payload }))) = &frame
                && let Err(why) = crate::query_cost::check(&payload.query)
            {
                if refused_tx.try_send(refusal(id, &why)).is_err() {
                    tracing::debug!(id, "graphql-ws refusal dropped: the client is not reading");
                }
                return future::ready(None);
            }
            future::ready(frame.map(|f| Ok::<_, Infallible>(Frame(f))))
        })
        .forward(juniper_tx.sink_map_err(|e| match e {}));

    let replies = juniper_rx.map(|output| match output {
        Output::Message(message) => serde_json::to_string(&message)
            .map(|text| Message::Text(text.into()))
            .unwrap_or_else(|e| close(1011, format!("could not serialise a reply: {e}"))),
        Output::Close { code, message } => close(code, message),
    });
    let output = async move {
        let mut replies = stream::select(replies, refused_rx);
        let init_by = tokio::time::Instant::now() + init_timeout;
        let mut admitted = Some(admitted);
        // The caller's place, held until the connection ends.
        let mut guard = None;
        let expired = expiry(None);
        tokio::pin!(expired);
        loop {
            let message = tokio::select! {
                // First, so that a refusal's 4429 goes out before juniper's own 4403.
                biased;
                result = async { admitted.as_mut()?.await.ok() }, if admitted.is_some() => {
                    admitted = None;
                    match result {
                        Some(Ok(admitted)) => {
                            expired.set(expiry(Some(&admitted)));
                            guard = Some(admitted);
                            continue;
                        }
                        Some(Err(refused)) => close(CLOSE_TOO_MANY, refused.message),
                        // Init failed (juniper closes with 4403), or admission is not counted.
                        None => continue,
                    }
                }
                () = tokio::time::sleep_until(init_by), if admitted.is_some() => {
                    close(CLOSE_INIT_TIMEOUT, "Connection initialisation timeout".into())
                }
                () = &mut expired => close(CLOSE_EXPIRED, "the token has expired".into()),
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
        drop(guard);
    };

    // Either side ending ends the connection.
    future::select(std::pin::pin!(input), std::pin::pin!(output)).await;
}

fn close(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}
