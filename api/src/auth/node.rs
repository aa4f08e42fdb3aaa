//! Node-to-node authentication, for the internal service (`streamrec.internal.v1`) through which
//! a node asks the owner of a user to serve it. Clients never call it: a call must come from a
//! node of the cluster, which proves it with what the configuration sets up, all of it:
//! - `cluster.secret`: the caller presents it in `x-streamrec-node-secret`, compared in constant
//!   time;
//! - `server.tls.client_ca`: the connection presented a client certificate the CA signed
//!   (mutual TLS; the listener marks such requests with [`ClientCertified`]).
//!
//! With neither configured there is no cluster to speak of (a single embedded node), and every
//! call is refused. Authenticated calls carry the caller's principal along; the internal service
//! authorizes it through the policy table as the entry node did.

use axum::http::{Extensions, HeaderMap};
use common::config::Secret;
use common::{ApiError, Config, ErrorCode};

use crate::listener::ClientCertified;

/// The metadata entry carrying the cluster secret.
pub const NODE_SECRET_KEY: &str = "x-streamrec-node-secret";

/// The path prefix of the internal service's methods.
const INTERNAL_PREFIX: &str = "/streamrec.internal.v1.";

/// Whether a request is for the internal service.
pub fn is_internal(path: &str) -> bool {
    path.starts_with(INTERNAL_PREFIX)
}

/// Attached by the gate to an internal request it authenticated as another node's.
#[derive(Clone, Copy, Debug)]
pub struct FromNode;

/// What a calling node must prove.
#[derive(Clone, Debug)]
pub struct NodeAuth {
    secret: Option<Secret>,
    mutual_tls: bool,
}

impl NodeAuth {
    pub fn new(config: &Config) -> Self {
        Self {
            secret: config.cluster.secret.clone(),
            mutual_tls: config.server.tls.client_ca.is_some() && config.server.tls.cert.is_some(),
        }
    }

    /// Accepts a call that proves everything configured; refuses with `unauthenticated`
    /// otherwise, without saying which proof failed.
    pub fn verify(&self, headers: &HeaderMap, extensions: &Extensions) -> Result<(), ApiError> {
        let refused = || {
            Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "this service is for the nodes of the cluster",
            ))
        };
        if self.secret.is_none() && !self.mutual_tls {
            return refused();
        }
        if let Some(secret) = &self.secret {
            let presented = headers
                .get(NODE_SECRET_KEY)
                .map_or(&[][..], |v| v.as_bytes());
            if !constant_time_eq(presented, secret.0.as_bytes()) {
                return refused();
            }
        }
        if self.mutual_tls && extensions.get::<ClientCertified>().is_none() {
            return refused();
        }
        Ok(())
    }
}

/// Compares without stopping at the first difference, so that the time taken does not tell an
/// attacker how much of a guess was right (only whether its length was).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(secret: Option<&str>, mutual_tls: bool) -> NodeAuth {
        NodeAuth {
            secret: secret.map(|s| Secret(s.into())),
            mutual_tls,
        }
    }

    fn headers(secret: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(secret) = secret {
            headers.insert(NODE_SECRET_KEY, secret.parse().expect("header"));
        }
        headers
    }

    fn certified(yes: bool) -> Extensions {
        let mut extensions = Extensions::new();
        if yes {
            extensions.insert(ClientCertified);
        }
        extensions
    }

    const SECRET: &str = "a-cluster-secret-of-length";

    #[test]
    fn the_secret_must_match_exactly() {
        let auth = auth(Some(SECRET), false);
        assert!(
            auth.verify(&headers(Some(SECRET)), &certified(false))
                .is_ok()
        );
        for wrong in [
            None,
            Some(""),
            Some("a-cluster-secret-of-lengtH"),
            Some("a-cluster"),
        ] {
            let error = auth
                .verify(&headers(wrong), &certified(true))
                .expect_err("refused");
            assert_eq!(error.code, ErrorCode::Unauthenticated, "{wrong:?}");
        }
    }

    #[test]
    fn mutual_tls_needs_a_verified_client_certificate_and_the_secret_when_both_are_set() {
        let mtls = auth(None, true);
        assert!(mtls.verify(&headers(None), &certified(true)).is_ok());
        assert!(
            mtls.verify(&headers(Some(SECRET)), &certified(false))
                .is_err()
        );
        let both = auth(Some(SECRET), true);
        assert!(
            both.verify(&headers(Some(SECRET)), &certified(true))
                .is_ok()
        );
        assert!(
            both.verify(&headers(Some(SECRET)), &certified(false))
                .is_err()
        );
        assert!(both.verify(&headers(None), &certified(true)).is_err());
    }

    #[test]
    fn a_node_without_cluster_credentials_accepts_no_node() {
        let none = auth(None, false);
        assert!(
            none.verify(&headers(Some(SECRET)), &certified(true))
                .is_err()
        );
    }

    #[test]
    fn comparison_is_by_value() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn only_the_internal_service_is_internal() {
        assert!(is_internal("/streamrec.internal.v1.Users/Recommend"));
        assert!(!is_internal("/streamrec.v1.Recommender/Recommend"));
        assert!(!is_internal("/v1/users/streamrec.internal.v1."));
    }
}
