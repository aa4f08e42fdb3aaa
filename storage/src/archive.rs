//! The event archive's objects: their key layout and their format, written by the archiver
//! (`actors::archiver`) and read back by training and restores.
//!
//! An object is one Parquet file of one node's log, one partition, consecutive offsets:
//!
//! ```text
//! archive/topic=<topic>/partition=<p>/hour=<YYYY-MM-DDTHH>/<node id>-<first offset>-<last offset>.parquet
//! ```
//!
//! The `topic=`, `partition=` and `hour=` segments are Hive-style partitions, so Spark, DuckDB or
//! Athena read the tree as one table (`hour` is when the archiver ran, UTC). Offsets are those of
//! the node's own log, and nodes of a cluster share the object store and may each hold a partition
//! in turn: the node id in the name keeps them from overwriting each other. The offsets are
//! zero-padded to 20 digits, so names sort in log order.
//!
//! One row per event, one column per field, snappy-compressed (every Parquet reader has it):
//!
//! | column | Parquet type |
//! |---|---|
//! | `event_id`, `user_id`, `item_id`, `kind` | `binary (STRING)`, required |
//! | `value` | `double`, optional (absent for kinds without one) |
//! | `ts` | `int64 (TIMESTAMP(MILLIS, UTC))`, required: the event's time, as the client gave it |
//! | `received_ms` | `int64 (TIMESTAMP(MILLIS, UTC))`, optional: when the node's log received it |
//! | `partition` | `int32`, required |
//! | `offset` | `int64`, required: in the node's log |
//!
//! Nothing else is archived: the same fields the gzip'd JSON-lines objects of earlier versions
//! held (`archive/events/<topic>/partition=PPPP/[node=<id>/hour=YYYYMMDDHH/]<first>-<last>.jsonl.gz`),
//! which still read: [`decode`] goes by the key's extension.

use std::io::{Read, Write};
use std::sync::Arc;

use common::{Event, EventKind};
use flate2::Compression as GzLevel;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::Field;
use parquet::schema::parser::parse_message_type;
use serde::{Deserialize, Serialize};

use crate::Record;
use crate::error::{Result, StorageError};

/// Where every archive object is, whatever its format: list this to read the archive.
pub const PREFIX: &str = "archive/";
const PARQUET: &str = ".parquet";
const JSON_LINES: &str = ".jsonl.gz";

/// The Parquet schema of an archive object; the columns in the order [`encode`] writes them.
const SCHEMA: &str = "
message event {
  required binary event_id (STRING);
  required binary user_id (STRING);
  required binary item_id (STRING);
  required binary kind (STRING);
  optional double value;
  required int64 ts (TIMESTAMP(MILLIS,true));
  optional int64 received_ms (TIMESTAMP(MILLIS,true));
  required int32 partition;
  required int64 offset;
}
";

/// The key of the object that holds offsets `first..=last` of `partition` of `node_id`'s log,
/// archived at `now_ms`.
pub fn object_key(
    topic: &str,
    partition: u32,
    now_ms: i64,
    node_id: &str,
    first: u64,
    last: u64,
) -> String {
    format!(
        "{PREFIX}topic={topic}/partition={partition}/hour={}/{node_id}-{first:020}-{last:020}{PARQUET}",
        hour_partition(now_ms)
    )
}

/// `YYYY-MM-DDTHH` (UTC) of an epoch-millisecond time: the `hour=` of a key.
pub fn hour_partition(ms: i64) -> String {
    let (year, month, day, second) = common::utc(ms);
    format!("{year:04}-{month:02}-{day:02}T{:02}", second / 3600)
}

/// Whether `key` names an archive object this version reads (Parquet or the JSON lines of
/// earlier versions).
pub fn is_object(key: &str) -> bool {
    key.starts_with(PREFIX) && (key.ends_with(PARQUET) || key.ends_with(JSON_LINES))
}

/// The node whose log an object holds: from the name of a Parquet object, from the `node=`
/// segment of a JSON-lines one; empty for JSON-lines objects archived before keys named their
/// node.
pub fn node_of(key: &str) -> &str {
    if let Some(name) = key.rsplit('/').next().and_then(|n| n.strip_suffix(PARQUET)) {
        // `<node id>-<first>-<last>`: node ids may hold '-', offsets do not.
        let mut parts = name.rsplitn(3, '-');
        let (_, _, node) = (parts.next(), parts.next(), parts.next());
        return node.unwrap_or_default();
    }
    key.split('/')
        .find_map(|segment| segment.strip_prefix("node="))
        .unwrap_or_default()
}

/// One Parquet object of `records`.
pub fn encode(records: &[Record]) -> Result<Vec<u8>> {
    let schema = Arc::new(parse_message_type(SCHEMA).map_err(encoding)?);
    let properties = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, properties).map_err(encoding)?;
    let mut group = writer.next_row_group().map_err(encoding)?;
    let strings = |f: fn(&Event) -> &str| -> Vec<ByteArray> {
        records
            .iter()
            .map(|r| ByteArray::from(f(&r.event).as_bytes().to_vec()))
            .collect()
    };
    let mut column_index = 0;
    while let Some(mut column) = group.next_column().map_err(encoding)? {
        let written = match column_index {
            0 => column
                .typed::<ByteArrayType>()
                .write_batch(&strings(|e| &e.event_id), None, None),
            1 => column
                .typed::<ByteArrayType>()
                .write_batch(&strings(|e| &e.user_id), None, None),
            2 => column
                .typed::<ByteArrayType>()
                .write_batch(&strings(|e| &e.item_id), None, None),
            3 => column.typed::<ByteArrayType>().write_batch(
                &strings(|e| e.kind.as_str()),
                None,
                None,
            ),
            4 => {
                let values: Vec<f64> = records.iter().filter_map(|r| r.event.value).collect();
                let defined: Vec<i16> = records
                    .iter()
                    .map(|r| i16::from(r.event.value.is_some()))
                    .collect();
                column
                    .typed::<DoubleType>()
                    .write_batch(&values, Some(&defined), None)
            }
            5 => {
                let ts: Vec<i64> = records.iter().map(|r| r.event.ts).collect();
                column.typed::<Int64Type>().write_batch(&ts, None, None)
            }
            6 => {
                let received: Vec<i64> = records.iter().filter_map(|r| r.received_ms).collect();
                let defined: Vec<i16> = records
                    .iter()
                    .map(|r| i16::from(r.received_ms.is_some()))
                    .collect();
                column
                    .typed::<Int64Type>()
                    .write_batch(&received, Some(&defined), None)
            }
            7 => {
                let partitions = records
                    .iter()
                    .map(|r| i32::try_from(r.partition))
                    .collect::<std::result::Result<Vec<i32>, _>>()
                    .map_err(encoding)?;
                column
                    .typed::<Int32Type>()
                    .write_batch(&partitions, None, None)
            }
            8 => {
                let offsets = records
                    .iter()
                    .map(|r| i64::try_from(r.offset))
                    .collect::<std::result::Result<Vec<i64>, _>>()
                    .map_err(encoding)?;
                column
                    .typed::<Int64Type>()
                    .write_batch(&offsets, None, None)
            }
            _ => {
                return Err(encoding(
                    "the archive schema has a column encode does not write",
                ));
            }
        };
        written.map_err(encoding)?;
        column.close().map_err(encoding)?;
        column_index += 1;
    }
    group.close().map_err(encoding)?;
    writer.into_inner().map_err(encoding)
}

/// The records of the object at `key`, by its extension: Parquet, or the gzip'd JSON lines of
/// earlier versions. A key of neither holds none.
pub fn decode(key: &str, bytes: Vec<u8>) -> Result<Vec<Record>> {
    let records = if key.ends_with(PARQUET) {
        decode_parquet(bytes)
    } else if key.ends_with(JSON_LINES) {
        decode_json_lines(&bytes)
    } else {
        Ok(Vec::new())
    };
    records.map_err(|e| StorageError::Corrupt(format!("archive object {key}: {e}")))
}

fn decode_parquet(bytes: Vec<u8>) -> std::result::Result<Vec<Record>, String> {
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).map_err(|e| e.to_string())?;
    let rows = reader.metadata().file_metadata().num_rows();
    let mut records = Vec::with_capacity(usize::try_from(rows).unwrap_or_default());
    for row in reader.get_row_iter(None).map_err(|e| e.to_string())? {
        let row = row.map_err(|e| e.to_string())?;
        let (mut event_id, mut user_id, mut item_id, mut kind) = (None, None, None, None);
        let (mut value, mut ts, mut received_ms, mut partition, mut offset) =
            (None, None, None, None, None);
        // By name: a later version may add columns, which this one ignores.
        for (name, field) in row.into_columns() {
            match (name.as_str(), field) {
                ("event_id", Field::Str(s)) => event_id = Some(s),
                ("user_id", Field::Str(s)) => user_id = Some(s),
                ("item_id", Field::Str(s)) => item_id = Some(s),
                ("kind", Field::Str(s)) => {
                    kind = Some(EventKind::parse(&s).ok_or(format!("unknown kind {s:?}"))?)
                }
                ("value", Field::Double(v)) => value = Some(v),
                ("ts", Field::TimestampMillis(t) | Field::Long(t)) => ts = Some(t),
                ("received_ms", Field::TimestampMillis(t) | Field::Long(t)) => {
                    received_ms = Some(t)
                }
                ("partition", Field::Int(p)) => {
                    partition = Some(u32::try_from(p).map_err(|e| e.to_string())?)
                }
                ("offset", Field::Long(o)) => {
                    offset = Some(u64::try_from(o).map_err(|e| e.to_string())?)
                }
                _ => {}
            }
        }
        let missing = |column: &str| format!("a row without {column}");
        records.push(Record {
            partition: partition.ok_or_else(|| missing("partition"))?,
            offset: offset.ok_or_else(|| missing("offset"))?,
            received_ms,
            event: Event {
                event_id: event_id.ok_or_else(|| missing("event_id"))?,
                user_id: user_id.ok_or_else(|| missing("user_id"))?,
                item_id: item_id.ok_or_else(|| missing("item_id"))?,
                kind: kind.ok_or_else(|| missing("kind"))?,
                value,
                ts: ts.ok_or_else(|| missing("ts"))?,
            },
        });
    }
    Ok(records)
}

/// One line of a JSON-lines object.
#[derive(Serialize, Deserialize)]
struct ArchivedRecord {
    partition: u32,
    offset: u64,
    /// When the node's log received the event; absent in the oldest objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    received_ms: Option<i64>,
    event: Event,
}

fn decode_json_lines(bytes: &[u8]) -> std::result::Result<Vec<Record>, String> {
    let mut text = String::new();
    GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let a: ArchivedRecord = serde_json::from_str(line).map_err(|e| e.to_string())?;
            Ok(Record {
                partition: a.partition,
                offset: a.offset,
                received_ms: a.received_ms,
                event: a.event,
            })
        })
        .collect()
}

/// One gzip'd JSON-lines object of `records`, as versions before Parquet wrote them: for tests
/// that the archive still reads them.
pub fn encode_json_lines(records: &[Record]) -> Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), GzLevel::default());
    for r in records {
        let line = ArchivedRecord {
            partition: r.partition,
            offset: r.offset,
            received_ms: r.received_ms,
            event: r.event.clone(),
        };
        serde_json::to_writer(&mut gz, &line)?;
        gz.write_all(b"\n")?;
    }
    Ok(gz.finish()?)
}

fn encoding(error: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(format!("parquet: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64, value: Option<f64>, received_ms: Option<i64>) -> Record {
        Record {
            partition: 3,
            offset,
            received_ms,
            event: Event {
                event_id: format!("e{offset}"),
                user_id: format!("u{}", offset % 7),
                item_id: format!("ïtem-{}", offset % 11),
                kind: EventKind::ALL[offset as usize % EventKind::ALL.len()],
                value,
                ts: 1_796_000_000_000 + offset as i64,
            },
        }
    }

    fn sample() -> Vec<Record> {
        (0..1_000)
            .map(|o| {
                let value = (o % 3 == 0).then_some(o as f64 / 2.0);
                let received = (o % 5 != 0).then_some(1_796_000_000_500 + o as i64);
                record(o, value, received)
            })
            .collect()
    }

    #[test]
    fn archive_parquet_round_trips_every_field() {
        let records = sample();
        let bytes = encode(&records).expect("encode");
        assert_eq!(&bytes[..4], b"PAR1");
        let key = object_key("user-events", 3, 0, "n-1.a", 0, 999);
        assert_eq!(decode(&key, bytes).expect("decode"), records);
    }

    #[test]
    fn archive_parquet_schema_has_logical_types() {
        let bytes = encode(&sample()).expect("encode");
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).expect("reader");
        let metadata = reader.metadata().file_metadata();
        assert_eq!(metadata.num_rows(), 1_000);
        let schema = metadata.schema_descr();
        let names: Vec<&str> = schema.columns().iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            [
                "event_id",
                "user_id",
                "item_id",
                "kind",
                "value",
                "ts",
                "received_ms",
                "partition",
                "offset"
            ]
        );
        let ts = schema.column(5);
        assert_eq!(
            ts.logical_type_ref(),
            Some(&parquet::basic::LogicalType::timestamp(
                true,
                parquet::basic::TimeUnit::MILLIS
            ))
        );
        assert!(matches!(
            schema.column(0).logical_type_ref(),
            Some(parquet::basic::LogicalType::String)
        ));
        let group = reader.metadata().row_group(0);
        assert_eq!(group.column(0).compression(), Compression::SNAPPY);
    }

    #[test]
    fn archive_json_lines_of_earlier_versions_still_read() {
        let mut records = sample();
        // The oldest objects have no receive times.
        records[0].received_ms = None;
        let bytes = encode_json_lines(&records).expect("encode");
        let key = "archive/events/user-events/partition=0003/node=n1/hour=2026120721/\
                   00000000000000000000-00000000000000000999.jsonl.gz";
        assert_eq!(decode(key, bytes).expect("decode"), records);
        // A line as the oldest version wrote it, without `received_ms`.
        let line = br#"{"partition":0,"offset":4,"event":{"event_id":"e","user_id":"u","item_id":"i","kind":"view","ts":1}}"#;
        let mut gz = GzEncoder::new(Vec::new(), GzLevel::default());
        gz.write_all(line).expect("write");
        let old = decode(
            "archive/events/user-events/partition=0000/x.jsonl.gz",
            gz.finish().expect("gz"),
        )
        .expect("decode");
        assert_eq!(old.len(), 1);
        assert_eq!((old[0].offset, old[0].received_ms), (4, None));
    }

    #[test]
    fn archive_keys_are_hive_style_and_name_their_node() {
        let key = object_key("user-events", 3, 1_796_677_200_000, "node-a.1", 5, 17);
        assert_eq!(
            key,
            "archive/topic=user-events/partition=3/hour=2026-12-07T21/\
             node-a.1-00000000000000000005-00000000000000000017.parquet"
        );
        assert!(is_object(&key));
        assert_eq!(node_of(&key), "node-a.1");
        assert_eq!(
            node_of(
                "archive/events/user-events/partition=0000/node=n2/hour=2026120700/a-b.jsonl.gz"
            ),
            "n2"
        );
        assert_eq!(
            node_of("archive/events/user-events/partition=0000/a-b.jsonl.gz"),
            ""
        );
        assert!(!is_object("archive/topic=user-events/_SUCCESS"));
        assert_eq!(hour_partition(0), "1970-01-01T00");
        assert_eq!(hour_partition(951_782_400_000), "2000-02-29T00"); // a leap day
        assert_eq!(hour_partition(4_102_444_799_000), "2099-12-31T23");
    }

    #[test]
    fn archive_corrupt_parquet_is_an_error_naming_the_object() {
        let mut bytes = encode(&sample()).expect("encode");
        bytes.truncate(bytes.len() / 2);
        let error = decode("archive/topic=t/x-1-2.parquet", bytes).expect_err("corrupt");
        assert!(error.to_string().contains("x-1-2.parquet"), "{error}");
    }
}
