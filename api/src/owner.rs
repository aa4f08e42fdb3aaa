//! `x-streamrec-owner`: which node served a user-scoped request. `Users` records the node that
//! answered (this one, or the owner it forwarded to) in the task-local
//! [`actors::users::OWNER`]; this layer opens that scope around every request and returns what
//! was recorded as a response header. gRPC answers are HTTP responses too, so for gRPC the same
//! header is the response metadata entry of the same name (also on error statuses).
//!
//! Requests that touch no user (or more than one: the last one answered wins, in a GraphQL
//! document asking for several users) carry no header or that last owner.

use std::cell::RefCell;

use actors::users::OWNER;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

/// The header, and gRPC metadata key, naming the node that served the user.
pub const OWNER_HEADER: &str = "x-streamrec-owner";

pub async fn record(request: Request, next: Next) -> Response {
    let (mut response, owner) = OWNER
        .scope(RefCell::new(None), async move {
            let response = next.run(request).await;
            let owner = OWNER.with(|owner| owner.borrow_mut().take());
            (response, owner)
        })
        .await;
    if let Some(value) = owner.and_then(|o| HeaderValue::from_str(&o).ok()) {
        response.headers_mut().insert(OWNER_HEADER, value);
    }
    response
}
