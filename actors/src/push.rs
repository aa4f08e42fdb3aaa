//! The push hub: live subscribers register (user, query) and get a watch channel of that
//! user's recommendations. The hub listens to the [change feed](crate::changes): when a
//! subscribed user (or every user: new items, a new model) may have a new list, it recomputes the
//! list once per distinct query (off its own mailbox) through a [`Recommender`] (the
//! [`Users`](crate::Users) entry point) and publishes it to every matching subscriber if it
//! changed.
//!
//! A watch channel holds only the latest value, so a slow subscriber skips straight to the
//! newest recommendations and never slows the hub or anyone else.
//!
//! Recomputations run concurrently and may finish out of order; each carries the sequence number
//! it was started with, and a subscriber never takes a result older than the one it holds, so a
//! slow recompute of an earlier state cannot overwrite a fresher list.
//!
//! A change that came with a trace context (a session applied events produced by a traced
//! request) is recomputed and offered in a `push.send` span, a child of that context: the
//! request's trace goes on through the recompute (`users.recommend` and what it calls) to the
//! subscribers it reached. Untraced changes make no span.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use common::telemetry::TraceContext;
use common::{ApiError, RecQuery, Recommendations};
use prometheus::{IntCounter, IntGauge, register_int_counter, register_int_gauge};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::Services;
use crate::changes::{Changes, Notice};
use crate::mailbox;
use crate::obs::Observed;

static SUBSCRIBERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "streamrec_push_subscribers",
        "Live recommendation subscriptions."
    )
    .expect("metric registers once")
});

static PUSHES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "streamrec_push_updates_total",
        "Recommendation updates published to subscribers."
    )
    .expect("metric registers once")
});

pub type RecsWatch = watch::Receiver<Option<Arc<Recommendations>>>;

/// How the hub computes a subscriber's list: the same path as a request.
#[async_trait]
pub trait Recommender: Send + Sync + 'static {
    async fn recommend(
        &self,
        user_id: &str,
        query: &RecQuery,
    ) -> Result<Arc<Recommendations>, ApiError>;
}

pub struct PushArgs {
    pub services: Arc<Services>,
    pub recommender: Arc<dyn Recommender>,
}

pub enum PushMsg {
    Subscribe {
        user_id: String,
        query: RecQuery,
        reply: RpcReplyPort<(u64, RecsWatch)>,
    },
    Unsubscribe(u64),
    /// The user's session changed (from the change feed), by work traced with this context.
    Changed(String, Option<TraceContext>),
    /// Every user's recommendations may have changed (from the change feed).
    ChangedAll,
    Computed {
        user_id: String,
        query: RecQuery,
        /// When the recompute started: results older than a subscriber's latest are dropped.
        seq: u64,
        recs: Arc<Recommendations>,
        /// The recompute's `push.send` span (disabled when untraced), ended once offered.
        span: tracing::Span,
    },
}

pub struct PushHub;

#[derive(Clone, Debug, Default, Serialize)]
pub struct PushObs {
    pub num_subscribers: usize,
    pub num_users: usize,
    pub num_updates: u64,
    pub num_recomputes: u64,
}

struct Subscriber {
    id: u64,
    query: RecQuery,
    tx: watch::Sender<Option<Arc<Recommendations>>>,
    /// The sequence number of the result the subscriber holds.
    seq: u64,
}

pub struct PushState {
    recommender: Arc<dyn Recommender>,
    /// Forwards the change feed into the mailbox; stopped with the hub.
    feed: JoinHandle<()>,
    subs: HashMap<String, Vec<Subscriber>>,
    next_id: u64,
    next_seq: u64,
    obs: Observed<PushObs>,
}

impl Actor for PushHub {
    type Msg = PushMsg;
    type State = PushState;
    type Arguments = PushArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PushMsg>,
        PushArgs {
            services,
            recommender,
        }: PushArgs,
    ) -> Result<PushState, ActorProcessingErr> {
        let obs = Observed::register(
            &services.obs,
            &myself.get_cell(),
            "push_hub",
            PushObs::default(),
        );
        // Subscribed before the hub takes subscribers, so no change after a subscribe is missed.
        let feed = tokio::spawn(forward_changes(
            services.changes.subscribe(),
            myself.clone(),
        ));
        Ok(PushState {
            recommender,
            feed,
            subs: HashMap::new(),
            next_id: 0,
            next_seq: 0,
            obs,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<PushMsg>,
        state: &mut PushState,
    ) -> Result<(), ActorProcessingErr> {
        state.feed.abort();
        SUBSCRIBERS.sub(state.obs.get().num_subscribers as i64);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<PushMsg>,
        msg: PushMsg,
        state: &mut PushState,
    ) -> Result<(), ActorProcessingErr> {
        state.obs.handled();
        match msg {
            PushMsg::Subscribe {
                user_id,
                query,
                reply,
            } => {
                state.next_id += 1;
                let (tx, rx) = watch::channel(None);
                state.subs.entry(user_id).or_default().push(Subscriber {
                    id: state.next_id,
                    query,
                    tx,
                    seq: state.next_seq,
                });
                let _ = reply.send((state.next_id, rx));
            }
            PushMsg::Unsubscribe(id) => {
                state.subs.retain(|_, subs| {
                    subs.retain(|s| s.id != id);
                    !subs.is_empty()
                });
            }
            PushMsg::Changed(user_id, trace) => state.recompute(&myself, &user_id, trace.as_ref()),
            PushMsg::ChangedAll => {
                let users: Vec<String> = state.subs.keys().cloned().collect();
                for user_id in users {
                    state.recompute(&myself, &user_id, None);
                }
            }
            PushMsg::Computed {
                user_id,
                query,
                seq,
                recs,
                span,
            } => {
                let mut notified = 0;
                for sub in state
                    .subs
                    .get_mut(&user_id)
                    .into_iter()
                    .flatten()
                    .filter(|s| s.query == query)
                {
                    if sub.offer(seq, &recs) {
                        notified += 1;
                        state.obs.update(|o| o.num_updates += 1);
                        PUSHES.inc();
                    }
                }
                span.record("push.num_notified", notified);
            }
        }
        // Subscribers whose receiver is gone (connection closed) are dropped here.
        state.subs.retain(|_, subs| {
            subs.retain(|s| !s.tx.is_closed());
            !subs.is_empty()
        });
        let subscribers: usize = state.subs.values().map(Vec::len).sum();
        let users = state.subs.len();
        let before = state.obs.update(|o| {
            let before = o.num_subscribers;
            o.num_subscribers = subscribers;
            o.num_users = users;
            before
        });
        SUBSCRIBERS.add(subscribers as i64 - before as i64);
        Ok(())
    }
}

impl Subscriber {
    /// Publishes a recompute's result unless the subscriber holds a newer one or the same list.
    /// Returns whether the subscriber was notified.
    fn offer(&mut self, seq: u64, recs: &Arc<Recommendations>) -> bool {
        if seq <= self.seq {
            return false;
        }
        self.seq = seq;
        self.tx.send_if_modified(|current| {
            let same = current.as_deref() == Some(&**recs);
            if !same {
                *current = Some(recs.clone());
            }
            !same
        })
    }
}

impl PushState {
    /// Recomputes a subscribed user's recommendations once per distinct query, off the mailbox;
    /// with a trace context, each in a `push.send` span that is its child.
    fn recompute(
        &mut self,
        myself: &ActorRef<PushMsg>,
        user_id: &str,
        trace: Option<&TraceContext>,
    ) {
        use tracing::Instrument as _;
        let Some(subs) = self.subs.get(user_id) else {
            return;
        };
        let mut queries: HashMap<RecQuery, usize> = HashMap::new();
        for sub in subs {
            *queries.entry(sub.query.clone()).or_default() += 1;
        }
        for (query, num_subscribers) in queries {
            self.obs.update(|o| o.num_recomputes += 1);
            self.next_seq += 1;
            let seq = self.next_seq;
            let span = trace.map_or_else(tracing::Span::none, |trace| {
                let span = tracing::info_span!(
                    parent: None,
                    "push.send",
                    user.id = %user_id,
                    push.k = query.k,
                    push.num_subscribers = num_subscribers,
                    push.num_notified = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                );
                trace.parent(&span);
                span
            });
            let (recommender, hub, user_id) =
                (self.recommender.clone(), myself.clone(), user_id.to_owned());
            let task = {
                let span = span.clone();
                async move {
                    match recommender.recommend(&user_id, &query).await {
                        Ok(recs) => drop(mailbox::tell(
                            &hub,
                            PushMsg::Computed {
                                user_id,
                                query,
                                seq,
                                recs,
                                span,
                            },
                        )),
                        Err(error) => {
                            span.record("otel.status_code", "ERROR");
                            tracing::debug!(error = %error.message, "push recompute failed");
                        }
                    }
                }
            };
            tokio::spawn(task.instrument(span));
        }
    }
}

/// Turns the change feed into hub messages until the hub or the feed stops. A hub that fell
/// behind the feed recomputes everyone: it cannot know whom it missed.
async fn forward_changes(mut changes: broadcast::Receiver<Notice>, hub: ActorRef<PushMsg>) {
    loop {
        let msg = match changes.recv().await {
            Ok(Notice {
                change: Changes::User(user_id),
                trace,
            }) => PushMsg::Changed(user_id, trace),
            Ok(Notice {
                change: Changes::Items | Changes::Model,
                ..
            }) => PushMsg::ChangedAll,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "push hub fell behind the change feed; recomputing all"
                );
                PushMsg::ChangedAll
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if mailbox::tell(&hub, msg).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(items: &[&str]) -> Arc<Recommendations> {
        Arc::new(Recommendations {
            user_id: "u".into(),
            model_version: "v1".into(),
            items: items
                .iter()
                .map(|id| common::Recommendation {
                    item_id: (*id).into(),
                    score: 1.0,
                    reasons: vec![],
                })
                .collect(),
        })
    }

    #[test]
    fn a_slow_recompute_of_an_older_state_never_overwrites_a_newer_list() {
        let (tx, mut rx) = watch::channel(None);
        let mut sub = Subscriber {
            id: 1,
            query: RecQuery::new(3, None).expect("valid"),
            tx,
            seq: 1,
        };
        assert!(!sub.offer(1, &recs(&["a"])), "started before subscribing");
        assert!(sub.offer(3, &recs(&["b"])));
        assert!(rx.has_changed().expect("open"));
        assert!(!sub.offer(2, &recs(&["a"])), "older than what it holds");
        assert_eq!(rx.borrow_and_update().as_deref(), Some(&*recs(&["b"])));
        assert!(!sub.offer(4, &recs(&["b"])), "the same list is no change");
        assert!(!rx.has_changed().expect("open"));
        assert!(sub.offer(5, &recs(&["c"])));
        assert_eq!(rx.borrow_and_update().as_deref(), Some(&*recs(&["c"])));
    }
}
