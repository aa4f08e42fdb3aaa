//! The archiver: copies the event log to the object store, hourly by default
//! (`objects.archive_interval`). For each partition it writes the records from its own committed
//! offset (consumer group `archive`) to the end of the log as one gzip'd JSON-lines object,
//! `archive/events/user-events/partition=PPPP/node=<node id>/hour=YYYYMMDDHH/<first>-<last>.jsonl.gz`,
//! and commits only after the object is stored: a crash rewrites at most one object, never skips
//! records. Offsets are those of the node's own log, so the node id in the key keeps the nodes of
//! a cluster (which share the object store, and may each have held a partition in turn) from
//! overwriting each other. [`read_archive`] reads it all back (training, replays), with each
//! record's receive time, so an erased user's tombstone still applies to records from any node's
//! log.

use std::io::{Read, Write};
use std::sync::Arc;

use common::{ApiError, Event};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use storage::{ARCHIVE, ObjectStore, Record};

use crate::Services;
use crate::mailbox;
use crate::obs::Observed;

/// The topic name archived objects carry (the embedded log holds the `user-events` stream).
pub const TOPIC: &str = "user-events";
const PREFIX: &str = "archive/events/";
/// Most records in one archive object.
const MAX_RECORDS_PER_OBJECT: usize = 50_000;

#[derive(Serialize, Deserialize)]
struct ArchivedRecord {
    partition: u32,
    offset: u64,
    /// When the node's log received the event; absent in objects of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    received_ms: Option<i64>,
    event: Event,
}

/// What one run wrote.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ArchiveRun {
    pub objects: Vec<String>,
    pub records: u64,
}

pub enum ArchiverMsg {
    Run(Option<RpcReplyPort<Result<ArchiveRun, ApiError>>>),
}

pub struct ArchiverActor;

#[derive(Clone, Debug, Default, Serialize)]
pub struct ArchiverObs {
    pub num_runs: u64,
    pub num_objects: u64,
    pub num_records: u64,
    pub last_run_at: Option<i64>,
    pub last_error: Option<String>,
}

pub struct ArchiverState {
    services: Arc<Services>,
    obs: Observed<ArchiverObs>,
}

impl Actor for ArchiverActor {
    type Msg = ArchiverMsg;
    type State = ArchiverState;
    type Arguments = Arc<Services>;

    async fn pre_start(
        &self,
        myself: ActorRef<ArchiverMsg>,
        services: Arc<Services>,
    ) -> Result<ArchiverState, ActorProcessingErr> {
        let obs = Observed::register(
            &services.obs,
            &myself.get_cell(),
            "archiver",
            ArchiverObs::default(),
        );
        let interval = services.config.objects.archive_interval;
        if !interval.is_zero() {
            mailbox::tell_every(myself.clone(), interval, || ArchiverMsg::Run(None));
        }
        Ok(ArchiverState { services, obs })
    }

    async fn handle(
        &self,
        _: ActorRef<ArchiverMsg>,
        ArchiverMsg::Run(reply): ArchiverMsg,
        state: &mut ArchiverState,
    ) -> Result<(), ActorProcessingErr> {
        state.obs.handled();
        let result = archive_once(&state.services).await;
        match &result {
            Ok(run) => {
                if run.records > 0 {
                    tracing::info!(
                        objects = run.objects.len(),
                        records = run.records,
                        "archived the event log"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(error = %error.message, "archiving failed; the next run retries");
            }
        }
        state.obs.update(|obs| {
            obs.num_runs += 1;
            obs.last_run_at = Some(common::now_millis());
            match &result {
                Ok(run) => {
                    obs.num_objects += run.objects.len() as u64;
                    obs.num_records += run.records;
                    obs.last_error = None;
                }
                Err(error) => obs.last_error = Some(error.message.clone()),
            }
        });
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
        Ok(())
    }
}

/// `YYYYMMDDHH` (UTC) of an epoch-millisecond time.
pub fn hour_bucket(ms: i64) -> String {
    let (year, month, day, second) = common::utc(ms);
    format!("{year:04}{month:02}{day:02}{:02}", second / 3600)
}

/// Archives everything not archived yet.
pub async fn archive_once(services: &Services) -> Result<ArchiveRun, ApiError> {
    let log = &services.log;
    let objects = services.registry.objects();
    let mut run = ArchiveRun::default();
    for partition in 0..log.num_partitions() {
        let end = *log.high_watermark(partition).borrow();
        let mut from = log
            .committed(ARCHIVE, partition)
            .map_err(ApiError::internal)?;
        while from < end {
            let records = log
                .read(partition, from, MAX_RECORDS_PER_OBJECT)
                .await
                .map_err(ApiError::internal)?;
            let (Some(first), Some(last)) = (records.first(), records.last()) else {
                break;
            };
            let (first, last) = (first.offset, last.offset);
            let key = format!(
                "{PREFIX}{TOPIC}/partition={partition:04}/node={}/hour={}/{first:020}-{last:020}.jsonl.gz",
                services.cluster.node_id(),
                hour_bucket(common::now_millis())
            );
            let bytes = encode(records).map_err(ApiError::internal)?;
            objects.put(&key, bytes).await.map_err(ApiError::from)?;
            log.commit(ARCHIVE, partition, last + 1)
                .map_err(ApiError::internal)?;
            run.records += last - first + 1;
            run.objects.push(key);
            from = last + 1;
        }
    }
    Ok(run)
}

fn encode(records: Vec<Record>) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    for r in records {
        let line = ArchivedRecord {
            partition: r.partition,
            offset: r.offset,
            received_ms: r.received_ms,
            event: r.event,
        };
        serde_json::to_writer(&mut gz, &line)?;
        gz.write_all(b"\n")?;
    }
    gz.finish()
}

/// Every archived record, once, in (partition, node, offset) order. An upload whose answer was
/// lost (the store took it, the network dropped the reply) is retried from the last committed
/// offset with whatever has arrived since, so objects may overlap; a record is its (partition,
/// node, offset), and overlaps read back once. Objects archived before keys named their node
/// count as one node's.
pub async fn read_archive(objects: &dyn ObjectStore) -> Result<Vec<Record>, ApiError> {
    read_archive_of(objects, None).await
}

/// The archived records of one node's log (`Some(node id)`), or of every node's.
pub async fn read_archive_of(
    objects: &dyn ObjectStore,
    only: Option<&str>,
) -> Result<Vec<Record>, ApiError> {
    let mut records = Vec::new();
    for key in objects.list(PREFIX).await.map_err(ApiError::from)? {
        let node = key
            .split('/')
            .find_map(|segment| segment.strip_prefix("node="))
            .unwrap_or_default()
            .to_owned();
        if only.is_some_and(|only| only != node) {
            continue;
        }
        let Some(bytes) = objects.get(&key).await.map_err(ApiError::from)? else {
            continue;
        };
        let mut text = String::new();
        GzDecoder::new(bytes.as_slice())
            .read_to_string(&mut text)
            .map_err(|e| ApiError::internal(format!("archive object {key}: {e}")))?;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let a: ArchivedRecord = serde_json::from_str(line)
                .map_err(|e| ApiError::internal(format!("archive object {key}: {e}")))?;
            let record = Record {
                partition: a.partition,
                offset: a.offset,
                received_ms: a.received_ms,
                event: a.event,
            };
            records.push((node.clone(), record));
        }
    }
    records.sort_by(|(a, x), (b, y)| (x.partition, a, x.offset).cmp(&(y.partition, b, y.offset)));
    records.dedup_by(|(a, x), (b, y)| (x.partition, &*a, x.offset) == (y.partition, &*b, y.offset));
    Ok(records.into_iter().map(|(_, record)| record).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_buckets_are_utc_calendar_hours() {
        assert_eq!(hour_bucket(0), "1970010100");
        assert_eq!(hour_bucket(951_782_400_000), "2000022900"); // a leap day
        assert_eq!(hour_bucket(1_795_545_705_592), "2026112418");
        assert_eq!(hour_bucket(4_102_444_799_000), "2099123123");
    }

    #[tokio::test]
    async fn overlapping_objects_from_a_retried_upload_read_back_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = storage::LocalObjectStore::new(dir.path()).expect("store");
        let record = |offset: u64| Record {
            partition: 0,
            offset,
            received_ms: Some(1_000 + offset as i64),
            event: common::Event {
                event_id: format!("e{offset}"),
                user_id: "u".into(),
                item_id: "i".into(),
                kind: common::EventKind::View,
                value: None,
                ts: 1,
            },
        };
        // The first upload landed though its answer was lost; the retry covers 0..=4.
        for (first, last) in [(0, 2), (0, 4)] {
            let bytes = encode((first..=last).map(record).collect()).expect("encode");
            let key = format!("{PREFIX}{TOPIC}/partition=0000/{first:020}-{last:020}.jsonl.gz");
            objects.put(&key, bytes).await.expect("put");
        }
        let read: Vec<(u64, Option<i64>)> = read_archive(&objects)
            .await
            .expect("read")
            .iter()
            .map(|r| (r.offset, r.received_ms))
            .collect();
        let expected: Vec<(u64, Option<i64>)> =
            (0..5).map(|o| (o, Some(1_000 + o as i64))).collect();
        assert_eq!(read, expected);

        // Another node's log, which held the partition in turn, has offsets of its own: the
        // same numbers are other records, and read back too.
        let bytes = encode((0..=1).map(record).collect()).expect("encode");
        let key = format!(
            "{PREFIX}{TOPIC}/partition=0000/node=n2/hour=2026120700/{:020}-{:020}.jsonl.gz",
            0, 1
        );
        objects.put(&key, bytes).await.expect("put");
        assert_eq!(read_archive(&objects).await.expect("read").len(), 7);
    }
}
