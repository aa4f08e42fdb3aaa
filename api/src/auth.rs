//! Authentication: OAuth 2.0 bearer tokens (JWT) from an external provider, validated here
//! (signature by HS256 secret or a JWKS key, `exp`/`nbf` with leeway, `iss`, `aud`: a configured
//! issuer or audience is required, not merely compared when present), turned into a
//! [`Principal`]; and the one layer every HTTP request (REST, GraphQL, WebSocket upgrades,
//! gRPC) passes: authenticate, rate-limit per caller (the token's subject, or the client address
//! without a token: `client.rs`), and authorize REST routes through the policy table
//! (`policy.rs`). GraphQL resolvers, WebSocket subscriptions and gRPC methods authorize through
//! the same table with the principal this layer attached to the request; long-lived streams take
//! their place from the [`Caller`] it attached (`streams.rs`).
//!
//! The token comes in `Authorization: Bearer ...`; browsers cannot set headers on a WebSocket or
//! an `EventSource`, so those two (and only those) may pass it as `?access_token=`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use axum::RequestExt;
use axum::extract::{ConnectInfo, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderValue, Method, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use common::Config;
use common::config::AuthConfig;
use common::{ApiError, ErrorCode};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use supervisors::Node;

use crate::client::{BadProxy, TrustedProxies};
use crate::error::{AppError, is_grpc};
use crate::listener::ConnectionSlot;
use crate::policy::audit_unauthenticated;
pub use crate::policy::{Action, Principal, Role, authorize};
use crate::streams::{Caller, Streams};

/// Why configuration cannot produce an authenticator.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "auth.enabled is true but no key is configured: set auth.hs256_secret, auth.jwks_url or \
         auth.jwks_file (or auth.enabled = false for local development)"
    )]
    NoKeys,
    #[error("reading the JWKS: {0}")]
    Jwks(String),
    #[error(transparent)]
    TrustedProxy(#[from] BadProxy),
}

type Keys = HashMap<String, (DecodingKey, Algorithm)>;

/// Validates tokens. Cheap to share; JWKS keys are swapped in place when refreshed.
pub struct Authenticator {
    config: AuthConfig,
    hs256: Option<DecodingKey>,
    jwks: ArcSwap<Keys>,
    /// When a token with an unknown key id last made the node re-read the keys.
    last_forced: Mutex<Option<Instant>>,
    http: reqwest::Client,
}

/// A token that passed: who it proves, and until when it is accepted (`exp` plus the leeway).
#[derive(Clone, Debug)]
pub struct Verified {
    pub principal: Principal,
    pub expires_at: SystemTime,
}

/// The shortest interval between two JWKS fetches triggered by unknown key ids (so that tokens
/// with made-up key ids cannot make the node hammer its provider).
const MIN_REFRESH: Duration = Duration::from_secs(30);

impl Authenticator {
    /// `None` when authentication is off.
    pub fn from_config(config: &AuthConfig) -> Result<Option<Arc<Self>>, AuthError> {
        if !config.enabled {
            return Ok(None);
        }
        if config.hs256_secret.is_none() && config.jwks_url.is_none() && config.jwks_file.is_none()
        {
            return Err(AuthError::NoKeys);
        }
        let auth = Self {
            hs256: config
                .hs256_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.0.as_bytes())),
            config: config.clone(),
            jwks: ArcSwap::from_pointee(Keys::new()),
            last_forced: Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| AuthError::Jwks(e.to_string()))?,
        };
        if let Some(file) = &config.jwks_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| AuthError::Jwks(format!("{}: {e}", file.display())))?;
            auth.jwks.store(Arc::new(parse_jwks(&text)?));
        }
        Ok(Some(Arc::new(auth)))
    }

    /// Re-reads the JWKS (file or URL) now.
    pub async fn refresh(&self) -> Result<(), AuthError> {
        let text = if let Some(url) = &self.config.jwks_url {
            let response = self
                .http
                .get(url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| AuthError::Jwks(format!("{url}: {e}")))?;
            response
                .text()
                .await
                .map_err(|e| AuthError::Jwks(e.to_string()))?
        } else if let Some(file) = &self.config.jwks_file {
            tokio::fs::read_to_string(file)
                .await
                .map_err(|e| AuthError::Jwks(format!("{}: {e}", file.display())))?
        } else {
            return Ok(());
        };
        let keys = parse_jwks(&text)?;
        tracing::info!(keys = keys.len(), "JWKS loaded");
        self.jwks.store(Arc::new(keys));
        Ok(())
    }

    /// Keeps the JWKS fresh every `auth.jwks_refresh` until the node stops: fetched from the URL
    /// at once, re-read from a file (already read at start) one period later.
    pub fn spawn_refresh(self: &Arc<Self>) {
        if self.config.jwks_url.is_none() && self.config.jwks_file.is_none() {
            return;
        }
        let auth = Arc::downgrade(self);
        let period = self.config.jwks_refresh.max(MIN_REFRESH);
        let loaded = self.config.jwks_url.is_none();
        tokio::spawn(async move {
            if loaded {
                tokio::time::sleep(period).await;
            }
            loop {
                let Some(auth) = auth.upgrade() else { return };
                if let Err(error) = auth.refresh().await {
                    tracing::warn!(%error, "JWKS refresh failed; keeping the previous keys");
                }
                drop(auth);
                tokio::time::sleep(period).await;
            }
        });
    }

    fn key_for(&self, header: &jsonwebtoken::Header) -> Option<(DecodingKey, Algorithm)> {
        if header.alg == Algorithm::HS256 {
            return self.hs256.clone().map(|k| (k, Algorithm::HS256));
        }
        let keys = self.jwks.load();
        match &header.kid {
            Some(kid) => keys.get(kid).cloned(),
            // A JWKS with one key may be used without key ids.
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    /// The caller a token proves, or `unauthenticated`.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, ApiError> {
        self.verify(token).await.map(|verified| verified.principal)
    }

    /// The caller a token proves and until when the token is accepted, or `unauthenticated`.
    pub async fn verify(&self, token: &str) -> Result<Verified, ApiError> {
        let unauthenticated = |why: &str| ApiError::new(ErrorCode::Unauthenticated, why.to_owned());
        // `alg: none` and unknown algorithms fail here: they are not in `Algorithm`.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthenticated("the bearer token is not a valid JWT"))?;
        let mut key = self.key_for(&header);
        if key.is_none() && header.alg != Algorithm::HS256 && self.may_force_refresh() {
            if let Err(error) = self.refresh().await {
                tracing::warn!(%error, "JWKS refresh for an unknown key id failed");
            }
            key = self.key_for(&header);
        }
        let (key, alg) =
            key.ok_or_else(|| unauthenticated("the token's signing key is unknown"))?;
        if header.alg != alg {
            return Err(unauthenticated(
                "the token's algorithm does not match its key",
            ));
        }
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &self.validation(alg))
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired".to_owned(),
                    ErrorKind::ImmatureSignature => "the token is not valid yet".to_owned(),
                    ErrorKind::InvalidAudience => "the token is for another audience".to_owned(),
                    ErrorKind::InvalidIssuer => "the token is from another issuer".to_owned(),
                    ErrorKind::InvalidSignature => "the token's signature is invalid".to_owned(),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        format!("the token lacks the `{claim}` claim")
                    }
                    _ => "the token is invalid".to_owned(),
                };
                unauthenticated(&why)
            })?
            .claims;
        let sub = claims["sub"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| unauthenticated("the token's `sub` must be a non-empty string"))?
            .to_owned();
        let roles = match &claims[self.config.roles_claim.as_str()] {
            serde_json::Value::Array(names) => names
                .iter()
                .filter_map(|n| n.as_str().and_then(Role::parse))
                .collect(),
            serde_json::Value::String(names) => {
                names.split_whitespace().filter_map(Role::parse).collect()
            }
            _ => Vec::new(),
        };
        // `exp` is required and was validated as a number of seconds; one past what the clock
        // can represent is as good as never.
        let exp = Duration::from_secs(claims["exp"].as_u64().unwrap_or_default())
            .saturating_add(self.config.leeway)
            .min(Duration::from_secs(u64::from(u32::MAX)) * 4);
        let expires_at = UNIX_EPOCH + exp;
        Ok(Verified {
            principal: Principal { sub, roles },
            expires_at,
        })
    }

    /// What a token must satisfy. A configured issuer or audience is required, not only
    /// compared when present: a token without the claim is refused.
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    fn may_force_refresh(&self) -> bool {
        if self.config.jwks_url.is_none() && self.config.jwks_file.is_none() {
            return false;
        }
        let mut last = self.last_forced.lock();
        if last.is_some_and(|at| at.elapsed() < MIN_REFRESH) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

fn parse_jwks(text: &str) -> Result<Keys, AuthError> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| AuthError::Jwks(e.to_string()))?;
    let mut keys = Keys::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            _ => continue,
        };
        let alg = match jwk.common.key_algorithm.as_ref().map(ToString::to_string) {
            Some(named) => named.parse().unwrap_or(alg),
            None => alg,
        };
        if !matches!(alg, Algorithm::RS256 | Algorithm::ES256) {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Jwks(e.to_string()))?;
        let kid = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
        keys.insert(kid, (key, alg));
    }
    Ok(keys)
}

/// Per-caller token buckets.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Callers tracked at most; beyond it, idle buckets (full again) are dropped.
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> Option<Self> {
        (per_second > 0.0).then(|| Self {
            rate: per_second,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_BUCKETS {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

/// What the gateway layer needs: the authenticator (none when auth is off), the limiter, who
/// may speak for clients, and the open streams per caller.
pub struct Gate {
    pub auth: Option<Arc<Authenticator>>,
    pub limiter: Option<RateLimiter>,
    pub protect_metrics: bool,
    pub trusted_proxies: TrustedProxies,
    pub streams: Arc<Streams>,
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

/// Renders an error for the protocol of the request.
fn reject(request: &Request, error: ApiError) -> Response {
    let grpc = is_grpc(request);
    let code = error.code;
    let mut response = if grpc {
        crate::grpc::status(&error).into_http::<axum::body::Body>()
    } else {
        AppError::from(error).into_response()
    };
    if code == ErrorCode::Unauthenticated && !grpc {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn too_many_requests() -> ApiError {
    ApiError::new(ErrorCode::RateLimited, "too many requests; slow down")
}

/// 429 `rate_limited` with `Retry-After`: how many whole seconds until the caller's bucket holds
/// a token again.
pub(crate) fn rate_limited(wait: Duration) -> Response {
    with_retry_after(AppError::from(too_many_requests()).into_response(), wait)
}

fn with_retry_after(mut response: Response, wait: Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// 401 `unauthenticated` (with `WWW-Authenticate: Bearer`) for a request that needs a token.
pub(crate) fn unauthenticated(message: &str) -> Response {
    let error = ApiError::new(ErrorCode::Unauthenticated, message.to_owned());
    let mut response = AppError::from(error).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
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
            Some(token) => match auth.verify(&token).await {
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
    request.extensions_mut().insert(principal);
    next.run(request).await
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

/// The principal the gateway layer attached (the all-allowed one when auth is off; nobody on
/// a route the layer did not cover).
pub fn principal_of(extensions: &axum::http::Extensions) -> Principal {
    extensions
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::nobody)
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

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let limiter = RateLimiter::new(10.0, 2).expect("on");
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_ok());
        let wait = limiter.check("a").expect_err("burst spent");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(limiter.check("b").is_ok(), "callers are limited separately");
        std::thread::sleep(Duration::from_millis(120));
        assert!(limiter.check("a").is_ok());
        assert!(RateLimiter::new(0.0, 5).is_none(), "0 turns it off");
    }
}
