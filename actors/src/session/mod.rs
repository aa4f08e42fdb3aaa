//! One user's live session: applies the user's events exactly once, keeps the real-time profile
//! (recent interactions, per-item weights, counters) and asks the model pool for fresh
//! recommendations. Supervised by [`SessionManager`](crate::session_manager::SessionManager),
//! which spawns it on the first event or request and passivates it when idle; rehydrated from the
//! session store, so stopping it (passivation, eviction, a crash) loses nothing. A session sends
//! to no other actor but the model pool: what changed goes to the [change feed](crate::changes).
//!
//! Every apply is one atomic store write of the new state, the applied event ids and the item
//! counters they moved; an event id already in the store is a duplicate and changes nothing.
//!
//! Negative feedback (a dislike, a low rating) overrides the positive total before it
//! ([`common::event::accumulate`]): the item is then disliked (weight <= 0) until the user likes it
//! again. A disliked item is masked like every item the user met, kept past `sessions.max_items`
//! before any liked one so that it stays masked, left out of the history the transitions read,
//! and pushes the items like it down in the ranking ([`crate::ranking`]).

use std::collections::HashSet;
use std::sync::Arc;

use common::partition::partition_for;
use common::telemetry::TraceContext;
use common::{ApiError, RecQuery, Recommendations};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use storage::catalog::ItemStatus;
use storage::sessions::SessionCommit;
use storage::{Record, Tombstone};

use crate::Services;
use crate::changes::Changes;
use crate::model::{ModelRequest, UserVector};
use crate::obs::Observed;

mod data;

pub use data::{Interaction, SessionData, UserView, WindowFeatures};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ApplyOutcome {
    pub applied: usize,
    pub duplicates: usize,
}

pub enum SessionMsg {
    /// Records to apply, with the distinct trace contexts they came with (through Kafka, from
    /// the requests that produced them; empty when untraced).
    Apply(
        Vec<Record>,
        Vec<TraceContext>,
        RpcReplyPort<Result<ApplyOutcome, ApiError>>,
    ),
    Recommend(
        RecQuery,
        RpcReplyPort<Result<Arc<Recommendations>, ApiError>>,
    ),
    Get(RpcReplyPort<Result<Option<UserView>, ApiError>>),
    Erase(RpcReplyPort<Result<(), ApiError>>),
    /// Stop now; the state is already durable.
    Passivate,
}

pub struct SessionActor;

pub struct SessionArgs {
    pub user_id: String,
    pub services: Arc<Services>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SessionObs {
    pub user_id: String,
    pub num_events: u64,
    pub num_items: usize,
    pub num_duplicates: u64,
    pub num_recommendations: u64,
    pub last_event_ts: Option<i64>,
    pub model_version: Option<String>,
    /// Euclidean norm of the real-time user vector (0 for a user the model cannot place).
    pub vector_norm: Option<f32>,
}

pub struct SessionState {
    args: SessionArgs,
    data: SessionData,
    /// The user's last erasure: the events it covers are never applied.
    tombstone: Option<Tombstone>,
    /// The real-time user vector, folded in from `data` by the model; dropped on every change.
    vector: Option<UserVector>,
    obs: Observed<SessionObs>,
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let store = &args.services.store;
        let data = match store.load(&args.user_id)? {
            Some(bytes) => SessionData::decode(&bytes)?,
            None => SessionData::default(),
        };
        let tombstone = store.tombstone(&args.user_id)?;
        let initial = SessionObs {
            user_id: args.user_id.clone(),
            num_events: data.num_events,
            num_items: data.items.len(),
            last_event_ts: data.recent.front().map(|i| i.ts),
            ..Default::default()
        };
        let obs = Observed::register(&args.services.obs, &myself.get_cell(), "session", initial);
        Ok(SessionState {
            args,
            data,
            tombstone,
            vector: None,
            obs,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.obs.handled();
        match msg {
            SessionMsg::Apply(records, traces, reply) => {
                drop(reply.send(state.apply_traced(records, traces)));
            }
            SessionMsg::Recommend(query, reply) => drop(reply.send(state.recommend(query).await)),
            SessionMsg::Get(reply) => drop(reply.send(Ok(state.view()))),
            SessionMsg::Erase(reply) => {
                let result = erase(&state.args.services, &state.args.user_id, &state.data).await;
                let _ = reply.send(result);
                myself.stop(Some("erased".into()));
            }
            SessionMsg::Passivate => myself.stop(Some("passivated".into())),
        }
        Ok(())
    }
}

impl SessionState {
    /// [`SessionState::apply`] in an `event.apply` span per trace context the records came with,
    /// each a child of the producer span of the request the context came from; the change is
    /// published with the first span's context, so that the push it causes nests under it.
    /// Untraced records are applied without a span.
    fn apply_traced(
        &mut self,
        records: Vec<Record>,
        traces: Vec<TraceContext>,
    ) -> Result<ApplyOutcome, ApiError> {
        if traces.is_empty() {
            return self.apply(records, None);
        }
        let partition = partition_for(&self.args.user_id, self.args.services.log.num_partitions());
        let span_of = |trace: &TraceContext| {
            let span = tracing::info_span!(
                "event.apply",
                otel.kind = "consumer",
                user.id = %self.args.user_id,
                event.partition = partition,
                event.num_records = records.len(),
                event.num_applied = tracing::field::Empty,
                event.num_duplicates = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            trace.parent(&span);
            span
        };
        let spans: Vec<tracing::Span> = traces.iter().map(span_of).collect();
        let feed = TraceContext::of(&spans[0]);
        let outcome = spans[0].in_scope(|| self.apply(records, feed));
        for span in &spans {
            match &outcome {
                Ok(o) => {
                    span.record("event.num_applied", o.applied);
                    span.record("event.num_duplicates", o.duplicates);
                }
                Err(_) => {
                    span.record("otel.status_code", "ERROR");
                }
            }
        }
        outcome
    }

    /// Applies `records`; a change is published with `trace`, the context of the apply's span.
    fn apply(
        &mut self,
        records: Vec<Record>,
        trace: Option<TraceContext>,
    ) -> Result<ApplyOutcome, ApiError> {
        let services = &self.args.services;
        let user = self.args.user_id.as_str();
        let max_recent = services.config.sessions.max_recent;
        let mut next = self.data.clone();
        let mut outcome = ApplyOutcome::default();
        let mut applied_ids: Vec<&str> = Vec::new();
        let mut in_batch = HashSet::new();
        let mut touched: HashSet<&str> = HashSet::new();
        for record in &records {
            let e = &record.event;
            let erased = self.tombstone.is_some_and(|t| t.covers(record));
            if erased
                || !in_batch.insert(e.event_id.as_str())
                || services
                    .store
                    .is_applied(user, &e.event_id)
                    .map_err(ApiError::internal)?
            {
                outcome.duplicates += 1;
                continue;
            }
            next.num_events += 1;
            let total = next.items.entry(e.item_id.clone()).or_default();
            *total = common::event::accumulate(*total, e.weight());
            next.recent.push_front(Interaction {
                item_id: e.item_id.clone(),
                kind: e.kind,
                ts: e.ts,
            });
            next.recent.truncate(max_recent);
            touched.insert(e.item_id.as_str());
            applied_ids.push(&e.event_id);
            outcome.applied += 1;
        }
        if outcome.applied > 0 {
            // Past `sessions.max_items` the least recent, then lightest, items go; `deltas` below
            // takes back their share of popularity with them (an erasure, which takes back the
            // session's items, then leaves nothing of the user behind).
            next.evict_items(services.config.sessions.max_items);
            let state = serde_json::to_vec(&next).map_err(ApiError::internal)?;
            // Popularity: catalogued items only, each user's part capped (see `popularity`).
            let cap = services.config.trending.max_user_weight;
            let deltas = crate::popularity::deltas(
                touched,
                &self.data.items,
                &next.items,
                &services.catalog,
                cap,
            );
            let partition = partition_for(user, services.log.num_partitions());
            services
                .store
                .commit(SessionCommit {
                    user_id: user,
                    partition,
                    state: &state,
                    applied_event_ids: &applied_ids,
                    item_deltas: &deltas,
                })
                .map_err(ApiError::internal)?;
            for (item, delta) in &deltas {
                services.popularity.add(partition, item, *delta);
            }
            let now = common::now_millis();
            let view = services.catalog.read();
            // In a cluster every node counts every event into trending from the tail of
            // `user-events` (see `changelog_tail`); a session sees only its node's users.
            let trending = services.changelog.is_none();
            for r in records.iter().filter(|_| trending) {
                let e = &r.event;
                // Ids nobody catalogued never trend.
                if let ItemStatus::Catalogued(item) = view.status(&e.item_id)
                    && applied_ids.contains(&e.event_id.as_str())
                {
                    services.trending.record(
                        user,
                        &e.item_id,
                        &item.categories,
                        f64::from(e.weight()),
                        e.ts,
                        now,
                    );
                }
            }
            self.data = next;
            self.vector = None;
            services
                .changes
                .publish_traced(Changes::User(user.to_owned()), trace);
        }
        let data = &self.data;
        self.obs.update(|o| {
            o.num_duplicates += outcome.duplicates as u64;
            o.num_events = data.num_events;
            o.num_items = data.items.len();
            o.last_event_ts = data.recent.front().map(|i| i.ts);
        });
        Ok(outcome)
    }

    /// Computes the user's list and caches it. The cache was read by [`Users`](crate::Users),
    /// the only reader; the write stays here, in mailbox order with the session's changes, so a
    /// list computed before an apply can never be cached after the apply invalidated it.
    #[tracing::instrument(name = "session.recommend", skip_all, fields(session.num_events = self.data.num_events))]
    async fn recommend(&mut self, query: RecQuery) -> Result<Arc<Recommendations>, ApiError> {
        let services = &self.args.services;
        let user = &self.args.user_id;
        let (recs, vector) =
            recommend_for(services, user, &self.data, self.vector.clone(), &query).await?;
        tracing::Instrument::instrument(
            services
                .cache
                .put(user, &recs.model_version, &query, recs.clone()),
            tracing::info_span!("cache.put"),
        )
        .await;
        self.obs.update(|o| {
            o.num_recommendations += 1;
            o.model_version = Some(recs.model_version.clone());
            o.vector_norm = vector
                .as_ref()
                .map(|v| v.values.iter().map(|x| x * x).sum::<f32>().sqrt());
        });
        self.vector = vector;
        Ok(recs)
    }

    fn view(&self) -> Option<UserView> {
        let services = &self.args.services;
        (self.data.num_events > 0).then(|| UserView {
            user_id: self.args.user_id.clone(),
            num_events: self.data.num_events,
            recent: self.data.recent.iter().cloned().collect(),
            current_window: WindowFeatures::of(
                &self.data.recent,
                services.trending.window(),
                common::now_millis(),
                &services.catalog,
            ),
        })
    }
}

/// Recommendations for a user with the given session data (empty for a user never seen), and
/// the user vector the model used.
pub async fn recommend_for(
    services: &Services,
    user_id: &str,
    data: &SessionData,
    vector: Option<UserVector>,
    query: &RecQuery,
) -> Result<(Arc<Recommendations>, Option<UserVector>), ApiError> {
    // A user with no interactions yet may still have a profile to start from. A store that is
    // down only means starting without it.
    let profile = if data.items.is_empty() {
        match services.catalog.store().get_profile(user_id).await {
            Ok(Some(profile)) => models::content::profile_tokens(
                &profile,
                common::pii::PersonalFields::new(&services.config.pii.fields),
            ),
            Ok(None) => Vec::new(),
            Err(error) => {
                tracing::debug!(%error, "profile unavailable");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let req = ModelRequest {
        vector,
        ..model_request(data, query, profile)
    };
    let resp = services.models.recommend(req).await?;
    let recs = Recommendations {
        user_id: user_id.to_owned(),
        model_version: resp.model_version,
        items: resp.items,
    };
    Ok((Arc::new(recs), resp.vector))
}

/// What the model is asked for a user with this session data: every item met (disliked ones
/// too) to fold in and to exclude; the liked ones, most recent last, as the transitions' history.
/// No user vector: the caller adds the one it kept.
fn model_request(data: &SessionData, query: &RecQuery, profile: Vec<String>) -> ModelRequest {
    ModelRequest {
        profile,
        interactions: data.items.iter().map(|(id, w)| (id.clone(), *w)).collect(),
        // `recent` is most recent first; the transition part wants the positives oldest first.
        history: data
            .recent
            .iter()
            .rev()
            .filter(|i| data.items.get(&i.item_id).is_some_and(|w| *w > 0.0))
            .map(|i| i.item_id.clone())
            .collect(),
        exclude: data.items.keys().cloned().collect(),
        k: query.k,
        category: query.category.clone(),
        diversity: query.diversity,
        vector: None,
    }
}

/// Erases a user everywhere: session state, profile, applied event ids, its share of item
/// popularity and the cache. A tombstone (the current end of the user's log partition, and now)
/// keeps replays of the user's past records from bringing the user back; the log keeps
/// recognising the user's event ids (as keyed hashes, nothing personal) for the dedupe window, so
/// that past events delivered again are not taken in again. Durable when it returns: the store's
/// erase is fsynced, with the profile deletion before it when the catalog is embedded.
pub async fn erase(services: &Services, user_id: &str, data: &SessionData) -> Result<(), ApiError> {
    services
        .catalog
        .store()
        .delete_profile(user_id)
        .await
        .map_err(ApiError::from)?;
    let partition = partition_for(user_id, services.log.num_partitions());
    let tombstone = Tombstone {
        offset: *services.log.high_watermark(partition).borrow(),
        at_ms: common::now_millis(),
    };
    // The changelog first: once it holds the erasure, whichever node owns the user next
    // forgets the user too, even if this node dies before its own erase below.
    if let Some(changelog) = &services.changelog {
        let record = storage::ChangeRecord::erased(user_id, tombstone.at_ms);
        changelog
            .record(vec![record])
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
    }
    let deltas = crate::popularity::contributions(
        &data.items,
        &services.catalog,
        services.config.trending.max_user_weight,
    );
    let borrowed: Vec<(&str, f64)> = deltas.iter().map(|(id, w)| (id.as_str(), *w)).collect();
    services
        .store
        .erase(user_id, partition, tombstone, &borrowed)
        .map_err(ApiError::internal)?;
    services.popularity.remove(partition, &deltas);
    services.changes.publish(Changes::User(user_id.to_owned()));
    // The tombstone covers what was received up to its millisecond: answer once the clock has
    // passed it, so that whatever the client sends next counts as received after the erasure.
    while common::now_millis() <= tombstone.at_ms {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, record};
    use crate::{CALL_TIMEOUT, call};
    use common::EventKind;

    async fn spawn(services: &Arc<Services>, user: &str) -> ActorRef<SessionMsg> {
        let args = SessionArgs {
            user_id: user.into(),
            services: services.clone(),
        };
        Actor::spawn(None, SessionActor, args)
            .await
            .expect("spawn")
            .0
    }

    async fn apply(session: &ActorRef<SessionMsg>, records: Vec<Record>) -> ApplyOutcome {
        call(
            session,
            "session",
            |r| SessionMsg::Apply(records, Vec::new(), r),
            CALL_TIMEOUT,
        )
        .await
        .expect("apply")
    }

    #[tokio::test]
    async fn a_session_applies_each_event_once_and_says_what_changed() {
        let t = testing::services(common::Config::default()).await;
        let mut changes = t.services.changes.subscribe();
        let session = spawn(&t.services, "u").await;

        let batch = vec![
            record(0, "u", "e1", "a"),
            record(1, "u", "e1", "a"),
            record(2, "u", "e2", "b"),
        ];
        let outcome = apply(&session, batch).await;
        assert_eq!((outcome.applied, outcome.duplicates), (2, 1));
        assert_eq!(
            changes.try_recv().map(|n| n.change),
            Ok(Changes::User("u".into()))
        );
        assert!(t.services.store.exists("u").expect("store"));

        // Delivered again (a replay): nothing changes, nobody is told.
        let outcome = apply(&session, vec![record(2, "u", "e2", "b")]).await;
        assert_eq!((outcome.applied, outcome.duplicates), (0, 1));
        assert!(changes.try_recv().is_err(), "a duplicate changes nothing");

        let view = call(&session, "session", SessionMsg::Get, CALL_TIMEOUT)
            .await
            .expect("get")
            .expect("known");
        assert_eq!(view.num_events, 2);
        assert_eq!(view.recent[0].item_id, "b", "most recent first");
    }

    #[tokio::test]
    async fn a_restarted_session_keeps_its_state_and_an_erased_one_applies_nothing_old() {
        let t = testing::services(common::Config::default()).await;
        let session = spawn(&t.services, "u").await;
        apply(&session, vec![record(0, "u", "e1", "a")]).await;
        session.stop(None);
        let session = spawn(&t.services, "u").await;
        let outcome = apply(&session, vec![record(0, "u", "e1", "a")]).await;
        assert_eq!(outcome.duplicates, 1, "applied ids survive the restart");

        // The log holds two of the user's records; the erasure covers them.
        let log_events = [record(0, "u", "e0", "z"), record(1, "u", "e1", "a")].map(|r| r.event);
        t.services
            .log
            .append(log_events.to_vec())
            .await
            .expect("append");
        call(&session, "session", SessionMsg::Erase, CALL_TIMEOUT)
            .await
            .expect("erase");
        assert!(!t.services.store.exists("u").expect("store"));
        let session = spawn(&t.services, "u").await;
        let outcome = apply(&session, vec![record(0, "u", "e0", "z")]).await;
        assert_eq!(
            outcome.applied, 0,
            "a record before the erasure never counts"
        );
    }

    fn interaction(item: &str) -> Interaction {
        Interaction {
            item_id: item.into(),
            kind: EventKind::View,
            ts: 1,
        }
    }

    #[tokio::test]
    async fn a_dislike_after_clicks_leaves_the_item_disliked_out_of_the_history_and_masked() {
        let t = testing::services(common::Config::default()).await;
        let session = spawn(&t.services, "u").await;
        let event = |offset, id: &str, item: &str, kind| {
            let mut r = record(offset, "u", id, item);
            r.event.kind = kind;
            r
        };
        let events = vec![
            event(0, "e1", "a", EventKind::Click),
            event(1, "e2", "a", EventKind::Click),
            event(2, "e3", "b", EventKind::View),
            event(3, "e4", "a", EventKind::Dislike),
        ];
        apply(&session, events).await;
        let bytes = t.services.store.load("u").expect("store").expect("state");
        let data = SessionData::decode(&bytes).expect("state");
        assert!(data.items["a"] < 0.0, "{:?}", data.items);
        let req = model_request(&data, &RecQuery::new(5, None).expect("query"), Vec::new());
        assert_eq!(
            req.history,
            ["b"],
            "the transitions read only what is liked"
        );
        assert!(req.exclude.contains("a"));
        assert!(
            req.interactions
                .contains(&("a".to_owned(), data.items["a"]))
        );
    }

    #[test]
    fn a_session_keeps_at_most_max_items_the_most_recent_then_the_disliked_then_the_heaviest() {
        let mut data = SessionData {
            num_events: 6,
            // Most recent first.
            recent: ["r1", "r2"].map(interaction).into(),
            items: [
                ("r1", 0.5),
                ("r2", 0.5),
                ("heavy", 5.0),
                ("disliked", -3.0),
                ("light", 1.0),
                ("lighter", 0.2),
            ]
            .into_iter()
            .map(|(id, w)| (id.to_owned(), w))
            .collect(),
        };
        assert!(data.evict_items(6).is_empty());
        let mut evicted = data.evict_items(4);
        evicted.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            evicted,
            [("light".to_owned(), 1.0), ("lighter".to_owned(), 0.2)]
        );
        let mut kept: Vec<&str> = data.items.keys().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["disliked", "heavy", "r1", "r2"]);
        // A disliked item outlasts a heavier liked one: evicted, it could be recommended again.
        assert_eq!(data.evict_items(3), [("heavy".to_owned(), 5.0)]);
        // Below the recent interactions, the most recent win.
        data.evict_items(1);
        assert_eq!(data.items.keys().collect::<Vec<_>>(), ["r1"]);
    }
}
