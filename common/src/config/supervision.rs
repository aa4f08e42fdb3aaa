//! `[supervision]`: how supervisors restart failed children, and how long each child may stay in
//! one message before its supervisor takes it for hung, kills it and starts it again.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// The restart policy and the hung-child check of every supervisor in the tree.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionConfig {
    /// Delay before the first restart of a failed child; it doubles with each further failure.
    /// Default 50ms.
    #[serde(default = "initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest delay between restarts. Default 10s.
    #[serde(default = "max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// At most this many restarts of one child within `restart_window`; one more failure makes
    /// its supervisor fail too, handing the decision to its own parent. Default 10.
    #[serde(default = "max_restarts")]
    pub max_restarts: usize,
    /// The window of the restart budget; a child that ran this long starts its backoff afresh.
    /// Default 60s.
    #[serde(default = "restart_window", with = "humantime_serde")]
    pub restart_window: Duration,
    /// How often a supervisor looks at how long each child has been in its current message.
    /// Default 1s.
    #[serde(default = "heartbeat_interval", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long each child may stay in one message before it counts as hung: it is then killed
    /// (counted as a kill, apart from panics and errors) and restarted like a failed child.
    #[serde(default)]
    pub stuck_after: StuckLimits,
}

/// Per child, the longest a single message may take; `"0s"` turns the check off for that child.
/// A kill stops a child at its next await: work it handed to the blocking pool (a scoring run,
/// a file scan) runs to its end regardless.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StuckLimits {
    /// The push hub (it only routes; recomputes run off its mailbox). Default 60s.
    #[serde(default = "one_minute", with = "humantime_serde")]
    pub push: Duration,
    /// The session manager (an erasure waits up to 10s for its session). Default 60s.
    #[serde(default = "one_minute", with = "humantime_serde")]
    pub sessions: Duration,
    /// Each model actor (a reload fetches a version from the object store). Default 5m.
    #[serde(default = "five_minutes", with = "humantime_serde")]
    pub model: Duration,
    /// Each ingest actor (a batch waits up to 30s for its sessions to apply it). Default 2m.
    #[serde(default = "two_minutes", with = "humantime_serde")]
    pub ingest: Duration,
    /// The trainer (training runs off its mailbox, which only starts runs and records their
    /// end). Default 60s.
    #[serde(default = "one_minute", with = "humantime_serde")]
    pub trainer: Duration,
    /// The archiver (one run uploads everything not archived yet, committing after each
    /// object, so a restart resumes where it stopped). Default 1h.
    #[serde(default = "one_hour", with = "humantime_serde")]
    pub archiver: Duration,
    /// The retention actor (one run deletes segments and prunes tombstones). Default 1h.
    #[serde(default = "one_hour", with = "humantime_serde")]
    pub retention: Duration,
    /// The Kafka bridge: off by default, since a batch legitimately waits on the broker for as
    /// long as an outage lasts (retries, the synchronous offset commit), and a broker outage
    /// must never cost the bridge a restart. Default 0s (off).
    #[serde(default = "off", with = "humantime_serde")]
    pub kafka: Duration,
}

fn initial_backoff() -> Duration {
    Duration::from_millis(50)
}
fn max_backoff() -> Duration {
    Duration::from_secs(10)
}
fn max_restarts() -> usize {
    10
}
fn restart_window() -> Duration {
    Duration::from_secs(60)
}
fn heartbeat_interval() -> Duration {
    Duration::from_secs(1)
}
fn one_minute() -> Duration {
    Duration::from_secs(60)
}
fn two_minutes() -> Duration {
    Duration::from_secs(120)
}
fn five_minutes() -> Duration {
    Duration::from_secs(300)
}
fn one_hour() -> Duration {
    Duration::from_secs(3600)
}
fn off() -> Duration {
    Duration::ZERO
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        super::defaults()
    }
}

impl Default for StuckLimits {
    fn default() -> Self {
        super::defaults()
    }
}

impl SupervisionConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.initial_backoff.is_zero() || self.initial_backoff > self.max_backoff {
            return invalid(
                "supervision.initial_backoff must be above 0 and at most supervision.max_backoff",
            );
        }
        if self.restart_window.is_zero() {
            return invalid("supervision.restart_window must be above 0");
        }
        if self.heartbeat_interval.is_zero() {
            return invalid("supervision.heartbeat_interval must be above 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_restart_with_backoff_and_leave_the_kafka_bridge_unchecked() {
        let config = SupervisionConfig::default();
        assert!(config.validate().is_ok());
        assert_eq!(config.initial_backoff, Duration::from_millis(50));
        assert_eq!(config.max_restarts, 10);
        assert_eq!(config.stuck_after.ingest, Duration::from_secs(120));
        assert_eq!(config.stuck_after.archiver, Duration::from_secs(3600));
        assert!(config.stuck_after.kafka.is_zero());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's `Jail` fixes the closure's error type
    fn limits_are_set_per_child_from_the_file_and_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "streamrec.toml",
                "[supervision]\nmax_restarts = 3\n[supervision.stuck_after]\ntrainer = \"0s\"\n",
            )?;
            jail.set_env("STREAMREC__SUPERVISION__STUCK_AFTER__KAFKA", "5m");
            jail.set_env("STREAMREC__SUPERVISION__HEARTBEAT_INTERVAL", "250ms");
            let config =
                crate::Config::load(Some(std::path::Path::new("streamrec.toml"))).expect("loads");
            let supervision = config.supervision;
            assert_eq!(supervision.max_restarts, 3);
            assert_eq!(supervision.heartbeat_interval, Duration::from_millis(250));
            assert_eq!(
                supervision.stuck_after,
                StuckLimits {
                    trainer: Duration::ZERO,
                    kafka: Duration::from_secs(300),
                    ..StuckLimits::default()
                }
            );
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("STREAMREC__SUPERVISION__STUCK_AFTER__MODLE", "5m");
            assert!(
                crate::Config::load(None).is_err(),
                "a misspelt child is refused"
            );
            Ok(())
        });
    }

    #[test]
    fn backoff_window_and_heartbeat_must_be_usable() {
        for bad in [
            |s: &mut SupervisionConfig| s.initial_backoff = Duration::ZERO,
            |s: &mut SupervisionConfig| s.initial_backoff = Duration::from_secs(11),
            |s: &mut SupervisionConfig| s.restart_window = Duration::ZERO,
            |s: &mut SupervisionConfig| s.heartbeat_interval = Duration::ZERO,
        ] {
            let mut supervision = SupervisionConfig::default();
            bad(&mut supervision);
            assert!(supervision.validate().is_err());
        }
    }
}
