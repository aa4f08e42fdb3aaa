//! `GET /v1/ws?user_id=..[&k=..][&category=..]`: sends the user's current recommendations on
//! connect, then `{"type":"recommendations", ...}` every time they change. The connection reads
//! a watch channel from the push hub, so a slow client only ever receives the latest state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use common::Recommendations;
use supervisors::Node;

use crate::error::AppError;
use crate::rest::rec_query;

/// How often the server pings an idle connection.
const PING_EVERY: Duration = Duration::from_secs(30);

pub async fn upgrade(
    State(node): State<Arc<Node>>,
    Query(params): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Result<Response, AppError> {
    let user_id = params
        .get("user_id")
        .cloned()
        .ok_or_else(|| AppError::invalid("`user_id` is required"))?;
    common::validate_id("user_id", &user_id).map_err(AppError::invalid)?;
    let query = rec_query(&params)?;
    Ok(ws.on_upgrade(move |socket| async move {
        if let Err(error) = serve(node, socket, user_id, query).await {
            tracing::debug!(%error, "websocket closed with an error");
        }
    }))
}

/// `{"type":"recommendations", ...the body of GET recommendations...}`, serialised directly so
/// that numbers render exactly as REST renders them.
#[derive(serde::Serialize)]
struct Push<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    recs: &'a Recommendations,
}

fn message(recs: &Recommendations) -> Message {
    let text = serde_json::to_string(&Push {
        r#type: "recommendations",
        recs,
    })
    .unwrap_or_default();
    Message::Text(text.into())
}

async fn serve(
    node: Arc<Node>,
    mut socket: WebSocket,
    user_id: String,
    query: common::RecQuery,
) -> anyhow::Result<()> {
    let (sub, mut updates) = node.subscribe(&user_id, query.clone()).await?;
    let result = async {
        let mut last = node.recommend(&user_id, &query).await?;
        socket.send(message(&last)).await?;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                changed = updates.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let Some(recs) = updates.borrow_and_update().clone() else { continue };
                    if recs.items != last.items || recs.model_version != last.model_version {
                        socket.send(message(&recs)).await?;
                        last = recs;
                    }
                }
                incoming = socket.recv() => match incoming {
                    None | Some(Ok(Message::Close(_))) | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                _ = ping.tick() => socket.send(Message::Ping(Vec::new().into())).await?,
            }
        }
        anyhow::Ok(())
    }
    .await;
    node.unsubscribe(sub);
    result
}
