//! REST handlers. Each validates everything before touching a store, so a rejected request
//! leaves nothing behind.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::recs::MAX_K;
use common::{ApiError, ErrorCode, EventInput, ItemInput, RecQuery};
use serde::Deserialize;
use serde_json::json;
use supervisors::Node;

use crate::error::{AppError, body_error};

type Result<T, E = AppError> = std::result::Result<T, E>;

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| AppError::invalid(format!("invalid JSON body: {e}")))
}

fn check_id(field: &str, id: &str) -> Result<()> {
    common::validate_id(field, id).map_err(AppError::invalid)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsBody {
    events: Vec<serde_json::Value>,
}

pub async fn post_events(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = body.map_err(body_error)?;
    let batch: EventsBody = parse_json(&body)?;
    let max = node.config.server.max_batch_events;
    if batch.events.is_empty() {
        return Err(AppError::invalid(
            "`events` must contain at least one event",
        ));
    }
    if batch.events.len() > max {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("at most {max} events per request"),
        )
        .into());
    }
    let now = common::now_millis();
    let mut events = Vec::with_capacity(batch.events.len());
    for (i, value) in batch.events.into_iter().enumerate() {
        let input: EventInput = serde_json::from_value(value).map_err(|e| AppError::at(i, e))?;
        events.push(
            input
                .validate(now, || uuid::Uuid::now_v7().to_string())
                .map_err(|e| AppError::at(i, e))?,
        );
    }
    let outcome = node.post_events(events).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "accepted": outcome.accepted, "duplicates": outcome.duplicates })),
    )
        .into_response())
}

pub async fn put_item(
    State(node): State<Arc<Node>>,
    Path(item_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = body.map_err(body_error)?;
    let input: ItemInput = parse_json(&body)?;
    let item = input
        .validate(&item_id, common::now_millis())
        .map_err(AppError::invalid)?;
    node.upsert_item(item.clone()).await?;
    Ok(Json(item).into_response())
}

pub async fn get_item(
    State(node): State<Arc<Node>>,
    Path(item_id): Path<String>,
) -> Result<Response> {
    check_id("item_id", &item_id)?;
    let item = node
        .get_item(&item_id)
        .ok_or_else(|| ApiError::not_found(format!("item {item_id} not found")))?;
    Ok(Json(item.as_ref()).into_response())
}

pub async fn delete_item(
    State(node): State<Arc<Node>>,
    Path(item_id): Path<String>,
) -> Result<StatusCode> {
    check_id("item_id", &item_id)?;
    node.delete_item(&item_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn get_user(
    State(node): State<Arc<Node>>,
    Path(user_id): Path<String>,
) -> Result<Response> {
    check_id("user_id", &user_id)?;
    let user = node
        .user(&user_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {user_id} not found")))?;
    Ok(Json(user).into_response())
}

pub async fn delete_user(
    State(node): State<Arc<Node>>,
    Path(user_id): Path<String>,
) -> Result<StatusCode> {
    check_id("user_id", &user_id)?;
    node.erase_user(&user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Parses `k` (1..=100, default 10) and `category` from a query string.
pub fn rec_query(params: &HashMap<String, String>) -> Result<RecQuery> {
    let k = match params.get("k") {
        None => 10,
        Some(raw) => match raw.parse::<usize>() {
            Ok(k) if (1..=MAX_K).contains(&k) => k,
            _ => {
                return Err(AppError::invalid(format!(
                    "`k` must be an integer from 1 to {MAX_K}"
                )));
            }
        },
    };
    let category = match params.get("category") {
        None => None,
        Some(c) => {
            check_id("category", c)?;
            Some(c.clone())
        }
    };
    Ok(RecQuery { k, category })
}

/// `GET /v1/trending?k=&category=`: what is active now, by item (eligible ones, in `category` if
/// given) and by category.
pub async fn trending(
    State(node): State<Arc<Node>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response> {
    let query = rec_query(&params)?;
    Ok(Json(node.trending(&query)).into_response())
}

pub async fn get_recommendations(
    State(node): State<Arc<Node>>,
    Path(user_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response> {
    check_id("user_id", &user_id)?;
    let query = rec_query(&params)?;
    let recs = node.recommend(&user_id, &query).await?;
    Ok(Json(recs.as_ref()).into_response())
}

pub async fn train(State(node): State<Arc<Node>>) -> Result<Response> {
    node.train(false).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "status": "started" }))).into_response())
}

pub async fn models(State(node): State<Arc<Node>>) -> Response {
    Json(node.models().await).into_response()
}

/// `POST /v1/admin/models/rollback`: back to the version active before the current one.
pub async fn rollback(State(node): State<Arc<Node>>) -> Result<Response> {
    let version = node.rollback().await?;
    Ok(Json(json!({ "active": version })).into_response())
}

/// `POST /v1/admin/models/{version}/activate`: any stored version, e.g. one the gate rejected.
pub async fn activate(
    State(node): State<Arc<Node>>,
    Path(version): Path<String>,
) -> Result<Response> {
    node.activate(&version).await?;
    Ok(Json(json!({ "active": version })).into_response())
}

pub async fn actors(
    State(node): State<Arc<Node>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response> {
    let max_children = match params.get("max_children") {
        None => 1000,
        Some(raw) => raw
            .parse()
            .map_err(|_| AppError::invalid("`max_children` must be a non-negative integer"))?,
    };
    Ok(Json(node.actors(max_children)).into_response())
}

/// `GET /v1/admin/actors/{id}`: one actor's snapshot.
pub async fn actor(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Result<Response> {
    Ok(Json(node.actor(&id)?).into_response())
}

/// `POST /v1/admin/actors/{id}/{restart|stop|passivate}`.
pub async fn act_on_actor(
    State(node): State<Arc<Node>>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response> {
    node.act_on_actor(&id, &action).await?;
    Ok(Json(json!({ "id": id, "action": action, "status": "done" })).into_response())
}

pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

pub async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let readiness = node.readiness().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

pub async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        common::telemetry::render_metrics(),
    )
        .into_response()
}
