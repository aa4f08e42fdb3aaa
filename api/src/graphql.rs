//! GraphQL at `/graphql` (queries and mutations over HTTP; subscriptions over the
//! graphql-transport-ws WebSocket protocol on the same path), GraphiQL at `/graphiql`.
//!
//! Resolvers call the same `Node` operations as REST, and errors carry the same stable codes
//! (`extensions.code`: `invalid_argument`, `not_found`, `unavailable`, ...). A query nested
//! deeper than [`MAX_DEPTH`] is refused before it runs.

use std::pin::Pin;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{FromRequest, FromRequestParts, Request, State, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use common::{ApiError, EventInput, ItemInput, RecQuery};
use futures::Stream;
use juniper::http::GraphQLBatchRequest;
use juniper::{
    DefaultScalarValue, FieldError, FieldResult, GraphQLInputObject, GraphQLObject, RootNode,
    graphql_object, graphql_subscription, graphql_value,
};
use juniper_axum::extract::JuniperRequest;
use juniper_axum::response::JuniperResponse;
use juniper_graphql_ws::ConnectionConfig;
use supervisors::Node;

/// Deepest selection nesting a query may have.
pub const MAX_DEPTH: usize = 8;

/// What every resolver gets: the node.
#[derive(Clone)]
pub struct Ctx {
    pub node: Arc<Node>,
}

impl juniper::Context for Ctx {}

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
    let k = usize::try_from(k)
        .ok()
        .filter(|k| (1..=common::recs::MAX_K).contains(k))
        .ok_or_else(|| {
            invalid(format!(
                "`k` must be an integer from 1 to {}",
                common::recs::MAX_K
            ))
        })?;
    if let Some(c) = &category {
        check_id("category", c)?;
    }
    Ok(RecQuery { k, category })
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
        Ok(ctx.node.get_item(&item_id).map(|i| Item::from(i.as_ref())))
    }

    async fn user(ctx: &Ctx, user_id: String) -> FieldResult<Option<User>> {
        check_id("userId", &user_id)?;
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
        if events.is_empty() || events.len() > max {
            return Err(invalid(format!("`events` must hold 1 to {max} events")));
        }
        let now = common::now_millis();
        let mut valid = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            let input = EventInput {
                event_id: e.event_id,
                user_id: e.user_id,
                item_id: e.item_id,
                kind: e.kind,
                value: e.value,
                ts: e.ts.map(|t| t as i64),
            };
            let event = input
                .validate(now, || uuid::Uuid::now_v7().to_string())
                .map_err(|m| invalid(format!("events[{i}]: {m}")))?;
            valid.push(event);
        }
        let outcome = ctx.node.post_events(valid).await.map_err(field_error)?;
        Ok(TrackResult {
            accepted: i32::try_from(outcome.accepted).unwrap_or(i32::MAX),
            duplicates: i32::try_from(outcome.duplicates).unwrap_or(i32::MAX),
        })
    }

    async fn upsert_item(ctx: &Ctx, item_id: String, item: ItemInputGql) -> FieldResult<Item> {
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
        let query = query(k, None)?;
        let node = ctx.node.clone();
        let current = node
            .recommend(&user_id, &query)
            .await
            .map_err(field_error)?;
        let (sub, updates) = node.subscribe(&user_id, query).await.map_err(field_error)?;
        /// Unsubscribes when the stream is dropped (the client stopped or went away).
        struct Guard(Arc<Node>, u64);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.unsubscribe(self.1);
            }
        }
        let guard = Guard(node, sub);
        let first =
            futures::stream::once(async move { Ok(Recommendations::from(current.as_ref())) });
        let changes =
            futures::stream::unfold((updates, guard), |(mut updates, guard)| async move {
                loop {
                    updates.changed().await.ok()?;
                    let latest = updates.borrow_and_update().clone();
                    if let Some(recs) = latest {
                        return Some((Ok(Recommendations::from(recs.as_ref())), (updates, guard)));
                    }
                }
            });
        Ok(Box::pin(futures::StreamExt::chain(first, changes)))
    }
}

pub type Schema = RootNode<Query, Mutation, Subscription>;

pub fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(Query, Mutation, Subscription))
}

/// The deepest `{ ... }` nesting of a query document, outside strings and comments.
pub fn depth(query: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped, mut in_comment) = (false, false, false);
    for c in query.chars() {
        if in_comment {
            in_comment = c != '\n';
        } else if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else {
            match c {
                '#' => in_comment = true,
                '"' => in_string = true,
                '{' => {
                    depth += 1;
                    max = max.max(depth);
                }
                '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    max
}

/// `GET`/`POST /graphql`: a query or mutation, or (`GET` with an upgrade) a
/// graphql-transport-ws subscription connection.
pub async fn graphql(
    State(node): State<Arc<Node>>,
    Extension(schema): Extension<Arc<Schema>>,
    request: Request,
) -> Response {
    let ctx = Ctx { node };
    let (mut parts, body) = request.into_parts();
    if let Ok(ws) = WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        return ws
            .protocols(["graphql-transport-ws"])
            .on_upgrade(move |socket| {
                juniper_axum::subscriptions::serve_graphql_transport_ws(
                    socket,
                    schema,
                    ConnectionConfig::new(ctx).with_max_in_flight_operations(16),
                )
            })
            .into_response();
    }
    let request = Request::from_parts(parts, body);
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
    if let Some(deep) = queries.iter().map(|q| depth(q)).find(|d| *d > MAX_DEPTH) {
        let body = serde_json::json!({
            "errors": [{
                "message": format!("the query nests {deep} levels deep; at most {MAX_DEPTH} are allowed"),
                "extensions": { "code": "invalid_argument" },
            }]
        });
        return (axum::http::StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    JuniperResponse(batch.execute(&*schema, &ctx).await).into_response()
}

/// `GET /graphiql`: the GraphiQL page.
pub fn graphiql() -> axum::routing::MethodRouter<Arc<Node>> {
    axum::routing::get(juniper_axum::graphiql("/graphql", "/graphql"))
}
