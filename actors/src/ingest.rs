//! One ingest actor per event-log partition: reads records from the committed offset, routes
//! them to their users' sessions, waits until every session has durably applied its share, and
//! only then commits the offset. A crash anywhere in between replays the batch, and sessions
//! drop what they already applied (by event id): at-least-once delivery, exactly-once effect.
//!
//! When a session fails to apply, the actor fails; its supervisor restarts it with backoff and
//! it resumes from the committed offset. Between batches it waits on the partition's high
//! watermark, so an idle partition costs nothing.
//!
//! With Kafka, the events the bridge journaled may come with the trace context of the request
//! that produced them ([`JournalTraces`]): ingest takes them as it reads the records and hands
//! each user's to the session with its records, where the apply joins that trace.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use common::ApiError;
use common::telemetry::TraceContext;
use futures::future::try_join_all;
use prometheus::{IntCounter, IntGaugeVec, register_int_counter, register_int_gauge_vec};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;
use storage::{EventLog, Record};

use crate::mailbox;
use crate::obs::Observed;
use crate::session_manager::SessionManagerMsg;
use crate::{Services, Slot, call, slot_get};

static EVENTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "streamrec_ingest_events_total",
        "Events routed to sessions by ingest actors."
    )
    .expect("metric registers once")
});

static LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "streamrec_ingest_lag_records",
        "Records in the log not yet applied, per partition.",
        &["partition"]
    )
    .expect("metric registers once")
});

/// How long one batch may take to apply before the actor fails and retries.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub enum IngestMsg {
    Poll,
}

pub struct IngestActor;

pub struct IngestArgs {
    pub partition: u32,
    pub services: Arc<Services>,
    /// Where the partition's events go, user by user.
    pub sessions: Slot<SessionManagerMsg>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct IngestObs {
    pub partition: u32,
    pub committed: u64,
    pub high_watermark: u64,
    pub lag: u64,
    pub num_events: u64,
    pub num_batches: u64,
    pub num_duplicates: u64,
}

pub struct IngestState {
    args: IngestArgs,
    committed: u64,
    obs: Observed<IngestObs>,
}

impl Actor for IngestActor {
    type Msg = IngestMsg;
    type State = IngestState;
    type Arguments = IngestArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<IngestMsg>,
        args: IngestArgs,
    ) -> Result<IngestState, ActorProcessingErr> {
        let committed = args
            .services
            .log
            .committed(storage::INGEST, args.partition)?;
        let initial = IngestObs {
            partition: args.partition,
            committed,
            ..Default::default()
        };
        let obs = Observed::register(&args.services.obs, &myself.get_cell(), "ingest", initial);
        Ok(IngestState {
            args,
            committed,
            obs,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<IngestMsg>,
        _: &mut IngestState,
    ) -> Result<(), ActorProcessingErr> {
        mailbox::tell(&myself, IngestMsg::Poll)?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<IngestMsg>,
        IngestMsg::Poll: IngestMsg,
        state: &mut IngestState,
    ) -> Result<(), ActorProcessingErr> {
        state.obs.handled();
        let services = &state.args.services;
        let partition = state.args.partition;
        let mut hw = services.log.high_watermark(partition);
        let batch = services.config.events.consume_batch;
        let records = services.log.read(partition, state.committed, batch).await?;
        let high_watermark = *hw.borrow();
        if records.is_empty() {
            state.publish(high_watermark);
            let committed = state.committed;
            tokio::spawn(async move {
                if hw.wait_for(|&h| h > committed).await.is_ok() {
                    let _ = mailbox::tell(&myself, IngestMsg::Poll);
                }
            });
            return Ok(());
        }
        let slot = &state.args.sessions;
        let traces = &services.journal_traces.take(&records);
        let applied = apply_batch(
            &*services.log,
            partition,
            state.committed,
            records,
            |user_id, records| async move {
                let sessions = slot_get(slot, "session manager")?;
                let traces = traces.get(&user_id).cloned().unwrap_or_default();
                let outcome = call(
                    &sessions,
                    "session",
                    |reply| SessionManagerMsg::Apply {
                        user_id,
                        records,
                        traces,
                        reply,
                    },
                    APPLY_TIMEOUT,
                )
                .await?;
                Ok(outcome.duplicates)
            },
        )
        .await?;
        let n = applied.num_events;
        state.committed = applied.next;
        state.obs.update(|o| {
            o.num_events += n;
            o.num_batches += 1;
            o.num_duplicates += applied.num_duplicates;
        });
        EVENTS.inc_by(n);
        state.publish(high_watermark);
        mailbox::tell(&myself, IngestMsg::Poll)?;
        Ok(())
    }
}

impl IngestState {
    /// Shows how far the partition is read, against the log's end `high_watermark`.
    fn publish(&self, high_watermark: u64) {
        let lag = high_watermark.saturating_sub(self.committed);
        LAG.with_label_values(&[&self.args.partition.to_string()])
            .set(lag as i64);
        self.obs.update(|o| {
            o.high_watermark = high_watermark;
            o.committed = self.committed;
            o.lag = lag;
        });
    }
}

/// The trace contexts of events the Kafka bridge journaled and ingest has not read yet, by event
/// id. The journal holds events, not the headers of the messages they came in, so the bridge
/// hands their contexts over here ([`JournalTraces::carry`]) before it journals them, and ingest
/// takes them back ([`JournalTraces::take`]) as it reads the records. One per node, in
/// [`Services`]; empty with tracing off, when a batch costs one look at an empty map.
#[derive(Default)]
pub struct JournalTraces {
    pending: parking_lot::Mutex<HashMap<String, TraceContext>>,
}

/// The contexts of one bridge batch, until it is applied: what ingest did not take (events the
/// journal dropped as duplicates) is forgotten when this drops, also when the batch fails.
pub struct Carried<'a> {
    traces: &'a JournalTraces,
    event_ids: Vec<String>,
}

impl JournalTraces {
    /// Hands over the contexts of events about to be journaled, `(event id, context)`.
    pub fn carry(&self, traces: Vec<(String, TraceContext)>) -> Carried<'_> {
        let mut event_ids = Vec::with_capacity(traces.len());
        if !traces.is_empty() {
            let mut pending = self.pending.lock();
            for (event_id, trace) in traces {
                event_ids.push(event_id.clone());
                pending.insert(event_id, trace);
            }
        }
        Carried {
            traces: self,
            event_ids,
        }
    }

    /// Takes the contexts of `records`: per user, the distinct contexts of the user's records,
    /// in log order.
    pub fn take(&self, records: &[Record]) -> HashMap<String, Vec<TraceContext>> {
        let mut by_user: HashMap<String, Vec<TraceContext>> = HashMap::new();
        let mut pending = self.pending.lock();
        if pending.is_empty() {
            return by_user;
        }
        for r in records {
            if let Some(trace) = pending.remove(&r.event.event_id) {
                let user = by_user.entry(r.event.user_id.clone()).or_default();
                if !user.contains(&trace) {
                    user.push(trace);
                }
            }
        }
        by_user
    }

    /// How many contexts wait to be taken.
    pub fn len(&self) -> usize {
        self.pending.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Carried<'_> {
    fn drop(&mut self) {
        if self.event_ids.is_empty() {
            return;
        }
        let mut pending = self.traces.pending.lock();
        for event_id in &self.event_ids {
            pending.remove(event_id);
        }
    }
}

/// What applying one batch did.
#[derive(Debug, PartialEq)]
struct Applied {
    /// The offset committed: the one after the batch.
    next: u64,
    num_events: u64,
    num_duplicates: u64,
}

/// Applies one batch of `partition`, read from its `committed` offset: each user's records go to
/// `apply` together, in log order, all users at once; `apply` answers how many of them were
/// duplicates. Only once every user's share is applied is the offset after the batch committed;
/// if any fails, nothing is, and the batch is read again.
async fn apply_batch<F>(
    log: &dyn EventLog,
    partition: u32,
    committed: u64,
    records: Vec<Record>,
    apply: impl Fn(String, Vec<Record>) -> F,
) -> Result<Applied, ActorProcessingErr>
where
    F: Future<Output = Result<usize, ApiError>>,
{
    let next = records.last().map_or(committed, |r| r.offset + 1);
    let num_events = records.len() as u64;
    let duplicates = try_join_all(
        group_by_user(records)
            .into_iter()
            .map(|(user_id, records)| apply(user_id, records)),
    )
    .await
    .map_err(|e| {
        format!(
            "partition {partition}: applying a batch failed: {}",
            e.message
        )
    })?;
    log.commit(storage::INGEST, partition, next)?;
    Ok(Applied {
        next,
        num_events,
        num_duplicates: duplicates.iter().map(|&d| d as u64).sum(),
    })
}

/// Splits a batch by user, keeping each user's records in log order.
pub fn group_by_user(records: Vec<Record>) -> Vec<(String, Vec<Record>)> {
    let mut order: Vec<(String, Vec<Record>)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for r in records {
        let i = *index.entry(r.event.user_id.clone()).or_insert_with(|| {
            order.push((r.event.user_id.clone(), Vec::new()));
            order.len() - 1
        });
        order[i].1.push(r);
    }
    order
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use common::{Event, EventKind};
    use proptest::prelude::*;
    use storage::{Db, FileEventLog};
    use tokio::sync::Notify;

    use super::*;

    fn record(offset: u64, user: &str) -> Record {
        Record {
            partition: 0,
            offset,
            received_ms: None,
            event: Event {
                event_id: format!("e{offset}"),
                user_id: user.into(),
                item_id: "i".into(),
                kind: EventKind::Click,
                value: None,
                ts: 1,
            },
        }
    }

    fn offsets(records: &[Record]) -> Vec<u64> {
        records.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn a_batch_is_split_by_user_in_order_of_first_appearance() {
        let batch = ["b", "a", "b", "c", "a", "b"]
            .iter()
            .enumerate()
            .map(|(offset, user)| record(offset as u64, user))
            .collect();
        let groups: Vec<(String, Vec<u64>)> = group_by_user(batch)
            .into_iter()
            .map(|(user, records)| (user, offsets(&records)))
            .collect();
        assert_eq!(
            groups,
            [
                ("b".to_owned(), vec![0, 2, 5]),
                ("a".to_owned(), vec![1, 4]),
                ("c".to_owned(), vec![3]),
            ]
        );
        assert!(group_by_user(Vec::new()).is_empty());
    }

    proptest! {
        /// Every record lands in its user's group, once, and each group keeps log order.
        #[test]
        fn grouping_keeps_every_record_once_in_log_order(users in proptest::collection::vec(0..5u8, 0..60)) {
            let batch: Vec<Record> = users
                .iter()
                .enumerate()
                .map(|(offset, u)| record(offset as u64, &format!("u{u}")))
                .collect();
            let groups = group_by_user(batch);
            let mut seen = HashSet::new();
            for (user, records) in &groups {
                prop_assert!(seen.insert(user.clone()), "{} split in two", user);
                prop_assert!(records.iter().all(|r| &r.event.user_id == user));
                prop_assert!(records.windows(2).all(|w| w[0].offset < w[1].offset));
            }
            let mut all: Vec<u64> = groups.iter().flat_map(|(_, r)| offsets(r)).collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..users.len() as u64).collect::<Vec<_>>());
        }
    }

    /// A one-partition log in `dir` holding a batch of `users`' clicks, one per entry; returns
    /// the log and the batch as ingest reads it.
    async fn log_with(dir: &std::path::Path, users: &[&str]) -> (FileEventLog, Vec<Record>) {
        let db = Arc::new(Db::open(&dir.join("db")).expect("db"));
        let log = FileEventLog::open(&dir.join("log"), 1, false, db).expect("log");
        let events = users
            .iter()
            .enumerate()
            .map(|(i, user)| record(i as u64, user).event)
            .collect();
        log.append(events).await.expect("append");
        let records = log.read(0, 0, 100).await.expect("read");
        (log, records)
    }

    #[tokio::test]
    async fn the_offset_is_committed_once_every_user_applied_the_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, records) = log_with(dir.path(), &["ann", "bob", "ann", "cy", "bob"]).await;
        let calls = Mutex::new(Vec::new());
        // Bob's session is slow: the others are done well before him.
        let (bob_may_finish, others_done) = (Notify::new(), Notify::new());
        let num_others_done = AtomicUsize::new(0);
        let apply = {
            let (calls, bob_may_finish) = (&calls, &bob_may_finish);
            let (others_done, num_others_done) = (&others_done, &num_others_done);
            move |user: String, records: Vec<Record>| async move {
                let replayed = usize::from(user == "ann");
                calls
                    .lock()
                    .expect("lock")
                    .push((user.clone(), offsets(&records)));
                if user == "bob" {
                    bob_may_finish.notified().await;
                } else if num_others_done.fetch_add(1, Ordering::SeqCst) == 1 {
                    others_done.notify_one();
                }
                // Ann's second click was applied before (a replay).
                Ok::<_, ApiError>(replayed)
            }
        };
        let batch = apply_batch(&log, 0, 0, records, apply);
        let bob = async {
            others_done.notified().await;
            let committed = log.committed(storage::INGEST, 0).expect("committed");
            bob_may_finish.notify_one();
            committed
        };
        let (applied, committed_while_bob_was_busy) = tokio::join!(batch, bob);
        assert_eq!(committed_while_bob_was_busy, 0);
        assert_eq!(
            applied.expect("applied"),
            Applied {
                next: 5,
                num_events: 5,
                num_duplicates: 1
            }
        );
        assert_eq!(log.committed(storage::INGEST, 0).expect("committed"), 5);
        let mut calls = calls.into_inner().expect("lock");
        calls.sort();
        assert_eq!(
            calls,
            [
                ("ann".to_owned(), vec![0, 2]),
                ("bob".to_owned(), vec![1, 4]),
                ("cy".to_owned(), vec![3]),
            ]
        );
    }

    fn trace(n: u8) -> TraceContext {
        TraceContext {
            traceparent: format!("00-{:032x}-{:016x}-01", n, n),
            tracestate: None,
        }
    }

    #[test]
    fn journaled_trace_contexts_are_taken_per_user_once_and_leftovers_forgotten() {
        let traces = JournalTraces::default();
        let batch = traces.carry(vec![
            ("e0".into(), trace(1)),
            ("e1".into(), trace(2)),
            ("e2".into(), trace(1)),
            // Journaled before: the journal drops it, ingest never reads it.
            ("old".into(), trace(3)),
        ]);
        let records = vec![record(0, "ann"), record(1, "bob"), record(2, "ann")];
        let taken = traces.take(&records);
        assert_eq!(taken["ann"], [trace(1)], "one context per request");
        assert_eq!(taken["bob"], [trace(2)]);
        assert!(traces.take(&records).is_empty(), "taken once");
        assert_eq!(traces.len(), 1);
        drop(batch);
        assert!(traces.is_empty(), "the batch's leftovers are forgotten");
        // Nothing carried (tracing off): nothing to take.
        drop(traces.carry(Vec::new()));
        assert!(traces.take(&records).is_empty());
    }

    #[tokio::test]
    async fn a_user_whose_apply_fails_keeps_the_whole_batch_uncommitted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, records) = log_with(dir.path(), &["ann", "bob", "cy"]).await;
        let failed = apply_batch(&log, 0, 0, records, |user, _| async move {
            if user == "bob" {
                Err(ApiError::unavailable("session timed out"))
            } else {
                Ok(0)
            }
        })
        .await
        .expect_err("the batch fails");
        assert_eq!(
            failed.to_string(),
            "partition 0: applying a batch failed: session timed out"
        );
        assert_eq!(log.committed(storage::INGEST, 0).expect("committed"), 0);
    }
}
