//! `[sessions]`: the per-user session actors.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// Per-user session actors.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// A session with no message for this long is written out and stopped. Default 5m.
    #[serde(default = "idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most live sessions; past it the least recently used is passivated. Default 100000.
    #[serde(default = "max_live")]
    pub max_live: usize,
    /// Recent interactions kept per user. Default 50.
    #[serde(default = "max_recent")]
    pub max_recent: usize,
    /// Most distinct items a session keeps weights for; past it the items least recently
    /// interacted with, then the lightest, are evicted (and their share of popularity taken
    /// back). Default 1000.
    #[serde(default = "max_items")]
    pub max_items: usize,
}

fn idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn max_live() -> usize {
    100_000
}
fn max_recent() -> usize {
    50
}
fn max_items() -> usize {
    1000
}

impl Default for SessionsConfig {
    fn default() -> Self {
        super::defaults()
    }
}

impl SessionsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_live == 0 || self.max_recent == 0 {
            return invalid("sessions.max_live and sessions.max_recent must be at least 1");
        }
        if self.max_items == 0 {
            return invalid(
                "sessions.max_items and cache.max_variants_per_user must be at least 1",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_keep_at_least_one_of_everything() {
        assert!(SessionsConfig::default().validate().is_ok());
        for zero in [
            |s: &mut SessionsConfig| s.max_live = 0,
            |s: &mut SessionsConfig| s.max_recent = 0,
            |s: &mut SessionsConfig| s.max_items = 0,
        ] {
            let mut sessions = SessionsConfig::default();
            zero(&mut sessions);
            assert!(sessions.validate().is_err());
        }
    }
}
