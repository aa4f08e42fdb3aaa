//! `[telemetry]`: logs.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::values::{InvalidValue, Lenient, string_choice};

/// Logs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `text` or `json`. Default `text`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `actors=debug,info`; `RUST_LOG` wins. Default `info,ort=warn`.
    #[serde(default = "log_level")]
    pub log_level: String,
}

fn log_level() -> String {
    "info,ort=warn".into()
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        super::defaults()
    }
}

impl TelemetryConfig {
    /// Nothing beyond what the types hold (a bad `log_level` falls back to `info` at start).
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Lenient", into = "String")]
pub enum LogFormat {
    /// Compact human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(InvalidValue(
                "telemetry.log_format must be `text` or `json`".into(),
            )),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

string_choice!(LogFormat);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_formats_are_text_or_json() {
        assert!(TelemetryConfig::default().validate().is_ok());
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!(LogFormat::Text.to_string(), "text");
        assert!("yaml".parse::<LogFormat>().is_err());
    }
}
