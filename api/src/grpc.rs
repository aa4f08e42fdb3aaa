//! The public gRPC API, `streamrec.v1.Recommender` (see `proto/streamrec/v1/recommender.proto`),
//! served on the HTTP port: a request with `content-type: application/grpc` is routed here by its
//! path, everything else stays REST. Server reflection (v1 and v1alpha) lets grpcurl and other
//! tools call it without the .proto file.
//!
//! Every handler validates with the same functions as REST, and failures carry the status of
//! `common::ErrorCode::grpc_code` plus the stable code string in the `streamrec-error-code`
//! metadata entry, so a client sees one error table whichever protocol it speaks.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use common::{ApiError, ErrorCode, EventInput, ItemInput, RecQuery};
use futures::Stream;
use supervisors::Node;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tower::ServiceExt;

use crate::policy::{Action, authorize, principal_of};
use crate::streams::{Caller, until_expiry};

/// Generated messages and service traits.
pub mod pb {
    tonic::include_proto!("streamrec.v1");

    /// The encoded descriptor set, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/streamrec_descriptor.bin"));
}

use pb::recommender_server::{Recommender, RecommenderServer};

pub use crate::error::{ERROR_CODE_KEY, grpc_status as status};

/// Asks the policy table whether the caller the gateway layer authenticated may do `action`.
fn allow<T>(request: &Request<T>, action: Action<'_>) -> Result<(), Status> {
    let principal = principal_of(request.extensions());
    authorize(&principal, action, "grpc").map_err(|e| status(&e))
}

fn invalid(message: impl Into<String>) -> Status {
    status(&ApiError::invalid(message))
}

fn check_id(field: &str, id: &str) -> Result<(), Status> {
    common::validate_id(field, id).map_err(invalid)
}

/// `k` 0 means the default, 10; no `diversity` the model's ranking.
fn rec_query(k: u32, category: Option<String>, diversity: Option<f64>) -> Result<RecQuery, Status> {
    let k = if k == 0 { 10 } else { k as usize };
    RecQuery::new(k, category)
        .and_then(|q| q.with_diversity(diversity))
        .map_err(invalid)
}

impl From<&common::Recommendations> for pb::Recommendations {
    fn from(recs: &common::Recommendations) -> Self {
        Self {
            user_id: recs.user_id.clone(),
            model_version: recs.model_version.clone(),
            items: recs
                .items
                .iter()
                .map(|r| pb::Recommendation {
                    item_id: r.item_id.clone(),
                    score: r.score,
                    reasons: r.reasons.clone(),
                })
                .collect(),
        }
    }
}

impl From<common::Item> for pb::Item {
    fn from(item: common::Item) -> Self {
        Self {
            attributes_json: serde_json::Value::Object(item.attributes).to_string(),
            item_id: item.item_id,
            title: item.title,
            categories: item.categories,
            tags: item.tags,
            available: item.available,
            updated_at: item.updated_at,
        }
    }
}

/// The service, one per node.
#[derive(Clone)]
pub struct Service {
    node: Arc<Node>,
}

type RecsStream = Pin<Box<dyn Stream<Item = Result<pb::Recommendations, Status>> + Send>>;

#[tonic::async_trait]
impl Recommender for Service {
    async fn recommend(
        &self,
        request: Request<pb::RecommendRequest>,
    ) -> Result<Response<pb::Recommendations>, Status> {
        allow(&request, Action::ReadUser(&request.get_ref().user_id))?;
        let request = request.into_inner();
        check_id("user_id", &request.user_id)?;
        let query = rec_query(request.k, request.category, request.diversity)?;
        let recs = self
            .node
            .recommend(&request.user_id, &query)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(recs.as_ref().into()))
    }

    async fn track_events(
        &self,
        request: Request<pb::TrackEventsRequest>,
    ) -> Result<Response<pb::TrackEventsResponse>, Status> {
        let users: Vec<&str> = request
            .get_ref()
            .events
            .iter()
            .map(|e| e.user_id.as_str())
            .collect();
        allow(&request, Action::WriteEvents(&users))?;
        let events = common::validate_batch(
            request.into_inner().events,
            self.node.config.server.max_batch_events,
            |e| {
                Ok(EventInput {
                    event_id: e.event_id,
                    user_id: e.user_id,
                    item_id: e.item_id,
                    kind: e.kind,
                    value: e.value,
                    ts: e.ts,
                })
            },
        )
        .map_err(|e| status(&e.into()))?;
        let outcome = self
            .node
            .post_events(events)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::TrackEventsResponse {
            accepted: outcome.accepted as u32,
            duplicates: outcome.duplicates as u32,
        }))
    }

    async fn upsert_item(
        &self,
        request: Request<pb::UpsertItemRequest>,
    ) -> Result<Response<pb::Item>, Status> {
        allow(&request, Action::WriteCatalog)?;
        let request = request.into_inner();
        let attributes = match request.attributes_json.trim() {
            "" => serde_json::Map::new(),
            json => serde_json::from_str(json)
                .map_err(|e| invalid(format!("`attributes_json` must be a JSON object: {e}")))?,
        };
        let item = ItemInput {
            title: request.title,
            categories: request.categories,
            tags: request.tags,
            attributes,
            available: request.available,
        }
        .validate(&request.item_id, common::now_millis())
        .map_err(invalid)?;
        self.node
            .upsert_item(item.clone())
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(item.into()))
    }

    type WatchRecommendationsStream = RecsStream;

    async fn watch_recommendations(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<RecsStream>, Status> {
        allow(&request, Action::ReadUser(&request.get_ref().user_id))?;
        let guard = request
            .extensions()
            .get::<Caller>()
            .map(Caller::open_stream)
            .transpose()
            .map_err(|e| status(&e))?;
        let request = request.into_inner();
        check_id("user_id", &request.user_id)?;
        let query = rec_query(request.k, request.category, request.diversity)?;
        let updates = crate::watch::recommendations(self.node.clone(), &request.user_id, query)
            .await
            .map_err(|e| status(&e))?;
        let updates = futures::StreamExt::map(updates, |recs| Ok(recs.as_ref().into()));
        // The stream ends with UNAUTHENTICATED when the caller's token expires.
        let expired = ApiError::new(ErrorCode::Unauthenticated, "the token has expired");
        Ok(Response::new(Box::pin(until_expiry(
            updates,
            guard,
            Some(Err(status(&expired))),
        ))))
    }
}

/// Routes `/<service>/<method>` to a tonic service inside the HTTP router.
fn route<S>(router: Router<Arc<Node>>, service: S) -> Router<Arc<Node>>
where
    S: tower::Service<
            axum::http::Request<tonic::body::Body>,
            Response = axum::http::Response<tonic::body::Body>,
            Error = Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    router.route_service(
        &format!("/{}/{{*method}}", S::NAME),
        service
            .map_request(|r: axum::http::Request<axum::body::Body>| r.map(tonic::body::Body::new)),
    )
}

/// The gRPC routes of a node: the recommender, server reflection (of the public API only), and
/// the internal node-to-node service.
pub fn routes(node: Arc<Node>) -> Router<Arc<Node>> {
    let max = node.config.server.max_body_bytes;
    let recommender = RecommenderServer::new(Service { node: node.clone() })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max.max(4 << 20));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
    };
    let internal = crate::internal::service(node.clone());
    let mut router = route(route(Router::new(), recommender), internal);
    match reflection().build_v1() {
        Ok(service) => router = route(router, service),
        Err(error) => tracing::error!(%error, "gRPC reflection v1 unavailable"),
    }
    match reflection().build_v1alpha() {
        Ok(service) => router = route(router, service),
        Err(error) => tracing::error!(%error, "gRPC reflection v1alpha unavailable"),
    }
    router
}
