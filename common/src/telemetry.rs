//! Logging set-up. Metrics are declared next to the code that updates them, on the default
//! Prometheus registry, with names `streamrec_<subsystem>_<name>_<unit>[_total]` and label values
//! from small fixed sets (never a user or item id).

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global `tracing` subscriber. `RUST_LOG` overrides the configured level.
pub fn init(config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if config.log_format == LogFormat::Json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
    // A second init (tests, embedded use) keeps the first subscriber.
    drop(result);
}

/// Renders every metric of the default registry in the Prometheus text format.
pub fn render_metrics() -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(error) = encoder.encode(&prometheus::gather(), &mut buf) {
        tracing::warn!(%error, "failed to encode metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}
