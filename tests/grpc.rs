//! The public gRPC API against the real binary: the generated tonic client calls
//! `streamrec.v1.Recommender` on the HTTP port, watches a user's recommendations as a stream, gets
//! the shared error table as gRPC statuses, and finds the service through server reflection (what
//! grpcurl does).

mod support;

use std::time::Duration;

use api::grpc::pb;
use futures::StreamExt;
use support::*;
use tonic::Code;

async fn client(server: &Server) -> GrpcClient {
    grpc_client(server, &admin_token()).await
}

fn event(id: &str, user: &str, item: &str) -> pb::Event {
    pb::Event {
        event_id: Some(id.into()),
        user_id: user.into(),
        item_id: item.into(),
        kind: "click".into(),
        value: None,
        ts: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommends_tracks_upserts_and_streams_over_grpc() {
    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;
    let mut grpc = client(&server).await;

    for i in 0..8 {
        let item = grpc
            .upsert_item(pb::UpsertItemRequest {
                item_id: format!("g{i}"),
                title: format!("Film {i}"),
                categories: vec![if i < 4 { "drama" } else { "comedy" }.into()],
                tags: vec![],
                attributes_json: r#"{"year": 1999}"#.into(),
                available: None,
            })
            .await
            .expect("upsert")
            .into_inner();
        assert_eq!(item.item_id, format!("g{i}"));
        assert!(item.available);
        assert_eq!(item.attributes_json, r#"{"year":1999}"#);
    }
    // The item is in the catalog REST reads.
    let (status, body) = server.get("/v1/items/g3").await;
    assert_eq!((status, body["title"].as_str()), (200, Some("Film 3")));

    let history: Vec<pb::Event> = (0..20)
        .flat_map(|u| {
            (0..8)
                .filter(move |i| (i + u) % 3 != 0)
                .map(move |i| (u, i))
        })
        .map(|(u, i)| event(&format!("h{u}-{i}"), &format!("u{u}"), &format!("g{i}")))
        .collect();
    let tracked = grpc
        .track_events(pb::TrackEventsRequest {
            events: history.clone(),
        })
        .await
        .expect("track")
        .into_inner();
    assert_eq!(
        (tracked.accepted, tracked.duplicates),
        (history.len() as u32, 0)
    );
    // Retrying the same batch is idempotent.
    let retried = grpc
        .track_events(pb::TrackEventsRequest { events: history })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retried.accepted, 0);
    server.train().await;

    let recs = grpc
        .recommend(pb::RecommendRequest {
            user_id: "u1".into(),
            k: 3,
            category: None,
            diversity: None,
        })
        .await
        .expect("recommend")
        .into_inner();
    assert_eq!(recs.user_id, "u1");
    // u1 has seen every item but g2 and g5: exactly those remain, k notwithstanding.
    let mut unseen: Vec<&str> = recs.items.iter().map(|r| r.item_id.as_str()).collect();
    unseen.sort_unstable();
    assert_eq!(unseen, ["g2", "g5"]);
    assert!(recs.items.iter().all(|r| !r.reasons.is_empty()));
    let (_, rest) = server.get("/v1/users/u1/recommendations?k=3").await;
    let rest_ids: Vec<&str> = rest["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|r| r["item_id"].as_str())
        .collect();
    let grpc_ids: Vec<&str> = recs.items.iter().map(|r| r.item_id.as_str()).collect();
    assert_eq!(grpc_ids, rest_ids, "gRPC and REST agree");
    let drama = grpc
        .recommend(pb::RecommendRequest {
            user_id: "u1".into(),
            k: 10,
            category: Some("drama".into()),
            diversity: None,
        })
        .await
        .expect("recommend in a category")
        .into_inner();
    assert!(
        drama
            .items
            .iter()
            .all(|r| ["g0", "g1", "g2", "g3"].contains(&r.item_id.as_str())),
        "{drama:?}"
    );

    // The stream starts with the current recommendations and pushes a change.
    let mut stream = grpc
        .watch_recommendations(pb::WatchRequest {
            user_id: "fresh".into(),
            k: 5,
            category: None,
            diversity: None,
        })
        .await
        .expect("watch")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("first message in time")
        .expect("a message")
        .expect("ok");
    assert_eq!(first.user_id, "fresh");
    let mut writer = client(&server).await;
    writer
        .track_events(pb::TrackEventsRequest {
            events: (0..3)
                .map(|i| event(&format!("f{i}"), "fresh", "g1"))
                .collect(),
        })
        .await
        .expect("track");
    let changed = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(message) = stream.next().await {
            let recs = message.expect("ok");
            if recs != first {
                return recs;
            }
        }
        panic!("stream ended");
    })
    .await
    .expect("a push after the user's events");
    assert!(
        changed.items.iter().all(|r| r.item_id != "g1"),
        "the clicked item is not recommended back: {changed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_the_shared_table_as_grpc_statuses() {
    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;
    let mut grpc = client(&server).await;
    let code_of = |status: &tonic::Status| {
        status
            .metadata()
            .get(api::grpc::ERROR_CODE_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };

    let bad_k = grpc
        .recommend(pb::RecommendRequest {
            user_id: "u".into(),
            k: 1000,
            category: None,
            diversity: None,
        })
        .await
        .expect_err("k too large");
    assert_eq!(bad_k.code(), Code::InvalidArgument);
    assert_eq!(code_of(&bad_k).as_deref(), Some("invalid_argument"));

    let empty = grpc
        .track_events(pb::TrackEventsRequest { events: vec![] })
        .await
        .expect_err("empty batch");
    assert_eq!(empty.code(), Code::InvalidArgument);

    // One bad event fails the batch and stores none of it.
    let mut events = vec![event("ok-1", "batch-user", "x")];
    events.push(pb::Event {
        kind: "teleport".into(),
        ..event("bad-1", "batch-user", "x")
    });
    let bad = grpc
        .track_events(pb::TrackEventsRequest { events })
        .await
        .expect_err("bad kind");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("events[1]"), "{}", bad.message());
    let (status, _) = server.get("/v1/users/batch-user").await;
    assert_eq!(status, 404, "nothing of the rejected batch was stored");

    let too_many = grpc
        .track_events(pb::TrackEventsRequest {
            events: (0..1001)
                .map(|i| event(&format!("m{i}"), "u", "x"))
                .collect(),
        })
        .await
        .expect_err("too many");
    assert_eq!(too_many.code(), Code::ResourceExhausted);
    assert_eq!(code_of(&too_many).as_deref(), Some("payload_too_large"));

    let blank = grpc
        .upsert_item(pb::UpsertItemRequest {
            item_id: "blank".into(),
            title: "   ".into(),
            ..Default::default()
        })
        .await
        .expect_err("blank title");
    assert_eq!(blank.code(), Code::InvalidArgument);
    let not_object = grpc
        .upsert_item(pb::UpsertItemRequest {
            item_id: "arr".into(),
            title: "Array".into(),
            attributes_json: "[1]".into(),
            ..Default::default()
        })
        .await
        .expect_err("attributes must be an object");
    assert_eq!(not_object.code(), Code::InvalidArgument);
    let (status, _) = server.get("/v1/items/arr").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommend_and_watch_take_a_diversity_over_grpc() {
    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;
    let mut grpc = client(&server).await;
    // Four dramas everyone is watching now, one comedy a single user is.
    for (id, category) in [
        ("d0", "drama"),
        ("d1", "drama"),
        ("d2", "drama"),
        ("d3", "drama"),
        ("c0", "comedy"),
    ] {
        grpc.upsert_item(pb::UpsertItemRequest {
            item_id: id.into(),
            title: format!("Film {id}"),
            categories: vec![category.into()],
            ..Default::default()
        })
        .await
        .expect("upsert");
    }
    let events: Vec<pb::Event> = (0..4)
        .flat_map(|u| (0..4).map(move |i| (format!("t{u}"), format!("d{i}"))))
        .chain([("t4".to_owned(), "c0".to_owned())])
        .map(|(user, item)| event(&format!("{user}-{item}"), &user, &item))
        .collect();
    grpc.track_events(pb::TrackEventsRequest { events })
        .await
        .expect("track");
    let trending = wait_for(
        async || {
            let (_, body) = server.get("/v1/trending?k=10").await;
            let n = body["items"].as_array().map_or(0, Vec::len);
            (n == 5).then_some(body)
        },
        Duration::from_secs(15),
    )
    .await;
    assert!(trending.is_some(), "the events were not applied");
    // Users never seen get what is trending: dramas only, unless they ask for diversity.
    let ask = |user: &str, diversity: Option<f64>| pb::RecommendRequest {
        user_id: user.into(),
        k: 3,
        category: None,
        diversity,
    };
    let ids = |recs: &pb::Recommendations| {
        recs.items
            .iter()
            .map(|r| r.item_id.clone())
            .collect::<Vec<_>>()
    };
    let diverse = grpc
        .recommend(ask("newcomer", Some(0.7)))
        .await
        .expect("recommend with diversity")
        .into_inner();
    assert_eq!(diverse.items.len(), 3, "{diverse:?}");
    assert_eq!(diverse.items[1].item_id, "c0", "{diverse:?}");
    // Another diversity is another list, not the one cached for 0.7.
    let plain = grpc
        .recommend(ask("newcomer", None))
        .await
        .expect("recommend")
        .into_inner();
    assert!(
        ids(&plain).iter().all(|id| id.starts_with('d')),
        "{plain:?}"
    );
    let zero = grpc
        .recommend(ask("newcomer", Some(0.0)))
        .await
        .expect("recommend with diversity 0")
        .into_inner();
    assert_eq!(ids(&zero), ids(&plain));
    // REST and gRPC agree.
    let (_, rest) = server
        .get("/v1/users/newcomer/recommendations?k=3&diversity=0.7")
        .await;
    let rest_ids: Vec<&str> = rest["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|r| r["item_id"].as_str())
        .collect();
    assert_eq!(rest_ids, ids(&diverse));
    // The stream takes it too.
    let mut stream = grpc
        .watch_recommendations(pb::WatchRequest {
            user_id: "watcher".into(),
            k: 3,
            category: None,
            diversity: Some(0.7),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("first message in time")
        .expect("a message")
        .expect("ok");
    assert_eq!(first.items[1].item_id, "c0", "{first:?}");
    // Out of range or not a number: INVALID_ARGUMENT, on both calls.
    for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
        let refused = grpc
            .recommend(ask("newcomer", Some(bad)))
            .await
            .expect_err("diversity out of range");
        assert_eq!(refused.code(), Code::InvalidArgument, "{bad}");
        let refused = grpc
            .watch_recommendations(pb::WatchRequest {
                user_id: "watcher".into(),
                k: 3,
                category: None,
                diversity: Some(bad),
            })
            .await
            .expect_err("diversity out of range");
        assert_eq!(refused.code(), Code::InvalidArgument, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_describes_the_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let (_guard, dir) = workdir();
    let server = Server::start(&dir).await;
    let channel = tonic::transport::Channel::from_shared(server.url(""))
        .expect("uri")
        .connect()
        .await
        .expect("connects");
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", admin_token()).parse().expect("ascii");
    let mut reflection = ServerReflectionClient::with_interceptor(channel, Bearer(bearer));
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let requests = futures::stream::iter([
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "streamrec.v1.Recommender".into(),
        )),
    ]);
    let responses: Vec<ServerReflectionResponse> = reflection
        .server_reflection_info(requests)
        .await
        .expect("reflection answers")
        .into_inner()
        .map(|r| r.expect("ok"))
        .collect()
        .await;
    let Some(MessageResponse::ListServicesResponse(list)) = &responses[0].message_response else {
        panic!("not a service list: {:?}", responses[0]);
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"streamrec.v1.Recommender"), "{names:?}");
    // The node-to-node service is not for clients, and reflection does not list it.
    assert!(
        names.iter().all(|name| !name.contains("internal")),
        "{names:?}"
    );
    let Some(MessageResponse::FileDescriptorResponse(files)) = &responses[1].message_response
    else {
        panic!("no descriptor: {:?}", responses[1]);
    };
    let descriptor = String::from_utf8_lossy(&files.file_descriptor_proto[0]).into_owned();
    assert!(descriptor.contains("WatchRecommendations"));
}
