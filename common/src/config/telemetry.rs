//! `[telemetry]`: logs, and distributed traces exported over OTLP.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::values::{InvalidValue, Lenient, string_choice};

/// Logs and traces.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `text` or `json`. Default `text`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `actors=debug,info`; `RUST_LOG` wins. Default `info,ort=warn`.
    #[serde(default = "log_level")]
    pub log_level: String,
    /// Where spans are exported over OTLP, such as `http://localhost:4317` (gRPC) or
    /// `http://localhost:4318` (HTTP; the exporter appends `/v1/traces`). Default none: no traces.
    #[serde(default = "otlp_endpoint")]
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http` (protobuf over HTTP). Default `grpc`.
    #[serde(default)]
    pub otlp_protocol: OtlpProtocol,
    /// The share of new traces recorded, 0.0 to 1.0; a trace continued from a caller (a
    /// `traceparent` header) follows the caller's decision. Default 1.0.
    #[serde(default = "trace_sample_ratio")]
    pub trace_sample_ratio: f64,
}

fn otlp_endpoint() -> Option<String> {
    None
}

fn trace_sample_ratio() -> f64 {
    1.0
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
    /// The sample ratio is a share; an endpoint is not empty (a bad `log_level` falls back to
    /// `info` at start).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(ConfigError::Invalid(
                "telemetry.trace_sample_ratio must be between 0.0 and 1.0".into(),
            ));
        }
        if self
            .otlp_endpoint
            .as_deref()
            .is_some_and(|e| e.trim().is_empty())
        {
            return Err(ConfigError::Invalid(
                "telemetry.otlp_endpoint must not be empty (leave it out to export no traces)"
                    .into(),
            ));
        }
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

/// How spans travel to the OTLP endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Lenient", into = "String")]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[default]
    Grpc,
    /// OTLP protobuf over HTTP (port 4318 by convention).
    Http,
}

impl std::str::FromStr for OtlpProtocol {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "grpc" => Ok(Self::Grpc),
            "http" => Ok(Self::Http),
            _ => Err(InvalidValue(
                "telemetry.otlp_protocol must be `grpc` or `http`".into(),
            )),
        }
    }
}

impl std::fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        })
    }
}

string_choice!(OtlpProtocol);

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

    #[test]
    fn traces_are_off_by_default_and_the_ratio_is_a_share() {
        let config = TelemetryConfig::default();
        assert_eq!(config.otlp_endpoint, None);
        assert_eq!(config.otlp_protocol, OtlpProtocol::Grpc);
        assert_eq!(config.trace_sample_ratio, 1.0);
        assert_eq!("http".parse(), Ok(OtlpProtocol::Http));
        assert!("thrift".parse::<OtlpProtocol>().is_err());
        let bad = TelemetryConfig {
            trace_sample_ratio: 1.5,
            ..TelemetryConfig::default()
        };
        assert!(bad.validate().is_err());
        let empty = TelemetryConfig {
            otlp_endpoint: Some(" ".into()),
            ..TelemetryConfig::default()
        };
        assert!(empty.validate().is_err());
    }
}
