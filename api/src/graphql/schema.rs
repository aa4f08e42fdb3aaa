//! The GraphQL schema: its types, the resolvers of queries, mutations and subscriptions, and
//! [`Ctx`], what every resolver gets. Resolvers call the same `Node` operations as REST,
//! authorize through the policy table, and fail with field errors carrying the shared code
//! (`error::field_error`).

use std::pin::Pin;
use std::sync::Arc;

use common::{ApiError, BatchError, EventInput, ItemInput, RecQuery};
use futures::Stream;
use juniper::{
    FieldError, FieldResult, GraphQLInputObject, GraphQLObject, RootNode, graphql_object,
    graphql_subscription,
};
use supervisors::Node;

use crate::error::field_error;
use crate::policy::{Action, Principal, authorize};

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

fn invalid(message: impl Into<String>) -> FieldError {
    field_error(ApiError::invalid(message))
}

fn check_id(field: &str, value: &str) -> FieldResult<()> {
    common::validate_id(field, value).map_err(invalid)
}

fn query(k: i32, category: Option<String>) -> FieldResult<RecQuery> {
    RecQuery::new(usize::try_from(k).unwrap_or(0), category).map_err(invalid)
}

/// A recommendation query: [`query`] and `diversity` (0 to 1; none, the model's ranking).
fn rec_query(k: i32, category: Option<String>, diversity: Option<f64>) -> FieldResult<RecQuery> {
    query(k, category)?
        .with_diversity(diversity)
        .map_err(invalid)
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
        #[graphql(
            description = "How far to trade relevance for variety, 0 (the model's ranking, the default) to 1: re-ranks by maximal marginal relevance over categories and item factors."
        )]
        diversity: Option<f64>,
    ) -> FieldResult<Recommendations> {
        check_id("userId", &user_id)?;
        ctx.allow(Action::ReadUser(&user_id))?;
        let query = rec_query(k, category, diversity)?;
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
        #[graphql(description = "0 to 1, as `recommendations` takes it.")] diversity: Option<f64>,
    ) -> FieldResult<RecsStream> {
        check_id("userId", &user_id)?;
        ctx.allow(Action::ReadUser(&user_id))?;
        let query = rec_query(k, None, diversity)?;
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
