//! REST handlers. Each validates everything before touching a store, so a rejected request
//! leaves nothing behind. The `#[utoipa::path]` on each is its OpenAPI description (served at
//! `/openapi.json`, see `openapi.rs`): the document comes from the code it describes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use common::{ApiError, BatchError, EventInput, ItemInput, RecQuery};
use serde::{Deserialize, Serialize};
use supervisors::Node;
use utoipa::{IntoParams, ToSchema};

use crate::error::{AppError, ErrorBody, body_error};

type Result<T, E = AppError> = std::result::Result<T, E>;

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| AppError::invalid(format!("invalid JSON body: {e}")))
}

fn check_id(field: &str, id: &str) -> Result<()> {
    common::validate_id(field, id).map_err(AppError::invalid)
}

/// A batch of events; all are validated before any is stored.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsBody {
    /// At least one event; at most `server.max_batch_events`.
    #[schema(value_type = Vec<EventInput>, min_items = 1)]
    events: Vec<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// Events newly stored.
    accepted: usize,
    /// Events whose `event_id` was already stored (retries); not applied twice.
    duplicates: usize,
}

/// Records user events.
#[utoipa::path(post, path = "/v1/events", tag = "events", request_body = EventsBody,
    responses(
        (status = 202, description = "Stored; applied to the user's session within milliseconds", body = Accepted),
        (status = 400, description = "Invalid argument", body = ErrorBody), (status = 413, description = "Payload too large", body = ErrorBody), (status = 503, description = "Unavailable; retry later", body = ErrorBody)))]
pub async fn post_events(
    State(node): State<Arc<Node>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = body.map_err(body_error)?;
    let batch: EventsBody = parse_json(&body)?;
    let events =
        common::validate_batch(batch.events, node.config.server.max_batch_events, |value| {
            serde_json::from_value::<EventInput>(value).map_err(|e| e.to_string())
        })
        .map_err(|error| match error {
            BatchError::Invalid { index, message } => AppError::at(index, message),
            other => ApiError::from(other).into(),
        })?;
    let outcome = node.post_events(events).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            accepted: outcome.accepted,
            duplicates: outcome.duplicates,
        }),
    )
        .into_response())
}

/// Creates or replaces a catalog item.
#[utoipa::path(put, path = "/v1/items/{item_id}", tag = "catalog", params(("item_id" = common::Id, Path, description = "Item id")),
    request_body = ItemInput,
    responses((status = 200, description = "The stored item", body = common::Item), (status = 400, description = "Invalid argument", body = ErrorBody), (status = 413, description = "Payload too large", body = ErrorBody), (status = 503, description = "Unavailable; retry later", body = ErrorBody)))]
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

#[utoipa::path(get, path = "/v1/items/{item_id}", tag = "catalog", params(("item_id" = common::Id, Path, description = "Item id")),
    responses((status = 200, description = "The item", body = common::Item), (status = 400, description = "Invalid argument", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
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

/// Deletes an item; it is never recommended again.
#[utoipa::path(delete, path = "/v1/items/{item_id}", tag = "catalog", params(("item_id" = common::Id, Path, description = "Item id")),
    responses((status = 204, description = "Deleted (or never existed)"), (status = 400, description = "Invalid argument", body = ErrorBody), (status = 503, description = "Unavailable; retry later", body = ErrorBody)))]
pub async fn delete_item(
    State(node): State<Arc<Node>>,
    Path(item_id): Path<String>,
) -> Result<StatusCode> {
    check_id("item_id", &item_id)?;
    node.delete_item(&item_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's live session: event count, recent interactions, current-window activity.
#[utoipa::path(get, path = "/v1/users/{user_id}", tag = "users", params(("user_id" = common::Id, Path, description = "User id")),
    responses((status = 200, description = "The session", body = actors::session::UserView), (status = 400, description = "Invalid argument", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 503, description = "Unavailable; retry later", body = ErrorBody)))]
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

/// Erases everything held about a user.
#[utoipa::path(delete, path = "/v1/users/{user_id}", tag = "users", params(("user_id" = common::Id, Path, description = "User id")),
    responses((status = 204, description = "Erased"), (status = 400, description = "Invalid argument", body = ErrorBody), (status = 503, description = "Unavailable; retry later", body = ErrorBody)))]
pub async fn delete_user(
    State(node): State<Arc<Node>>,
    Path(user_id): Path<String>,
) -> Result<StatusCode> {
    check_id("user_id", &user_id)?;
    node.erase_user(&user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Everything held about a user, as JSON (GDPR access request): session, interactions,
/// profile and events. Empty after an erasure.
#[utoipa::path(get, path = "/v1/users/{user_id}/export", tag = "users", params(("user_id" = common::Id, Path, description = "User id")),
    responses((status = 200, description = "The user's data", body = serde_json::Value), (status = 400, description = "Invalid argument", body = ErrorBody), (status = 503, description = "Unavailable; retry later", body = ErrorBody)))]
pub async fn export_user(
    State(node): State<Arc<Node>>,
    Path(user_id): Path<String>,
) -> Result<Response> {
    check_id("user_id", &user_id)?;
    Ok(Json(node.export_user(&user_id).await?).into_response())
}

/// Most fields a profile may have.
const MAX_PROFILE_FIELDS: usize = 64;

/// Sets a user's profile attributes (a JSON object). Fields named in `pii.fields` (email, name,
/// phone, address, notes by default) are encrypted at rest and never logged.
#[utoipa::path(put, path = "/v1/users/{user_id}/profile", tag = "users",
    params(("user_id" = common::Id, Path, description = "User id")),
    request_body(content = std::collections::HashMap<String, serde_json::Value>, description = "Profile attributes, at most 64"),
    responses((status = 204, description = "Stored"),
        (status = 400, description = "Invalid argument", body = ErrorBody),
        (status = 413, description = "Payload too large", body = ErrorBody),
        (status = 503, description = "Unavailable; retry later", body = ErrorBody)))]
pub async fn put_profile(
    State(node): State<Arc<Node>>,
    Path(user_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode> {
    check_id("user_id", &user_id)?;
    let body = body.map_err(body_error)?;
    let profile: serde_json::Map<String, serde_json::Value> = parse_json(&body)?;
    if profile.len() > MAX_PROFILE_FIELDS {
        return Err(AppError::invalid(format!(
            "a profile has at most {MAX_PROFILE_FIELDS} fields"
        )));
    }
    common::validate_json("profile", &profile).map_err(AppError::invalid)?;
    node.put_profile(&user_id, &serde_json::Value::Object(profile))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The query of a recommendation or trending request.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RecParams {
    /// How many results, 1 to 100.
    #[param(minimum = 1, maximum = 100, default = 10)]
    k: Option<u32>,
    /// Only items of this category.
    #[param(value_type = Option<common::Id>)]
    category: Option<String>,
}

/// Parses `k` (1..=100, default 10) and `category` from a query string.
pub fn rec_query(params: &HashMap<String, String>) -> Result<RecQuery> {
    // Not a number: 0, which the range check refuses with the same message.
    let k = params.get("k").map_or(10, |raw| raw.parse().unwrap_or(0));
    RecQuery::new(k, params.get("category").cloned()).map_err(AppError::invalid)
}

/// The query of a recommendation request beyond [`RecParams`].
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct DiversityParams {
    /// How far to trade relevance for variety, 0 (the model's ranking, the default) to 1:
    /// re-ranks by maximal marginal relevance over categories and item factors.
    #[param(minimum = 0.0, maximum = 1.0, default = 0.0)]
    diversity: Option<f64>,
}

/// Parses a recommendation request: [`rec_query`] and `diversity` (a number from 0 to 1,
/// default 0).
pub fn recommendation_query(params: &HashMap<String, String>) -> Result<RecQuery> {
    // Not a number: NaN, which the range check refuses with the same message.
    let diversity = params
        .get("diversity")
        .map(|raw| raw.trim().parse().unwrap_or(f64::NAN));
    rec_query(params)?
        .with_diversity(diversity)
        .map_err(AppError::invalid)
}

/// What is active now, by item (eligible ones, in `category` if given) and by category.
#[utoipa::path(get, path = "/v1/trending", tag = "recommendations", params(RecParams),
    responses((status = 200, description = "Trending items and categories", body = supervisors::node::TrendingView), (status = 400, description = "Invalid argument", body = ErrorBody)))]
pub async fn trending(
    State(node): State<Arc<Node>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response> {
    let query = rec_query(&params)?;
    Ok(Json(node.trending(&query)).into_response())
}

/// The user's top-k recommendations, with the reasons for each.
#[utoipa::path(get, path = "/v1/users/{user_id}/recommendations", tag = "recommendations",
    params(("user_id" = common::Id, Path, description = "User id"), RecParams, DiversityParams),
    responses((status = 200, description = "Recommendations, best first", body = common::Recommendations), (status = 400, description = "Invalid argument", body = ErrorBody), (status = 503, description = "Unavailable; retry later", body = ErrorBody)))]
pub async fn get_recommendations(
    State(node): State<Arc<Node>>,
    Path(user_id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response> {
    check_id("user_id", &user_id)?;
    let query = recommendation_query(&params)?;
    let recs = node.recommend(&user_id, &query).await?;
    Ok(Json(recs.as_ref()).into_response())
}

#[derive(Serialize, ToSchema)]
pub struct Status {
    /// `started`, `ok` or `done`.
    status: &'static str,
}

/// Starts a training run now; the new version is activated if it passes the gate.
#[utoipa::path(post, path = "/v1/admin/train", tag = "admin",
    responses((status = 202, description = "Started", body = Status), (status = 409, description = "Conflict", body = ErrorBody), (status = 503, description = "Unavailable; retry later", body = ErrorBody)))]
pub async fn train(State(node): State<Arc<Node>>) -> Result<Response> {
    node.train(false).await?;
    Ok((StatusCode::ACCEPTED, Json(Status { status: "started" })).into_response())
}

/// Takes a snapshot of the node's database now, for `streamrec restore`; one is also taken
/// every `objects.snapshot_interval`.
#[utoipa::path(post, path = "/v1/admin/snapshots", tag = "admin",
    responses((status = 200, description = "The snapshot taken", body = supervisors::SnapshotManifest), (status = 503, description = "Unavailable; retry later", body = ErrorBody)))]
pub async fn snapshot(State(node): State<Arc<Node>>) -> Result<Response> {
    Ok(Json(node.snapshot_now().await?).into_response())
}

/// This node's snapshots in the object store, oldest first.
#[utoipa::path(get, path = "/v1/admin/snapshots", tag = "admin",
    responses((status = 200, description = "The snapshots", body = Vec<supervisors::SnapshotManifest>), (status = 503, description = "Unavailable; retry later", body = ErrorBody)))]
pub async fn snapshots(State(node): State<Arc<Node>>) -> Result<Response> {
    Ok(Json(node.snapshots().await?).into_response())
}

/// Whether a training run is going, and how the last one ended. A script that started a run polls
/// this until `running` is false.
#[utoipa::path(get, path = "/v1/admin/train", tag = "admin",
    responses((status = 200, description = "The trainer's state", body = actors::trainer::TrainerObs), (status = 503, description = "Unavailable; retry later", body = ErrorBody)))]
pub async fn training(State(node): State<Arc<Node>>) -> Result<Response> {
    Ok(Json(node.training()?).into_response())
}

/// Model versions, their metrics, and the active one.
#[utoipa::path(get, path = "/v1/admin/models", tag = "admin",
    responses((status = 200, description = "The manifest", body = actors::registry::Manifest)))]
pub async fn models(State(node): State<Arc<Node>>) -> Response {
    Json(node.models().await).into_response()
}

#[derive(Serialize, ToSchema)]
pub struct Active {
    /// The version now active.
    active: String,
}

/// Back to the version active before the current one.
#[utoipa::path(post, path = "/v1/admin/models/rollback", tag = "admin",
    responses((status = 200, description = "Rolled back", body = Active), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflict", body = ErrorBody), (status = 503, description = "Unavailable; retry later", body = ErrorBody)))]
pub async fn rollback(State(node): State<Arc<Node>>) -> Result<Response> {
    let active = node.rollback().await?;
    Ok(Json(Active { active }).into_response())
}

/// Activates any stored version, e.g. one the gate rejected.
#[utoipa::path(post, path = "/v1/admin/models/{version}/activate", tag = "admin",
    params(("version" = common::Id, Path, description = "Model version")),
    responses((status = 200, description = "Activated", body = Active), (status = 400, description = "Invalid argument", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 503, description = "Unavailable; retry later", body = ErrorBody)))]
pub async fn activate(
    State(node): State<Arc<Node>>,
    Path(version): Path<String>,
) -> Result<Response> {
    check_id("version", &version)?;
    node.activate(&version).await?;
    Ok(Json(Active { active: version }).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct TreeParams {
    /// Most children listed per actor (the rest are counted).
    #[param(minimum = 0, maximum = 100_000, default = 1000)]
    max_children: Option<usize>,
}

/// The supervision tree: every actor with kind, status, mailbox, counters and restarts.
#[utoipa::path(get, path = "/v1/admin/actors", tag = "admin", params(TreeParams),
    responses((status = 200, description = "The tree from the root", body = serde_json::Value), (status = 400, description = "Invalid argument", body = ErrorBody)))]
pub async fn actors(
    State(node): State<Arc<Node>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response> {
    let max_children = match params.get("max_children") {
        None => 1000,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= 100_000)
            .ok_or_else(|| {
                AppError::invalid("`max_children` must be an integer from 0 to 100000")
            })?,
    };
    Ok(Json(node.actors(max_children)).into_response())
}

/// One actor's snapshot, with its observable state.
#[utoipa::path(get, path = "/v1/admin/actors/{id}", tag = "admin",
    params(("id" = String, Path, description = "Actor id, as in the tree")),
    responses((status = 200, description = "The actor", body = serde_json::Value), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn actor(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Result<Response> {
    Ok(Json(node.actor(&id)?).into_response())
}

#[derive(Serialize, ToSchema)]
pub struct ActionDone {
    id: String,
    action: String,
    /// `done`.
    status: &'static str,
}

/// An operator action on a live actor: restart, stop or passivate.
#[utoipa::path(post, path = "/v1/admin/actors/{id}/{action}", tag = "admin",
    params(
        ("id" = String, Path, description = "Actor id, as in the tree"),
        ("action" = String, Path, description = "What to do", example = "restart",
            pattern = "^(restart|stop|passivate)$"),
    ),
    responses((status = 200, description = "Done", body = ActionDone), (status = 400, description = "Invalid argument", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 409, description = "Conflict", body = ErrorBody), (status = 503, description = "Unavailable; retry later", body = ErrorBody)))]
pub async fn act_on_actor(
    State(node): State<Arc<Node>>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response> {
    node.act_on_actor(&id, &action).await?;
    Ok(Json(ActionDone {
        id,
        action,
        status: "done",
    })
    .into_response())
}

/// The cluster as this node sees it: members (node id, advertised address, partitions owned)
/// and every partition of the user topics with its owner and state (`active`, `restoring`, or
/// `moving` while no member serves it). Settled, every node shows the same map. A single
/// embedded node owns every partition.
#[utoipa::path(get, path = "/v1/admin/cluster", tag = "admin",
    responses((status = 200, description = "The shard map: node_id, generation, members (node_id, address, partitions) and partitions (partition, owner, state)", body = serde_json::Value)))]
pub async fn cluster(State(node): State<Arc<Node>>) -> Response {
    Json(node.cluster()).into_response()
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = Status)))]
pub async fn healthz() -> Response {
    Json(Status { status: "ok" }).into_response()
}

/// Readiness: a model is loaded and sessions run; dependencies are listed, `up` or `down`, with
/// the reason a dependency is down for operators only (send an operator's token). Dependency
/// probes are reused for `server.readyz_cache_ttl`.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = supervisors::node::Readiness),
        (status = 503, description = "Not ready", body = supervisors::node::Readiness)))]
pub async fn readyz(
    State(node): State<Arc<Node>>,
    Extension(probes): Extension<Arc<crate::readiness::Probes>>,
    request: axum::extract::Request,
) -> Response {
    let principal = crate::policy::principal_of(request.extensions());
    let dependencies = probes.dependencies(&node).await;
    let readiness = node.readiness_with(crate::readiness::visible_to(&principal, dependencies));
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        common::telemetry::render_metrics(),
    )
        .into_response()
}
