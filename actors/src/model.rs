//! Model actors: a pool of workers that each own an ONNX Runtime session of the active model
//! version and score requests on the blocking pool, never on the async threads. A worker that
//! panics takes only its in-flight request down (the caller gets `unavailable`); its supervisor
//! restarts it with backoff and the new worker loads the active version again.
//!
//! A worker keeps the loaded version and the derived data that changes only with it or with the
//! catalogue (eligibility masks, unlisted items); the ranking itself is [`crate::ranking`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use common::{ApiError, Recommendation};
use models::{ModelArtifact, Scorer};
use parking_lot::{Mutex, RwLock};
use prometheus::{Histogram, IntCounterVec, register_histogram, register_int_counter_vec};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use storage::CatalogView;

use crate::obs::{ObsRegistry, Observed};
use crate::popularity::Popularity;
use crate::ranking::{self, MaskCache, Ranker, Signals, UnlistedCache};
pub use crate::ranking::{ModelRequest, UserVector};
use crate::registry::ModelRegistry;
use crate::trending::Trending;
use crate::{CALL_TIMEOUT, call};

static INFERENCE: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "streamrec_model_inference_seconds",
        "Time a model actor spends on one request (fold-in, mask, ONNX, reasons).",
        vec![
            0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25
        ]
    )
    .expect("metric registers once")
});

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "streamrec_model_requests_total",
        "Model requests by result.",
        &["result"]
    )
    .expect("metric registers once")
});

#[derive(Clone, Debug)]
pub struct ModelResponse {
    pub model_version: String,
    pub items: Vec<Recommendation>,
    /// The user vector used, for the session to keep until its interactions change.
    pub vector: Option<UserVector>,
}

pub enum ModelMsg {
    Recommend(ModelRequest, RpcReplyPort<Result<ModelResponse, ApiError>>),
    /// Load the registry's active version if it differs from the one loaded.
    Reload(RpcReplyPort<Result<(), ApiError>>),
    /// Fault injection for supervision tests and drills: the worker panics. Behind the
    /// `fault-injection` feature (off by default) so that release builds cannot be crashed by it.
    #[cfg(feature = "fault-injection")]
    InjectPanic,
}

pub struct ModelActor;

pub struct ModelArgs {
    pub registry: Arc<ModelRegistry>,
    pub catalog: Arc<CatalogView>,
    pub popularity: Arc<Popularity>,
    pub trending: Arc<Trending>,
    /// See [`Signals::trending_boost`].
    pub trending_boost: f32,
    pub intra_threads: usize,
    pub obs: Arc<ObsRegistry>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ModelObs {
    pub version: Option<String>,
    pub num_items: usize,
    pub num_requests: u64,
    pub num_errors: u64,
    pub last_latency_us: u64,
}

struct Loaded {
    artifact: Arc<ModelArtifact>,
    scorer: Option<Arc<Mutex<Scorer>>>,
}

pub struct ModelState {
    args: ModelArgs,
    loaded: Option<Loaded>,
    masks: MaskCache,
    unlisted: UnlistedCache,
    obs: Observed<ModelObs>,
}

async fn load(artifact: Arc<ModelArtifact>, intra_threads: usize) -> Result<Loaded, ApiError> {
    if artifact.num_items() == 0 {
        return Ok(Loaded {
            artifact,
            scorer: None,
        });
    }
    let a = artifact.clone();
    let scorer = tokio::task::spawn_blocking(move || {
        Scorer::new(&a.onnx, a.num_items(), a.meta.dim, intra_threads)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Loaded {
        artifact,
        scorer: Some(Arc::new(Mutex::new(scorer))),
    })
}

impl ModelState {
    async fn reload(&mut self) -> Result<(), ApiError> {
        let Some(active) = self.args.registry.active() else {
            return Ok(());
        };
        if self
            .loaded
            .as_ref()
            .is_some_and(|l| l.artifact.meta.version == active.meta.version)
        {
            return Ok(());
        }
        let loaded = load(active, self.args.intra_threads).await?;
        self.obs.update(|o| {
            o.version = Some(loaded.artifact.meta.version.clone());
            o.num_items = loaded.artifact.num_items();
        });
        self.loaded = Some(loaded);
        Ok(())
    }
}

impl Actor for ModelActor {
    type Msg = ModelMsg;
    type State = ModelState;
    type Arguments = ModelArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ModelMsg>,
        args: ModelArgs,
    ) -> Result<ModelState, ActorProcessingErr> {
        let obs = Observed::register(&args.obs, &myself.get_cell(), "model", ModelObs::default());
        let mut state = ModelState {
            args,
            loaded: None,
            masks: MaskCache::default(),
            unlisted: UnlistedCache::default(),
            obs,
        };
        state.reload().await?;
        Ok(state)
    }

    async fn handle(
        &self,
        _: ActorRef<ModelMsg>,
        msg: ModelMsg,
        state: &mut ModelState,
    ) -> Result<(), ActorProcessingErr> {
        state.obs.handled();
        match msg {
            ModelMsg::Recommend(req, reply) => {
                let started = Instant::now();
                let result = recommend(state, req).await;
                let elapsed = started.elapsed();
                INFERENCE.observe(elapsed.as_secs_f64());
                REQUESTS
                    .with_label_values(&[if result.is_ok() { "ok" } else { "error" }])
                    .inc();
                state.obs.update(|o| {
                    o.num_requests += 1;
                    o.num_errors += u64::from(result.is_err());
                    o.last_latency_us = elapsed.as_micros() as u64;
                });
                let _ = reply.send(result);
            }
            ModelMsg::Reload(reply) => {
                let _ = reply.send(state.reload().await);
            }
            #[cfg(feature = "fault-injection")]
            ModelMsg::InjectPanic => panic!("injected fault in model actor"),
        }
        Ok(())
    }
}

#[tracing::instrument(
    name = "model.score",
    skip_all,
    fields(model.version = tracing::field::Empty, model.num_items = tracing::field::Empty)
)]
async fn recommend(state: &mut ModelState, req: ModelRequest) -> Result<ModelResponse, ApiError> {
    let catalog = state.args.catalog.clone();
    let popularity = state.args.popularity.clone();
    let trending = state.args.trending.clone();
    let trending_boost = state.args.trending_boost;
    let Some(loaded) = &state.loaded else {
        let fallback = Signals {
            popularity: &popularity,
            trending: Some(&trending),
            trending_boost: 0.0,
        };
        let items = ranking::fill(Vec::new(), &req, &catalog, fallback);
        tracing::Span::current().record("model.version", "none");
        return Ok(ModelResponse {
            model_version: "none".into(),
            items,
            vector: None,
        });
    };
    let artifact = loaded.artifact.clone();
    let scorer = loaded.scorer.clone();
    let mask = state
        .masks
        .get(&artifact, &catalog, req.category.as_deref());
    let unlisted = state.unlisted.get(&artifact, &catalog);
    let span = tracing::Span::current();
    span.record("model.version", artifact.meta.version.as_str());
    let response = tokio::task::spawn_blocking(move || {
        let _in_span = span.enter();
        let ranker = Ranker {
            artifact: &artifact,
            scorer: scorer.as_deref(),
            mask: &mask,
            unlisted: &unlisted,
            catalog: &catalog,
            signals: Signals {
                popularity: &popularity,
                trending: Some(&trending),
                trending_boost,
            },
        };
        let (items, vector) = ranker.rank(&req)?;
        Ok(ModelResponse {
            model_version: artifact.meta.version.clone(),
            items,
            vector: Some(vector),
        })
    })
    .await
    .map_err(ApiError::internal)?;
    if let Ok(response) = &response {
        tracing::Span::current().record("model.num_items", response.items.len());
    }
    response
}

/// The serving side of the model actors: picks a live worker round-robin. Supervisors fill the
/// slots as workers (re)start.
#[derive(Clone, Default)]
pub struct ModelPool {
    inner: Arc<PoolInner>,
}

#[derive(Default)]
struct PoolInner {
    workers: RwLock<Vec<Option<ActorRef<ModelMsg>>>>,
    next: AtomicUsize,
}

impl ModelPool {
    pub fn set(&self, slot: usize, worker: Option<ActorRef<ModelMsg>>) {
        let mut workers = self.inner.workers.write();
        if workers.len() <= slot {
            workers.resize(slot + 1, None);
        }
        workers[slot] = worker;
    }

    pub fn workers(&self) -> Vec<ActorRef<ModelMsg>> {
        self.inner
            .workers
            .read()
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    pub async fn recommend(&self, req: ModelRequest) -> Result<ModelResponse, ApiError> {
        let workers = self.workers();
        if workers.is_empty() {
            return Err(ApiError::unavailable("no model worker is running"));
        }
        let worker = &workers[self.inner.next.fetch_add(1, Ordering::Relaxed) % workers.len()];
        call(
            worker,
            "model worker",
            |r| ModelMsg::Recommend(req, r),
            CALL_TIMEOUT,
        )
        .await
    }

    /// Makes every worker load the active version; returns once all have.
    pub async fn reload_all(&self) -> Result<(), ApiError> {
        for worker in self.workers() {
            call(&worker, "model worker", ModelMsg::Reload, CALL_TIMEOUT * 6).await?;
        }
        Ok(())
    }
}
