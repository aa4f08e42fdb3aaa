//! Logging set-up, and the W3C trace context carried across processes (`traceparent` in gRPC
//! metadata and Kafka headers; the binary installs the propagator and the OTLP exporter when
//! `telemetry.otlp_endpoint` is set, and without it these carry nothing). Metrics are declared next to the code that updates them, on the default
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

/// The current span's trace context as W3C headers (`traceparent`, `tracestate`), to send with a
/// request or message; empty when tracing is off or no span is sampled.
pub fn trace_headers() -> Vec<(String, String)> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let mut headers = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
    headers.into_iter().collect()
}

/// Makes `span` a child of the trace context in `headers` (what [`trace_headers`] sent), if they
/// carry one; header names are lowercase.
pub fn set_parent_from<'a>(
    span: &tracing::Span,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let headers: std::collections::HashMap<String, String> = headers
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
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

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn a_span_context_travels_in_headers_and_parents_the_receiving_span() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let sender = tracing::info_span!("sender");
            let headers = sender.in_scope(super::trace_headers);
            let sent = sender.context().span().span_context().clone();
            let traceparent = headers
                .iter()
                .find(|(k, _)| k == "traceparent")
                .map(|(_, v)| v.clone());
            assert_eq!(
                traceparent,
                Some(format!("00-{}-{}-01", sent.trace_id(), sent.span_id()))
            );

            // Header names as a transport may spell them.
            let receiver = tracing::info_span!("receiver");
            super::set_parent_from(
                &receiver,
                headers
                    .iter()
                    .map(|(k, v)| (k.to_uppercase(), v.as_str()))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(|(k, v)| (k.as_str(), *v)),
            );
            assert_eq!(
                receiver.context().span().span_context().trace_id(),
                sent.trace_id()
            );

            // No context: a new trace.
            let alone = tracing::info_span!("alone");
            super::set_parent_from(&alone, [("content-type", "application/json")]);
            let own = alone.context().span().span_context().trace_id();
            assert_ne!(own, sent.trace_id());
        });
    }
}
