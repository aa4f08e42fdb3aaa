//! Ingestion benchmark: how fast a node takes events from Kafka into session state, beside how
//! fast a bare consumer reads the same topic in the same run.
//!
//! It fills a fresh `user-events` topic (own prefix) with keyed events, times `kcat` (if given)
//! and a bare librdkafka consumer reading it end to end, then starts a `streamrec` node on the
//! topic and times it until every event is applied (sessions written to RocksDB, offsets
//! committed). It prints the figures; it asserts nothing.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Measure Kafka ingestion into session state against a bare consumer")]
struct Args {
    /// Kafka bootstrap servers (loopback).
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The `streamrec` binary to run.
    #[arg(long)]
    streamrec: PathBuf,
    /// A `kcat` to time on the same topic (skipped when not given).
    #[arg(long)]
    kcat: Option<PathBuf>,
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    #[arg(long, default_value_t = 20_000)]
    users: usize,
    #[arg(long, default_value_t = 5_000)]
    items: usize,
    #[arg(long, default_value_t = 12)]
    partitions: i32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let prefix = format!("bench{}.", std::process::id());
    let topic = format!("{prefix}user-events");
    let config = |extra: &[(&str, &str)]| {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &args.brokers);
        for (k, v) in extra {
            c.set(*k, *v);
        }
        c
    };

    let admin: AdminClient<DefaultClientContext> = config(&[]).create()?;
    admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                args.partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await?;

    // Fill the topic.
    let producer: FutureProducer = config(&[
        ("partitioner", "murmur2_random"),
        ("linger.ms", "20"),
        ("queue.buffering.max.messages", "1000000"),
    ])
    .create()?;
    let started = Instant::now();
    let sends = (0..args.events).map(|i| {
        let user = format!("u{}", (i * 7919) % args.users);
        let value = json!({
            "event_id": format!("b{i}"),
            "user_id": user,
            "item_id": format!("i{}", (i * 104_729) % args.items),
            "kind": "view",
        })
        .to_string();
        let producer = &producer;
        let topic = &topic;
        async move {
            producer
                .send(
                    FutureRecord::to(topic).key(&user).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
        }
    });
    let mut results = futures::stream::iter(sends).buffer_unordered(20_000);
    while let Some(result) = results.next().await {
        result?;
    }
    let produce = started.elapsed();
    let n = args.events as f64;
    println!(
        "produced      {:>9} events in {:>7.2} s  {:>9.0} events/s",
        args.events,
        produce.as_secs_f64(),
        n / produce.as_secs_f64()
    );

    // kcat alone, end to end.
    let kcat = match &args.kcat {
        Some(kcat) => {
            let started = Instant::now();
            let out = Command::new(kcat)
                .args([
                    "-C",
                    "-b",
                    &args.brokers,
                    "-t",
                    &topic,
                    "-o",
                    "beginning",
                    "-e",
                    "-q",
                    "-f",
                    "%o\n",
                ])
                .stderr(Stdio::inherit())
                .output()
                .context("running kcat")?;
            let elapsed = started.elapsed();
            let lines = out.stdout.iter().filter(|b| **b == b'\n').count();
            if lines != args.events {
                bail!("kcat read {lines} of {} messages", args.events);
            }
            println!(
                "kcat          {:>9} events in {:>7.2} s  {:>9.0} events/s",
                lines,
                elapsed.as_secs_f64(),
                n / elapsed.as_secs_f64()
            );
            Some(elapsed)
        }
        None => None,
    };

    // A bare librdkafka consumer (what the node's own consumer could reach doing nothing else).
    let consumer: BaseConsumer = config(&[
        ("group.id", &format!("{prefix}bare")),
        ("enable.auto.commit", "false"),
    ])
    .create()?;
    let mut list = TopicPartitionList::new();
    for p in 0..args.partitions {
        list.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let started = Instant::now();
    let mut read = 0;
    while read < args.events {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(_)) => read += 1,
            Some(Err(e)) => bail!("bare consumer: {e}"),
            None => bail!("bare consumer stalled at {read}"),
        }
    }
    let bare = started.elapsed();
    println!(
        "bare consumer {:>9} events in {:>7.2} s  {:>9.0} events/s",
        read,
        bare.as_secs_f64(),
        n / bare.as_secs_f64()
    );

    // The node: from ready to every event applied to session state.
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut node = Command::new(&args.streamrec)
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env(
            "STREAMREC__EVENTS__URL",
            format!("kafka://{}", args.brokers),
        )
        .env("STREAMREC__EVENTS__TOPIC_PREFIX", &prefix)
        .env("STREAMREC__EVENTS__GROUP", format!("{prefix}nodes"))
        .env("STREAMREC__CLUSTER__SECRET", "ingest-bench-cluster-secret")
        .env(
            "STREAMREC__EVENTS__NUM_PARTITIONS",
            args.partitions.to_string(),
        )
        .env("STREAMREC__EVENTS__CONSUME_BATCH", "4096")
        // This measures ingestion; the gateway's token checks are not on its path.
        .env("STREAMREC__AUTH__ENABLED", "false")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting streamrec")?;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            if Instant::now() > deadline {
                bail!("the node never became ready");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        loop {
            let metrics = http
                .get(format!("{base}/metrics"))
                .send()
                .await?
                .text()
                .await?;
            let applied = metrics
                .lines()
                .find_map(|l| l.strip_prefix("streamrec_ingest_events_total "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            if applied >= n {
                return Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!("the node applied only {applied} events in 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    .await;
    let _ = node.kill();
    let _ = node.wait();
    let ingest = result?;
    println!(
        "streamrec     {:>9} events in {:>7.2} s  {:>9.0} events/s (into session state, offsets committed)",
        args.events,
        ingest.as_secs_f64(),
        n / ingest.as_secs_f64()
    );
    println!(
        "{}",
        json!({
            "events": args.events,
            "partitions": args.partitions,
            "kcat_events_per_s": kcat.map(|d| n / d.as_secs_f64()),
            "bare_consumer_events_per_s": n / bare.as_secs_f64(),
            "streamrec_events_per_s": n / ingest.as_secs_f64(),
        })
    );
    Ok(())
}
