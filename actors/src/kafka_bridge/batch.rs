//! One batch's way through the bridge, apart from the actor: sorting messages into events,
//! catalogue changes and dead letters, journaling events and waiting until ingest applied them,
//! the changelog records of what changed, and retrying what needs a remote store.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use common::partition::partition_for;
use common::telemetry::TraceContext;
use common::{ApiError, ErrorCode, Event, Item};
use kafka::{DeadLetter, Decoded, Message, Producer, Settings, Topic, decode};
use prometheus::{IntCounterVec, register_int_counter_vec};
use ractor::ActorProcessingErr;
use storage::EventLog;

use crate::Services;

static MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "streamrec_kafka_messages_total",
        "Kafka messages consumed, by source topic and outcome (applied, dead_letter).",
        &["topic", "outcome"]
    )
    .expect("metric registers once")
});

/// How long a batch may wait for its events to be applied before the bridge fails and replays.
pub(super) const APPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a step that needs a remote store is retried before the bridge fails and replays.
pub(super) const RETRY_FOR: Duration = Duration::from_secs(120);

/// The changelog records of a batch: each touched user's state as stored now, with the ids of
/// the batch's events for the user. A user with no state (erased) has nothing to record.
pub(super) fn changes(
    store: &dyn storage::SessionStore,
    applied: BTreeMap<String, Vec<String>>,
    through: impl Fn(&str) -> Option<u64>,
) -> Result<Vec<storage::ChangeRecord>, ActorProcessingErr> {
    let mut records = Vec::with_capacity(applied.len());
    for (user, ids) in applied {
        if let Some(state) = store.load(&user)? {
            let record = storage::ChangeRecord::state(&user, &state, ids, through(&user))?;
            records.push(record);
        }
    }
    Ok(records)
}

/// Where a batch's catalog changes and dead letters go: the node's catalog and the Kafka
/// producer ([`NodeEffects`]), or an in-memory fake in the tests.
pub(super) trait Effects {
    fn upsert(&self, item: Item) -> impl Future<Output = Result<(), ApiError>> + Send;
    fn delete(&self, item_id: &str) -> impl Future<Output = Result<bool, ApiError>> + Send;
    fn dead_letter(&self, letter: DeadLetter<'_>)
    -> impl Future<Output = kafka::Result<()>> + Send;
}

pub(super) struct NodeEffects<'a> {
    pub(super) services: &'a Services,
    pub(super) producer: &'a Producer,
}

impl Effects for NodeEffects<'_> {
    async fn upsert(&self, item: Item) -> Result<(), ApiError> {
        self.services.upsert_item(item).await
    }

    async fn delete(&self, item_id: &str) -> Result<bool, ApiError> {
        self.services.delete_item(item_id).await
    }

    async fn dead_letter(&self, letter: DeadLetter<'_>) -> kafka::Result<()> {
        self.producer.dead_letter(letter).await
    }
}

/// One batch, sorted by where its events go.
#[derive(Debug, Default)]
pub(super) struct Sorted {
    /// Events of `user-events`, in order, for the journal.
    pub(super) journal: Vec<Event>,
    /// The trace contexts the journal's events came with, by event id (for ingest, see
    /// [`crate::ingest::JournalTraces`]).
    pub(super) traces: Vec<(String, TraceContext)>,
    /// Events of `transaction-stream`, for `user-events` (their owner may be another node).
    pub(super) reroute: Vec<Event>,
    /// Catalog changes applied.
    pub(super) num_catalog_changes: u64,
    /// Messages sent to a dead-letter topic.
    pub(super) num_dead_letters: u64,
}

/// Sorts one batch: its events are returned in order, for the journal or for `user-events`;
/// catalog changes are applied; what cannot be decoded, or that the catalog refuses as
/// invalid, goes to its topic's dead-letter topic with the reason.
pub(super) async fn route(
    settings: &Settings,
    batch: &[Message],
    now: i64,
    effects: &impl Effects,
) -> Result<Sorted, ActorProcessingErr> {
    let mut sorted = Sorted::default();
    for message in batch {
        let topic = message.topic.base_name();
        let applied = match decode(settings, message, now) {
            Ok(Decoded::Event(event)) => {
                match message.topic {
                    Topic::Transactions => sorted.reroute.push(event),
                    _ => {
                        if let Some(trace) = &message.trace {
                            sorted.traces.push((event.event_id.clone(), trace.clone()));
                        }
                        sorted.journal.push(event);
                    }
                }
                MESSAGES.with_label_values(&[topic, "applied"]).inc();
                continue;
            }
            Ok(Decoded::Upsert(item)) => {
                apply_catalog("catalog upsert", || effects.upsert(item.clone())).await?
            }
            Ok(Decoded::Delete(item_id)) => {
                apply_catalog("catalog delete", || effects.delete(&item_id)).await?
            }
            Err(reason) => Err(reason),
        };
        if let Err(reason) = applied {
            tracing::warn!(topic, partition = message.partition, offset = message.offset, %reason, "dead letter");
            retry("dead letter", RETRY_FOR, || {
                effects.dead_letter(DeadLetter {
                    topic: message.topic,
                    partition: message.partition,
                    offset: message.offset,
                    key: message.key.as_deref(),
                    payload: message.payload.as_deref(),
                    reason: &reason,
                })
            })
            .await?;
            sorted.num_dead_letters += 1;
            MESSAGES.with_label_values(&[topic, "dead_letter"]).inc();
            continue;
        }
        sorted.num_catalog_changes += 1;
        MESSAGES.with_label_values(&[topic, "applied"]).inc();
    }
    Ok(sorted)
}

/// Appends `events` to the journal and waits, at most `timeout`, until ingest has applied them;
/// returns how many the journal already held.
pub(super) async fn journal_and_apply(
    log: &dyn EventLog,
    events: Vec<Event>,
    timeout: Duration,
) -> Result<usize, ActorProcessingErr> {
    if events.is_empty() {
        return Ok(0);
    }
    let n = log.num_partitions();
    let partitions: std::collections::BTreeSet<u32> = events
        .iter()
        .map(|e| partition_for(&e.user_id, n))
        .collect();
    let outcome = log.append(events).await?;
    // Nothing else appends to the journal in Kafka mode: the high watermarks now end with this
    // batch.
    let targets: BTreeMap<u32, u64> = partitions
        .into_iter()
        .map(|p| (p, *log.high_watermark(p).borrow()))
        .collect();
    let applied = async {
        let mut pause = Duration::from_millis(1);
        loop {
            let mut done = true;
            for (&p, &target) in &targets {
                done &= log.committed(storage::INGEST, p)? >= target;
            }
            if done {
                return Ok::<_, storage::StorageError>(());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    };
    tokio::time::timeout(timeout, applied)
        .await
        .map_err(|_| "journaled events were not applied in time")??;
    Ok(outcome.duplicates)
}

/// Applies a catalog change, retrying while the store is unavailable. A change the store refuses
/// as invalid (`invalid_argument`: data PostgreSQL will never take) is not retried: the outer
/// `Ok(Err(reason))` sends it to the dead-letter topic, and the partition goes on.
async fn apply_catalog<T, F>(
    what: &str,
    mut step: impl FnMut() -> F,
) -> Result<Result<(), String>, ActorProcessingErr>
where
    F: Future<Output = Result<T, ApiError>>,
{
    let outcome = retry(what, RETRY_FOR, || {
        let attempt = step();
        async move {
            match attempt.await {
                Ok(_) => Ok(Ok(())),
                Err(e) if e.code == ErrorCode::InvalidArgument => {
                    Ok(Err(format!("invalid item: {}", e.message)))
                }
                Err(e) => Err(e),
            }
        }
    })
    .await?;
    Ok(outcome)
}

/// Runs `step` until it succeeds, with backoff, for at most `limit` ([`RETRY_FOR`]).
pub(super) async fn retry<T, E, F>(
    what: &str,
    limit: Duration,
    mut step: impl FnMut() -> F,
) -> Result<T, ActorProcessingErr>
where
    F: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(100);
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, what, "retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(format!("{what}: {error}").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use std::sync::Arc;

    use storage::{Db, FileEventLog};

    use super::*;

    /// A dead letter as the fake received it: topic, offset, reason, payload.
    type Letter = (Topic, i64, String, Vec<u8>);

    /// Records what the bridge did to the catalog and the dead-letter topics; refuses, as invalid,
    /// an item called `refused`.
    #[derive(Default)]
    struct FakeEffects {
        upserts: Mutex<Vec<String>>,
        deletes: Mutex<Vec<String>>,
        dead_letters: Mutex<Vec<Letter>>,
    }

    impl Effects for FakeEffects {
        async fn upsert(&self, item: Item) -> Result<(), ApiError> {
            self.upserts
                .lock()
                .expect("lock")
                .push(item.item_id.clone());
            if item.item_id == "refused" {
                return Err(ApiError::invalid("the store refused a value as invalid"));
            }
            Ok(())
        }

        async fn delete(&self, item_id: &str) -> Result<bool, ApiError> {
            self.deletes.lock().expect("lock").push(item_id.to_owned());
            Ok(true)
        }

        async fn dead_letter(&self, letter: DeadLetter<'_>) -> kafka::Result<()> {
            self.dead_letters.lock().expect("lock").push((
                letter.topic,
                letter.offset,
                letter.reason.to_owned(),
                letter.payload.unwrap_or_default().to_vec(),
            ));
            Ok(())
        }
    }

    fn settings() -> Settings {
        Settings {
            brokers: "localhost:9092".into(),
            group: "g".into(),
            prefix: "t.".into(),
            partitions: 4,
            replication: 1,
            produce_timeout: Duration::from_secs(1),
            session_timeout: Duration::from_secs(6),
            options: Default::default(),
        }
    }

    fn message(topic: Topic, offset: i64, payload: &str) -> Message {
        Message {
            topic,
            partition: 0,
            offset,
            key: None,
            payload: Some(payload.as_bytes().to_vec()),
            timestamp: Some(1_000),
            trace: None,
        }
    }

    #[tokio::test]
    async fn a_batch_is_sorted_into_events_catalog_changes_and_dead_letters() {
        let traced = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: None,
        };
        let batch = [
            Message {
                trace: Some(traced.clone()),
                ..message(
                    Topic::UserEvents,
                    0,
                    r#"{"event_id":"e1","user_id":"u1","item_id":"i1","kind":"click"}"#,
                )
            },
            message(Topic::UserEvents, 1, "not json"),
            message(
                Topic::ProductUpdates,
                0,
                r#"{"item_id":"sku-1","title":"Lamp"}"#,
            ),
            message(
                Topic::ProductUpdates,
                1,
                r#"{"item_id":"sku-2","deleted":true}"#,
            ),
            message(
                Topic::ProductUpdates,
                2,
                r#"{"item_id":"refused","title":"Vase"}"#,
            ),
            message(
                Topic::Transactions,
                7,
                r#"{"user_id":"u2","item_id":"i2","kind":"purchase"}"#,
            ),
        ];
        let effects = FakeEffects::default();
        let sorted = route(&settings(), &batch, 5, &effects)
            .await
            .expect("nothing fails the bridge");

        // Events in batch order, for the journal; a transaction goes back to `user-events`, for
        // its user's owner, its id (none was given) taken from its place in the topic.
        let ids = |events: &[Event]| -> Vec<String> {
            events.iter().map(|e| e.event_id.clone()).collect()
        };
        assert_eq!(ids(&sorted.journal), ["e1"]);
        // The journaled event's trace context goes with it, by id, to ingest.
        assert_eq!(sorted.traces, [("e1".to_owned(), traced)]);
        assert_eq!(ids(&sorted.reroute), ["t.transaction-stream-0-7"]);
        assert_eq!(*effects.upserts.lock().expect("lock"), ["sku-1", "refused"]);
        assert_eq!(*effects.deletes.lock().expect("lock"), ["sku-2"]);
        // The undecodable message and the refused item are dead letters, with their reasons and
        // the original bytes; the partition goes on.
        let letters = effects.dead_letters.lock().expect("lock").clone();
        assert_eq!(letters.len(), 2, "{letters:?}");
        assert_eq!((letters[0].0, letters[0].1), (Topic::UserEvents, 1));
        assert!(
            letters[0].2.contains("not a valid event object"),
            "{letters:?}"
        );
        assert_eq!(letters[0].3, b"not json");
        assert_eq!((letters[1].0, letters[1].1), (Topic::ProductUpdates, 2));
        assert!(letters[1].2.starts_with("invalid item"), "{letters:?}");
        assert_eq!(
            (sorted.num_catalog_changes, sorted.num_dead_letters),
            (2, 2)
        );
    }

    /// A journal of two partitions in `dir`.
    fn journal(dir: &std::path::Path) -> FileEventLog {
        let db = Arc::new(Db::open(&dir.join("db")).expect("db"));
        FileEventLog::open(&dir.join("log"), 2, false, db).expect("log")
    }

    fn clicks(ids: std::ops::Range<u32>) -> Vec<Event> {
        ids.map(|i| Event {
            event_id: format!("e{i}"),
            user_id: format!("u{i}"),
            item_id: "i".into(),
            kind: common::EventKind::Click,
            value: None,
            ts: 1,
        })
        .collect()
    }

    /// What an ingest actor does, in short: commits each partition up to its high watermark,
    /// once the journal holds `n` records.
    async fn ingest(log: &FileEventLog, n: u64) {
        let ends = move || (0..2).map(move |p| *log.high_watermark(p).borrow());
        let journaled =
            testkit::wait_until(async || ends().sum::<u64>() == n, Duration::from_secs(5));
        assert!(journaled.await, "the events never reached the journal");
        for (p, end) in ends().enumerate() {
            log.commit(storage::INGEST, p as u32, end).expect("commit");
        }
    }

    #[tokio::test]
    async fn a_batch_is_done_once_ingest_applied_it_and_a_replay_is_counted_as_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = journal(dir.path());
        let (journaled, ()) = tokio::join!(
            journal_and_apply(&log, clicks(0..6), Duration::from_secs(10)),
            ingest(&log, 6),
        );
        assert_eq!(journaled.expect("applied"), 0);
        for p in 0..2 {
            assert_eq!(
                log.committed(storage::INGEST, p).expect("committed"),
                *log.high_watermark(p).borrow()
            );
        }
        // A replay of the batch (after a crash before the Kafka commit) adds nothing to wait for.
        let replayed = journal_and_apply(&log, clicks(0..6), Duration::from_secs(10)).await;
        assert_eq!(replayed.expect("nothing to apply"), 6);
    }

    #[tokio::test]
    async fn a_batch_ingest_never_applies_fails_the_bridge_after_the_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = journal(dir.path());
        let error = journal_and_apply(&log, clicks(0..3), Duration::from_millis(100))
            .await
            .expect_err("not applied");
        assert!(error.to_string().contains("not applied in time"), "{error}");
        // Nothing but the journal write happened: ingest resumes from where it was.
        assert_eq!(log.committed(storage::INGEST, 0).expect("committed"), 0);
    }

    #[tokio::test]
    async fn a_step_that_keeps_failing_is_retried_until_the_limit_then_fails_the_bridge() {
        let attempts = AtomicUsize::new(0);
        let gave_up = retry("dead letter", Duration::from_millis(250), || {
            attempts.fetch_add(1, Ordering::Relaxed);
            async { Err::<(), _>("broker unreachable") }
        })
        .await
        .expect_err("gives up");
        assert_eq!(gave_up.to_string(), "dead letter: broker unreachable");
        // Backoff 100 ms, then 200 ms: at most three attempts start within 250 ms.
        let attempts = attempts.load(Ordering::Relaxed);
        assert!((2..=3).contains(&attempts), "{attempts} attempts");
    }

    #[tokio::test]
    async fn a_catalog_change_the_store_refuses_is_a_dead_letter_not_a_retry() {
        let attempts = AtomicUsize::new(0);
        let refused = apply_catalog("catalog upsert", || {
            attempts.fetch_add(1, Ordering::Relaxed);
            async {
                Err::<(), _>(ApiError::invalid(
                    "the store refused a value as invalid (SQLSTATE 22021)",
                ))
            }
        })
        .await
        .expect("not a failure of the bridge");
        let reason = refused.expect_err("a dead letter");
        assert!(reason.contains("SQLSTATE 22021"), "{reason}");
        assert_eq!(attempts.load(Ordering::Relaxed), 1, "never retried");

        // An outage is retried until the store answers (with backoff: 0.7 s here).
        let attempts = AtomicUsize::new(0);
        let applied = apply_catalog("catalog upsert", || {
            let n = attempts.fetch_add(1, Ordering::Relaxed);
            async move {
                if n < 3 {
                    Err(ApiError::unavailable("a backing store is unavailable"))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .expect("applied in the end");
        assert_eq!((applied, attempts.load(Ordering::Relaxed)), (Ok(()), 4));
    }
}
