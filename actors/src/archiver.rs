//! The archiver: copies the event log to the object store, hourly by default
//! (`objects.archive_interval`). For each partition it writes the records from its own committed
//! offset (consumer group `archive`) to the end of the log as Parquet objects (at most
//! 50,000 records each), Hive-style so that Spark, DuckDB or Athena read the tree directly,
//! `archive/topic=user-events/partition=<p>/hour=<YYYY-MM-DDTHH>/<node id>-<first>-<last>.parquet`
//! (layout and schema: `storage::archive`), and commits only after the object is stored: a crash
//! rewrites at most one object, never skips records. Offsets are those of the node's own log, so
//! the node id in the key keeps the nodes of a cluster (which share the object store, and may
//! each have held a partition in turn) from overwriting each other. [`read_archive`] reads it all
//! back (training, restores), the gzip'd JSON-lines objects of earlier versions too, with each
//! record's receive time, so an erased user's tombstone still applies to records from any node's
//! log.

use std::sync::Arc;

use common::ApiError;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use storage::{ARCHIVE, ObjectStore, Record, archive};

use crate::Services;
use crate::mailbox;
use crate::obs::Observed;

/// The topic name archived objects carry (the embedded log holds the `user-events` stream).
pub const TOPIC: &str = "user-events";
/// Most records in one archive object.
const MAX_RECORDS_PER_OBJECT: usize = 50_000;

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
            let key = archive::object_key(
                TOPIC,
                partition,
                common::now_millis(),
                services.cluster.node_id(),
                first,
                last,
            );
            let bytes = archive::encode(&records).map_err(ApiError::internal)?;
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
    for key in objects
        .list(archive::PREFIX)
        .await
        .map_err(ApiError::from)?
    {
        if !archive::is_object(&key) {
            continue;
        }
        let node = archive::node_of(&key).to_owned();
        if only.is_some_and(|only| only != node) {
            continue;
        }
        let Some(bytes) = objects.get(&key).await.map_err(ApiError::from)? else {
            continue;
        };
        let decoded = archive::decode(&key, bytes).map_err(ApiError::internal)?;
        records.extend(decoded.into_iter().map(|record| (node.clone(), record)));
    }
    records.sort_by(|(a, x), (b, y)| (x.partition, a, x.offset).cmp(&(y.partition, b, y.offset)));
    records.dedup_by(|(a, x), (b, y)| (x.partition, &*a, x.offset) == (y.partition, &*b, y.offset));
    Ok(records.into_iter().map(|(_, record)| record).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64) -> Record {
        Record {
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
        }
    }

    #[tokio::test]
    async fn overlapping_archive_objects_from_a_retried_upload_read_back_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = storage::LocalObjectStore::new(dir.path()).expect("store");
        // The first upload landed though its answer was lost; the retry, an hour later, covers
        // 0..=4.
        for (first, last, now) in [(0, 2, 0), (0, 4, 3_600_000)] {
            let records: Vec<Record> = (first..=last).map(record).collect();
            let bytes = archive::encode(&records).expect("encode");
            let key = archive::object_key(TOPIC, 0, now, "n1", first, last);
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
        let bytes = archive::encode(&[record(0), record(1)]).expect("encode");
        let key = archive::object_key(TOPIC, 0, 0, "n2", 0, 1);
        objects.put(&key, bytes).await.expect("put");
        assert_eq!(read_archive(&objects).await.expect("read").len(), 7);
        assert_eq!(
            read_archive_of(&objects, Some("n2"))
                .await
                .expect("read")
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn archive_json_lines_objects_of_earlier_versions_read_beside_parquet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let objects = storage::LocalObjectStore::new(dir.path()).expect("store");
        // Before Parquet: n1 archived 0..=2 as JSON lines (and, earlier still, a node-less
        // object); then Parquet from 3 on.
        let legacy = [
            (
                "archive/events/user-events/partition=0000/node=n1/hour=2026120700/\
                 00000000000000000000-00000000000000000002.jsonl.gz",
                0..=2,
            ),
            (
                "archive/events/user-events/partition=0000/\
                 00000000000000000000-00000000000000000001.jsonl.gz",
                0..=1,
            ),
        ];
        for (key, offsets) in legacy {
            let records: Vec<Record> = offsets.map(record).collect();
            let bytes = storage::archive::encode_json_lines(&records).expect("encode");
            objects.put(key, bytes).await.expect("put");
        }
        let records: Vec<Record> = (3..=5).map(record).collect();
        let key = archive::object_key(TOPIC, 0, 0, "n1", 3, 5);
        objects
            .put(&key, archive::encode(&records).expect("encode"))
            .await
            .expect("put");
        let of_n1: Vec<u64> = read_archive_of(&objects, Some("n1"))
            .await
            .expect("read")
            .iter()
            .map(|r| r.offset)
            .collect();
        assert_eq!(of_n1, [0, 1, 2, 3, 4, 5]);
        assert_eq!(read_archive(&objects).await.expect("read").len(), 8);
    }
}
