//! Load generator for a streamrec node: concurrent `GET` recommendations and `POST /v1/events`
//! for a fixed time, latency recorded in HDR histograms, figures printed (p50/p99/p999, max,
//! throughput) as text and JSON. It asserts nothing; it measures.
//!
//! It only targets loopback addresses: load tests never leave the machine.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

#[derive(Parser, Clone)]
#[command(
    about = "Drive a streamrec node with concurrent reads and writes and print latency figures"
)]
struct Args {
    /// Base URL of the node (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Share of requests that post an event (the rest read recommendations).
    #[arg(long, default_value_t = 0.2)]
    write_ratio: f64,
    /// Distinct users and items to draw from.
    #[arg(long, default_value_t = 5000)]
    users: usize,
    #[arg(long, default_value_t = 2000)]
    items: usize,
    /// Seed the node first: catalog, history events and a training run.
    #[arg(long)]
    seed: bool,
    /// Stop after this many requests in total even if time remains.
    #[arg(long, default_value_t = 5_000_000)]
    max_requests: u64,
    /// A bearer token sent with every request (admin, for seeding and training).
    #[arg(long, env = "STREAMREC_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

struct Stats {
    reads: Histogram<u64>,
    writes: Histogram<u64>,
    errors: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn check_loopback(target: &str) -> anyhow::Result<()> {
    let url = reqwest::Url::parse(target).context("invalid --target")?;
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("--target must be a loopback address (127.0.0.0/8, ::1 or localhost), not {host}");
    }
    Ok(())
}

async fn seed(client: &reqwest::Client, args: &Args) -> anyhow::Result<()> {
    eprintln!("seeding {} items and history ...", args.items);
    for i in 0..args.items {
        let body = json!({"title": format!("item {i}"), "categories": [format!("c{}", i % 20)]});
        client
            .put(format!("{}/v1/items/i{i}", args.target))
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
    }
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..50 {
        let events: Vec<_> = (0..1000)
            .map(|_| {
                let user = rng.random_range(0..args.users);
                let item = (user % 20) + 20 * rng.random_range(0..args.items / 20);
                json!({"user_id": format!("u{user}"), "item_id": format!("i{item}"), "kind": "click"})
            })
            .collect();
        client
            .post(format!("{}/v1/events", args.target))
            .json(&json!({ "events": events }))
            .send()
            .await?
            .error_for_status()?;
    }
    client
        .post(format!("{}/v1/admin/train", args.target))
        .send()
        .await?
        .error_for_status()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let models: serde_json::Value = client
            .get(format!("{}/v1/admin/models", args.target))
            .send()
            .await?
            .json()
            .await?;
        if models["versions"].as_array().is_some_and(|v| v.len() >= 2) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("training did not finish within 300 s")
}

async fn worker(
    id: usize,
    client: reqwest::Client,
    args: Arc<Args>,
    deadline: Instant,
    budget: u64,
) -> Stats {
    let mut rng = StdRng::seed_from_u64(id as u64 + 100);
    let mut stats = Stats {
        reads: histogram(),
        writes: histogram(),
        errors: 0,
    };
    let mut done = 0;
    while Instant::now() < deadline && done < budget {
        done += 1;
        let user = rng.random_range(0..args.users);
        let write = rng.random_bool(args.write_ratio.clamp(0.0, 1.0));
        let started = Instant::now();
        let result = if write {
            let item = rng.random_range(0..args.items);
            let body = json!({"events": [{"user_id": format!("u{user}"), "item_id": format!("i{item}"), "kind": "view"}]});
            client
                .post(format!("{}/v1/events", args.target))
                .json(&body)
                .send()
                .await
        } else {
            client
                .get(format!(
                    "{}/v1/users/u{user}/recommendations?k=20",
                    args.target
                ))
                .send()
                .await
        };
        let ok = match result {
            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        let micros = started.elapsed().as_micros() as u64;
        if !ok {
            stats.errors += 1;
        }
        let h = if write {
            &mut stats.writes
        } else {
            &mut stats.reads
        };
        let _ = h.record(micros.max(1));
    }
    stats
}

fn line(name: &str, h: &Histogram<u64>, seconds: f64) -> serde_json::Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{name:<16} {:>9} req  {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p999 {:>7.2} ms  max {:>7.2} ms",
        h.len(),
        h.len() as f64 / seconds,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
    json!({"requests": h.len(), "rps": h.len() as f64 / seconds, "p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999), "max_ms": h.max() as f64 / 1000.0})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    check_loopback(&args.target)?;
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &args.token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .default_headers(headers)
        .build()?;
    if args.seed {
        seed(&client, &args).await?;
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let budget = args.max_requests / args.concurrency.max(1) as u64;
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|i| tokio::spawn(worker(i, client.clone(), args.clone(), deadline, budget)))
        .collect();
    let mut total = Stats {
        reads: histogram(),
        writes: histogram(),
        errors: 0,
    };
    for task in futures::future::join_all(tasks).await {
        let s = task?;
        total.reads.add(&s.reads)?;
        total.writes.add(&s.writes)?;
        total.errors += s.errors;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut all = total.reads.clone();
    all.add(&total.writes)?;
    println!(
        "streamrec load test: {} clients, {:.1} s, write ratio {}",
        args.concurrency, seconds, args.write_ratio
    );
    let report = json!({
        "concurrency": args.concurrency,
        "seconds": seconds,
        "errors": total.errors,
        "recommendations": line("GET recs", &total.reads, seconds),
        "events": line("POST events", &total.writes, seconds),
        "all": line("all", &all, seconds),
    });
    println!("errors           {}", total.errors);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
