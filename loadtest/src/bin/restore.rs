//! Restore benchmark: how long a node takes to restore one partition's sessions from the
//! sessions changelog (what a node that gains a partition does before serving it), beside a
//! bare consumer reading the same records in the same run.
//!
//! It fills one partition of a fresh changelog topic (own prefix) with one state record per
//! session, shaped like a real session (20 recent interactions, 20 item weights), then times
//! (1) a bare librdkafka consumer reading them end to end and (2) `kafka::changelog::
//! read_partition` plus `storage::changelog::Restore` into a fresh RocksDB store, as
//! `actors::handoff::restore` does. It prints the figures; it asserts nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use kafka::Settings;
use kafka::changelog::{ChangelogWriter, read_partition};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use storage::changelog::{ChangeRecord, Changelog, Restore};
use storage::{Db, RocksSessionStore, SessionStore};

#[derive(Parser)]
#[command(about = "Measure restoring a partition's sessions from the changelog")]
struct Args {
    /// Kafka bootstrap servers (loopback).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Sessions in the partition (one state record each).
    #[arg(long, default_value_t = 100_000)]
    sessions: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings {
        brokers: args.brokers.clone(),
        group: format!("restore-bench-{}", std::process::id()),
        prefix: format!("rbench{}.", std::process::id()),
        partitions: 1,
        replication: 1,
        produce_timeout: Duration::from_secs(30),
        session_timeout: Duration::from_secs(10),
        options: Default::default(),
    };
    kafka::ensure_topics(&settings, Duration::from_secs(10))
        .await
        .context("creating the topics")?;
    let writer = ChangelogWriter::new(&settings, "bench-writer".into())?;
    let started = Instant::now();
    let mut bytes = 0;
    for chunk in (0..args.sessions).collect::<Vec<_>>().chunks(2_000) {
        let records = chunk
            .iter()
            .map(|&u| {
                let state = session(u).to_string();
                bytes += state.len();
                ChangeRecord::state(
                    &format!("user{u}"),
                    state.as_bytes(),
                    vec![format!("e{u}")],
                    Some(u as u64 + 1),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        writer.record(records).await?;
    }
    eprintln!(
        "wrote {} session records ({:.1} MiB of state) in {:.1}s",
        args.sessions,
        bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );

    let until = writer.mark(0).await?;
    let bare = bare_read(&settings, until)?;
    let dir = tempfile::tempdir()?;
    let store = Arc::new(RocksSessionStore::new(Arc::new(Db::open(dir.path())?)));
    let restore = Arc::new(Mutex::new(Restore::default()));
    let feed = restore.clone();
    let started = Instant::now();
    let (through, _) = read_partition(
        &settings,
        "bench",
        0,
        0,
        until,
        Duration::from_secs(1800),
        move |record| {
            feed.lock().expect("lock").push(record);
            Ok(())
        },
    )
    .await?;
    let read = started.elapsed();
    anyhow::ensure!(through > until, "read through {through} of {until}");
    let replay = std::mem::take(&mut *restore.lock().expect("lock"));
    // What each state adds to item popularity, as a node reckons it: every item's weight, read
    // from the state's JSON (a node also checks the catalogue and caps each weight).
    let contributions = |state: &[u8]| -> Vec<(String, f64)> {
        let state: serde_json::Value = serde_json::from_slice(state).unwrap_or_default();
        state["items"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(item, w)| Some((item.clone(), w.as_f64()?.clamp(0.0, 5.0))))
            .collect()
    };
    let changed = replay.apply(store.as_ref(), 0, "this-node", 0, &contributions)?;
    let total = started.elapsed();
    anyhow::ensure!(changed.len() == args.sessions, "restored {}", changed.len());
    anyhow::ensure!(store.load("user0")?.is_some(), "user0 restored");
    let per_100k = |d: Duration| d.as_secs_f64() * 100_000.0 / args.sessions as f64;
    println!("sessions              {}", args.sessions);
    println!(
        "bare consumer read    {:>8.2} s   ({:.2} s per 100k)",
        bare.as_secs_f64(),
        per_100k(bare)
    );
    println!(
        "restore: read        {:>8.2} s   ({:.2} s per 100k)",
        read.as_secs_f64(),
        per_100k(read)
    );
    println!(
        "restore: read+apply  {:>8.2} s   ({:.2} s per 100k, {:.2}x the bare read)",
        total.as_secs_f64(),
        per_100k(total),
        total.as_secs_f64() / bare.as_secs_f64()
    );
    Ok(())
}

/// A session like a real one: 20 recent interactions and 20 weighted items.
fn session(user: usize) -> serde_json::Value {
    let items: serde_json::Map<String, serde_json::Value> = (0..20)
        .map(|i| {
            (
                format!("item{}", (user * 7 + i) % 5_000),
                json!(1.0 + i as f64),
            )
        })
        .collect();
    let recent: Vec<serde_json::Value> = (0..20)
        .map(|i| json!({"item_id": format!("item{}", (user * 7 + i) % 5_000), "kind": "view", "ts": 1_796_000_000_000i64 + i as i64}))
        .collect();
    json!({"num_events": 20, "items": items, "recent": recent})
}

/// How long a bare consumer takes to read the partition through offset `until`.
fn bare_read(settings: &Settings, until: u64) -> anyhow::Result<Duration> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", format!("{}.bare", settings.group))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&settings.changelog_topic(), 0, Offset::Beginning)?;
    consumer.assign(&list)?;
    let started = Instant::now();
    let mut next = 0;
    while next <= until as i64 {
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            next = rdkafka::Message::offset(&message?) + 1;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "bare read stalled"
        );
    }
    Ok(started.elapsed())
}
