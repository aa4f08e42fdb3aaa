//! GraphQL at `/graphql` (queries and mutations over HTTP; subscriptions over the
//! graphql-transport-ws WebSocket protocol on the same path), GraphiQL at `/graphiql`.
//!
//! Resolvers call the same `Node` operations as REST, and errors carry the same stable codes
//! (`extensions.code`: `invalid_argument`, `not_found`, `unavailable`, ...). A query nested
//! deeper than [`MAX_DEPTH`] or costing more than [`MAX_COMPLEXITY`] fields is refused before it
//! runs (see `cost`), over HTTP and over WebSocket (`ws`). A batch (a JSON array of
//! operations) holds at most `server.graphql_max_batch` of them, each costed, and spends one
//! unit of the caller's rate limit per operation, as every operation over WebSocket does.
//!
//! The folder depends one way: these handlers use `schema` (types and resolvers), `ws` (the
//! graphql-transport-ws connection) and `cost` (the document check); `ws` uses `schema` and
//! `cost`; `cost` reads only juniper's schema metadata ([`Sizes`], built once by the router).

mod cost;
mod schema;
mod ws;

use std::sync::Arc;

use axum::Extension;
use axum::extract::{FromRequest, FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::ApiError;
use juniper::DefaultScalarValue;
use juniper::http::GraphQLBatchRequest;
use juniper_axum::extract::JuniperRequest;
use juniper_axum::response::JuniperResponse;
use supervisors::Node;

pub use cost::{MAX_COMPLEXITY, MAX_DEPTH, Sizes};
pub use schema::{
    Ctx, EventInputGql, Interaction, Item, ItemInputGql, Mutation, Query, Recommendation,
    Recommendations, Schema, Subscription, TrackResult, User, schema,
};

use crate::auth::Gate;
use crate::error::graphql_refusal as refuse;
use crate::policy::Principal;
use crate::streams::Caller;
use ws::Admitted;

/// Who a graphql-transport-ws connection serves: the caller the gate found on the upgrade
/// request, or the one `connection_init`'s token proves (then known by that token's subject,
/// and bounded by its expiry).
async fn ws_caller(
    gate: &Gate,
    upgraded: Option<Principal>,
    caller: Caller,
    params: &juniper::Variables,
) -> Result<(Principal, Caller), ApiError> {
    let auth = match (upgraded, &gate.auth) {
        (Some(principal), _) => return Ok((principal, caller)),
        (None, None) => return Ok((Principal::unauthenticated_admin(), caller)),
        (None, Some(auth)) => auth,
    };
    let token = ["Authorization", "authorization", "token"]
        .iter()
        .find_map(|k| {
            params
                .get(*k)
                .and_then(|v| v.as_scalar())
                .and_then(|s| juniper::ScalarValue::try_as_str(s))
        })
        // `Bearer <token>`, or the bare token.
        .map(|t| crate::auth::bearer(t).unwrap_or(t.trim()).to_owned())
        .unwrap_or_default();
    let verified = auth.verify(&token).await.inspect_err(|e| {
        crate::policy::audit_unauthenticated(&e.message, "graphql-ws");
    })?;
    let caller = caller.authenticated(&verified.principal.sub, Some(verified.expires_at));
    Ok((verified.principal, caller))
}

/// `GET`/`POST /graphql`: a query or mutation (or a batch of them), or (`GET` with an upgrade) a
/// graphql-transport-ws connection.
pub async fn graphql(
    State(node): State<Arc<Node>>,
    Extension(schema): Extension<Arc<Schema>>,
    Extension(sizes): Extension<Arc<Sizes>>,
    Extension(gate): Extension<Arc<Gate>>,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    if let Ok(ws) = WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        return upgrade(ws, &parts, node, schema, sizes, gate);
    }
    // Only a real upgrade passes the gate without a token; a request that could not upgrade
    // after all runs nothing without one.
    if gate.auth.is_some() && parts.extensions.get::<Principal>().is_none() {
        crate::policy::audit_unauthenticated("no bearer token", "graphql");
        return crate::error::unauthenticated("this API needs `Authorization: Bearer <token>`");
    }
    http(
        Request::from_parts(parts, body),
        node,
        &schema,
        &sizes,
        &gate,
    )
    .await
}

/// A graphql-transport-ws connection. The token came with the upgrade (the gate checked it), or
/// comes in `connection_init`'s payload.
fn upgrade(
    ws: WebSocketUpgrade,
    parts: &axum::http::request::Parts,
    node: Arc<Node>,
    schema: Arc<Schema>,
    sizes: Arc<Sizes>,
    gate: Arc<Gate>,
) -> Response {
    let upgraded = parts.extensions.get::<Principal>().cloned();
    let Some(caller) = parts.extensions.get::<Caller>().cloned() else {
        return crate::error::AppError::from(ApiError::internal("no caller on the request"))
            .into_response();
    };
    // The caller takes one of its stream places now (429 before upgrading): by its token's
    // subject, or by its address until `connection_init` names it.
    let placed = match caller.open_stream() {
        Ok(guard) => guard,
        Err(refused) => return crate::error::AppError::from(refused).into_response(),
    };
    let limits = &node.config.server;
    let (max_message, init_timeout) = (limits.max_body_bytes, limits.stream_init_timeout);
    let keys = gate.clone();
    let authenticate = move |params: juniper::Variables| async move {
        let (principal, named) = ws_caller(&keys, upgraded, caller.clone(), &params).await?;
        // Known by its token now: its place moves from the address to the subject.
        let guard = if named.key == caller.key {
            placed
        } else {
            named.open_stream()?
        };
        Ok::<_, ApiError>(Admitted {
            rate_key: named.key.clone(),
            ctx: Ctx { node, principal },
            guard: Some(guard),
        })
    };
    ws.protocols(["graphql-transport-ws"])
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| {
            ws::serve(socket, schema, sizes, gate, authenticate, init_timeout)
        })
        .into_response()
}

/// A query or mutation over HTTP, or a batch of them: charged, costed, then run.
async fn http(
    request: Request,
    node: Arc<Node>,
    schema: &Schema,
    sizes: &Sizes,
    gate: &Gate,
) -> Response {
    let principal = crate::policy::principal_of(request.extensions());
    // The gate's name for the caller, whose bucket the batch spends.
    let key = request.extensions().get::<Caller>().map(|c| c.key.clone());
    let ctx = Ctx { node, principal };
    let JuniperRequest(batch) =
        match JuniperRequest::<DefaultScalarValue>::from_request(request, &()).await {
            Ok(request) => request,
            Err(rejection) => {
                return crate::error::AppError::invalid(format!(
                    "not a GraphQL request: {}",
                    rejection.into_response().status()
                ))
                .into_response();
            }
        };
    let queries: Vec<&str> = match &batch {
        GraphQLBatchRequest::Single(r) => vec![r.query.as_str()],
        GraphQLBatchRequest::Batch(rs) => rs.iter().map(|r| r.query.as_str()).collect(),
    };
    let max_batch = ctx.node.config.server.graphql_max_batch;
    if queries.len() > max_batch {
        return refuse(format!(
            "a batch holds {} operations; at most {max_batch} are allowed \
             (server.graphql_max_batch)",
            queries.len()
        ));
    }
    // The gate charged the request once; a batch pays for its other operations, and past the
    // limit gets the gate's answer.
    if let Some(limiter) = &gate.limiter
        && let Some(Err(wait)) = (1..queries.len())
            .map(|_| limiter.check(key.as_deref().unwrap_or_default()))
            .find(Result::is_err)
    {
        return crate::error::rate_limited(wait);
    }
    if let Some(Err(refused)) = queries
        .iter()
        .map(|q| cost::check(q, sizes))
        .find(Result::is_err)
    {
        return refuse(refused.to_string());
    }
    let response = batch.execute(schema, &ctx).await;
    // A refusal by the policy is a 403, as on every other interface.
    let denied = serde_json::to_value(&response).is_ok_and(|v| {
        let errors = |r: &serde_json::Value| r["errors"].as_array().cloned().unwrap_or_default();
        let all = match &v {
            serde_json::Value::Array(batch) => batch.iter().flat_map(errors).collect(),
            single => errors(single),
        };
        all.iter()
            .any(|e| e["extensions"]["code"] == "permission_denied")
    });
    let mut response = JuniperResponse(response).into_response();
    if denied {
        *response.status_mut() = StatusCode::FORBIDDEN;
    }
    response
}

/// `GET /graphiql`: the GraphiQL page.
pub fn graphiql() -> axum::routing::MethodRouter<Arc<Node>> {
    axum::routing::get(juniper_axum::graphiql("/graphql", "/graphql"))
}
