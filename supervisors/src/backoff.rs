//! Restart policy: exponential backoff between restarts of a failing child, and a budget of
//! restarts per time window past which the supervisor escalates instead of retrying forever.
//! The node reads it from `[supervision]` in the configuration.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Delay before the first restart. Default 50ms.
    pub initial_backoff: Duration,
    /// Longest delay between restarts. Default 10s.
    pub max_backoff: Duration,
    /// At most this many restarts of one child within `window`; one more escalates. Default 10.
    pub max_restarts: usize,
    /// The window of the restart budget; a child that ran this long resets its backoff. Default 60s.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(10),
            max_restarts: 10,
            window: Duration::from_secs(60),
        }
    }
}

impl From<&common::config::SupervisionConfig> for RestartPolicy {
    fn from(config: &common::config::SupervisionConfig) -> Self {
        Self {
            initial_backoff: config.initial_backoff,
            max_backoff: config.max_backoff,
            max_restarts: config.max_restarts,
            window: config.restart_window,
        }
    }
}

/// One child's restart history under a policy.
#[derive(Debug, Default)]
pub struct RestartTracker {
    failures: VecDeque<Instant>,
    next_backoff: Option<Duration>,
}

/// What to do about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    RestartAfter(Duration),
    Escalate,
}

impl RestartTracker {
    /// Records a failure at `now` of a child that started at `started` and decides.
    pub fn on_failure(
        &mut self,
        policy: &RestartPolicy,
        started: Instant,
        now: Instant,
    ) -> Decision {
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        if self.failures.len() > policy.max_restarts {
            return Decision::Escalate;
        }
        if now.duration_since(started) >= policy.window {
            self.next_backoff = None;
        }
        let backoff = self.next_backoff.unwrap_or(policy.initial_backoff);
        self.next_backoff = Some((backoff * 2).min(policy.max_backoff));
        Decision::RestartAfter(backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_exponentially_then_escalates() {
        let policy = RestartPolicy {
            max_restarts: 4,
            ..Default::default()
        };
        let mut tracker = RestartTracker::default();
        let t0 = Instant::now();
        let delays: Vec<_> = (0..4)
            .map(|i| tracker.on_failure(&policy, t0, t0 + Duration::from_millis(i)))
            .collect();
        let ms = |d: u64| Decision::RestartAfter(Duration::from_millis(d));
        assert_eq!(delays, vec![ms(50), ms(100), ms(200), ms(400)]);
        assert_eq!(
            tracker.on_failure(&policy, t0, t0 + Duration::from_millis(5)),
            Decision::Escalate
        );
    }

    #[test]
    fn a_long_healthy_run_resets_backoff_and_budget() {
        let policy = RestartPolicy {
            max_restarts: 2,
            ..Default::default()
        };
        let mut tracker = RestartTracker::default();
        let t0 = Instant::now();
        tracker.on_failure(&policy, t0, t0);
        tracker.on_failure(&policy, t0, t0);
        let later = t0 + Duration::from_secs(120);
        assert_eq!(
            tracker.on_failure(&policy, t0, later),
            Decision::RestartAfter(Duration::from_millis(50))
        );
    }

    #[test]
    fn the_policy_is_read_from_configuration_whose_defaults_are_the_policy_defaults() {
        let mut config = common::config::SupervisionConfig::default();
        assert_eq!(RestartPolicy::from(&config), RestartPolicy::default());
        config.initial_backoff = Duration::from_millis(7);
        config.max_backoff = Duration::from_secs(3);
        config.max_restarts = 2;
        config.restart_window = Duration::from_secs(30);
        let policy = RestartPolicy::from(&config);
        assert_eq!(
            policy,
            RestartPolicy {
                initial_backoff: Duration::from_millis(7),
                max_backoff: Duration::from_secs(3),
                max_restarts: 2,
                window: Duration::from_secs(30),
            }
        );
        let mut tracker = RestartTracker::default();
        let t0 = Instant::now();
        let ms = |d: u64| Decision::RestartAfter(Duration::from_millis(d));
        assert_eq!(tracker.on_failure(&policy, t0, t0), ms(7));
        assert_eq!(tracker.on_failure(&policy, t0, t0), ms(14));
        assert_eq!(tracker.on_failure(&policy, t0, t0), Decision::Escalate);
    }

    #[test]
    fn backoff_is_capped() {
        let policy = RestartPolicy {
            max_restarts: 100,
            max_backoff: Duration::from_millis(300),
            ..Default::default()
        };
        let mut tracker = RestartTracker::default();
        let t0 = Instant::now();
        let last = (0..10).map(|_| tracker.on_failure(&policy, t0, t0)).last();
        assert_eq!(
            last,
            Some(Decision::RestartAfter(Duration::from_millis(300)))
        );
    }
}
