//! Logging set-up, and the W3C trace context carried across processes (`traceparent` in gRPC
//! metadata and Kafka headers, [`TraceContext`] with a consumed event through the actors; the
//! binary installs the propagator and the OTLP exporter when `telemetry.otlp_endpoint` is set,
//! and without it these carry nothing). Metrics are declared next to the code that updates them, on the default
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
    // Every request passes here: without a propagator there is nothing to read, so copy nothing.
    if !propagating() {
        return;
    }
    let headers: std::collections::HashMap<String, String> = headers
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Whether trace contexts travel at all: a propagator is installed (the binary installs the W3C
/// one when it exports spans). Without one, nothing is written to or read from message headers.
pub fn propagating() -> bool {
    opentelemetry::global::get_text_map_propagator(|p| p.fields().next().is_some())
}

/// The W3C trace context of one sampled span (`traceparent`, and `tracestate` when it says
/// anything), as a Kafka message carries it in its headers and the event it held then carries it
/// through the node's actors, so that the work the event causes (its apply, the push that
/// follows) joins the trace of the request that produced it. Only sampled contexts are carried:
/// with tracing off, or a span not sampled, there is none and nothing downstream pays for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The context of `span`, if trace contexts travel and the span is sampled.
    pub fn of(span: &tracing::Span) -> Option<Self> {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        if span.is_disabled() || !propagating() {
            return None;
        }
        let cx = span.context();
        if !cx.span().span_context().is_sampled() {
            return None;
        }
        let mut headers = std::collections::HashMap::new();
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
        Some(Self {
            traceparent: headers.remove("traceparent")?,
            tracestate: headers.remove("tracestate").filter(|s| !s.is_empty()),
        })
    }

    /// The context of the current span (see [`TraceContext::of`]).
    pub fn current() -> Option<Self> {
        Self::of(&tracing::Span::current())
    }

    /// The context in message headers (`traceparent` and `tracestate`, in any case), if they
    /// carry a `traceparent`; what is not UTF-8 is ignored. The value is checked only where a
    /// span takes it as parent ([`TraceContext::parent`]).
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Option<Self> {
        let (mut traceparent, mut tracestate) = (None, None);
        for (key, value) in headers {
            let Ok(value) = std::str::from_utf8(value) else {
                continue;
            };
            if key.eq_ignore_ascii_case("traceparent") {
                traceparent = Some(value.to_owned());
            } else if key.eq_ignore_ascii_case("tracestate") && !value.is_empty() {
                tracestate = Some(value.to_owned());
            }
        }
        Some(Self {
            traceparent: traceparent?,
            tracestate,
        })
    }

    /// The headers to send: `traceparent`, and `tracestate` when there is one.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        std::iter::once(("traceparent", self.traceparent.as_str())).chain(
            self.tracestate
                .as_deref()
                .map(|state| ("tracestate", state)),
        )
    }

    /// Makes `span` a child of this context (call before the span is first entered). A
    /// malformed `traceparent` leaves the span a root.
    pub fn parent(&self, span: &tracing::Span) {
        let state = self.tracestate.as_deref().unwrap_or_default();
        set_parent_from(
            span,
            [
                ("traceparent", self.traceparent.as_str()),
                ("tracestate", state),
            ],
        );
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

    #[test]
    fn a_sampled_span_context_travels_as_a_trace_context_and_an_unsampled_one_not_at_all() {
        use super::TraceContext;
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let sampled = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(sampled.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let producer = tracing::info_span!("kafka.produce");
            let carried = producer.in_scope(TraceContext::current).expect("sampled");
            let sent = producer.context().span().span_context().clone();
            assert_eq!(
                carried.traceparent,
                format!("00-{}-{}-01", sent.trace_id(), sent.span_id())
            );
            assert_eq!(carried.tracestate, None, "an empty tracestate is not sent");
            let headers: Vec<(&str, &str)> = carried.headers().collect();
            assert_eq!(headers, [("traceparent", carried.traceparent.as_str())]);

            // Read back from message headers as a broker hands them over.
            let received = TraceContext::from_headers([
                ("content-type", &b"application/json"[..]),
                ("TraceParent", carried.traceparent.as_bytes()),
                ("tracestate", &b"vendor=1"[..]),
            ])
            .expect("a traceparent");
            assert_eq!(received.traceparent, carried.traceparent);
            assert_eq!(received.tracestate.as_deref(), Some("vendor=1"));
            let apply = tracing::info_span!("event.apply");
            received.parent(&apply);
            let applied = apply.context().span().span_context().clone();
            assert_eq!(applied.trace_id(), sent.trace_id());
            assert_eq!(applied.trace_state().header(), "vendor=1");
            assert_eq!(
                TraceContext::from_headers([("reason", &b"x"[..])]),
                None,
                "no traceparent, no context"
            );
            assert_eq!(TraceContext::of(&tracing::Span::none()), None);
        });

        let unsampled = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOff)
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(unsampled.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("kafka.produce");
            assert_eq!(span.in_scope(TraceContext::current), None);
        });
    }
}
