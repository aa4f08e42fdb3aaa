//! The one layer every HTTP request (REST, GraphQL, WebSocket upgrades, gRPC) passes:
//! authenticate (`jwt.rs`), rate-limit per caller (`limiter.rs`; the token's subject, or the
//! client address without a token: `client.rs`), and authorize REST routes through the policy
//! table (`policy.rs`). GraphQL resolvers, WebSocket subscriptions and gRPC methods authorize
//! through the same table with the principal this layer attached to the request; long-lived
//! streams take their place from the [`Caller`] it attached (`streams.rs`). Refusals are
//! rendered for the request's protocol by `error.rs`.
//!
//! The token comes in `Authorization: Bearer ...`; browsers cannot set headers on a WebSocket or
//! an `EventSource`, so those two (and only those) may pass it as `?access_token=`.
//!
//! The internal service (another node forwarding a request to the user's owner) takes no token:
//! the calling node authenticates (`node.rs`) and carries its caller's principal, which the
//! service authorizes itself; it is not rate-limited again, the entry node did that. An admitted
//! request runs with its principal in [`policy::CALLER`](crate::policy::CALLER), so that a
//! forwarded call carries it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::RequestExt;
use axum::extract::{ConnectInfo, MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, Version, header};
use axum::middleware::Next;
use axum::response::Response;
use common::Config;
use common::{ApiError, ErrorCode};
use supervisors::Node;

use super::jwt::{AuthError, Authenticator};
use super::limiter::RateLimiter;
use super::node::{FromNode, NodeAuth, is_internal};
use crate::client::TrustedProxies;
use crate::error::{reject, too_many_requests, with_retry_after};
use crate::listener::ConnectionSlot;
use crate::policy::{Action, CALLER, Principal, audit_unauthenticated, authorize};
use crate::streams::{Caller, Streams};

/// What the gateway layer needs: the authenticator (none when auth is off), the limiter, who
/// may speak for clients, and the open streams per caller.
pub struct Gate {
    pub auth: Option<Arc<Authenticator>>,
    pub limiter: Option<RateLimiter>,
    pub protect_metrics: bool,
    pub trusted_proxies: TrustedProxies,
    pub streams: Arc<Streams>,
    /// What another node proves to call the internal service.
    pub nodes: NodeAuth,
}

impl Gate {
    pub fn new(config: &Config) -> Result<Self, AuthError> {
        let auth = Authenticator::from_config(&config.auth)?;
        if let Some(auth) = &auth {
            auth.spawn_refresh();
        }
        Ok(Self {
            auth,
            limiter: RateLimiter::new(
                config.auth.rate_limit_per_second,
                config.auth.rate_limit_burst,
            ),
            protect_metrics: config.auth.protect_metrics,
            trusted_proxies: TrustedProxies::parse(&config.auth.trusted_proxies)?,
            streams: Streams::new(config.server.max_streams_per_caller),
            nodes: NodeAuth::new(config),
        })
    }

    /// The client address of a request (see `client.rs`), when the listener attached the peer.
    fn client(&self, request: &Request) -> Option<IpAddr> {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()?
            .0
            .ip();
        Some(self.trusted_proxies.client(peer, request.headers()))
    }
}

/// Routes anyone may call: probes, and static pages that hold no data (the console page asks
/// for a token before it reads anything).
fn is_public(path: &str, protect_metrics: bool) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/openapi.json" | "/graphiql" | "/console"
    ) || path == "/docs"
        || path.starts_with("/docs/")
        || (path == "/metrics" && !protect_metrics)
}

/// The token of an `Authorization` value: `Bearer <token>`, the scheme in any case.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether a header lists `token` (comma-separated, any case), as `Connection: keep-alive,
/// Upgrade` lists `upgrade`.
fn lists(request: &Request, name: header::HeaderName, token: &str) -> bool {
    request.headers().get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// A real WebSocket opening handshake (RFC 6455), judged by the headers axum's
/// `WebSocketUpgrade` needs: `GET` over HTTP/1.1 with `Connection: upgrade`, `Upgrade:
/// websocket`, a `Sec-WebSocket-Key` and `Sec-WebSocket-Version: 13`. Anything else that merely
/// carries an `Upgrade` header is an ordinary request (which the handler would serve over HTTP).
fn is_websocket_upgrade(request: &Request) -> bool {
    let headers = request.headers();
    let is = |name: header::HeaderName, value: &str| {
        headers
            .get(name)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
    };
    request.method() == Method::GET
        && request.version() == Version::HTTP_11
        && lists(request, header::CONNECTION, "upgrade")
        && is(header::UPGRADE, "websocket")
        && is(header::SEC_WEBSOCKET_VERSION, "13")
        && headers.contains_key(header::SEC_WEBSOCKET_KEY)
}

/// The bearer token of a request: the header, or `access_token` for WebSocket upgrades and
/// event streams.
fn token(request: &Request) -> Option<String> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        return bearer(value.to_str().ok()?).map(str::to_owned);
    }
    let streaming = is_websocket_upgrade(request)
        || request
            .headers()
            .get(header::ACCEPT)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streaming {
        return None;
    }
    request.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "access_token")
            .map(|(_, v)| v.to_owned())
    })
}

/// The gateway layer: authenticate, rate-limit, and authorize REST routes.
///
/// Public routes (probes, static pages) need no token, but a valid one is still read (an
/// operator's token shows `/readyz` details); an invalid one is ignored there. Every route is
/// rate-limited: by the token's subject, or by the client address without a token.
pub async fn gate(
    State((node, gate)): State<(Arc<Node>, Arc<Gate>)>,
    mut request: Request,
    next: Next,
) -> Response {
    if is_internal(request.uri().path()) {
        return match gate.nodes.verify(request.headers(), request.extensions()) {
            Ok(()) => {
                request.extensions_mut().insert(FromNode);
                next.run(request).await
            }
            Err(error) => {
                audit_unauthenticated("not a node of the cluster", "internal");
                reject(&request, error)
            }
        };
    }
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let public = path
        .as_deref()
        .is_some_and(|p| is_public(p, gate.protect_metrics));
    let verified = match &gate.auth {
        None => None,
        Some(auth) => match token(&request) {
            None if public => None,
            // graphql-transport-ws clients may send the token in `connection_init` instead; only
            // a real upgrade on the route that serves it may defer authentication.
            None if path.as_deref() == Some("/graphql") && is_websocket_upgrade(&request) => None,
            None => {
                audit_unauthenticated("no bearer token", "http");
                let missing = ApiError::new(
                    ErrorCode::Unauthenticated,
                    "this API needs `Authorization: Bearer <token>`",
                );
                return reject(&request, missing);
            }
            Some(token) => match tracing::Instrument::instrument(
                auth.verify(&token),
                tracing::info_span!("auth", auth.kind = "jwt"),
            )
            .await
            {
                Ok(verified) => Some(verified),
                Err(_) if public => None,
                Err(error) => {
                    audit_unauthenticated(&error.message, "http");
                    return reject(&request, error);
                }
            },
        },
    };
    let caller = Caller::new(
        match &verified {
            Some(verified) => format!("sub:{}", verified.principal.sub),
            None => anonymous_key(gate.client(&request)),
        },
        verified.as_ref().map(|v| v.expires_at),
        gate.streams.clone(),
        request.extensions().get::<ConnectionSlot>().cloned(),
    );
    if let Some(limiter) = &gate.limiter
        && let Err(wait) = limiter.check(&caller.key)
    {
        return with_retry_after(reject(&request, too_many_requests()), wait);
    }
    request.extensions_mut().insert(caller);
    let principal = match (&gate.auth, verified) {
        (None, _) => Principal::unauthenticated_admin(),
        (Some(_), Some(verified)) => verified.principal,
        // A public route, or a GraphQL WebSocket that authenticates in `connection_init`.
        (Some(_), None) => return next.run(request).await,
    };
    if !public
        && let Some(path) = path.as_deref()
        && let Err(error) = authorize_rest(&node, &principal, path, &mut request).await
    {
        return reject(&request, error);
    }
    request.extensions_mut().insert(principal.clone());
    CALLER.scope(principal, next.run(request)).await
}

/// The rate-limit and stream key of a caller without a token: its client's network (an IPv6
/// client by its /64, which it may fill with addresses at will; see `client::network`).
fn anonymous_key(client: Option<IpAddr>) -> String {
    client.map_or_else(
        || "addr:unknown".to_owned(),
        |ip| format!("addr:{}", crate::client::network(ip)),
    )
}

/// The REST half of the policy: which action each route performs.
async fn authorize_rest(
    node: &Node,
    principal: &Principal,
    path: &str,
    request: &mut Request,
) -> Result<(), ApiError> {
    let params = request
        .extract_parts::<RawPathParams>()
        .await
        .map_err(|_| ApiError::invalid("malformed path"))?;
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default()
    };
    let method = request.method().clone();
    let user = param("user_id");
    let dataset = param("dataset");
    let action = match (path, method) {
        // GraphQL, gRPC and the WebSocket authorize each operation with the principal.
        ("/graphql" | "/v1/ws", _) => return Ok(()),
        (p, _) if p.starts_with("/streamrec.v1.") || p.starts_with("/grpc.reflection.") => {
            return Ok(());
        }
        ("/v1/events", Method::POST) => return authorize_events(node, principal, request).await,
        ("/v1/users/{user_id}", Method::DELETE) => Action::EraseUser(&user),
        ("/v1/users/{user_id}/export", _) => Action::ExportUser(&user),
        ("/v1/users/{user_id}/profile", _) => Action::WriteProfile(&user),
        ("/v1/users/{user_id}" | "/v1/users/{user_id}/recommendations", _) => {
            Action::ReadUser(&user)
        }
        ("/v1/items/{item_id}", Method::GET) | ("/v1/trending", _) => Action::ReadCatalog,
        ("/v1/items/{item_id}", _) => Action::WriteCatalog,
        ("/metrics", _) => Action::Metrics,
        ("/v1/admin/cluster", Method::GET) => Action::ReadCluster,
        ("/v1/admin/import/{dataset}", _) => Action::Import(&dataset),
        ("/v1/admin/export/{dataset}", _) => Action::Export(&dataset),
        (p, Method::GET) if p.starts_with("/v1/admin/") => Action::AdminRead,
        (p, _) if p.starts_with("/v1/admin/") => Action::AdminWrite,
        // Anything unlisted is for administrators.
        _ => Action::AdminWrite,
    };
    authorize(principal, action, "rest")
}

/// Events may be posted for the users the caller may write for (a `user`: only their own). The
/// body is read here (within the body limit) and handed on unchanged; a body that does not parse
/// is left to the handler's validation.
async fn authorize_events(
    node: &Node,
    principal: &Principal,
    request: &mut Request,
) -> Result<(), ApiError> {
    // Most writers (services) may write for anyone: their batches are not parsed twice.
    if crate::policy::permits(principal, &Action::WriteAnyEvents) {
        return Ok(());
    }
    let body = std::mem::take(request.body_mut());
    let bytes = axum::body::to_bytes(body, node.config.server.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "request body exceeds server.max_body_bytes",
            )
        })?;
    let users: Option<Vec<String>> = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            v["events"].as_array().map(|events| {
                events
                    .iter()
                    .map(|e| e["user_id"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
        });
    *request.body_mut() = axum::body::Body::from(bytes);
    match users {
        Some(users) => {
            let users: Vec<&str> = users.iter().map(String::as_str).collect();
            authorize(principal, Action::WriteEvents(&users), "rest")
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_ipv6_callers_are_keyed_by_their_64_not_their_full_address() {
        let key = |ip: &str| anonymous_key(Some(ip.parse().expect("ip")));
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_eq!(key("2001:db8:1:2::1"), "addr:2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(anonymous_key(None), "addr:unknown");
    }

    #[test]
    fn a_fake_upgrade_without_key_or_version_is_not_a_websocket_upgrade() {
        let request = |headers: &[(&str, &str)]| {
            let mut request = Request::get("/graphql?query=%7Ba%7D");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.body(axum::body::Body::empty()).expect("request")
        };
        let upgrade = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ];
        let key = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        let version = ("sec-websocket-version", "13");
        assert!(!is_websocket_upgrade(&request(&upgrade)));
        assert!(!is_websocket_upgrade(&request(&[
            upgrade[0], upgrade[1], key
        ])));
        assert!(!is_websocket_upgrade(&request(&[
            upgrade[0], upgrade[1], version
        ])));
        let old = ("sec-websocket-version", "8");
        assert!(!is_websocket_upgrade(&request(&[
            upgrade[0], upgrade[1], key, old
        ])));
        assert!(is_websocket_upgrade(&request(&[
            upgrade[0], upgrade[1], key, version
        ])));
    }
}
