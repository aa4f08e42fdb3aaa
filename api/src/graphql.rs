//! GraphQL at `/graphql` (queries and mutations over HTTP; subscriptions over the
//! graphql-transport-ws WebSocket protocol on the same path), GraphiQL at `/graphiql`.
//!
//! Resolvers call the same `Node` operations as REST, and errors carry the same stable codes
//! (`extensions.code`: `invalid_argument`, `not_found`, `unavailable`, ...). A query nested
//! deeper than [`MAX_DEPTH`] or costing more than [`MAX_COMPLEXITY`] fields is refused before it
//! runs (see `query_cost`), over HTTP and over WebSocket (`graphql_ws`). A batch (a JSON array of
//! operations) holds at most `server.graphql_max_batch` of them, each costed, and spends one
//! unit of the caller's rate limit per operation, as every operation over WebSocket does.

use std::pin::Pin;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{FromRequest, FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::{ApiError, BatchError, ErrorCode, EventInput, ItemInput, RecQuery};
use futures::Stream;
use juniper::http::GraphQLBatchRequest;
use juniper::{
    DefaultScalarValue, FieldError, FieldResult, GraphQLInputObject, GraphQLObject, RootNode,
    graphql_object, graphql_subscription, graphql_value,
};
use juniper_axum::extract::JuniperRequest;
use juniper_axum::response::JuniperResponse;
use supervisors::Node;

use crate::auth::{Action, Gate, Principal, authorize};
use crate::graphql_ws::Admitted;
use crate::query_cost::Sizes;
use crate::streams::Caller;

pub use crate::query_cost::{MAX_COMPLEXITY, MAX_DEPTH};

/// What every resolver gets: the node and the caller.
#[derive(Clone)]
pub struct Ctx {
    pub node: Arc<Node>,
    pub principal: Principal,
}

impl juniper::Context for Ctx {}

impl Ctx {
    /// Asks the policy table (the same as REST's) whether the caller may do `action`.
    fn allow(&self, action: Action<'_>) -> FieldResult<()> {
        authorize(&self.principal, action, "graphql").map_err(field_error)
    }
}

fn field_error(e: ApiError) -> FieldError {
    let code = e.code.as_str();
    FieldError::new(e.message, graphql_value!({ "code": code }))
}

fn invalid(message: impl Into<String>) -> FieldError {
    field_error(ApiError::invalid(message))
}

fn check_id(field: &str, value: &str) -> FieldResult<()> {
    common::validate_id(field, value).map_err(invalid)
}

fn query(k: i32, category: Option<String>) -> FieldResult<RecQuery> {
    RecQuery::new(usize::try_from(k).unwrap_or(0), category).map_err(invalid)
}

#[derive(GraphQLObject, Clone)]
pub struct Item {
    item_id: String,
    title: String,
    categories: Vec<String>,
    tags: Vec<String>,
}

impl From<&common::Item> for Item {
    fn from(i: &common::Item) -> Self {
        Self {
            item_id: i.item_id.clone(),
            title: i.title.clone(),
            categories: i.categories.clone(),
            tags: i.tags.clone(),
        }
    }
}

pub struct Recommendation {
    item_id: String,
    score: f64,
    reasons: Vec<String>,
}

#[graphql_object(context = Ctx)]
impl Recommendation {
    fn item_id(&self) -> &str {
        &self.item_id
    }
    fn score(&self) -> f64 {
        self.score
    }
    fn reasons(&self) -> &[String] {
        &self.reasons
    }
    /// The catalogued item, if it is catalogued.
    fn item(&self, ctx: &Ctx) -> Option<Item> {
        ctx.node
            .get_item(&self.item_id)
            .map(|i| Item::from(i.as_ref()))
    }
}

pub struct Recommendations {
    user_id: String,
    model_version: String,
    items: Vec<Recommendation>,
}

impl From<&common::Recommendations> for Recommendations {
    fn from(r: &common::Recommendations) -> Self {
        Self {
            user_id: r.user_id.clone(),
            model_version: r.model_version.clone(),
            items: r
                .items
                .iter()
                .map(|i| Recommendation {
                    item_id: i.item_id.clone(),
                    score: f64::from(i.score),
                    reasons: i.reasons.clone(),
                })
                .collect(),
        }
    }
}

#[graphql_object(context = Ctx)]
impl Recommendations {
    fn user_id(&self) -> &str {
        &self.user_id
    }
    fn model_version(&self) -> &str {
        &self.model_version
    }
    fn items(&self) -> &[Recommendation] {
        &self.items
    }
}

#[derive(GraphQLObject)]
pub struct Interaction {
    item_id: String,
    kind: String,
    /// Epoch milliseconds.
    ts: f64,
}

#[derive(GraphQLObject)]
pub struct User {
    user_id: String,
    num_events: i32,
    recent: Vec<Interaction>,
}

/// An event, as `POST /v1/events` takes it.
#[derive(GraphQLInputObject)]
#[graphql(name = "EventInput")]
pub struct EventInputGql {
    event_id: Option<String>,
    user_id: String,
    item_id: String,
    kind: String,
    value: Option<f64>,
    /// Epoch milliseconds.
    ts: Option<f64>,
}

/// An item, as `PUT /v1/items/{id}` takes it (without attributes).
#[derive(GraphQLInputObject)]
#[graphql(name = "ItemInput")]
pub struct ItemInputGql {
    title: String,
    categories: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    available: Option<bool>,
}

#[derive(GraphQLObject)]
pub struct TrackResult {
    accepted: i32,
    duplicates: i32,
}

pub struct Query;

#[graphql_object(context = Ctx)]
impl Query {
    async fn recommendations(
        ctx: &Ctx,
        user_id: String,
        #[graphql(default = 10)] k: i32,
        category: Option<String>,
    ) -> FieldResult<Recommendations> {
        check_id("userId", &user_id)?;
        ctx.allow(Action::ReadUser(&user_id))?;
        let query = query(k, category)?;
        let recs = ctx
            .node
            .recommend(&user_id, &query)
            .await
            .map_err(field_error)?;
        Ok(Recommendations::from(recs.as_ref()))
    }

    fn item(ctx: &Ctx, item_id: String) -> FieldResult<Option<Item>> {
        check_id("itemId", &item_id)?;
        ctx.allow(Action::ReadCatalog)?;
        Ok(ctx.node.get_item(&item_id).map(|i| Item::from(i.as_ref())))
    }

    async fn user(ctx: &Ctx, user_id: String) -> FieldResult<Option<User>> {
        check_id("userId", &user_id)?;
        ctx.allow(Action::ReadUser(&user_id))?;
        let view = ctx.node.user(&user_id).await.map_err(field_error)?;
        Ok(view.map(|v| User {
            user_id: v.user_id,
            num_events: i32::try_from(v.num_events).unwrap_or(i32::MAX),
            recent: v
                .recent
                .into_iter()
                .map(|i| Interaction {
                    item_id: i.item_id,
                    kind: i.kind.as_str().to_owned(),
                    ts: i.ts as f64,
                })
                .collect(),
        }))
    }

    /// Trending items now (eligible ones, in `category` if given), best first.
    fn trending(
        ctx: &Ctx,
        category: Option<String>,
        #[graphql(default = 10)] k: i32,
    ) -> FieldResult<Vec<Item>> {
        ctx.allow(Action::ReadCatalog)?;
        let query = query(k, category)?;
        Ok(ctx
            .node
            .trending_items(&query)
            .into_iter()
            .filter_map(|e| ctx.node.get_item(&e.id))
            .map(|i| Item::from(i.as_ref()))
            .collect())
    }
}

pub struct Mutation;

#[graphql_object(context = Ctx)]
impl Mutation {
    /// Stores events, as `POST /v1/events` does: all or nothing.
    async fn track_events(ctx: &Ctx, events: Vec<EventInputGql>) -> FieldResult<TrackResult> {
        let max = ctx.node.config.server.max_batch_events;
        let valid = common::validate_batch(events, max, |e| {
            Ok(EventInput {
                event_id: e.event_id,
                user_id: e.user_id,
                item_id: e.item_id,
                kind: e.kind,
                value: e.value,
                ts: e.ts.map(|t| t as i64),
            })
        })
        .map_err(|error| match error {
            BatchError::Empty | BatchError::TooMany(_) => {
                invalid(format!("`events` must hold 1 to {max} events"))
            }
            invalid_event => field_error(invalid_event.into()),
        })?;
        let users: Vec<&str> = valid.iter().map(|e| e.user_id.as_str()).collect();
        ctx.allow(Action::WriteEvents(&users))?;
        let outcome = ctx.node.post_events(valid).await.map_err(field_error)?;
        Ok(TrackResult {
            accepted: i32::try_from(outcome.accepted).unwrap_or(i32::MAX),
            duplicates: i32::try_from(outcome.duplicates).unwrap_or(i32::MAX),
        })
    }

    async fn upsert_item(ctx: &Ctx, item_id: String, item: ItemInputGql) -> FieldResult<Item> {
        ctx.allow(Action::WriteCatalog)?;
        let input = ItemInput {
            title: item.title,
            categories: item.categories.unwrap_or_default(),
            tags: item.tags.unwrap_or_default(),
            attributes: Default::default(),
            available: item.available,
        };
        let item = input
            .validate(&item_id, common::now_millis())
            .map_err(invalid)?;
        let out = Item::from(&item);
        ctx.node.upsert_item(item).await.map_err(field_error)?;
        Ok(out)
    }

    /// Whether the item existed.
    async fn delete_item(ctx: &Ctx, item_id: String) -> FieldResult<bool> {
        check_id("itemId", &item_id)?;
        ctx.allow(Action::WriteCatalog)?;
        ctx.node.delete_item(&item_id).await.map_err(field_error)
    }
}

pub struct Subscription;

type RecsStream = Pin<Box<dyn Stream<Item = FieldResult<Recommendations>> + Send>>;

#[graphql_subscription(context = Ctx)]
impl Subscription {
    /// The user's recommendations now, then every time they change.
    async fn recommendations_updated(
        ctx: &Ctx,
        user_id: String,
        #[graphql(default = 10)] k: i32,
    ) -> FieldResult<RecsStream> {
        check_id("userId", &user_id)?;
        ctx.allow(Action::ReadUser(&user_id))?;
        let query = query(k, None)?;
        let updates = crate::watch::recommendations(ctx.node.clone(), &user_id, query)
            .await
            .map_err(field_error)?;
        Ok(Box::pin(futures::StreamExt::map(updates, |recs| {
            Ok(Recommendations::from(recs.as_ref()))
        })))
    }
}

pub type Schema = RootNode<Query, Mutation, Subscription>;

pub fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(Query, Mutation, Subscription))
}

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

/// A refused document: 400, in GraphQL's error shape with the shared code.
fn refuse(message: String) -> Response {
    let code = ErrorCode::InvalidArgument.as_str();
    let body = serde_json::json!({
        "errors": [{ "message": message, "extensions": { "code": code } }]
    });
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
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
        return crate::auth::unauthenticated("this API needs `Authorization: Bearer <token>`");
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
            crate::graphql_ws::serve(socket, schema, sizes, gate, authenticate, init_timeout)
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
    let principal = crate::auth::principal_of(request.extensions());
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
        return crate::auth::rate_limited(wait);
    }
    if let Some(Err(refused)) = queries
        .iter()
        .map(|q| crate::query_cost::check(q, sizes))
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
