//! `[trending]`: the real-time activity windows and how much they lift ranking.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// Real-time activity windows.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrendingConfig {
    /// Length of one tumbling window. Default 5m.
    #[serde(default = "window", with = "humantime_serde")]
    pub window: Duration,
    /// Windows kept; older activity no longer counts. Default 12 (an hour of 5-minute windows).
    #[serde(default = "windows")]
    pub windows: usize,
    /// Lift given to trending items within the model's ranking: the top trending item gains
    /// this much (in standard deviations of the blended score), others in proportion to their
    /// trending score. `0` turns it off. Default 0.1.
    #[serde(default = "boost")]
    pub boost: f32,
    /// The most one user's activity on one item counts, in interaction weight (a view 1, a
    /// click 2, a purchase 5): toward the item's popularity (the user's summed weight on it,
    /// clamped to `[0, max_user_weight]`) and toward its trending activity in each window. No
    /// single user can make an item popular or trending. Default 5 (one purchase).
    #[serde(default = "max_user_weight")]
    pub max_user_weight: f64,
}

/// One purchase: a user's weight on an item counts at most this much.
pub const DEFAULT_MAX_USER_WEIGHT: f64 = 5.0;

fn window() -> Duration {
    Duration::from_secs(300)
}
fn windows() -> usize {
    12
}
fn boost() -> f32 {
    0.1
}
fn max_user_weight() -> f64 {
    DEFAULT_MAX_USER_WEIGHT
}

impl Default for TrendingConfig {
    fn default() -> Self {
        super::defaults()
    }
}

impl TrendingConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.window.is_zero() || self.windows == 0 {
            return invalid("trending.window and trending.windows must be above 0");
        }
        if !(0.0..=10.0).contains(&self.boost) {
            return invalid("trending.boost must be between 0 and 10");
        }
        if !(self.max_user_weight.is_finite() && self.max_user_weight > 0.0) {
            return invalid("trending.max_user_weight must be a number above 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trending_needs_windows_a_bounded_boost_and_a_positive_cap() {
        assert!(TrendingConfig::default().validate().is_ok());
        for bad in [
            |t: &mut TrendingConfig| t.windows = 0,
            |t: &mut TrendingConfig| t.boost = 11.0,
            |t: &mut TrendingConfig| t.max_user_weight = f64::INFINITY,
        ] {
            let mut trending = TrendingConfig::default();
            bad(&mut trending);
            assert!(trending.validate().is_err());
        }
    }
}
