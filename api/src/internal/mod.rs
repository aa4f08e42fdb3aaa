//! The internal gRPC service, `streamrec.internal.v1.Users` (`proto/internal.proto`): how a node
//! asks the owner of a user's partition to serve that user. [`Server`] is mounted on the same
//! router and port as the public API but kept out of reflection; [`Client`] is this node's
//! [`actors::users::Remote`], installed in `Users` when the router is built.
//!
//! A call is authenticated twice over: the calling node proves it is one (the gate, with
//! `auth::node`), and it carries its caller's principal in [`PRINCIPAL_KEY`], which the owner
//! authorizes through the same policy table as the entry node did, so that forwarding never
//! widens what a caller may do. Work a node does on its own (the push hub's recomputes) carries
//! the node's own principal, which the owner accepts only from an authenticated node.
//!
//! Errors keep their code across the hop: the owner renders them as every gRPC error is rendered
//! (status plus the `streamrec-error-code` entry), and the client maps them back; a node that
//! cannot be reached, or does not own the user any more, is `unavailable`, which `Users` routes
//! again.

mod client;
mod server;

use common::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};

use crate::policy::{Principal, Role};

pub use client::Client;
pub use server::{Server, service};

/// Generated messages, client and server.
pub mod pb {
    tonic::include_proto!("streamrec.internal.v1");
}

/// The metadata entry carrying the caller's principal (JSON, ASCII).
pub const PRINCIPAL_KEY: &str = "x-streamrec-principal";

/// The principal as it travels: the subject and role names.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Carried {
    sub: String,
    roles: Vec<String>,
}

/// A principal as the value of [`PRINCIPAL_KEY`]: JSON with every non-ASCII character escaped,
/// so that it is a valid header value whatever the token's subject.
pub fn encode_principal(principal: &Principal) -> String {
    let carried = Carried {
        sub: principal.sub.clone(),
        roles: principal
            .roles
            .iter()
            .map(|r| r.as_str().to_owned())
            .collect(),
    };
    let json = serde_json::to_string(&carried).expect("a principal serializes");
    let mut ascii = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            ascii.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                ascii.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    ascii
}

/// The principal a calling node carried. Unknown role names are dropped, as they are from a
/// token; `node` is understood here, and only here.
pub fn decode_principal(value: &[u8]) -> Result<Principal, ApiError> {
    let carried: Carried = serde_json::from_slice(value).map_err(|_| {
        ApiError::new(
            ErrorCode::Unauthenticated,
            "the carried principal is not readable",
        )
    })?;
    Ok(Principal {
        sub: carried.sub,
        roles: carried
            .roles
            .iter()
            .filter_map(|name| match name.as_str() {
                "node" => Some(Role::Node),
                other => Role::parse(other),
            })
            .collect(),
    })
}

/// What a failed call to node `node_id` means for the request that made it.
///
/// The owner's own refusals keep their code. A call that never reached the service (connection
/// refused, reset, timed out: no error code in the answer) is `unavailable`, and so is a refusal
/// of this node's cluster credentials: the caller's request is fine, this node cannot serve it
/// now. `unavailable` is what `Users` routes again.
pub fn api_error(node_id: &str, status: &tonic::Status) -> ApiError {
    let named = status
        .metadata()
        .get(crate::error::ERROR_CODE_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorCode::from_name);
    match named {
        Some(ErrorCode::Unauthenticated) => {
            tracing::error!(
                node = node_id,
                message = status.message(),
                "a node refused this node's cluster credentials; check cluster.secret and server.tls"
            );
            ApiError::unavailable(format!(
                "node {node_id} refused this node's cluster credentials"
            ))
        }
        Some(code) => ApiError::new(code, status.message()),
        None => {
            use tonic::Code;
            // An error of the connection itself (an HTTP/2 stream reset as the peer shuts down,
            // say) comes with its cause: whatever its code, the service never answered.
            let transport = std::error::Error::source(status).is_some();
            let code = match status.code() {
                _ if transport => ErrorCode::Unavailable,
                Code::InvalidArgument => ErrorCode::InvalidArgument,
                Code::NotFound => ErrorCode::NotFound,
                Code::PermissionDenied => ErrorCode::PermissionDenied,
                Code::Internal | Code::DataLoss | Code::Unimplemented => ErrorCode::Internal,
                // Unavailable, DeadlineExceeded, Cancelled, Unknown (a transport failure), ...
                _ => ErrorCode::Unavailable,
            };
            if code == ErrorCode::Unavailable {
                ApiError::unavailable(format!(
                    "node {node_id} could not be reached: {}",
                    status.message()
                ))
            } else {
                ApiError::new(code, format!("node {node_id}: {}", status.message()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::grpc_status;

    #[test]
    fn a_principal_travels_whole_and_as_ascii() {
        let alice = Principal {
            sub: "ålice \"q\" 🦀".into(),
            roles: vec![Role::User, Role::Admin],
        };
        let wire = encode_principal(&alice);
        assert!(wire.is_ascii(), "{wire}");
        assert!(axum::http::HeaderValue::from_str(&wire).is_ok());
        assert_eq!(decode_principal(wire.as_bytes()), Ok(alice));
        let node = Principal::node("n1");
        assert_eq!(
            decode_principal(encode_principal(&node).as_bytes()),
            Ok(node)
        );
    }

    #[test]
    fn carried_roles_are_read_as_token_roles_are() {
        let p = decode_principal(br#"{"sub":"s","roles":["service","wizard"]}"#).expect("ok");
        assert_eq!(p.roles, vec![Role::Service]);
        let refused = decode_principal(b"{").expect_err("refused");
        assert_eq!(refused.code, ErrorCode::Unauthenticated);
    }

    #[test]
    fn the_owners_errors_keep_their_code_and_transport_failures_are_unavailable() {
        for code in [
            ErrorCode::NotFound,
            ErrorCode::PermissionDenied,
            ErrorCode::InvalidArgument,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
            ErrorCode::Conflict,
        ] {
            let status = grpc_status(&ApiError::new(code, "why"));
            let mapped = api_error("n2", &status);
            assert_eq!(mapped.code, code);
            assert_eq!(mapped.message, "why");
        }
        // No code in the answer: it did not come from the service.
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::Unknown,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Cancelled,
        ] {
            let mapped = api_error("n2", &tonic::Status::new(code, "connection refused"));
            assert_eq!(mapped.code, ErrorCode::Unavailable, "{code:?}");
            assert!(mapped.message.contains("n2"), "{}", mapped.message);
        }
        assert_eq!(
            api_error("n2", &tonic::Status::internal("boom")).code,
            ErrorCode::Internal
        );
        // The same code from the connection (a peer shutting down resets its streams).
        let mut reset = tonic::Status::internal("h2 protocol error: http2 error");
        reset.set_source(std::sync::Arc::new(std::io::Error::other("stream reset")));
        assert_eq!(api_error("n2", &reset).code, ErrorCode::Unavailable);
        // The owner refusing this node's credentials is not the caller's fault.
        let refused = grpc_status(&ApiError::new(ErrorCode::Unauthenticated, "no"));
        assert_eq!(api_error("n2", &refused).code, ErrorCode::Unavailable);
    }
}
