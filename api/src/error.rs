//! The one error type of the gateway, and the one place that renders an error of the shared
//! table (`common::error`) for the protocol of the request: a JSON body over HTTP (REST,
//! GraphQL's transport), a status with the code in metadata over gRPC, a field error, a
//! GraphQL-shaped 400 or a graphql-transport-ws `error` message for GraphQL. Every module that
//! refuses a request renders through here, so this module depends on no other module of the
//! gateway. It renders a stable code and a safe message; internal causes are logged where they
//! happen and never sent. Every 503 over HTTP says when to come back (`Retry-After`): the node
//! is restarting an actor, or the user's partition is moving between nodes, and a retry soon is
//! likely to succeed.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::{ApiError, ErrorCode};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable: `invalid_argument`, `payload_too_large`, `not_found`,
    /// `method_not_allowed`, `unauthenticated`, `permission_denied`, `rate_limited`,
    /// `unavailable`, `conflict`, `internal`.
    pub code: String,
    /// For people; may change between versions.
    pub message: String,
    /// For a batch: the index of the first bad entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

#[derive(Debug)]
pub struct AppError {
    pub error: ApiError,
    /// For batch requests: the index of the first bad entry.
    pub index: Option<usize>,
}

impl From<ApiError> for AppError {
    fn from(error: ApiError) -> Self {
        Self { error, index: None }
    }
}

impl AppError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::invalid(message).into()
    }

    pub fn at(index: usize, message: impl std::fmt::Display) -> Self {
        Self {
            error: ApiError::invalid(format!("events[{index}]: {message}")),
            index: Some(index),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.error.code.as_str().to_owned(),
                message: self.error.message,
                index: self.index,
            },
        };
        retry_soon((status, Json(body)).into_response())
    }
}

/// How long a client should wait before retrying an `unavailable` request: about what a
/// restarting actor or one step of a partition hand-off takes.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Adds `Retry-After` to a 503 that has none.
fn retry_soon(response: Response) -> Response {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE
        && !response.headers().contains_key(header::RETRY_AFTER)
    {
        return with_retry_after(response, UNAVAILABLE_RETRY_AFTER);
    }
    response
}

pub async fn not_found() -> AppError {
    ApiError::not_found("no such route").into()
}

pub async fn method_not_allowed() -> AppError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
    .into()
}

/// Maps a body that could not be read (too large, broken stream) to an error.
pub fn body_error(rejection: axum::extract::rejection::BytesRejection) -> AppError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            "request body exceeds server.max_body_bytes",
        )
        .into()
    } else {
        AppError::invalid(format!(
            "could not read the request body: {}",
            rejection.body_text()
        ))
    }
}

/// Fails a request that takes longer than `server.request_timeout` with 503. A WebSocket is not
/// affected: its upgrade answers at once and the connection lives on in its own task.
pub async fn timeout(
    axum::extract::State(limit): axum::extract::State<std::time::Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let grpc = is_grpc(&request);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) if grpc => grpc_status(&ApiError::unavailable("request timed out")).into_http(),
        Err(_) => AppError::from(ApiError::unavailable("request timed out")).into_response(),
    }
}

/// The code for an error status that did not come from an `AppError` (axum's own rejections of
/// a malformed path, query string, body or upgrade).
fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        404 => ErrorCode::NotFound.as_str(),
        405 => ErrorCode::MethodNotAllowed.as_str(),
        429 => ErrorCode::RateLimited.as_str(),
        408 | 503 => ErrorCode::Unavailable.as_str(),
        413 => ErrorCode::PayloadTooLarge.as_str(),
        400..=499 => ErrorCode::InvalidArgument.as_str(),
        _ => ErrorCode::Internal.as_str(),
    }
}

/// Whether a request speaks gRPC (its errors are statuses in trailers, never JSON bodies).
pub fn is_grpc(request: &axum::extract::Request) -> bool {
    request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Gives every error response the one JSON shape, whichever layer produced it.
pub async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if is_grpc(&request) {
        return next.run(request).await;
    }
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let bytes = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let mut message = String::from_utf8_lossy(&bytes).trim().to_owned();
    if message.is_empty() || status.is_server_error() {
        message = status.canonical_reason().unwrap_or("error").to_lowercase();
    }
    let body = json!({ "error": { "code": code_for(status), "message": message } });
    retry_soon((status, Json(body)).into_response())
}

/// Metadata key carrying the stable error code of a failed gRPC call.
pub const ERROR_CODE_KEY: &str = "streamrec-error-code";

/// The gRPC status for an error of the shared table.
pub fn grpc_status(error: &ApiError) -> tonic::Status {
    let mut status = tonic::Status::new(
        tonic::Code::from_i32(error.code.grpc_code()),
        error.message.clone(),
    );
    if let Ok(value) = error.code.as_str().parse() {
        status.metadata_mut().insert(ERROR_CODE_KEY, value);
    }
    status
}

/// A GraphQL field error carrying the shared code in `extensions.code`.
pub fn field_error(e: ApiError) -> juniper::FieldError {
    let code = e.code.as_str();
    juniper::FieldError::new(e.message, juniper::graphql_value!({ "code": code }))
}

/// A refused GraphQL document: 400, in GraphQL's error shape with the shared code.
pub fn graphql_refusal(message: String) -> Response {
    let code = ErrorCode::InvalidArgument.as_str();
    let body = json!({
        "errors": [{ "message": message, "extensions": { "code": code } }]
    });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// The graphql-transport-ws `error` message refusing operation `id`, in the shape juniper gives
/// validation errors.
pub fn graphql_ws_refusal(id: &str, code: ErrorCode, why: &str) -> axum::extract::ws::Message {
    let body = json!({
        "id": id,
        "type": "error",
        "payload": [{"message": why, "extensions": {"code": code.as_str()}}],
    });
    axum::extract::ws::Message::Text(body.to_string().into())
}

/// Renders an error for the protocol of the request: a gRPC status, or the JSON body (with
/// `WWW-Authenticate: Bearer` when a token is missing or refused).
pub fn reject(request: &axum::extract::Request, error: ApiError) -> Response {
    if is_grpc(request) {
        return grpc_status(&error).into_http::<axum::body::Body>();
    }
    let code = error.code;
    let mut response = AppError::from(error).into_response();
    if code == ErrorCode::Unauthenticated {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The error of a caller over its rate limit.
pub fn too_many_requests() -> ApiError {
    ApiError::new(ErrorCode::RateLimited, "too many requests; slow down")
}

/// 429 `rate_limited` with `Retry-After`: how many whole seconds until the caller's bucket holds
/// a token again.
pub fn rate_limited(wait: Duration) -> Response {
    with_retry_after(AppError::from(too_many_requests()).into_response(), wait)
}

/// Adds `Retry-After` (whole seconds, at least one) to a response.
pub fn with_retry_after(mut response: Response, wait: Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// 401 `unauthenticated` (with `WWW-Authenticate: Bearer`) for a request that needs a token.
pub fn unauthenticated(message: &str) -> Response {
    let error = ApiError::new(ErrorCode::Unauthenticated, message.to_owned());
    let mut response = AppError::from(error).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn every_unavailable_answer_says_when_to_retry_in_the_one_error_shape() {
        let response =
            AppError::from(ApiError::unavailable("user u's partition is moving")).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            body(response).await,
            json!({"error": {"code": "unavailable", "message": "user u's partition is moving"}})
        );
        // A hint of the caller's own replaces the default.
        let hinted = with_retry_after(
            AppError::from(ApiError::unavailable("later")).into_response(),
            Duration::from_secs(7),
        );
        assert_eq!(hinted.headers()[header::RETRY_AFTER], "7");
        // Other refusals do not invite a retry.
        let missing = AppError::from(ApiError::not_found("no such user")).into_response();
        assert!(!missing.headers().contains_key(header::RETRY_AFTER));
    }

    #[tokio::test]
    async fn a_bare_503_from_another_layer_gets_the_shape_and_retry_after() {
        let app = axum::Router::new()
            .route(
                "/",
                axum::routing::get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "busy") }),
            )
            .layer(axum::middleware::from_fn(json_errors));
        let response = tower::ServiceExt::oneshot(
            app,
            axum::http::Request::get("/")
                .body(axum::body::Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(body(response).await["error"]["code"], "unavailable");
    }
}
