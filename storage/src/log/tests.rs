//! The log's tests: appends, reads and dedupe; reopening after a torn tail or a failed batch
//! (through the writer's fault seam); retention.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::Ordering;

use super::record::{list_segments, segment_path};
use super::writer::Fault;
use super::*;
use common::EventKind;

fn event(user: &str, id: &str) -> Event {
    Event {
        event_id: id.into(),
        user_id: user.into(),
        item_id: "i".into(),
        kind: EventKind::View,
        value: None,
        ts: 1,
    }
}

fn open_with(dir: &Path, options: LogOptions) -> FileEventLog {
    let db = Arc::new(Db::open(&dir.join("db")).expect("db"));
    FileEventLog::open_with(&dir.join("log"), options, db).expect("log")
}

fn open(dir: &Path) -> FileEventLog {
    open_with(dir, LogOptions::new(4, true))
}

/// Segments of a few records each.
fn small_segments() -> LogOptions {
    LogOptions {
        segment_bytes: 300,
        ..LogOptions::new(4, true)
    }
}

async fn ids(log: &FileEventLog, p: u32) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    scan(log, p, 0, |r| {
        out.push((r.offset, r.event.event_id));
        Ok::<_, StorageError>(())
    })
    .await
    .expect("scan");
    out
}

/// `(offset, id)` of `names` written from `first` on, one offset after another.
fn expected(first: u64, names: &[&str]) -> Vec<(u64, String)> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| (first + i as u64, (*n).to_owned()))
        .collect()
}

#[tokio::test]
async fn appends_reads_and_deduplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open(dir.path());
    let events: Vec<_> = (0..1500)
        .map(|i| event("alice", &format!("e{i}")))
        .collect();
    let outcome = log.append(events.clone()).await.expect("append");
    assert_eq!(
        outcome,
        AppendOutcome {
            accepted: 1500,
            duplicates: 0
        }
    );
    let again = log
        .append(vec![events[3].clone(), events[3].clone()])
        .await
        .expect("append");
    assert_eq!(
        again,
        AppendOutcome {
            accepted: 0,
            duplicates: 2
        }
    );

    let p = partition_for("alice", 4);
    let records = log.read(p, 1000, 100).await.expect("read");
    assert_eq!(records.len(), 100);
    assert_eq!(records[0].offset, 1000);
    assert_eq!(records[0].event.event_id, "e1000");
    assert!(records[0].received_ms.is_some());
    assert!(log.read(p, 1500, 10).await.expect("read").is_empty());
}

#[tokio::test]
async fn survives_reopen_and_truncates_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = partition_for("bob", 4);
    {
        let log = open(dir.path());
        log.append((0..10).map(|i| event("bob", &format!("e{i}"))).collect())
            .await
            .expect("append");
        log.commit(INGEST, p, 4).expect("commit");
    }
    // A crash in the middle of a write leaves half a record behind.
    let seg = segment_path(&dir.path().join("log").join(format!("p{p:04}")), 0);
    let mut f = OpenOptions::new().append(true).open(&seg).expect("segment");
    f.write_all(&[9, 0, 0, 0, 1, 2]).expect("write");
    drop(f);

    let log = open(dir.path());
    assert_eq!(*log.high_watermark(p).borrow(), 10);
    assert_eq!(log.committed(INGEST, p).expect("committed"), 4);
    let outcome = log.append(vec![event("bob", "e10")]).await.expect("append");
    assert_eq!(outcome.accepted, 1);
    let all = log.read(p, 0, 100).await.expect("read");
    assert_eq!(
        all.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (0..11).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn records_written_before_receive_times_still_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = partition_for("old", 4);
    let pdir = dir.path().join("log").join(format!("p{p:04}"));
    std::fs::create_dir_all(&pdir).expect("mkdir");
    // The earlier format: `[len][crc(offset, payload)][offset][payload]`.
    let mut old = Vec::new();
    for (offset, id) in [(0u64, "o0"), (1, "o1")] {
        let payload = serde_json::to_vec(&event("old", id)).expect("json");
        let mut crc = crc32fast::Hasher::new();
        crc.update(&offset.to_le_bytes());
        crc.update(&payload);
        old.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        old.extend_from_slice(&crc.finalize().to_le_bytes());
        old.extend_from_slice(&offset.to_le_bytes());
        old.extend_from_slice(&payload);
    }
    std::fs::write(segment_path(&pdir, 0), old).expect("write");

    let log = open(dir.path());
    log.append(vec![event("old", "n2")]).await.expect("append");
    let records = log.read(p, 0, 10).await.expect("read");
    let got: Vec<_> = records
        .iter()
        .map(|r| (r.offset, r.event.event_id.as_str(), r.received_ms.is_some()))
        .collect();
    assert_eq!(got, [(0, "o0", false), (1, "o1", false), (2, "n2", true)]);
}

#[tokio::test]
async fn a_failed_id_write_leaves_the_log_as_before_and_it_reopens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = partition_for("alice", 4);
    {
        let log = open(dir.path());
        log.append(vec![event("alice", "a0"), event("alice", "a1")])
            .await
            .expect("append");
        log.faults[p as usize].arm(Fault::Ids);
        log.append(vec![event("alice", "lost")])
            .await
            .expect_err("the ids write fails");
        assert_eq!(*log.high_watermark(p).borrow(), 2);
        let outcome = log
            .append(vec![event("alice", "a2")])
            .await
            .expect("append");
        assert_eq!(outcome.accepted, 1);
        assert_eq!(ids(&log, p).await, expected(0, &["a0", "a1", "a2"]));
    }
    let log = open(dir.path());
    assert_eq!(ids(&log, p).await, expected(0, &["a0", "a1", "a2"]));
    // Never acknowledged, never recorded: a retry is a new event.
    let retry = log
        .append(vec![event("alice", "lost")])
        .await
        .expect("append");
    assert_eq!(retry.accepted, 1);
    assert_eq!(ids(&log, p).await, expected(0, &["a0", "a1", "a2", "lost"]));
}

#[tokio::test]
async fn a_failed_write_or_fsync_is_cut_off_even_when_the_cut_fails_at_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = partition_for("carol", 4);
    {
        let log = open(dir.path());
        log.append(vec![event("carol", "c0")])
            .await
            .expect("append");
        let faults = &log.faults[p as usize];
        faults.arm(Fault::Write);
        log.append(vec![event("carol", "half")])
            .await
            .expect_err("the write stops half-way");
        faults.arm(Fault::Sync);
        log.append(vec![event("carol", "unsynced")])
            .await
            .expect_err("the fsync fails");
        // Half a batch reaches the file, and the disk refuses to cut it off at once.
        faults.arm(Fault::Write);
        faults.arm(Fault::Truncate);
        log.append(vec![event("carol", "stuck")])
            .await
            .expect_err("the write stops half-way");
        log.append(vec![event("carol", "c1"), event("carol", "c2")])
            .await
            .expect("append");
        assert_eq!(ids(&log, p).await, expected(0, &["c0", "c1", "c2"]));
    }
    let log = open(dir.path());
    assert_eq!(ids(&log, p).await, expected(0, &["c0", "c1", "c2"]));
    log.append(vec![event("carol", "c3")])
        .await
        .expect("append");
    assert_eq!(ids(&log, p).await, expected(0, &["c0", "c1", "c2", "c3"]));
}

#[tokio::test]
async fn a_failed_roll_leaves_the_writer_on_its_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = partition_for("dave", 4);
    let mut names = Vec::new();
    {
        let log = open_with(dir.path(), small_segments());
        // One record per batch until the segment is full and the roll fails.
        log.faults[p as usize].arm(Fault::Roll);
        loop {
            let name = format!("d{}", names.len());
            match log.append(vec![event("dave", &name)]).await {
                Ok(_) => names.push(name),
                Err(_) => break,
            }
            assert!(names.len() < 50, "no roll was due");
        }
        assert_eq!(log.partitions[p as usize].active.load(Ordering::Acquire), 0);
        let full = names.len();
        assert_eq!(*log.high_watermark(p).borrow(), full as u64);
        for _ in 0..5 {
            let name = format!("d{}", names.len());
            log.append(vec![event("dave", &name)])
                .await
                .expect("append");
            names.push(name);
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(ids(&log, p).await, expected(0, &names));
        // A consumer reading from where the roll failed finds what came after it.
        let tail: Vec<(u64, String)> = log
            .read(p, full as u64, 100)
            .await
            .expect("read after the failed roll")
            .into_iter()
            .map(|r| (r.offset, r.event.event_id))
            .collect();
        assert_eq!(tail, expected(full as u64, &names[full..]));
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let log = open_with(dir.path(), small_segments());
    assert_eq!(ids(&log, p).await, expected(0, &names));
    log.append(vec![event("dave", "last")])
        .await
        .expect("append");
    let n = names.len() as u64;
    assert_eq!(ids(&log, p).await.last(), Some(&(n, "last".to_owned())));
}

#[tokio::test]
async fn a_crash_between_the_segment_and_the_ids_keeps_the_batch_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = partition_for("erin", 4);
    {
        let log = open(dir.path());
        log.append(vec![event("erin", "e0")]).await.expect("append");
        // The ids write fails and so does the cut: the records stay, as after a crash
        // between the two writes.
        log.faults[p as usize].arm(Fault::Ids);
        log.faults[p as usize].arm(Fault::Truncate);
        log.append(vec![event("erin", "e1")])
            .await
            .expect_err("the ids write fails");
    }
    let log = open(dir.path());
    assert_eq!(ids(&log, p).await, expected(0, &["e0", "e1"]));
    let retry = log.append(vec![event("erin", "e1")]).await.expect("append");
    assert_eq!(retry.duplicates, 1, "the batch stands whole, ids included");
}

/// Sets the last-write time of every segment of `dir` below `end` to `at`.
fn age_segments(dir: &Path, end: u64, at: SystemTime) {
    for base in list_segments(dir).expect("ls") {
        if base < end {
            File::options()
                .write(true)
                .open(segment_path(dir, base))
                .expect("open")
                .set_modified(at)
                .expect("set mtime");
        }
    }
}

#[tokio::test]
async fn retention_deletes_old_segments_every_group_committed_and_nothing_newer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let day = Duration::from_secs(86_400);
    let options = LogOptions {
        retention: 7 * day,
        retention_groups: vec![INGEST.into(), ARCHIVE.into()],
        ..small_segments()
    };
    let p = partition_for("frank", 4);
    let names: Vec<String> = (0..30).map(|i| format!("f{i}")).collect();
    let log = open_with(dir.path(), options.clone());
    for name in &names {
        log.append(vec![event("frank", name)])
            .await
            .expect("append");
    }
    let pdir = log.partitions[p as usize].dir.clone();
    let bases = list_segments(&pdir).expect("ls");
    assert!(bases.len() >= 6, "{bases:?}");
    let now = SystemTime::now();
    // Segments 0..3 are old; from segment 3 on they were written recently.
    age_segments(&pdir, bases[3], now - 8 * day);
    // Ingest is done with everything, the archive up to inside segment 2.
    log.commit(INGEST, p, 30).expect("commit");
    log.commit(ARCHIVE, p, bases[2] + 1).expect("commit");
    assert_eq!(log.enforce_retention(now).expect("retention"), 2);
    assert_eq!(list_segments(&pdir).expect("ls"), bases[2..]);
    assert_eq!(log.first_offset(p), bases[2]);
    // The archive catches up: the third old segment goes, the recent ones stay.
    log.commit(ARCHIVE, p, 30).expect("commit");
    assert_eq!(log.enforce_retention(now).expect("retention"), 1);
    assert_eq!(list_segments(&pdir).expect("ls"), bases[3..]);
    // Everything old and committed: all but the active segment go.
    age_segments(&pdir, u64::MAX, now - 8 * day);
    log.enforce_retention(now).expect("retention");
    let active = log.partitions[p as usize].active.load(Ordering::Acquire);
    assert_eq!(list_segments(&pdir).expect("ls"), [active]);

    // Reading from 0 starts at the first offset kept; the log reopens and goes on.
    let kept: Vec<(u64, String)> = (active..30).map(|o| (o, format!("f{o}"))).collect();
    assert_eq!(ids(&log, p).await, kept);
    drop(log);
    let log = open_with(dir.path(), options);
    assert_eq!(log.first_offset(p), active);
    log.append(vec![event("frank", "f30")])
        .await
        .expect("append");
    assert_eq!(ids(&log, p).await.last(), Some(&(30, "f30".to_owned())));
    // Other partitions, never written, lost nothing.
    assert_eq!(log.first_offset((p + 1) % 4), 0);
}

#[tokio::test]
async fn retention_off_or_young_segments_delete_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = partition_for("gina", 4);
    let log = open_with(dir.path(), small_segments());
    for i in 0..12 {
        log.append(vec![event("gina", &format!("g{i}"))])
            .await
            .expect("append");
    }
    log.commit(INGEST, p, 12).expect("commit");
    let pdir = log.partitions[p as usize].dir.clone();
    let bases = list_segments(&pdir).expect("ls");
    age_segments(
        &pdir,
        u64::MAX,
        SystemTime::now() - Duration::from_secs(1_000_000),
    );
    // Retention is off (zero) in these options.
    assert_eq!(log.enforce_retention(SystemTime::now()).expect("ok"), 0);
    drop(log);
    let log = open_with(
        dir.path(),
        LogOptions {
            retention: Duration::from_secs(2_000_000),
            ..small_segments()
        },
    );
    assert_eq!(log.enforce_retention(SystemTime::now()).expect("ok"), 0);
    assert_eq!(list_segments(&pdir).expect("ls"), bases);
}
