//! One ingest actor per event-log partition: reads records from the committed offset, routes
//! them to their users' sessions, waits until every session has durably applied its share, and
//! only then commits the offset. A crash anywhere in between replays the batch, and sessions
//! drop what they already applied (by event id): at-least-once delivery, exactly-once effect.
//!
//! When a session fails to apply, the actor fails; its supervisor restarts it with backoff and
//! it resumes from the committed offset. Between batches it waits on the partition's high
//! watermark, so an idle partition costs nothing.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use common::ApiError;
use futures::future::try_join_all;
use prometheus::{IntCounter, IntGaugeVec, register_int_counter, register_int_gauge_vec};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;
use storage::Record;

use crate::mailbox;
use crate::obs::Obs;
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
    obs_state: IngestObs,
    obs: Arc<Obs<IngestObs>>,
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
        let obs_state = IngestObs {
            partition: args.partition,
            committed,
            ..Default::default()
        };
        let obs = args
            .services
            .obs
            .register(&myself.get_cell(), "ingest", &obs_state);
        Ok(IngestState {
            args,
            committed,
            obs_state,
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

    async fn post_stop(
        &self,
        myself: ActorRef<IngestMsg>,
        state: &mut IngestState,
    ) -> Result<(), ActorProcessingErr> {
        state.args.services.obs.deregister(&myself.get_cell());
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
        state.obs_state.high_watermark = *hw.borrow();
        if records.is_empty() {
            state.publish();
            let committed = state.committed;
            tokio::spawn(async move {
                if hw.wait_for(|&h| h > committed).await.is_ok() {
                    let _ = mailbox::tell(&myself, IngestMsg::Poll);
                }
            });
            return Ok(());
        }
        let next = records.last().map_or(state.committed, |r| r.offset + 1);
        let n = records.len();
        let slot = &state.args.sessions;
        let outcomes = try_join_all(group_by_user(records).into_iter().map(
            |(user_id, records)| async move {
                let sessions = slot_get(slot, "session manager")?;
                call(
                    &sessions,
                    "session",
                    |reply| SessionManagerMsg::Apply {
                        user_id,
                        records,
                        reply,
                    },
                    APPLY_TIMEOUT,
                )
                .await
            },
        ))
        .await
        .map_err(|e: ApiError| {
            format!(
                "partition {partition}: applying a batch failed: {}",
                e.message
            )
        })?;
        services.log.commit(storage::INGEST, partition, next)?;
        state.committed = next;
        state.obs_state.num_events += n as u64;
        state.obs_state.num_batches += 1;
        state.obs_state.num_duplicates += outcomes.iter().map(|o| o.duplicates as u64).sum::<u64>();
        EVENTS.inc_by(n as u64);
        state.publish();
        mailbox::tell(&myself, IngestMsg::Poll)?;
        Ok(())
    }
}

impl IngestState {
    fn publish(&mut self) {
        self.obs_state.committed = self.committed;
        self.obs_state.lag = self.obs_state.high_watermark.saturating_sub(self.committed);
        LAG.with_label_values(&[&self.args.partition.to_string()])
            .set(self.obs_state.lag as i64);
        self.obs.publish(&self.obs_state);
    }
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
