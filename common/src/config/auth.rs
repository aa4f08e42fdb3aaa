//! `[auth]`: who may call the APIs, and how often.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{Secret, lenient_opt_string};
use super::{ConfigError, invalid};

/// Who may call the APIs: OAuth 2.0 bearer tokens (JWT) issued by an external provider.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Require `Authorization: Bearer <JWT>` on every API but `/healthz` and `/readyz`.
    /// Default `true`; `streamrec demo` turns it off. Off, the node logs a warning at start.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Accept HS256 tokens signed with this shared secret (simple setups). Default none.
    #[serde(default)]
    pub hs256_secret: Option<Secret>,
    /// Accept RS256/ES256 tokens signed by a key of this JWKS (the provider's `jwks_uri`),
    /// fetched at start and every `jwks_refresh`, and again when a token names an unknown key.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The same, from a JWKS file (re-read every `jwks_refresh`).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`, when set. Default none.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub issuer: Option<String>,
    /// Required `aud`, when set. Default none.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`. Default 30s.
    #[serde(default = "leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// How often keys are re-read. Default 10m.
    #[serde(default = "jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// The claim holding the caller's roles (an array of strings, or a space-separated string
    /// like `scope`). Default `roles`.
    #[serde(default = "roles_claim")]
    pub roles_claim: String,
    /// Require the `operator` role for `/metrics` too. Default `false` (scrapers stay simple).
    #[serde(default)]
    pub protect_metrics: bool,
    /// Requests per second each caller (token subject, or client address without a token) may
    /// make; beyond it, 429 with `Retry-After`. 0 turns the limit off. Default 200.
    #[serde(default = "rate_limit_per_second")]
    pub rate_limit_per_second: f64,
    /// Requests a caller may make at once above that rate. Default 400.
    #[serde(default = "rate_limit_burst")]
    pub rate_limit_burst: u32,
    /// Proxies (IP addresses or CIDR blocks, e.g. `10.0.0.0/8`) whose `X-Forwarded-For` is
    /// believed: a request from one of them is keyed (rate limit, per-caller stream cap) by the
    /// right-most address in the header that is not itself a trusted proxy. From any other peer
    /// the header is ignored. Default none.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

fn enabled() -> bool {
    true
}
fn leeway() -> Duration {
    Duration::from_secs(30)
}
fn jwks_refresh() -> Duration {
    Duration::from_secs(600)
}
fn roles_claim() -> String {
    "roles".into()
}
fn rate_limit_per_second() -> f64 {
    200.0
}
fn rate_limit_burst() -> u32 {
    400
}

impl Default for AuthConfig {
    fn default() -> Self {
        super::defaults()
    }
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rate = self.rate_limit_per_second;
        if rate.is_nan() || rate < 0.0 {
            return invalid("auth.rate_limit_per_second must be 0 (off) or more");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_or_nan_rate_limit_is_refused() {
        let mut auth = AuthConfig::default();
        assert!(auth.validate().is_ok());
        auth.rate_limit_per_second = 0.0;
        assert!(auth.validate().is_ok());
        auth.rate_limit_per_second = -1.0;
        assert!(auth.validate().is_err());
        auth.rate_limit_per_second = f64::NAN;
        assert!(auth.validate().is_err());
    }
}
