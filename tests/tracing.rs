//! Distributed tracing against a real OTLP receiver: the test serves the OTLP gRPC trace service
//! (`opentelemetry-proto`'s tonic server) on a free port, starts the real binary with
//! `STREAMREC__TELEMETRY__OTLP_ENDPOINT` pointing at it, and checks what arrives: a
//! recommendation's trace from the gateway through auth, the user entry point, the cache, the
//! session and the model's ONNX run, with the names, parents and attributes operators search
//! by; a caller's `traceparent` continued; and log lines inside a request carrying `trace_id`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::Value;
use support::*;

/// The spans received so far, with their resources' `service.name`.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Serves OTLP/gRPC on a free loopback port; its `http://` endpoint.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().expect("lock").clone()
    }

    /// Waits until a span satisfies `pick`; every span of its trace then received.
    async fn trace_of(&self, pick: impl Fn(&Span) -> bool, expect: &[&str]) -> Vec<Span> {
        let mut trace = Vec::new();
        let complete = wait_until(
            async || {
                let spans = self.spans();
                let Some((_, root)) = spans.iter().find(|(_, s)| pick(s)) else {
                    return false;
                };
                trace = spans
                    .iter()
                    .filter(|(_, s)| s.trace_id == root.trace_id)
                    .map(|(_, s)| s.clone())
                    .collect();
                expect
                    .iter()
                    .all(|name| trace.iter().any(|s| s.name == *name))
            },
            Duration::from_secs(30),
        )
        .await;
        assert!(
            complete,
            "spans {expect:?} not all received; got {:?}",
            trace.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        trace
    }
}

fn text(value: &Any) -> Option<String> {
    Some(match value {
        Any::StringValue(s) => s.clone(),
        Any::IntValue(i) => i.to_string(),
        Any::BoolValue(b) => b.to_string(),
        Any::DoubleValue(d) => d.to_string(),
        _ => return None,
    })
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
}

fn named<'a>(trace: &'a [Span], name: &str) -> &'a Span {
    trace
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name} span"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_recommendation_is_one_trace_from_gateway_to_model_and_cache() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let (_tmp, dir) = workdir();
    let server = Server::start_with(
        &dir,
        &dir.join("data"),
        &[
            ("STREAMREC__TELEMETRY__OTLP_ENDPOINT", endpoint),
            ("STREAMREC__TELEMETRY__LOG_FORMAT", "json".into()),
            // Export batches quickly: the test polls for them.
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    )
    .await;
    server.catalog((0..12).map(|i| format!("m{i}"))).await;
    let history: Vec<Value> = (0..20)
        .flat_map(|u| {
            (0..12)
                .filter(move |i| (i + u) % 2 == 0)
                .map(move |i| click(&format!("h{u}-{i}"), &format!("u{u}"), &format!("m{i}")))
        })
        .collect();
    assert_eq!(server.post_events(history).await.0, 202);
    eventually(&server, "/v1/users/u0", |s, b| {
        s == 200 && b["num_events"].as_u64() > Some(0)
    })
    .await;
    let version = server.train().await;

    let path = "/v1/users/u0/recommendations?k=3";
    let (status, body) = server.get(path).await;
    assert_eq!(status, 200, "{body}");
    let route = "/v1/users/{user_id}/recommendations";
    let is_miss =
        |s: &Span| s.name == "cache.get" && attr(s, "cache.hit").as_deref() == Some("false");
    let miss = receiver
        .trace_of(
            is_miss,
            &[
                "http.request",
                "auth",
                "users.recommend",
                "cache.get",
                "session.recommend",
                "model.score",
                "cache.put",
            ],
        )
        .await;
    let root = named(&miss, "http.request");
    assert!(root.parent_span_id.is_empty(), "a request starts its trace");
    assert_eq!(attr(root, "http.route").as_deref(), Some(route));
    assert_eq!(attr(root, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        attr(root, "http.response.status_code").as_deref(),
        Some("200")
    );
    let parent = |child: &str, parent: &str| {
        assert_eq!(
            hex(&named(&miss, child).parent_span_id),
            hex(&named(&miss, parent).span_id),
            "{child} is a child of {parent}"
        );
    };
    parent("auth", "http.request");
    parent("users.recommend", "http.request");
    parent("cache.get", "users.recommend");
    parent("session.recommend", "users.recommend");
    parent("model.score", "session.recommend");
    parent("cache.put", "session.recommend");
    let users = named(&miss, "users.recommend");
    assert_eq!(attr(users, "user.id").as_deref(), Some("u0"));
    assert!(attr(users, "streamrec.served_by").is_some());
    let model = named(&miss, "model.score");
    assert_eq!(attr(model, "model.version"), Some(version));
    assert_eq!(attr(model, "model.num_items").as_deref(), Some("3"));
    let received = receiver.spans();
    assert!(
        received.iter().all(|(service, _)| service == "streamrec"),
        "every span names its service"
    );
    assert!(
        received
            .iter()
            .all(|(_, s)| !s.name.starts_with("h2") && !s.name.starts_with("tonic")),
        "dependencies' spans stay out"
    );

    // The same request again is served from the cache: no session, no model.
    let (status, _) = server.get(path).await;
    assert_eq!(status, 200);
    let is_hit =
        |s: &Span| s.name == "cache.get" && attr(s, "cache.hit").as_deref() == Some("true");
    let hit = receiver
        .trace_of(is_hit, &["http.request", "users.recommend", "cache.get"])
        .await;
    assert!(hit.iter().all(|s| s.name != "session.recommend"));

    // A caller's `traceparent` is continued: the request's span joins the caller's trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let response = client(&admin_token(), None)
        .build()
        .expect("client")
        .get(server.url("/v1/users/u1/recommendations?k=2"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let continued = receiver
        .trace_of(
            |s| hex(&s.trace_id) == trace_id,
            &["http.request", "users.recommend"],
        )
        .await;
    let root = named(&continued, "http.request");
    assert_eq!(hex(&root.parent_span_id), caller_span);

    // A log line written inside a request carries the request's trace id: a refused request's
    // audit line.
    let refused = reqwest::Client::new()
        .get(server.url("/v1/users/u2/recommendations"))
        .send()
        .await
        .expect("request");
    let status = refused.status().as_u16();
    assert_eq!(status, 401);
    let refused = receiver
        .trace_of(
            |s| {
                s.name == "http.request"
                    && attr(s, "http.response.status_code").as_deref() == Some("401")
            },
            &["http.request"],
        )
        .await;
    let refused_trace = hex(&refused[0].trace_id);
    let logged = wait_until(
        async || {
            std::fs::read_to_string(dir.join("node.log"))
                .unwrap_or_default()
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .any(|line| {
                    line["message"] == "unauthenticated request"
                        && line["trace_id"] == refused_trace.as_str()
                })
        },
        Duration::from_secs(10),
    )
    .await;
    assert!(
        logged,
        "no audit line with trace_id {refused_trace}; log:\n{}",
        std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
    );
}
