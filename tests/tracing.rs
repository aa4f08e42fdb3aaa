//! Distributed tracing against a real OTLP receiver: the test serves the OTLP gRPC trace service
//! (`opentelemetry-proto`'s tonic server) on a free port, starts the real binary with
//! `STREAMREC__TELEMETRY__OTLP_ENDPOINT` pointing at it, and checks what arrives: a
//! recommendation's trace from the gateway through auth, the user entry point, the cache, the
//! session and the model's ONNX run, with the names, parents and attributes operators search
//! by; a caller's `traceparent` continued; and log lines inside a request carrying `trace_id`.
//! With Kafka as the event source (the broker `scripts/services.sh` starts, on topics and a
//! consumer group of the test's own), an event's trace goes on through the broker: from
//! `POST /v1/events` to its message's `traceparent` header, the session's apply, and the push to a
//! subscribed WebSocket client.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{Value, json};
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
        self.trace_within(pick, expect, Duration::from_secs(30))
            .await
    }

    /// [`Receiver::trace_of`], waiting up to `deadline` for the trace to be complete.
    async fn trace_within(
        &self,
        pick: impl Fn(&Span) -> bool,
        expect: &[&str],
        deadline: Duration,
    ) -> Vec<Span> {
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
            deadline,
        )
        .await;
        assert!(
            complete,
            "spans {expect:?} not all received; got {:#?}",
            trace
                .iter()
                .map(|s| {
                    let attrs: Vec<(&str, Option<String>)> = s
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.as_str(), attr(s, &kv.key)))
                        .collect();
                    (&s.name, hex(&s.span_id), hex(&s.parent_span_id), attrs)
                })
                .collect::<Vec<_>>()
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

/// The `traceparent` header of the message on `topic`'s `partition` holding event `event_id`,
/// read from the start without a consumer group; `None` if the message has none, and a failed
/// test if the message does not arrive within 20 s.
fn traceparent_on_the_broker(
    brokers: &str,
    topic: &str,
    partition: i32,
    event_id: &str,
) -> Option<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
        .expect("partition");
    consumer.assign(&list).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let value: Value =
            serde_json::from_slice(message.payload().unwrap_or_default()).unwrap_or_default();
        if value["event_id"] != event_id {
            continue;
        }
        return message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == "traceparent")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
    }
    panic!("{event_id} never arrived on {topic}/{partition}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_through_kafka_is_one_trace_from_post_to_apply_and_push() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let (_tmp, dir) = workdir();
    let kafka = test_env("STREAMREC_TEST_KAFKA");
    let brokers = kafka.trim_start_matches("kafka://").to_owned();
    // Topics and consumer group of this test's own: other tests' events never reach this node.
    let id = unique("");
    let prefix = format!("tr{id}.");
    let server = Server::start_with(
        &dir,
        &dir.join("data"),
        &[
            ("STREAMREC__TELEMETRY__OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ("STREAMREC__EVENTS__URL", kafka.clone()),
            ("STREAMREC__EVENTS__TOPIC_PREFIX", prefix.clone()),
            ("STREAMREC__EVENTS__GROUP", format!("tr{id}")),
            // A node starved of CPU by other tests keeps its group membership.
            ("STREAMREC__EVENTS__SESSION_TIMEOUT", "30s".into()),
            ("STREAMREC__CLUSTER__NODE_ID", format!("tracing-{id}")),
            (
                "STREAMREC__CLUSTER__SECRET",
                "tracing-test-cluster-secret".into(),
            ),
        ],
    )
    .await;
    eventually(&server, "/readyz", |_, b| {
        b["dependencies"]["events"] == "up"
    })
    .await;

    // A catalogue (item writes go through the broker too: the first may wait for the node to
    // create its topics), and other users' clicks to make the items popular.
    let put = async |item: &str| {
        let path = format!("/v1/items/{item}");
        let body = json!({"title": format!("Item {item}")});
        server.send(reqwest::Method::PUT, &path, Some(body)).await.0
    };
    // (The broker may refuse a write for a moment after it created a topic: 503, retried.)
    for i in 0..8 {
        let item = format!("m{i}");
        assert!(
            wait_until(async || put(&item).await == 200, Duration::from_secs(30)).await,
            "the node never took {item}"
        );
    }
    eventually(&server, "/v1/items/m7", |s, _| s == 200).await;
    let seed: Vec<Value> = (0..6)
        .flat_map(|u| {
            (0..8).map(move |i| click(&format!("s{u}-{i}"), &format!("s{u}"), &format!("m{i}")))
        })
        .collect();
    let posted = async || server.post_events(seed.clone()).await.0 == 202;
    assert!(
        wait_until(posted, Duration::from_secs(30)).await,
        "the node never took the events"
    );
    eventually(&server, "/v1/users/s5", |s, b| {
        s == 200 && b["num_events"] == 8
    })
    .await;

    // A client watches the user.
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url("/v1/ws?user_id=watcher&k=3"))
        .await
        .expect("websocket");
    let (_ws_tx, mut ws_rx) = futures::StreamExt::split(ws);
    let first = next_json(&mut ws_rx).await;
    assert_eq!(first["type"], "recommendations", "{first}");
    let top = first["items"][0]["item_id"]
        .as_str()
        .unwrap_or_else(|| panic!("nothing recommended: {first}"))
        .to_owned();

    // The user acts on the top item: a push follows.
    let acted = vec![click("traced-1", "watcher", &top)];
    assert_eq!(server.post_events(acted).await.0, 202);
    // (A push of something else meanwhile, a model swap say, still holds the top item.)
    loop {
        let update = next_json(&mut ws_rx).await;
        assert_eq!(update["type"], "recommendations", "{update}");
        let items = update["items"].as_array().cloned().unwrap_or_default();
        if items.iter().all(|i| i["item_id"] != top.as_str()) {
            break;
        }
    }

    // The trace of the user's apply: the one the POST started.
    // (A push waits for the user's partition while the group moves it: up to
    // `cluster.handoff_timeout` per step.)
    let trace = receiver
        .trace_within(
            |s| s.name == "event.apply" && attr(s, "user.id").as_deref() == Some("watcher"),
            &[
                "http.request",
                "kafka.produce",
                "event.apply",
                "push.send",
                "users.recommend",
            ],
            Duration::from_secs(60),
        )
        .await;
    let parent = |child: &str, parent: &str| {
        assert_eq!(
            hex(&named(&trace, child).parent_span_id),
            hex(&named(&trace, parent).span_id),
            "{child} is a child of {parent}"
        );
    };
    let post = named(&trace, "http.request");
    let trace_id = hex(&post.trace_id);
    assert!(post.parent_span_id.is_empty(), "the POST starts the trace");
    assert_eq!(attr(post, "http.route").as_deref(), Some("/v1/events"));
    assert_eq!(attr(post, "http.request.method").as_deref(), Some("POST"));

    // The producer's span is what the message carries.
    parent("kafka.produce", "http.request");
    let produce = named(&trace, "kafka.produce");
    let user_events = format!("{prefix}user-events");
    assert_eq!(
        attr(produce, "messaging.destination.name").as_deref(),
        Some(user_events.as_str())
    );
    let partition = common::partition::partition_for("watcher", testkit::NUM_PARTITIONS) as i32;
    let header = {
        let (brokers, topic) = (brokers.clone(), user_events.clone());
        tokio::task::spawn_blocking(move || {
            traceparent_on_the_broker(&brokers, &topic, partition, "traced-1")
        })
        .await
        .expect("reader")
    };
    assert_eq!(
        header,
        Some(format!("00-{trace_id}-{}-01", hex(&produce.span_id)))
    );

    // The apply on the consuming side continues it, and the push it caused nests under the
    // apply, with the recompute under the push.
    parent("event.apply", "kafka.produce");
    let apply = named(&trace, "event.apply");
    assert_eq!(attr(apply, "user.id").as_deref(), Some("watcher"));
    assert_eq!(attr(apply, "event.partition"), Some(partition.to_string()));
    assert_eq!(attr(apply, "event.num_applied").as_deref(), Some("1"));
    parent("push.send", "event.apply");
    let push = named(&trace, "push.send");
    assert_eq!(attr(push, "user.id").as_deref(), Some("watcher"));
    assert_eq!(attr(push, "push.num_subscribers").as_deref(), Some("1"));
    assert_eq!(attr(push, "push.num_notified").as_deref(), Some("1"));
    parent("users.recommend", "push.send");
    assert!(
        trace.iter().all(|s| s.trace_id == post.trace_id),
        "one trace"
    );

    // The seeding requests' events were applied in traces of their own, never as roots.
    let applies: Vec<Span> = receiver
        .spans()
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "event.apply")
        .collect();
    assert!(
        applies.iter().all(|s| !s.parent_span_id.is_empty()),
        "every traced apply has its producer as parent"
    );
}
