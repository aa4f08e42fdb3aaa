//! The owner's side: serves a forwarded request only if the gate authenticated the calling node,
//! the carried principal may do the action, and this node owns the user now (`Users::*_local`;
//! otherwise `unavailable`, and the caller routes again).

use std::sync::Arc;

use common::{ApiError, ErrorCode, RecQuery};
use serde::Serialize;
use supervisors::Node;
use tonic::{Request, Response, Status};

use super::pb::users_server::{Users, UsersServer};
use super::pb::{JsonReply, RecommendRequest, UserRequest};
use super::{PRINCIPAL_KEY, decode_principal};
use crate::auth::node::FromNode;
use crate::error::grpc_status as status;
use crate::policy::{Action, authorize};

/// The internal service of one node.
#[derive(Clone)]
pub struct Server {
    node: Arc<Node>,
}

/// The service to mount (see `grpc::routes`).
pub fn service(node: Arc<Node>) -> UsersServer<Server> {
    let max = node.config.server.max_body_bytes;
    UsersServer::new(Server { node })
        .max_decoding_message_size(max)
        .max_encoding_message_size(usize::MAX)
}

/// Admits a forwarded call: from an authenticated node, for a caller the policy allows.
fn admit<T>(request: &Request<T>, action: Action<'_>) -> Result<(), Status> {
    let unauthenticated =
        |message: &str| status(&ApiError::new(ErrorCode::Unauthenticated, message));
    if request.extensions().get::<FromNode>().is_none() {
        return Err(unauthenticated(
            "this service is for the nodes of the cluster",
        ));
    }
    let carried = request
        .metadata()
        .get(PRINCIPAL_KEY)
        .ok_or_else(|| unauthenticated("no principal carried"))?;
    let principal = decode_principal(carried.as_bytes()).map_err(|e| status(&e))?;
    authorize(&principal, action, "internal").map_err(|e| status(&e))
}

fn check_id(user_id: &str) -> Result<(), Status> {
    common::validate_id("user_id", user_id).map_err(|e| status(&ApiError::invalid(e)))
}

fn reply(value: &impl Serialize) -> Result<Response<JsonReply>, Status> {
    let json = serde_json::to_vec(value).map_err(|e| status(&ApiError::internal(e)))?;
    Ok(Response::new(JsonReply { json }))
}

#[tonic::async_trait]
impl Users for Server {
    async fn recommend(
        &self,
        request: Request<RecommendRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        admit(&request, Action::ReadUser(&request.get_ref().user_id))?;
        let RecommendRequest {
            user_id,
            k,
            category,
            diversity_thousandths,
        } = request.into_inner();
        check_id(&user_id)?;
        let diversity = (diversity_thousandths > 0).then(|| f64::from(diversity_thousandths) / 1e3);
        let query = RecQuery::new(k as usize, category)
            .and_then(|q| q.with_diversity(diversity))
            .map_err(|e| status(&ApiError::invalid(e)))?;
        let users = self.node.users();
        // The caller's `traceparent` (gRPC metadata are HTTP/2 headers) was taken up by the
        // router's `http.request` span, which this nests under.
        let span = tracing::info_span!("internal.recommend", user.id = %user_id);
        let recs = tracing::Instrument::instrument(users.recommend_local(&user_id, &query), span)
            .await
            .map_err(|e| status(&e))?;
        reply(recs.as_ref())
    }

    async fn get_user(&self, request: Request<UserRequest>) -> Result<Response<JsonReply>, Status> {
        admit(&request, Action::ReadUser(&request.get_ref().user_id))?;
        let user_id = request.into_inner().user_id;
        check_id(&user_id)?;
        let user = self
            .node
            .users()
            .get_local(&user_id)
            .await
            .map_err(|e| status(&e))?;
        reply(&user)
    }

    async fn erase_user(
        &self,
        request: Request<UserRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        admit(&request, Action::EraseUser(&request.get_ref().user_id))?;
        let user_id = request.into_inner().user_id;
        check_id(&user_id)?;
        self.node
            .users()
            .erase_local(&user_id)
            .await
            .map_err(|e| status(&e))?;
        reply(&())
    }

    async fn export_user(
        &self,
        request: Request<UserRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        admit(&request, Action::ExportUser(&request.get_ref().user_id))?;
        let user_id = request.into_inner().user_id;
        check_id(&user_id)?;
        let export = self
            .node
            .users()
            .export_local(&user_id)
            .await
            .map_err(|e| status(&e))?;
        reply(&export)
    }
}
