//! The node's telemetry set-up. Without `telemetry.otlp_endpoint` this is
//! `common::telemetry::init` (logs only). With it, `tracing` spans of the workspace's crates are
//! also exported over OTLP (gRPC or protobuf over HTTP, batched on the tokio runtime) with a
//! parent-based ratio sampler, the W3C trace-context propagator is installed (what
//! `common::telemetry::trace_headers` and `set_parent_from` use across nodes and Kafka), and every
//! log line written inside a span carries its `trace_id`. [`shutdown`] flushes what is batched.

use std::sync::OnceLock;

use anyhow::Context as _;
use common::config::{LogFormat, OtlpProtocol, TelemetryConfig};
use opentelemetry::trace::{TraceId, TracerProvider as _};
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, span_processor_with_async_runtime};
use tracing::{Event, Level, Subscriber};
use tracing_opentelemetry::OtelData;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{self, FmtContext};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, Registry};

/// The crates whose spans are exported (at INFO and above); dependencies' spans (tonic, hyper,
/// the exporter's own calls) are not.
const TRACED: [&str; 9] = [
    "streamrec",
    "api",
    "actors",
    "supervisors",
    "cluster",
    "kafka",
    "storage",
    "models",
    "common",
];

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber (and, with an OTLP endpoint, the exporter). Call inside the
/// tokio runtime: the exporter's batches are sent from a task on it.
pub fn init(config: &TelemetryConfig) -> anyhow::Result<()> {
    let Some(endpoint) = config.otlp_endpoint.as_deref() else {
        common::telemetry::init(config);
        return Ok(());
    };
    let exporter = match config.otlp_protocol {
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build(),
        OtlpProtocol::Http => SpanExporter::builder()
            .with_http()
            .with_endpoint(http_traces_url(endpoint))
            .build(),
    }
    .with_context(|| format!("building the OTLP exporter for {endpoint}"))?;
    let processor = span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.trace_sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("streamrec")
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tracer = provider.tracer("streamrec");
    let _ = PROVIDER.set(provider);

    let traced = TRACED
        .iter()
        .fold(Targets::new().with_default(Level::WARN), |t, target| {
            t.with_target(*target, Level::INFO)
        });
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(traced);
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = config.log_format == LogFormat::Json;
    let logs = if json {
        fmt::layer()
            .with_writer(std::io::stderr)
            .event_format(WithTraceId {
                inner: fmt::format().json().flatten_event(true),
                json,
            })
            .fmt_fields(fmt::format::JsonFields::new())
            .with_filter(filter)
            .boxed()
    } else {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(WithTraceId {
                inner: fmt::format().compact(),
                json,
            })
            .with_filter(filter)
            .boxed()
    };
    Registry::default()
        .with(otel)
        .with(logs)
        .try_init()
        .context("installing the tracing subscriber")?;
    tracing::info!(
        %endpoint,
        protocol = %config.otlp_protocol,
        sample_ratio = config.trace_sample_ratio,
        "exporting traces over OTLP"
    );
    Ok(())
}

/// Sends what is still batched to the OTLP endpoint and stops the exporter (nothing without one).
/// Call after the node stopped, while the runtime still runs.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(error) = provider.shutdown()
    {
        eprintln!("failed to flush traces: {error}");
    }
}

/// The traces URL of an OTLP/HTTP endpoint: the base gets `/v1/traces`, a full URL stays.
fn http_traces_url(endpoint: &str) -> String {
    if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
        endpoint.to_owned()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    }
}

/// A log line format that adds the `trace_id` of the span the event is in (a JSON field, or a
/// `trace_id=` at the end of a text line).
struct WithTraceId<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let trace_id = ctx.event_scope().and_then(|scope| {
            scope
                .filter_map(|span| span.extensions().get::<OtelData>()?.trace_id())
                .find(|id| *id != TraceId::INVALID)
        });
        let Some(trace_id) = trace_id else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        if self.json
            && let Some(rest) = line.strip_prefix('{')
        {
            write!(writer, "{{\"trace_id\":\"{trace_id}\",{rest}")
        } else {
            let body = line.trim_end_matches('\n');
            writeln!(writer, "{body} trace_id={trace_id}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_get_the_traces_path_once() {
        assert_eq!(
            http_traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            http_traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            http_traces_url("http://collector:4318/v1/traces"),
            "http://collector:4318/v1/traces"
        );
    }
}
