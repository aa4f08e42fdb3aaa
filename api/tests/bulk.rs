//! Bulk import and export (`POST /v1/admin/import/{dataset}`, `GET /v1/admin/export/{dataset}`)
//! against a node served on a real socket with authentication on: the report names each refused
//! line with its code, exactly the good lines are stored (and read back through the single
//! endpoints), a line is refused exactly when its single endpoint would refuse it, imported
//! events reach sessions, an export imports back into another node unchanged, atomic imports
//! store all or nothing, and only the roles of the policy table may do either.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::config::Secret;
use serde_json::{Value, json};
use supervisors::Node;

const SECRET: &str = "bulk-test-secret-0123456789abcdefghijklmn";
/// The longest line (and body of a single request) the test node takes.
const MAX_LINE: usize = 4096;
/// Events per append: several batches in the tests' imports.
const MAX_BATCH_EVENTS: usize = 50;

fn token(sub: &str, roles: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": sub, "roles": roles, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

struct Served {
    node: Arc<Node>,
    base: String,
    http: reqwest::Client,
    admin: String,
    _dir: tempfile::TempDir,
}

async fn serve() -> Served {
    serve_with(|_| {}).await
}

async fn serve_with(configure: impl FnOnce(&mut common::Config)) -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = testkit::tiny_config(dir.path());
    config.auth.hs256_secret = Some(Secret(SECRET.into()));
    config.auth.rate_limit_per_second = 0.0;
    config.server.max_body_bytes = MAX_LINE;
    config.server.max_batch_events = MAX_BATCH_EVENTS;
    configure(&mut config);
    let node = Node::start(config).await.expect("node starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let limits = api::listener::Limits::try_from(node.config.as_ref()).expect("limits");
    let app = api::router(node.clone()).expect("router");
    tokio::spawn(api::listener::serve(
        listener,
        app,
        None,
        limits,
        std::future::pending(),
    ));
    Served {
        node,
        base,
        http: reqwest::Client::new(),
        admin: token("root", &["admin"]),
        _dir: dir,
    }
}

impl Served {
    async fn import_as(
        &self,
        token: Option<&str>,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/v1/admin/import/{path_and_query}", self.base))
            .header("content-type", "application/x-ndjson")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("import answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn import(&self, path_and_query: &str, body: Vec<u8>) -> (u16, Value) {
        self.import_as(Some(&self.admin), path_and_query, body)
            .await
    }

    /// The export's lines.
    async fn export(&self, dataset: &str) -> Vec<String> {
        let response = self
            .http
            .get(format!("{}/v1/admin/export/{dataset}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .expect("export answers");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        let text = response.text().await.expect("export body");
        assert!(text.is_empty() || text.ends_with('\n'), "{text}");
        text.lines().map(str::to_owned).collect()
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.expect("answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// Lines joined with newlines, the last one without.
fn ndjson(lines: &[&[u8]]) -> Vec<u8> {
    lines.join(&b'\n')
}

fn refused(report: &Value) -> Vec<(u64, String)> {
    report["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().expect("line"),
                e["code"].as_str().expect("code").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_names_each_refused_line_and_stores_exactly_the_good_ones() {
    let api = serve().await;
    let long = format!(r#"{{"item_id":"i7","title":"{}"}}"#, "x".repeat(MAX_LINE));
    let body = ndjson(&[
        br#"{"item_id":"i1","title":"One","categories":["c"]}"#,
        b"",
        br#"{"item_id":"i2","title":"   "}"#,
        b"not json",
        br#"{"item_id":"i3","title":"Three","attributes":{"year":1999}}"#,
        br#"{"item_id":"i4","title":"Four","colour":"red"}"#,
        br#"{"item_id":"","title":"Five"}"#,
        b"{\"item_id\":\"i6\",\"title\":\"Caf\xe9\"}",
        long.as_bytes(),
        br#"{"item_id":"i8","title":"T","title":"U"}"#,
        br#"{"item_id":"i9","title":"Nine"}"#,
    ]);
    let (status, report) = api.import("items", body).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (
            &report["lines"],
            &report["accepted"],
            &report["refused"],
            &report["errors_omitted"]
        ),
        (&json!(10), &json!(3), &json!(7), &json!(0)),
        "{report}"
    );
    let invalid = || "invalid_argument".to_owned();
    assert_eq!(
        refused(&report),
        vec![
            (3, invalid()),
            (4, invalid()),
            (6, invalid()),
            (7, invalid()),
            (8, invalid()),
            (9, "payload_too_large".to_owned()),
            (10, invalid()),
        ],
        "{report}"
    );
    for message in report["errors"].as_array().expect("errors") {
        assert!(
            message["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{message}"
        );
    }
    // Exactly the good lines are stored, whole.
    let (status, item) = api.send(reqwest::Method::GET, "/v1/items/i3", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            &item["title"],
            &item["attributes"]["year"],
            &item["available"]
        ),
        (&json!("Three"), &json!(1999), &json!(true))
    );
    for (id, stored) in [
        ("i1", true),
        ("i2", false),
        ("i4", false),
        ("i6", false),
        ("i7", false),
        ("i8", false),
        ("i9", true),
    ] {
        let (status, _) = api
            .send(reqwest::Method::GET, &format!("/v1/items/{id}"), None)
            .await;
        assert_eq!(status, if stored { 200 } else { 404 }, "{id}");
    }
    // The single endpoint refuses the same bodies.
    for (id, body) in [
        ("i2", r#"{"title":"   "}"#),
        ("i4", r#"{"title":"Four","colour":"red"}"#),
        ("i8", r#"{"title":"T","title":"U"}"#),
    ] {
        let (status, answer) = api
            .send(reqwest::Method::PUT, &format!("/v1/items/{id}"), Some(body))
            .await;
        assert_eq!(status, 400, "{id}: {answer}");
    }
    let (status, _) = api
        .send(
            reqwest::Method::PUT,
            "/v1/items/i9",
            Some(r#"{"title":"Nine"}"#),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_and_events_go_through_their_endpoints_rules_and_events_reach_sessions() {
    let api = serve().await;
    let crowded: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("f{i}"), json!(i))).collect();
    let crowded = json!({"user_id": "u3", "profile": crowded}).to_string();
    let body = ndjson(&[
        br#"{"user_id":"u1","profile":{"age":31,"email":"u1@example.com"}}"#,
        br#"{"user_id":"u2","profile":"nope"}"#,
        crowded.as_bytes(),
    ]);
    let (status, report) = api.import("profiles", body).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (&report["accepted"], &report["refused"]),
        (&json!(1), &json!(2))
    );
    assert_eq!(
        refused(&report),
        vec![
            (2, "invalid_argument".into()),
            (3, "invalid_argument".into())
        ]
    );

    let mut lines = vec![
        r#"{"event_id":"e1","user_id":"u1","item_id":"i1","kind":"click"}"#.to_owned(),
        r#"{"event_id":"e2","user_id":"u1","item_id":"i2","kind":"poke"}"#.to_owned(),
        r#"{"event_id":"e3","user_id":"u1","item_id":"i3","kind":"view","ts":1700000000000}"#
            .to_owned(),
        r#"{"user_id":"u1","item_id":"i4","kind":"purchase"}"#.to_owned(),
        r#"{"event_id":"e1","user_id":"u1","item_id":"i1","kind":"click"}"#.to_owned(),
    ];
    // Enough for several appends of `server.max_batch_events`.
    lines.extend((0..120).map(|k| {
        json!({"event_id": format!("u2-{k}"), "user_id": "u2", "item_id": format!("i{}", k % 7), "kind": "view"})
            .to_string()
    }));
    let (status, report) = api.import("events", lines.join("\n").into_bytes()).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (
            &report["accepted"],
            &report["duplicates"],
            &report["refused"]
        ),
        (&json!(124), &json!(1), &json!(1)),
        "{report}"
    );
    assert_eq!(refused(&report), vec![(2, "invalid_argument".into())]);
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .bearer_auth(&api.admin)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"streamrec_bulk_lines_total{dataset="events",outcome="refused"}"#),
        "{metrics}"
    );

    // Applied to sessions as `POST /v1/events` would be: the duplicate once.
    for (user, count) in [("u1", 3), ("u2", 120)] {
        let seen = testkit::wait_until(
            async || {
                let (status, view) = api
                    .send(reqwest::Method::GET, &format!("/v1/users/{user}"), None)
                    .await;
                status == 200 && view["num_events"] == count
            },
            Duration::from_secs(20),
        )
        .await;
        assert!(seen, "{user} has {count} events applied");
    }

    // Profiles leave decrypted, to the admin; events as stored, the duplicate once.
    let profiles = api.export("profiles").await;
    assert_eq!(profiles.len(), 1, "{profiles:?}");
    let profile: Value = serde_json::from_str(&profiles[0]).expect("json line");
    assert_eq!(profile["profile"]["email"], "u1@example.com");
    let events = api.export("events").await;
    assert_eq!(events.len(), 123, "{events:?}");
    let ids: BTreeSet<String> = events
        .iter()
        .map(|line| {
            let event: Value = serde_json::from_str(line).expect("json line");
            event["event_id"].as_str().expect("id").to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 123);
    assert!(ids.contains("e1") && ids.contains("e3") && !ids.contains("e2"));

    // An erased user's events are not exported.
    let (status, _) = api
        .send(reqwest::Method::DELETE, "/v1/users/u1", None)
        .await;
    assert_eq!(status, 204);
    let events = api.export("events").await;
    assert_eq!(events.len(), 120, "only u2's remain");
    assert!(api.export("profiles").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_imports_back_into_another_node_unchanged() {
    let (a, b) = tokio::join!(serve(), serve());
    let items: Vec<String> = (0..2500)
        .map(|i| {
            json!({
                "item_id": format!("item-{i}"),
                "title": format!("Item {i}"),
                "categories": [format!("c{}", i % 5)],
                "tags": ["t"],
                "attributes": {"n": i, "name": "ünïcode"},
                "available": i % 3 != 0,
            })
            .to_string()
        })
        .collect();
    let (status, report) = a.import("items", items.join("\n").into_bytes()).await;
    assert_eq!(
        (status, &report["accepted"]),
        (200, &json!(2500)),
        "{report}"
    );
    let profiles = (0..30)
        .map(|u| {
            json!({"user_id": format!("user-{u}"), "profile": {"age": u, "name": format!("N {u}")}})
                .to_string()
        })
        .collect::<Vec<_>>();
    let (status, report) = a.import("profiles", profiles.join("\n").into_bytes()).await;
    assert_eq!((status, &report["accepted"]), (200, &json!(30)), "{report}");
    let events = (0..300)
        .map(|k| json!({"event_id": format!("ev-{k}"), "user_id": format!("user-{}", k % 30), "item_id": format!("item-{}", k % 40), "kind": "rating", "value": (k % 5) as f64, "ts": 1_700_000_000_000i64 + k}).to_string())
        .collect::<Vec<_>>();
    let (status, report) = a.import("events", events.join("\n").into_bytes()).await;
    assert_eq!(
        (status, &report["accepted"]),
        (200, &json!(300)),
        "{report}"
    );

    for (dataset, count) in [("items", 2500), ("profiles", 30), ("events", 300)] {
        let exported = a.export(dataset).await;
        assert_eq!(exported.len(), count, "{dataset}");
        let mut body = exported.join("\n").into_bytes();
        body.push(b'\n');
        let (status, report) = b.import(dataset, body).await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(
            (&report["accepted"], &report["refused"]),
            (&json!(count), &json!(0)),
            "{dataset}: {report}"
        );
        let again: BTreeSet<String> = b.export(dataset).await.into_iter().collect();
        let before: BTreeSet<String> = exported.into_iter().collect();
        assert_eq!(again, before, "{dataset} round-trips");
    }
    // Items exported are what was imported.
    let canonical = |line: &String| {
        serde_json::from_str::<Value>(line)
            .expect("json")
            .to_string()
    };
    let exported: BTreeSet<String> = a.export("items").await.iter().map(canonical).collect();
    let imported: BTreeSet<String> = items.iter().map(canonical).collect();
    assert_eq!(exported, imported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_import_stores_all_or_nothing_and_bad_requests_are_refused_whole() {
    let api = serve().await;
    let good = |id: &str| format!(r#"{{"item_id":"{id}","title":"T {id}"}}"#);
    let body = [good("a1"), "{}".to_owned(), good("a2")].join("\n");
    let (status, report) = api.import("items?atomic=true", body.into_bytes()).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (&report["accepted"], &report["refused"], &report["stored"]),
        (&json!(0), &json!(1), &json!(false)),
        "{report}"
    );
    assert_eq!(refused(&report), vec![(2, "invalid_argument".into())]);
    for id in ["a1", "a2"] {
        let (status, _) = api
            .send(reqwest::Method::GET, &format!("/v1/items/{id}"), None)
            .await;
        assert_eq!(status, 404, "nothing stored: {id}");
    }
    let body = [good("a1"), good("a2")].join("\n");
    let (status, report) = api.import("items?atomic=true", body.into_bytes()).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (&report["accepted"], &report["stored"]),
        (&json!(2), &json!(true))
    );
    for id in ["a1", "a2"] {
        let (status, _) = api
            .send(reqwest::Method::GET, &format!("/v1/items/{id}"), None)
            .await;
        assert_eq!(status, 200, "{id}");
    }
    // No spool is left behind.
    let tmp = api.node.config.data_dir.join("tmp");
    let left = std::fs::read_dir(&tmp).map_or(0, |d| d.count());
    assert_eq!(left, 0);

    // Refused whole, with the one error shape: not JSON lines, a bad flag, no such data set.
    let response = api
        .http
        .post(format!("{}/v1/admin/import/items", api.base))
        .bearer_auth(&api.admin)
        .header("content-type", "application/json")
        .body(good("a3"))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["code"], "invalid_argument", "{error}");
    let (status, error) = api.import("items?atomic=yes", Vec::new()).await;
    assert_eq!(
        (status, &error["error"]["code"]),
        (400, &json!("invalid_argument"))
    );
    let (status, error) = api.import("sessions", Vec::new()).await;
    assert_eq!(
        (status, &error["error"]["code"]),
        (404, &json!("not_found"))
    );
    let (status, report) = api.import("items", Vec::new()).await;
    assert_eq!(
        (status, &report["lines"]),
        (200, &json!(0)),
        "an empty body is no line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_move_data_in_bulk_and_catalogue_admins_their_items() {
    let api = serve().await;
    let callers = [
        ("alice", vec!["user"]),
        ("svc", vec!["service"]),
        ("ops", vec!["operator"]),
        ("cat", vec!["catalog-admin"]),
        ("root", vec!["admin"]),
    ];
    for dataset in ["items", "profiles", "events"] {
        for (sub, roles) in &callers {
            let token = token(sub, roles);
            let allowed = roles.contains(&"admin")
                || (dataset == "items" && roles.contains(&"catalog-admin"));
            let expected = if allowed { 200 } else { 403 };
            let (status, body) = api.import_as(Some(&token), dataset, Vec::new()).await;
            assert_eq!(status, expected, "{sub} imports {dataset}: {body}");
            if !allowed {
                assert_eq!(body["error"]["code"], "permission_denied");
            }
            let response = api
                .http
                .get(format!("{}/v1/admin/export/{dataset}", api.base))
                .bearer_auth(&token)
                .send()
                .await
                .expect("answers");
            assert_eq!(response.status(), expected, "{sub} exports {dataset}");
        }
        let (status, body) = api.import_as(None, dataset, Vec::new()).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (401, &json!("unauthenticated"))
        );
    }
}

/// Sends an import by hand, `parts` of the body each after its pause, announcing
/// `content_length` bytes; the status and the JSON answer.
async fn import_paced(
    api: &Served,
    content_length: usize,
    parts: &[(Duration, &str)],
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "POST /v1/admin/import/items HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {}\r\n\
         content-type: application/x-ndjson\r\ncontent-length: {content_length}\r\n\
         connection: close\r\n\r\n",
        api.admin
    );
    let mut stream = tokio::net::TcpStream::connect(api.base.trim_start_matches("http://"))
        .await
        .expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    for (pause, part) in parts {
        // A slow client, not a wait for the server.
        tokio::time::sleep(*pause).await;
        stream.write_all(part.as_bytes()).await.expect("part");
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "an answer, not a hang");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {text}"));
    let at = text.find("\r\n\r\n").expect("headers end");
    (
        status,
        serde_json::from_str(&text[at + 4..]).expect("JSON answer"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_runs_as_long_as_its_body_moves_and_stops_when_it_stalls() {
    let idle = Duration::from_millis(700);
    let api = serve_with(|c| c.server.request_timeout = idle).await;
    let line = |id: &str| format!("{{\"item_id\":\"{id}\",\"title\":\"T\"}}\n");

    // Longer in all than `server.request_timeout`, never silent that long: it completes.
    let steady: Vec<String> = (0..4).map(|i| line(&format!("p{i}"))).collect();
    let length = steady.iter().map(String::len).sum();
    let parts: Vec<(Duration, &str)> = steady
        .iter()
        .map(|l| (Duration::from_millis(350), l.as_str()))
        .collect();
    let (status, report) = import_paced(&api, length, &parts).await;
    assert_eq!((status, &report["accepted"]), (200, &json!(4)), "{report}");

    // Promises more than it sends, then falls silent: stopped at the unfinished line, every
    // line before it accounted for, the whole ones stored.
    let (s1, s2) = (line("s1"), line("s2"));
    let parts = [
        (Duration::ZERO, s1.as_str()),
        (Duration::ZERO, "not json\n"),
        (Duration::ZERO, s2.as_str()),
        (Duration::ZERO, r#"{"item_id":"s3","ti"#),
    ];
    let (status, report) = import_paced(&api, 100_000, &parts).await;
    assert_eq!(status, 400, "{report}");
    assert_eq!(
        (
            &report["lines"],
            &report["accepted"],
            &report["refused"],
            &report["stopped_at_line"],
            &report["error"]["code"],
        ),
        (
            &json!(3),
            &json!(2),
            &json!(1),
            &json!(4),
            &json!("invalid_argument")
        ),
        "{report}"
    );
    for (id, stored) in [("s1", true), ("s2", true), ("s3", false), ("p3", true)] {
        let (status, _) = api
            .send(reqwest::Method::GET, &format!("/v1/items/{id}"), None)
            .await;
        assert_eq!(status, if stored { 200 } else { 404 }, "{id}");
    }
}
