//! The one error type of the gateway. It renders a stable code and a safe message; internal
//! causes are logged where they happen and never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::{ApiError, ErrorCode};
use serde_json::json;

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
        let mut body =
            json!({ "error": { "code": self.error.code, "message": self.error.message } });
        if let Some(index) = self.index {
            body["error"]["index"] = json!(index);
        }
        (status, Json(body)).into_response()
    }
}

pub async fn not_found() -> AppError {
    ApiError::not_found("no such route").into()
}

pub async fn method_not_allowed() -> Response {
    let body = json!({ "error": { "code": "method_not_allowed", "message": "method not allowed on this route" } });
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
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
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => AppError::from(ApiError::unavailable("request timed out")).into_response(),
    }
}
