//! `streamrec`: the node binary. Thin on purpose: parse the command line, load configuration,
//! start telemetry and the node, serve HTTP, shut down gracefully on SIGTERM or Ctrl-C.

mod bulk;
mod demo;
mod import;
mod inspect;
mod served;
mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use common::Config;
use models::movielens::eval;
use supervisors::Node;

/// mimalloc rather than glibc's allocator: the request path allocates many small, short-lived
/// buffers from both worker threads, and glibc's malloc/free were 12% of a cached read's CPU
/// under load (`BENCH_PERF_DIR=... scripts/bench.sh`); with mimalloc 6.5%, and cached reads
/// went from 19,970 to 24,886 req/s, the mixed load from 2,243 to 3,127.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "streamrec",
    version,
    about = "Real-time recommendations from a stream of user events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct NodeOpts {
    /// A TOML configuration file; `STREAMREC__SECTION__KEY` environment variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Where the node keeps its data (overrides `data_dir`).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve {
        #[command(flatten)]
        node: NodeOpts,
        /// Address to listen on (overrides `server.listen`).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run a node with a synthetic catalog and a live stream of synthetic events.
    Demo {
        #[command(flatten)]
        node: NodeOpts,
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Synthetic events per second in the live stream.
        #[arg(long, default_value_t = 20)]
        rate: u32,
    },
    /// Import a data set: MovieLens into this node's stores, or JSON lines of items, profiles or
    /// events into a running node.
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
    /// Stream a running node's items, profiles (decrypted: needs the `admin` role) or events
    /// (those in its log) as JSON lines, in the format `import` reads.
    Export {
        dataset: bulk::Dataset,
        /// Write here (complete or not at all) instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Train a model on the events in the store and make it the active version.
    Train {
        #[command(flatten)]
        node: NodeOpts,
    },
    /// Print a running node's supervision tree, one actor's state as JSON, or the cluster's
    /// shard map (--cluster).
    Inspect {
        /// The actor id (as the tree prints it); the whole tree when omitted.
        actor: Option<String>,
        /// Print the cluster instead: members, their addresses, and each partition's owner
        /// and state, as this node sees them.
        #[arg(long, conflicts_with = "actor")]
        cluster: bool,
        /// Base URL of the node.
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "STREAMREC_URL")]
        url: String,
        /// A bearer token with the `operator` role (when the node requires authentication).
        #[arg(long, env = "STREAMREC_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Rebuild this node's data dir (which must hold no database and no log) from the newest
    /// snapshot of its database at or before --at, and its log from the archive; the node
    /// replays the archived events after the snapshot when it next starts.
    Restore {
        #[command(flatten)]
        node: NodeOpts,
        /// RFC 3339 (`2026-12-07T18:00:00Z`) or epoch milliseconds; default now.
        #[arg(long, value_parser = parse_time)]
        at: Option<i64>,
    },
    /// Evaluate the models on MovieLens files (temporal hold-out of positives, metrics @10);
    /// prints a table, or JSON with --json.
    Eval {
        /// `u.data`/`u.item` or the atomic `.inter`/`.item` files.
        dir: PathBuf,
        #[arg(long)]
        json: bool,
        /// Seed of every random choice (results are deterministic for a seed).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Also serve each split from a node on embedded defaults (its train events in, the
        /// chosen configuration trained, lists fetched through the HTTP API) and score what it
        /// serves beside the offline hybrid.
        #[arg(long)]
        served: bool,
    },
}

#[derive(Subcommand)]
enum ImportSource {
    /// MovieLens files: `u.data`/`u.item`/`u.user`, or the atomic `.inter`/`.item`/`.user` format.
    Movielens {
        dir: PathBuf,
        #[command(flatten)]
        node: NodeOpts,
    },
    /// Items, one a line: `{"item_id": ..}` and the fields of `PUT /v1/items/{item_id}`.
    Items(BulkImport),
    /// Profiles, one a line: `{"user_id": .., "profile": {..}}`.
    Profiles(BulkImport),
    /// Events, one a line, as the entries of `POST /v1/events`.
    Events(BulkImport),
}

/// A running node and how to authenticate to it.
#[derive(Args)]
struct Remote {
    /// Base URL of the node.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "STREAMREC_URL")]
    url: String,
    /// A bearer token (`admin`; `catalog-admin` for items), when the node requires one.
    #[arg(long, env = "STREAMREC_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// JSON lines into a running node; refused lines are reported, and make the command fail.
#[derive(Args)]
struct BulkImport {
    /// The JSON lines file.
    file: PathBuf,
    /// Store nothing unless every line is valid.
    #[arg(long)]
    atomic: bool,
    #[command(flatten)]
    remote: Remote,
}

/// Epoch milliseconds, or an RFC 3339 time.
fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{text:?} is neither epoch milliseconds nor RFC 3339: {e}"))?;
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{text:?} is before 1970"))?;
    i64::try_from(since.as_millis()).map_err(|_| format!("{text:?} is too far ahead"))
}

fn load_config(opts: &NodeOpts) -> anyhow::Result<Config> {
    let mut config = Config::load(opts.config.as_deref())?;
    if let Some(dir) = &opts.data_dir {
        config.data_dir = dir.clone();
    }
    if config.data_dir.as_os_str().is_empty() {
        config.data_dir = PathBuf::from("data");
    }
    telemetry::init(&config.telemetry)?;
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(cli));
    // The runtime still runs the exporter's task: flush the last spans before it stops.
    telemetry::shutdown();
    result
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { node, listen } => {
            let mut config = load_config(&node)?;
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            let node = Node::start(config).await?;
            serve(node, None).await
        }
        Command::Demo { node, listen, rate } => {
            let mut config = Config::load(node.config.as_deref())?;
            config.data_dir = node
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("data/demo"));
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            // The demo is for a laptop: no identity provider to issue tokens.
            config.auth.enabled = false;
            common::telemetry::init(&config.telemetry);
            demo::run(config, rate).await
        }
        Command::Import {
            source: ImportSource::Movielens { dir, node },
        } => {
            let config = load_config(&node)?;
            let node = Node::start(config).await?;
            let result = import::movielens(&node, &dir).await;
            node.shutdown().await;
            let summary = result?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Command::Import {
            source: ImportSource::Items(args),
        } => bulk_import(bulk::Dataset::Items, args).await,
        Command::Import {
            source: ImportSource::Profiles(args),
        } => bulk_import(bulk::Dataset::Profiles, args).await,
        Command::Import {
            source: ImportSource::Events(args),
        } => bulk_import(bulk::Dataset::Events, args).await,
        Command::Export {
            dataset,
            output,
            remote,
        } => {
            bulk::export(
                &remote.url,
                remote.token.as_deref(),
                dataset,
                output.as_deref(),
            )
            .await
        }
        Command::Inspect {
            actor,
            cluster,
            url,
            token,
        } => {
            let what = match (&actor, cluster) {
                (_, true) => inspect::What::Cluster,
                (Some(id), false) => inspect::What::Actor(id),
                (None, false) => inspect::What::Tree,
            };
            inspect::run(&url, what, token.as_deref()).await
        }
        Command::Restore { node, at } => {
            let config = load_config(&node)?;
            let at = at.unwrap_or_else(common::now_millis);
            let restored = supervisors::restore::restore(&config, at).await?;
            println!("{}", serde_json::to_string_pretty(&restored)?);
            Ok(())
        }
        Command::Eval {
            dir,
            json,
            seed,
            served,
        } => {
            let started = std::time::Instant::now();
            let say = move |what: &str| {
                if !json {
                    eprintln!("eval: {what} ({:.1}s)", started.elapsed().as_secs_f64());
                }
            };
            let protocol = Arc::new(
                tokio::task::spawn_blocking(move || {
                    models::movielens::protocol::Protocol::load(&dir)
                })
                .await??,
            );
            let offline = protocol.clone();
            let mut report =
                tokio::task::spawn_blocking(move || eval::run_on(&offline, seed, say)).await??;
            if served {
                served::check(protocol, &mut report, seed, say).await?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", eval::table(&report));
            }
            Ok(())
        }
        Command::Train { node } => {
            let config = load_config(&node)?;
            let node = Node::start(config).await?;
            node.wait_caught_up(std::time::Duration::from_secs(600))
                .await;
            let result = node.train(true).await;
            let manifest = node.models().await;
            node.shutdown().await;
            let version = result.map_err(|e| anyhow::anyhow!("training failed: {}", e.message))?;
            let info = manifest.versions.iter().find(|v| v.version == version);
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({ "active": version, "metrics": info.map(|i| &i.metrics) })
                )?
            );
            Ok(())
        }
    }
}

async fn bulk_import(dataset: bulk::Dataset, args: BulkImport) -> anyhow::Result<()> {
    bulk::import(
        &args.remote.url,
        args.remote.token.as_deref(),
        dataset,
        &args.file,
        args.atomic,
    )
    .await
}

/// Serves HTTP until SIGTERM/Ctrl-C (or the actor tree dies), then drains and stops the node.
/// `ready` is told the bound address once the listener is up.
pub async fn serve(
    node: Arc<Node>,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(node.config.server.listen)
        .await
        .with_context(|| format!("binding {}", node.config.server.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %node.config.data_dir.display(), "streamrec listening");
    if let Some(ready) = ready {
        let _ = ready.send(addr);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = api::router(node.clone())?;
    if !node.config.auth.enabled {
        tracing::warn!(
            "authentication is OFF (auth.enabled = false): anyone who reaches this port may read \
             every user's data and operate the node"
        );
    }
    let stopping = async move {
        let mut stop_rx = stop_rx;
        let _ = stop_rx.wait_for(|s| *s).await;
    };
    let tls = &node.config.server.tls;
    let reloader = if tls.cert.is_some() {
        let reloader = api::tls::Reloader::new(tls)?;
        reloader.spawn_watch(std::time::Duration::from_secs(5));
        tracing::info!(
            min_version = %tls.min_version.unwrap_or_default(),
            mutual = tls.client_ca.is_some(),
            "serving TLS"
        );
        Some(reloader)
    } else {
        None
    };
    let limits = api::listener::Limits::try_from(&*node.config)?;
    let mut server = tokio::spawn(api::listener::serve(
        listener, app, reloader, limits, stopping,
    ));
    let tree_died = tokio::select! {
        _ = shutdown_signal() => false,
        _ = node.stopped() => true,
        result = &mut server => {
            result??;
            false
        }
    };
    if tree_died {
        anyhow::bail!(
            "the actor tree stopped (a supervisor escalated); exiting so the node can be restarted"
        );
    }
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    let grace = node.config.server.shutdown_grace;
    if tokio::time::timeout(grace, &mut server).await.is_err() {
        tracing::warn!(
            ?grace,
            "requests still running after the grace period; closing them"
        );
        server.abort();
    }
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
