//! Token validation: OAuth 2.0 bearer tokens (JWT) from an external provider, checked here
//! (signature by HS256 secret or a JWKS key, `exp`/`nbf` with leeway, `iss`, `aud`: a configured
//! issuer or audience is required, not merely compared when present) and turned into a
//! [`Principal`]. JWKS keys are re-read periodically, and on an unknown key id at most once per
//! `MIN_REFRESH`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use common::config::AuthConfig;
use common::{ApiError, ErrorCode};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;

use crate::client::BadProxy;
use crate::policy::{Principal, Role};

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
