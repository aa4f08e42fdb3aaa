//! The gateway: REST, GraphQL, gRPC, WebSocket push, admin and health endpoints over one axum
//! router, so one port serves every protocol (gRPC is told apart by its path and content type).
//!
//! [`router`] builds the whole surface from a [`Node`], so tests drive it with
//! `router(node).oneshot(request)` and no socket. Every error leaves as
//! `{"error":{"code":"...","message":"..."}}` with the status of its code (see
//! `common::error`), and a rejected request stores nothing.

pub mod auth;
mod bulk;
mod client;
mod console;
mod error;
pub mod graphql;
pub mod grpc;
pub mod internal;
pub mod listener;
mod metrics;
pub mod openapi;
mod owner;
mod policy;
mod readiness;
mod rest;
mod streams;
pub mod tls;
mod watch;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post, put};
use supervisors::Node;

pub use error::AppError;
pub use owner::OWNER_HEADER;

/// All routes of a node, and how this node reaches the others (the internal service's client,
/// installed in `Users` once).
///
/// Fails when the authentication settings cannot work (auth on without any key).
pub fn router(node: Arc<Node>) -> Result<Router, auth::AuthError> {
    node.users()
        .set_remote(Arc::new(internal::Client::new(&node.config)));
    let max_body = node.config.server.max_body_bytes;
    let gate = Arc::new(auth::Gate::new(&node.config)?);
    let readiness = Arc::new(readiness::Probes::new(node.config.server.readyz_cache_ttl));
    let schema = graphql::schema();
    // What the cost check reads from the schema, once.
    let sizes = Arc::new(graphql::Sizes::of(&schema.schema));
    Ok(Router::new()
        .route("/v1/events", post(rest::post_events))
        .route(
            "/v1/items/{item_id}",
            put(rest::put_item)
                .get(rest::get_item)
                .delete(rest::delete_item),
        )
        .route(
            "/v1/users/{user_id}",
            get(rest::get_user).delete(rest::delete_user),
        )
        .route(
            "/v1/users/{user_id}/recommendations",
            get(rest::get_recommendations),
        )
        .route("/v1/users/{user_id}/export", get(rest::export_user))
        .route("/v1/users/{user_id}/profile", put(rest::put_profile))
        .route("/v1/trending", get(rest::trending))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/admin/train", post(rest::train).get(rest::training))
        .route("/v1/admin/models", get(rest::models))
        .route(
            "/v1/admin/snapshots",
            post(rest::snapshot).get(rest::snapshots),
        )
        .route("/v1/admin/models/rollback", post(rest::rollback))
        .route("/v1/admin/models/{version}/activate", post(rest::activate))
        .route("/graphql", get(graphql::graphql).post(graphql::graphql))
        .route("/graphiql", graphql::graphiql())
        .route("/console", get(console::page))
        .route("/v1/admin/stream", get(console::stream))
        .route("/v1/admin/actors", get(rest::actors))
        .route("/v1/admin/actors/{id}", get(rest::actor))
        .route("/v1/admin/actors/{id}/{action}", post(rest::act_on_actor))
        .route("/v1/admin/cluster", get(rest::cluster))
        .route("/healthz", get(rest::healthz))
        .route("/readyz", get(rest::readyz))
        .route("/metrics", get(rest::metrics))
        .merge(grpc::routes(node.clone()))
        .merge(openapi::routes(&node))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            (node.clone(), gate.clone()),
            auth::gate,
        ))
        .layer(axum::middleware::from_fn(owner::record))
        .layer(axum::middleware::from_fn_with_state(
            node.config.server.request_timeout,
            error::timeout,
        ))
        // Bulk import and export: behind the gate, outside the total timeout (see `bulk`).
        .merge(bulk::routes(node.clone(), gate.clone()))
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(axum::middleware::from_fn(trace_request))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::Extension(schema))
        .layer(axum::Extension(sizes))
        .layer(axum::Extension(readiness))
        // GraphQL spends the gate's rate limiter per operation (batches, graphql-ws).
        .layer(axum::Extension(gate))
        .with_state(node))
}

/// The request's root span, `http.request` (route template, method, status), continuing a caller's
/// `traceparent` when it sends one; everything the request does nests under it.
async fn trace_request(request: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let span = tracing::info_span!(
        "http.request",
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    common::telemetry::set_parent_from(
        &span,
        request
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
    );
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}
