//! Model actors: a pool of workers that each own an ONNX Runtime session of the active model
//! version and score requests on the blocking pool, never on the async threads. A worker that
//! panics takes only its in-flight request down (the caller gets `unavailable`); its supervisor
//! restarts it with backoff and the new worker loads the active version again.
//!
//! Serving a request: fold the user's live interactions into a user vector, build the filter
//! mask (seen, deleted, unavailable, other category), run the graph, explain each result by its
//! nearest interacted item, and fill from live popularity where the model has too few
//! candidates (new items, new users).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use common::{ApiError, Recommendation};
use models::linalg::dot;
use models::{ModelArtifact, Scorer};
use parking_lot::{Mutex, RwLock};
use prometheus::{Histogram, IntCounterVec, register_histogram, register_int_counter_vec};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use storage::CatalogView;

use crate::obs::{Obs, ObsRegistry};
use crate::popularity::Popularity;
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

/// Reason added when a user with no interactions is scored from their profile.
pub const REASON_PROFILE: &str = "matches_profile";
/// Reason given for items added to the catalogue after the model was trained, scored from their
/// content.
pub const REASON_NEW_ITEM: &str = "new_item_by_content";
/// Reason given for items chosen because they are trending now (users with no history).
pub const REASON_TRENDING: &str = "trending";
/// Reason given for items chosen by popularity.
pub const REASON_POPULAR: &str = "popular";
/// Reason given for items chosen by the collaborative-filtering model.
pub const REASON_CF: &str = "collaborative_filtering";

/// What a session asks the model.
#[derive(Clone, Debug)]
pub struct ModelRequest {
    /// (item id, summed weight) of the user's interactions.
    pub interactions: Vec<(String, f32)>,
    /// The user's recent positive interactions, oldest first: the input of the transition part.
    pub history: Vec<String>,
    /// Profile features of a user with no interactions yet (empty otherwise).
    pub profile: Vec<String>,
    /// Items never to return (everything the user interacted with).
    pub exclude: HashSet<String>,
    pub k: usize,
    pub category: Option<String>,
    /// The user vector folded in earlier for the same interactions, with its model version;
    /// reused when that version is still the one loaded.
    pub vector: Option<UserVector>,
}

/// A real-time user vector and the model version it was folded against.
#[derive(Clone, Debug, PartialEq)]
pub struct UserVector {
    pub model_version: String,
    pub values: Arc<Vec<f32>>,
}

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
    /// Fault injection for supervision tests and drills: the worker panics.
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
    obs_state: ModelObs,
    obs: Arc<Obs<ModelObs>>,
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
        self.obs_state.version = Some(loaded.artifact.meta.version.clone());
        self.obs_state.num_items = loaded.artifact.num_items();
        self.loaded = Some(loaded);
        self.obs.publish(&self.obs_state);
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
        let obs = args
            .obs
            .register(&myself.get_cell(), "model", &ModelObs::default());
        let mut state = ModelState {
            args,
            loaded: None,
            masks: MaskCache::default(),
            unlisted: UnlistedCache::default(),
            obs_state: ModelObs::default(),
            obs,
        };
        state.reload().await?;
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<ModelMsg>,
        state: &mut ModelState,
    ) -> Result<(), ActorProcessingErr> {
        state.args.obs.deregister(&myself.get_cell());
        Ok(())
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
                state.obs_state.num_requests += 1;
                state.obs_state.num_errors += u64::from(result.is_err());
                state.obs_state.last_latency_us = elapsed.as_micros() as u64;
                state.obs.publish(&state.obs_state);
                let _ = reply.send(result);
            }
            ModelMsg::Reload(reply) => {
                let _ = reply.send(state.reload().await);
            }
            ModelMsg::InjectPanic => panic!("injected fault in model actor"),
        }
        Ok(())
    }
}

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
        let items = fill(Vec::new(), &req, &catalog, fallback);
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
    tokio::task::spawn_blocking(move || {
        let (items, vector) = score(
            &artifact,
            scorer.as_deref(),
            &mask,
            &unlisted,
            &req,
            &catalog,
            Signals {
                popularity: &popularity,
                trending: Some(&trending),
                trending_boost,
            },
        )?;
        Ok(ModelResponse {
            model_version: artifact.meta.version.clone(),
            items,
            vector: Some(vector),
        })
    })
    .await
    .map_err(ApiError::internal)?
}

/// Ranks for one request with a loaded model; returns the items and the user vector used.
/// Pure apart from the ONNX run.
pub fn score(
    artifact: &ModelArtifact,
    scorer: Option<&Mutex<Scorer>>,
    base_mask: &[f32],
    unlisted: &[UnlistedItem],
    req: &ModelRequest,
    catalog: &CatalogView,
    fallback: Signals<'_>,
) -> Result<(Vec<Recommendation>, UserVector), ApiError> {
    let version = &artifact.meta.version;
    let user = match &req.vector {
        Some(v) if &v.model_version == version && v.values.len() == artifact.meta.dim => {
            v.values.clone()
        }
        _ => Arc::new(artifact.fold_in(req.interactions.iter().map(|(id, w)| (id.as_str(), *w)))),
    };
    let history = artifact.history(req.history.iter().map(String::as_str));
    let mut from_profile = false;
    let mut user = user;
    if user.iter().all(|v| *v == 0.0) && history.is_empty() && !req.profile.is_empty() {
        let v = artifact.user_content.embed(&req.profile);
        if v.len() == artifact.meta.dim && v.iter().any(|x| *x != 0.0) {
            user = Arc::new(v);
            from_profile = true;
        }
    }
    let known = user.iter().any(|v| *v != 0.0) || !history.is_empty();
    let mut items = Vec::with_capacity(req.k);
    if let (true, Some(scorer)) = (known, scorer) {
        let mut mask = base_mask.to_vec();
        if let (Some(trending), boost) = (fallback.trending, fallback.trending_boost)
            && boost > 0.0
        {
            let top = trending.top_recent(BOOSTED, common::now_millis(), BOOST_MAX_AGE);
            let max = top.first().map_or(1.0, |e| e.score.max(f64::MIN_POSITIVE));
            for e in &top {
                if let Some(&row) = artifact.item_index.get(&e.id) {
                    // The mask is -inf for filtered items: they stay filtered.
                    mask[row as usize] += boost * (e.score / max) as f32;
                }
            }
        }
        for id in &req.exclude {
            if let Some(&row) = artifact.item_index.get(id) {
                mask[row as usize] = f32::NEG_INFINITY;
            }
        }
        let top = scorer
            .lock()
            .top_k(&user, &history, &mask, req.k)
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let liked: Vec<(u32, &str)> = req
            .interactions
            .iter()
            .filter(|(_, w)| *w > 0.0)
            .filter_map(|(id, _)| artifact.item_index.get(id).map(|&row| (row, id.as_str())))
            .collect();
        for (row, score) in top {
            let v = artifact.item_vector(row);
            let nearest = liked
                .iter()
                .map(|(r, id)| (dot(v, artifact.item_vector(*r)), *id))
                .max_by(|a, b| a.0.total_cmp(&b.0));
            let mut reasons = vec![REASON_CF.to_owned()];
            if from_profile {
                reasons.push(REASON_PROFILE.to_owned());
            }
            if let Some((_, id)) = nearest {
                reasons.push(format!("similar_to:{id}"));
            }
            if let Some((before, _)) = artifact.strongest_predecessor(row, &history) {
                reasons.push(format!(
                    "often_next_after:{}",
                    artifact.item_ids[before as usize]
                ));
            }
            items.push(Recommendation {
                item_id: artifact.item_ids[row as usize].clone(),
                score,
                reasons,
            });
        }
        let fresh: Vec<&UnlistedItem> = unlisted
            .iter()
            .filter(|u| !req.exclude.contains(&u.item_id))
            .filter(|u| {
                req.category
                    .as_deref()
                    .is_none_or(|c| u.categories.iter().any(|x| x == c))
            })
            .collect();
        if !fresh.is_empty() {
            let vectors: Vec<&[f32]> = fresh.iter().map(|u| u.vector.as_slice()).collect();
            let scores = artifact.score_unlisted(&user, &history, &vectors);
            for (u, score) in fresh.into_iter().zip(scores) {
                let nearest = liked
                    .iter()
                    .map(|(r, id)| (dot(&u.vector, artifact.item_vector(*r)), *id))
                    .max_by(|a, b| a.0.total_cmp(&b.0));
                let mut reasons = vec![REASON_NEW_ITEM.to_owned()];
                if let Some((_, id)) = nearest {
                    reasons.push(format!("similar_to:{id}"));
                }
                items.push(Recommendation {
                    item_id: u.item_id.clone(),
                    score,
                    reasons,
                });
            }
            items.sort_by(|a, b| {
                b.score
                    .total_cmp(&a.score)
                    .then_with(|| a.item_id.cmp(&b.item_id))
            });
            items.truncate(req.k);
        }
    }
    let vector = UserVector {
        model_version: version.clone(),
        values: user,
    };
    Ok((fill(items, req, catalog, fallback), vector))
}

/// Tops `items` up to `k`: for a user with no history, with what is trending now first; then
/// with the most popular eligible items. Filled items score below every item before them.
pub fn fill(
    items: Vec<Recommendation>,
    req: &ModelRequest,
    catalog: &CatalogView,
    fallback: Signals<'_>,
) -> Vec<Recommendation> {
    let items = match fallback.trending {
        Some(t) if req.interactions.is_empty() && items.len() < req.k => {
            let now = common::now_millis();
            let ranked: Vec<(String, f64)> = t
                .top(req.k + req.exclude.len() + FILL_SLACK, now, false, |_| true)
                .into_iter()
                .map(|e| (e.id, e.score))
                .collect();
            fill_ranked(items, req, catalog, &ranked, REASON_TRENDING)
        }
        _ => items,
    };
    fill_ranked(
        items,
        req,
        catalog,
        &fallback.popularity.ranked(),
        REASON_POPULAR,
    )
}

/// Live signals beside the model: popularity and trending fill lists the model leaves short;
/// trending also lifts what is active now within the model's ranking.
#[derive(Clone, Copy)]
pub struct Signals<'a> {
    pub popularity: &'a Popularity,
    /// Trending items come first for users with no history, when given.
    pub trending: Option<&'a Trending>,
    /// Added to the score of the top trending item (others in proportion); 0 turns it off.
    pub trending_boost: f32,
}

impl<'a> Signals<'a> {
    pub fn popular(popularity: &'a Popularity) -> Self {
        Self {
            popularity,
            trending: None,
            trending_boost: 0.0,
        }
    }
}

/// How many trending items the boost considers.
const BOOSTED: usize = 100;
/// How old a trending ranking the lift may use: a fraction of a second is nothing to a signal of
/// minutes-long windows, and spares a full re-ranking per inference under a stream of events.
const BOOST_MAX_AGE: std::time::Duration = std::time::Duration::from_millis(250);

/// Trending candidates taken beyond `k`, for those the catalog filters out.
const FILL_SLACK: usize = 50;

/// Tops `items` up to `k` from `ranked` (best first), scored below every item before them.
fn fill_ranked(
    mut items: Vec<Recommendation>,
    req: &ModelRequest,
    catalog: &CatalogView,
    ranked: &[(String, f64)],
    reason: &str,
) -> Vec<Recommendation> {
    if items.len() >= req.k {
        return items;
    }
    let max = ranked
        .first()
        .map_or(1.0, |(_, c)| c.max(f64::MIN_POSITIVE));
    let floor = items.last().map(|r| r.score.min(0.0) - 1.0);
    let chosen: HashSet<String> = items.iter().map(|r| r.item_id.clone()).collect();
    let view = catalog.read();
    {
        for (id, count) in ranked.iter() {
            if items.len() >= req.k {
                break;
            }
            if req.exclude.contains(id) || chosen.contains(id) {
                continue;
            }
            let s = view.status(id);
            if !s.recommendable() || req.category.as_deref().is_some_and(|c| !s.in_category(c)) {
                continue;
            }
            let norm = (*count / max) as f32;
            let score = floor.map_or(norm, |f| f + norm);
            items.push(Recommendation {
                item_id: id.clone(),
                score,
                reasons: vec![reason.to_owned()],
            });
        }
    }
    items
}

/// A recommendable catalogued item the loaded version has no row for, with its content vector.
pub struct UnlistedItem {
    pub item_id: String,
    pub categories: Vec<String>,
    pub vector: Vec<f32>,
}

/// The unlisted items of the loaded version, rebuilt when the catalog or the version changes.
#[derive(Default)]
struct UnlistedCache {
    key: Option<(String, u64)>,
    items: Arc<Vec<UnlistedItem>>,
}

impl UnlistedCache {
    fn get(&mut self, artifact: &ModelArtifact, catalog: &CatalogView) -> Arc<Vec<UnlistedItem>> {
        let key = (artifact.meta.version.clone(), catalog.version());
        if self.key.as_ref() != Some(&key) {
            let items = catalog
                .item_ids()
                .into_iter()
                .filter(|id| !artifact.item_index.contains_key(id))
                .filter_map(|id| catalog.get(&id))
                .filter(|item| item.available)
                .map(|item| UnlistedItem {
                    vector: artifact
                        .content
                        .embed(&models::content::tokens(item.as_ref().into())),
                    item_id: item.item_id.clone(),
                    categories: item.categories.clone(),
                })
                .filter(|u| u.vector.len() == artifact.meta.dim)
                .collect();
            self.items = Arc::new(items);
            self.key = Some(key);
        }
        self.items.clone()
    }
}

/// Availability and category masks of the loaded version, rebuilt when the catalog changes.
#[derive(Default)]
struct MaskCache {
    key: Option<(String, u64)>,
    by_category: HashMap<Option<String>, Arc<Vec<f32>>>,
}

impl MaskCache {
    fn get(
        &mut self,
        artifact: &ModelArtifact,
        catalog: &CatalogView,
        category: Option<&str>,
    ) -> Arc<Vec<f32>> {
        let key = (artifact.meta.version.clone(), catalog.version());
        if self.key.as_ref() != Some(&key) {
            self.key = Some(key);
            self.by_category.clear();
        }
        let category = category.map(str::to_owned);
        self.by_category
            .entry(category.clone())
            .or_insert_with(|| {
                let view = catalog.read();
                Arc::new(
                    artifact
                        .item_ids
                        .iter()
                        .map(|id| {
                            let s = view.status(id);
                            let ok = s.recommendable()
                                && category.as_deref().is_none_or(|c| s.in_category(c));
                            if ok { 0.0 } else { f32::NEG_INFINITY }
                        })
                        .collect(),
                )
            })
            .clone()
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use common::Item;
    use models::{ModelMeta, TrainParams};
    use storage::catalog::Catalog;

    use super::*;

    /// An in-memory catalog: enough for the view, no RocksDB.
    #[derive(Default)]
    struct FakeCatalog;

    #[async_trait::async_trait]
    impl Catalog for FakeCatalog {
        async fn upsert(&self, _: &Item) -> storage::error::Result<()> {
            Ok(())
        }
        async fn delete(&self, _: &str, _: i64) -> storage::error::Result<bool> {
            Ok(true)
        }
        async fn load_all(&self) -> storage::error::Result<(Vec<Item>, Vec<String>)> {
            Ok((Vec::new(), Vec::new()))
        }
        async fn put_profile(&self, _: &str, _: &serde_json::Value) -> storage::error::Result<()> {
            Ok(())
        }
        async fn get_profile(&self, _: &str) -> storage::error::Result<Option<serde_json::Value>> {
            Ok(None)
        }
        async fn profiles(&self) -> storage::error::Result<Vec<(String, serde_json::Value)>> {
            Ok(Vec::new())
        }
        async fn delete_profile(&self, _: &str) -> storage::error::Result<()> {
            Ok(())
        }
    }

    fn item(id: &str, category: &str, available: bool) -> Item {
        Item {
            item_id: id.into(),
            title: id.into(),
            categories: vec![category.into()],
            tags: vec![],
            attributes: Default::default(),
            available,
            updated_at: 0,
        }
    }

    /// Items along two axes: x-items (x1..x4) and y-items (y1, y2).
    async fn fixture() -> (ModelArtifact, Mutex<Scorer>, CatalogView, Popularity) {
        fixture_with(Default::default(), Vec::new()).await
    }

    async fn fixture_with(
        hybrid: models::HybridParams,
        successors: Vec<Vec<(u32, f32)>>,
    ) -> (ModelArtifact, Mutex<Scorer>, CatalogView, Popularity) {
        let ids = ["x1", "x2", "x3", "x4", "y1", "y2"];
        let factors = vec![1.0, 0.0, 0.9, 0.1, 0.8, 0.0, 0.7, 0.1, 0.0, 1.0, 0.1, 0.9];
        let meta = ModelMeta {
            version: "v1".into(),
            created_at: 0,
            dim: 2,
            num_items: 6,
            num_users: 0,
            num_interactions: 0,
            data_range: None,
            params: TrainParams {
                dim: 2,
                iterations: 0,
                regularization: 0.1,
                alpha: 4.0,
                seed: 0,
            },
            metrics: BTreeMap::new(),
            hybrid,
        };
        let ids: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
        let artifact = ModelArtifact::build(meta, ids, factors, vec![1.0; 6], successors);
        let scorer =
            Mutex::new(Scorer::new(&artifact.onnx, 6, 2, 1).expect("ONNX Runtime (make setup)"));
        let catalog = CatalogView::open(Arc::new(FakeCatalog))
            .await
            .expect("view");
        for (id, cat) in [
            ("x1", "x"),
            ("x2", "x"),
            ("x4", "x"),
            ("y1", "y"),
            ("y2", "y"),
            ("fresh", "x"),
        ] {
            catalog.upsert(item(id, cat, true)).await.expect("upsert");
        }
        catalog
            .upsert(item("x3", "x", false))
            .await
            .expect("unavailable");
        catalog.delete("x4").await.expect("deleted");
        let popularity = Popularity::new(vec![
            ("fresh".into(), 50.0),
            ("y2".into(), 40.0),
            ("x2".into(), 1.0),
        ]);
        (artifact, scorer, catalog, popularity)
    }

    fn request(k: usize, category: Option<&str>) -> ModelRequest {
        ModelRequest {
            interactions: vec![("x1".into(), 3.0)],
            history: vec!["x1".into()],
            profile: vec![],
            exclude: HashSet::from(["x1".to_owned()]),
            k,
            category: category.map(str::to_owned),
            vector: None,
        }
    }

    #[tokio::test]
    async fn never_returns_seen_deleted_unavailable_or_duplicate_items() {
        let (artifact, scorer, catalog, popularity) = fixture().await;
        let mut masks = MaskCache::default();
        for k in 1..=8 {
            for category in [None, Some("x"), Some("y")] {
                let req = request(k, category);
                let mask = masks.get(&artifact, &catalog, category);
                let (items, _) = score(
                    &artifact,
                    Some(&scorer),
                    &mask,
                    &[],
                    &req,
                    &catalog,
                    Signals::popular(&popularity),
                )
                .expect("score");
                let ids: Vec<&str> = items.iter().map(|r| r.item_id.as_str()).collect();
                assert!(ids.len() <= k, "{ids:?}");
                let unique: HashSet<_> = ids.iter().collect();
                assert_eq!(unique.len(), ids.len(), "duplicates: {ids:?}");
                for banned in ["x1", "x3", "x4"] {
                    assert!(
                        !ids.contains(&banned),
                        "{banned} in {ids:?} (k={k}, {category:?})"
                    );
                }
                if let Some(c) = category {
                    assert!(
                        ids.iter()
                            .all(|id| catalog.get(id).is_some_and(|i| i.categories[0] == c)),
                        "{ids:?}"
                    );
                }
                assert!(
                    items.windows(2).all(|w| w[0].score >= w[1].score),
                    "unsorted: {items:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn ranks_by_taste_then_fills_with_popular_new_items() {
        let (artifact, scorer, catalog, popularity) = fixture().await;
        let mask = MaskCache::default().get(&artifact, &catalog, None);
        let (items, vector) = score(
            &artifact,
            Some(&scorer),
            &mask,
            &[],
            &request(4, None),
            &catalog,
            Signals::popular(&popularity),
        )
        .expect("score");
        let ids: Vec<&str> = items.iter().map(|r| r.item_id.as_str()).collect();
        // x2 is the only eligible x-item; the y-items follow; `fresh` is not in the model and
        // comes from popularity.
        assert_eq!(ids[0], "x2");
        assert_eq!(
            items[0].reasons,
            vec![REASON_CF.to_owned(), "similar_to:x1".to_owned()]
        );
        assert!(ids.contains(&"fresh"), "{ids:?}");
        assert_eq!(
            items
                .iter()
                .find(|r| r.item_id == "fresh")
                .map(|r| r.reasons.clone()),
            Some(vec![REASON_POPULAR.to_owned()])
        );
        assert_eq!(vector.model_version, "v1");

        // A vector carried over for this version is used as is: pointing along y ranks y first.
        let mut req = request(2, None);
        req.vector = Some(UserVector {
            model_version: "v1".into(),
            values: Arc::new(vec![0.0, 1.0]),
        });
        let (items, _) = score(
            &artifact,
            Some(&scorer),
            &mask,
            &[],
            &req,
            &catalog,
            Signals::popular(&popularity),
        )
        .expect("score");
        assert_eq!(items[0].item_id, "y1");
        // A vector from another version is ignored and folded in again.
        req.vector = Some(UserVector {
            model_version: "v0".into(),
            values: Arc::new(vec![0.0, 1.0]),
        });
        let (items, vector) = score(
            &artifact,
            Some(&scorer),
            &mask,
            &[],
            &req,
            &catalog,
            Signals::popular(&popularity),
        )
        .expect("score");
        assert_eq!(items[0].item_id, "x2");
        assert!(vector.values[0] > vector.values[1]);
    }

    #[tokio::test]
    async fn a_user_without_history_gets_popular_eligible_items() {
        let (artifact, scorer, catalog, popularity) = fixture().await;
        let mask = MaskCache::default().get(&artifact, &catalog, None);
        let req = ModelRequest {
            interactions: vec![],
            history: vec![],
            profile: vec![],
            exclude: HashSet::new(),
            k: 3,
            category: None,
            vector: None,
        };
        let (items, _) = score(
            &artifact,
            Some(&scorer),
            &mask,
            &[],
            &req,
            &catalog,
            Signals::popular(&popularity),
        )
        .expect("score");
        let ids: Vec<&str> = items.iter().map(|r| r.item_id.as_str()).collect();
        assert_eq!(ids, vec!["fresh", "y2", "x2"]);
        assert!(
            items
                .iter()
                .all(|r| r.reasons == vec![REASON_POPULAR.to_owned()])
        );
    }

    #[tokio::test]
    async fn what_usually_comes_next_is_recommended_with_its_reason() {
        // CF alone would pick x2 for an x1 fan; the transitions say y1 follows x1.
        let hybrid = models::HybridParams {
            cf_weight: 0.2,
            transitions: Default::default(),
        };
        let mut successors = vec![Vec::new(); 6];
        successors[0] = vec![(4, 1.0)];
        let (artifact, scorer, catalog, popularity) = fixture_with(hybrid, successors).await;
        let mask = MaskCache::default().get(&artifact, &catalog, None);
        let (items, _) = score(
            &artifact,
            Some(&scorer),
            &mask,
            &[],
            &request(2, None),
            &catalog,
            Signals::popular(&popularity),
        )
        .expect("score");
        assert_eq!(items[0].item_id, "y1", "{items:?}");
        assert!(
            items[0].reasons.contains(&"often_next_after:x1".to_owned()),
            "{items:?}"
        );
        assert!(
            !items[1]
                .reasons
                .iter()
                .any(|r| r.starts_with("often_next_after"))
        );
    }

    #[tokio::test]
    async fn trending_items_are_lifted_within_the_ranking() {
        let (artifact, scorer, catalog, popularity) = fixture().await;
        let mask = MaskCache::default().get(&artifact, &catalog, None);
        let trending = Trending::new(std::time::Duration::from_secs(300), 12, 5.0);
        let now = common::now_millis();
        trending.record("u", "y2", &[], 5.0, now, now);
        let ranked = |boost: f32| {
            let signals = Signals {
                popularity: &popularity,
                trending: Some(&trending),
                trending_boost: boost,
            };
            let (items, _) = score(
                &artifact,
                Some(&scorer),
                &mask,
                &[],
                &request(3, None),
                &catalog,
                signals,
            )
            .expect("score");
            items.into_iter().map(|r| r.item_id).collect::<Vec<_>>()
        };
        // An x1 fan: CF puts the other x items first; a strong lift puts the trending y2 first.
        assert_ne!(ranked(0.0)[0], "y2");
        assert_eq!(ranked(10.0)[0], "y2");
    }
}
