//! The one error type of the gateway. It renders a stable code and a safe message; internal
//! causes are logged where they happen and never sent.

use axum::Json;
use axum::http::StatusCode;
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
        (status, Json(body)).into_response()
    }
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
        Err(_) if grpc => {
            crate::grpc::status(&ApiError::unavailable("request timed out")).into_http()
        }
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
    (status, Json(body)).into_response()
}
