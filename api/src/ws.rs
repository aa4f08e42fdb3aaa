//! `GET /v1/ws[?user_id=..&k=..&category=..&diversity=..]`: live recommendations over one
//! WebSocket, for as many users as the client subscribes to (up to [`MAX_SUBSCRIPTIONS`]).
//!
//! Client → server, JSON text messages:
//! - `{"type":"subscribe","user_id":"u1","k":5,"category":"music","diversity":0.3}` (`k`,
//!   `category`, `diversity` optional)
//! - `{"type":"unsubscribe","user_id":"u1"}`
//! - `{"type":"ping"}`
//!
//! Server → client: `{"type":"subscribed","user_id"}`, then the user's current
//! `{"type":"recommendations", ...the body of GET recommendations...}` and one more every time
//! they change; `{"type":"unsubscribed","user_id"}`, `{"type":"pong"}`, and
//! `{"type":"error","error":{"code","message"}}` for a bad message (the connection stays up).
//! Each `subscribe` spends one unit of the caller's rate limit (the gate's bucket, the one its
//! requests spend); past it, an `error` with `rate_limited`, and the connection stays up.
//! A `user_id` in the URL subscribes at once, as the first message would.
//!
//! Each subscription is a task reading a watch channel from the push hub: a client that reads
//! slowly holds up only its own tasks, and gets the latest state when it catches up, never a
//! backlog. The server pings every 30 s and closes a connection silent for 2 minutes.
//!
//! The caller is authenticated at the upgrade (`Authorization` header, or `?access_token=` since
//! browsers cannot set headers on a WebSocket), and each subscription is authorized for them: a
//! `user` may watch only themselves.
//!
//! Limits (see `streams.rs`): messages and frames up to `server.max_body_bytes` (a larger one
//! ends the connection); a connection whose URL names no user must send its first message
//! within `server.stream_init_timeout` (else close 4408); it counts toward the caller's
//! `server.max_streams_per_caller` (429 at the upgrade when over); it closes with 4401 when the
//! caller's token expires.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Query, State};
use axum::response::Response;
use common::{ApiError, ErrorCode, RecQuery, Recommendations};
use serde::Deserialize;
use serde_json::json;
use supervisors::{Node, Subscription};
use tokio::sync::mpsc;

use crate::auth::{Action, Gate, Principal, authorize};
use crate::error::AppError;
use crate::rest::recommendation_query;
use crate::streams::{
    CLOSE_EXPIRED, CLOSE_INIT_TIMEOUT, Caller, StreamGuard, close, expiry, sleep_until,
};

/// How often the server pings a connection.
const PING_EVERY: Duration = Duration::from_secs(30);
/// A connection that sends nothing (not even a pong) for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Most users one connection may watch.
pub const MAX_SUBSCRIPTIONS: usize = 64;

pub async fn upgrade(
    State(node): State<Arc<Node>>,
    Query(params): Query<HashMap<String, String>>,
    principal: Option<Extension<Principal>>,
    caller: Option<Extension<Caller>>,
    Extension(gate): Extension<Arc<Gate>>,
    ws: WebSocketUpgrade,
) -> Result<Response, AppError> {
    let principal = principal.map_or_else(Principal::nobody, |p| p.0);
    // Each `subscribe` spends one unit of the caller's bucket, as a request would.
    let rate = caller.as_ref().map(|c| (gate, c.key.clone()));
    let first = match params.get("user_id") {
        Some(user_id) => {
            common::validate_id("user_id", user_id).map_err(AppError::invalid)?;
            authorize(&principal, Action::ReadUser(user_id), "websocket")?;
            Some((user_id.clone(), recommendation_query(&params)?))
        }
        None => None,
    };
    let guard = caller.map(|c| c.open_stream()).transpose()?;
    let max_message = node.config.server.max_body_bytes;
    Ok(ws
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| async move {
            // The connection lives on in its own task: its reads of users owned by another node
            // carry its caller as a request's would.
            let caller = principal.clone();
            let served = crate::policy::CALLER
                .scope(caller, serve(node, principal, rate, socket, first, guard));
            if let Err(error) = served.await {
                tracing::debug!(%error, "websocket closed with an error");
            }
        }))
}

/// `{"type":"recommendations", ...}`, serialised directly so that numbers render exactly as REST
/// renders them.
#[derive(serde::Serialize)]
struct Push<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    recs: &'a Recommendations,
}

fn recommendations(recs: &Recommendations) -> Message {
    let text = serde_json::to_string(&Push {
        r#type: "recommendations",
        recs,
    })
    .unwrap_or_default();
    Message::Text(text.into())
}

fn event(value: serde_json::Value) -> Message {
    Message::Text(value.to_string().into())
}

fn error(e: &ApiError) -> Message {
    event(json!({"type": "error", "error": {"code": e.code.as_str(), "message": e.message}}))
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Subscribe {
        user_id: String,
        #[serde(default)]
        k: Option<usize>,
        #[serde(default)]
        category: Option<String>,
        /// 0 to 1, as `GET /v1/users/{id}/recommendations?diversity=` takes it.
        #[serde(default)]
        diversity: Option<f64>,
    },
    Unsubscribe {
        user_id: String,
    },
    Ping,
}

/// One watched user: the push hub's subscription and the task forwarding its changes.
struct Watch {
    sub: u64,
    task: tokio::task::AbortHandle,
    last: Option<Arc<Recommendations>>,
}

struct Connection {
    node: Arc<Node>,
    /// Who connected: each subscription is authorized for them.
    principal: Principal,
    watches: HashMap<String, Watch>,
    changes: mpsc::Sender<(String, Arc<Recommendations>)>,
    /// The gate (its rate limiter) and the caller's bucket in it.
    rate: Option<(Arc<Gate>, String)>,
}

impl Connection {
    async fn subscribe(
        &mut self,
        user_id: String,
        query: RecQuery,
    ) -> Result<Vec<Message>, ApiError> {
        common::validate_id("user_id", &user_id).map_err(ApiError::invalid)?;
        authorize(&self.principal, Action::ReadUser(&user_id), "websocket")?;
        if !self.watches.contains_key(&user_id) && self.watches.len() >= MAX_SUBSCRIPTIONS {
            return Err(ApiError::invalid(format!(
                "a connection may watch at most {MAX_SUBSCRIPTIONS} users"
            )));
        }
        self.unsubscribe(&user_id);
        let Subscription {
            id: sub,
            current,
            mut updates,
        } = self.node.subscribe(&user_id, query).await?;
        let (tx, user) = (self.changes.clone(), user_id.clone());
        let task = tokio::spawn(async move {
            while updates.changed().await.is_ok() {
                let latest = updates.borrow_and_update().clone();
                if let Some(recs) = latest
                    && tx.send((user.clone(), recs)).await.is_err()
                {
                    break;
                }
            }
        })
        .abort_handle();
        self.watches.insert(
            user_id.clone(),
            Watch {
                sub,
                task,
                last: Some(current.clone()),
            },
        );
        Ok(vec![
            event(json!({"type": "subscribed", "user_id": user_id})),
            recommendations(&current),
        ])
    }

    /// Whether the user was watched.
    fn unsubscribe(&mut self, user_id: &str) -> bool {
        let Some(watch) = self.watches.remove(user_id) else {
            return false;
        };
        watch.task.abort();
        self.node.unsubscribe(watch.sub);
        true
    }

    async fn handle(&mut self, text: &str) -> Vec<Message> {
        let parsed: Result<ClientMessage, _> = serde_json::from_str(text);
        let result = match parsed {
            Err(e) => Err(ApiError::invalid(format!("not a valid message: {e}"))),
            Ok(ClientMessage::Ping) => Ok(vec![event(json!({"type": "pong"}))]),
            Ok(ClientMessage::Unsubscribe { user_id }) => {
                if self.unsubscribe(&user_id) {
                    Ok(vec![event(
                        json!({"type": "unsubscribed", "user_id": user_id}),
                    )])
                } else {
                    Err(ApiError::not_found(format!("not watching {user_id:?}")))
                }
            }
            Ok(ClientMessage::Subscribe { .. }) if !self.may_operate() => Err(ApiError::new(
                ErrorCode::RateLimited,
                "too many operations; slow down",
            )),
            Ok(ClientMessage::Subscribe {
                user_id,
                k,
                category,
                diversity,
            }) => {
                let mut params = HashMap::new();
                if let Some(k) = k {
                    params.insert("k".to_owned(), k.to_string());
                }
                if let Some(c) = category {
                    params.insert("category".to_owned(), c);
                }
                if let Some(d) = diversity {
                    params.insert("diversity".to_owned(), d.to_string());
                }
                match recommendation_query(&params) {
                    Ok(query) => self.subscribe(user_id, query).await,
                    Err(e) => Err(e.error),
                }
            }
        };
        result.unwrap_or_else(|e| vec![error(&e)])
    }

    /// Takes one unit of the caller's rate limit for an operation, if there is one left.
    fn may_operate(&self) -> bool {
        self.rate.as_ref().is_none_or(|(gate, key)| {
            gate.limiter
                .as_ref()
                .is_none_or(|limiter| limiter.check(key).is_ok())
        })
    }

    /// The message for a change, unless it changes nothing the client has seen.
    fn change(&mut self, user_id: &str, recs: Arc<Recommendations>) -> Option<Message> {
        let watch = self.watches.get_mut(user_id)?;
        if watch.last.as_ref() == Some(&recs) {
            return None;
        }
        let message = recommendations(&recs);
        watch.last = Some(recs);
        Some(message)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let users: Vec<String> = self.watches.keys().cloned().collect();
        for user in users {
            self.unsubscribe(&user);
        }
    }
}

async fn serve(
    node: Arc<Node>,
    principal: Principal,
    rate: Option<(Arc<Gate>, String)>,
    mut socket: WebSocket,
    first: Option<(String, RecQuery)>,
    guard: Option<StreamGuard>,
) -> anyhow::Result<()> {
    let init_timeout = node.config.server.stream_init_timeout;
    let (changes, mut incoming_changes) = mpsc::channel(MAX_SUBSCRIPTIONS);
    let mut conn = Connection {
        node,
        principal,
        watches: HashMap::new(),
        changes,
        rate,
    };
    // Without a user in the URL the client must say what it wants, and soon.
    let mut first_message_by = Some(tokio::time::Instant::now() + init_timeout);
    if let Some((user_id, query)) = first {
        first_message_by = None;
        // The URL form: its subscription's messages, without the `subscribed` acknowledgement.
        let messages = conn.subscribe(user_id, query).await?;
        for m in messages.into_iter().skip(1) {
            socket.send(m).await?;
        }
    }
    let expired = expiry(guard.as_ref());
    tokio::pin!(expired);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            Some((user_id, recs)) = incoming_changes.recv() => {
                if let Some(m) = conn.change(&user_id, recs) {
                    socket.send(m).await?;
                }
            }
            incoming = socket.recv() => match incoming {
                None | Some(Ok(Message::Close(_))) | Some(Err(_)) => break,
                Some(Ok(Message::Text(text))) => {
                    last_heard = tokio::time::Instant::now();
                    first_message_by = None;
                    for m in conn.handle(&text).await {
                        socket.send(m).await?;
                    }
                }
                Some(Ok(_)) => last_heard = tokio::time::Instant::now(),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    break;
                }
                socket.send(Message::Ping(Vec::new().into())).await?;
            }
            () = sleep_until(first_message_by) => {
                socket.send(close(CLOSE_INIT_TIMEOUT, "no message within server.stream_init_timeout")).await?;
                break;
            }
            () = &mut expired => {
                socket.send(close(CLOSE_EXPIRED, "the token has expired")).await?;
                break;
            }
        }
    }
    drop(guard);
    Ok(())
}
