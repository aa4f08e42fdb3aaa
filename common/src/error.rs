//! One table of stable error codes. Every failure a client can see is one of these codes with a
//! message; the code decides the HTTP status and the gRPC status, so the mapping lives here and
//! nowhere else.

use serde::Serialize;

/// A stable, machine-readable error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or fails validation.
    InvalidArgument,
    /// The request body exceeds the configured limit.
    PayloadTooLarge,
    /// The addressed user, item or model does not exist.
    NotFound,
    /// The node cannot serve this now (store, model or actor not available); retry later.
    Unavailable,
    /// A training run is already in progress.
    Conflict,
    /// No valid credentials (missing, expired or forged token).
    Unauthenticated,
    /// Valid credentials that do not allow this.
    PermissionDenied,
    /// The caller sent too many requests; retry after the `Retry-After` delay.
    RateLimited,
    /// No such route, or the method is not allowed on it.
    MethodNotAllowed,
    /// A bug or an unexpected failure; details are logged, never sent.
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::InvalidArgument,
        ErrorCode::PayloadTooLarge,
        ErrorCode::NotFound,
        ErrorCode::Unavailable,
        ErrorCode::Conflict,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::RateLimited,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Internal,
    ];

    /// The code whose [`as_str`](Self::as_str) is `name` (as another node reports it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::NotFound => 404,
            ErrorCode::Unavailable => 503,
            ErrorCode::Conflict => 409,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::RateLimited => 429,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Internal => 500,
        }
    }

    /// The canonical gRPC status code (`google.rpc.Code`) for the same failure.
    pub fn grpc_code(self) -> i32 {
        match self {
            ErrorCode::InvalidArgument => 3,
            ErrorCode::PayloadTooLarge => 8,
            ErrorCode::NotFound => 5,
            ErrorCode::Unavailable => 14,
            ErrorCode::Conflict => 10,
            ErrorCode::Unauthenticated => 16,
            ErrorCode::PermissionDenied => 7,
            ErrorCode::RateLimited => 8,
            ErrorCode::MethodNotAllowed => 12,
            ErrorCode::Internal => 13,
        }
    }
}

/// An error meant for a client: a code and a message that is safe to show.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    /// An internal failure: the caller sees a generic message; the cause goes to the log.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_its_name() {
        for name in [
            "invalid_argument",
            "payload_too_large",
            "not_found",
            "unavailable",
            "conflict",
            "unauthenticated",
            "permission_denied",
            "rate_limited",
            "method_not_allowed",
            "internal",
        ] {
            assert_eq!(
                ErrorCode::from_name(name).map(ErrorCode::as_str),
                Some(name)
            );
        }
        assert_eq!(ErrorCode::from_name("nope"), None);
    }

    #[test]
    fn all_holds_every_code_once() {
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }
}
