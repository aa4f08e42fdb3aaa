//! Ranking for one request, apart from the actor that serves it, so that each step reads on its
//! own and is tested without an actor: fold the user's live interactions into a user vector (or
//! start from their profile), lift what is trending now, mask what the user may not get, run the
//! graph, score items the loaded version has no row for by their content, explain each result by
//! the nearest liked item, and fill from live trending and popularity where the model leaves the
//! list short (new items, new users). What the user disliked is masked as seen, and the items that
//! go with it go down (an [`Aversion`] in the mask), even for a user who has only disliked things.
//! A request with `diversity` is ranked the same way into a larger pool, then re-ranked by
//! maximal marginal relevance (`diversify`).
//!
//! Which items may be recommended at all is decided in one place, [`eligible`]: the model's mask,
//! the fill and the node's trending view all use it.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use common::{ApiError, Diversity, Recommendation};
use models::aversion::Aversion;
use models::linalg::dot;
use models::scorer::Query;
use models::{ModelArtifact, Scorer};
use parking_lot::Mutex;
use storage::CatalogView;
use storage::catalog::CatalogRead;

use crate::popularity::Popularity;
use crate::trending::Trending;

mod cache;
mod diversify;
mod fill;

pub use cache::{MaskCache, UnlistedCache, UnlistedItem};
pub use fill::fill;

/// What a session asks the model.
#[derive(Clone, Debug)]
pub struct ModelRequest {
    /// (item id, summed weight) of the user's interactions: what the CF vector is folded in
    /// from, (the positive ones, as a set) the input of the item-to-item part, and (the others)
    /// the user's dislikes.
    pub interactions: Vec<(String, f32)>,
    /// The user's recent positive interactions, oldest first: the input of the transition part.
    pub history: Vec<String>,
    /// Profile features of a user with no interactions yet (empty otherwise).
    pub profile: Vec<String>,
    /// Items never to return (everything the user interacted with).
    pub exclude: HashSet<String>,
    pub k: usize,
    pub category: Option<String>,
    /// How far to re-rank for variety; [`Diversity::NONE`] ranks as the model does.
    pub diversity: Diversity,
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

/// Why an item was recommended. Displays as the string clients see in `reasons`, which is part
/// of the API: `collaborative_filtering`, `matches_profile`, `similar_to:<item>`,
/// `often_next_after:<item>`, `new_item_by_content`, `trending`, `popular`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Chosen by the collaborative-filtering model.
    CollaborativeFiltering,
    /// The user has no interactions yet and was scored from their profile.
    MatchesProfile,
    /// The liked item nearest to this one in factor space.
    SimilarTo(String),
    /// The history item the transitions say this one usually follows.
    OftenNextAfter(String),
    /// Added to the catalogue after the model was trained; scored from its content.
    NewItemByContent,
    /// Trending now (fill for users with no history).
    Trending,
    /// Popular (fill).
    Popular,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::CollaborativeFiltering => f.write_str("collaborative_filtering"),
            Reason::MatchesProfile => f.write_str("matches_profile"),
            Reason::SimilarTo(id) => write!(f, "similar_to:{id}"),
            Reason::OftenNextAfter(id) => write!(f, "often_next_after:{id}"),
            Reason::NewItemByContent => f.write_str("new_item_by_content"),
            Reason::Trending => f.write_str("trending"),
            Reason::Popular => f.write_str("popular"),
        }
    }
}

fn reasons(reasons: impl IntoIterator<Item = Reason>) -> Vec<String> {
    reasons.into_iter().map(|r| r.to_string()).collect()
}

/// Whether an item may be recommended to anyone asking for `category` (any when `None`):
/// catalogued, not deleted, available, and in the category. Exclusions of one user (what they
/// have seen) come on top.
pub fn eligible(view: &CatalogRead<'_>, item_id: &str, category: Option<&str>) -> bool {
    let status = view.status(item_id);
    status.recommendable() && category.is_none_or(|c| status.in_category(c))
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
const BOOST_MAX_AGE: Duration = Duration::from_millis(250);

/// Everything one ranking with a loaded model reads besides the request.
#[derive(Clone, Copy)]
pub struct Ranker<'a> {
    pub artifact: &'a ModelArtifact,
    /// `None` for a version without items.
    pub scorer: Option<&'a Mutex<Scorer>>,
    /// One entry per model row: 0 for an eligible item, -inf otherwise (see [`MaskCache`]).
    pub mask: &'a [f32],
    /// Eligible items the version has no row for (see [`UnlistedCache`]).
    pub unlisted: &'a [UnlistedItem],
    pub catalog: &'a CatalogView,
    pub signals: Signals<'a>,
}

/// The user as the model sees them.
struct User {
    vector: Arc<Vec<f32>>,
    /// Model rows of the recent history, with their recency weights (the transitions' input).
    history: Vec<(u32, f32)>,
    /// Model rows of every positive interaction, weight 1 each (the item-to-item input).
    liked: Vec<(u32, f32)>,
    /// What the user's dislikes take off the items that go with them, if anything.
    aversion: Option<Aversion>,
    /// Whether the vector comes from the profile (no interactions yet).
    from_profile: bool,
}

impl User {
    /// Whether the model has anything positive to go on.
    fn likes(&self) -> bool {
        self.vector.iter().any(|v| *v != 0.0) || !self.history.is_empty() || !self.liked.is_empty()
    }

    /// Whether the model has anything to go on; if not, the list is all fill. A user who has
    /// only disliked things gets the version's popular items, what goes with the dislikes last.
    fn known(&self) -> bool {
        self.likes() || self.aversion.is_some()
    }

    /// What the graph scores this user from, with the version's blend for them.
    fn query<'a>(&'a self, artifact: &ModelArtifact) -> Query<'a> {
        Query {
            user: &self.vector,
            items: &self.liked,
            history: &self.history,
            weights: artifact.weights(&self.liked),
        }
    }
}

impl Ranker<'_> {
    /// Ranks for one request; returns the items and the user vector used. Pure apart from the
    /// ONNX run.
    pub fn rank(&self, req: &ModelRequest) -> Result<(Vec<Recommendation>, UserVector), ApiError> {
        if !req.diversity.is_none() {
            return self.rank_diverse(req);
        }
        let user = self.user(req);
        let items = match self.scorer {
            Some(scorer) if user.known() => {
                let liked = self.liked(req);
                let mut items = self.model_items(scorer, &user, &liked, req)?;
                self.add_unlisted(&mut items, &user, &liked, req);
                items
            }
            _ => Vec::new(),
        };
        let vector = UserVector {
            model_version: self.artifact.meta.version.clone(),
            values: user.vector,
        };
        Ok((fill(items, req, self.catalog, self.signals), vector))
    }

    /// Ranks a pool larger than `k` under the same rules, then re-ranks it down to `k` for
    /// diversity.
    fn rank_diverse(
        &self,
        req: &ModelRequest,
    ) -> Result<(Vec<Recommendation>, UserVector), ApiError> {
        let pooled = ModelRequest {
            k: models::diversify::pool_size(req.k),
            diversity: Diversity::NONE,
            ..req.clone()
        };
        let (pool, vector) = self.rank(&pooled)?;
        let items = diversify::rerank(self, pool, req.k, req.diversity.value());
        Ok((items, vector))
    }

    /// The vector carried over for this version, else one folded in from the interactions;
    /// from the profile for a user with neither interactions nor history.
    fn user(&self, req: &ModelRequest) -> User {
        let artifact = self.artifact;
        let mut vector = match &req.vector {
            Some(v)
                if v.model_version == artifact.meta.version
                    && v.values.len() == artifact.meta.dim =>
            {
                v.values.clone()
            }
            _ => {
                Arc::new(artifact.fold_in(req.interactions.iter().map(|(id, w)| (id.as_str(), *w))))
            }
        };
        let history = artifact.history(req.history.iter().map(String::as_str));
        let interactions = || req.interactions.iter().map(|(id, w)| (id.as_str(), *w));
        let liked = artifact.liked(interactions());
        let aversion = Aversion::of(artifact, interactions());
        let mut from_profile = false;
        if vector.iter().all(|v| *v == 0.0) && history.is_empty() && !req.profile.is_empty() {
            let v = artifact.user_content.embed(&req.profile);
            if v.len() == artifact.meta.dim && v.iter().any(|x| *x != 0.0) {
                vector = Arc::new(v);
                from_profile = true;
            }
        }
        User {
            vector,
            history,
            liked,
            aversion,
            from_profile,
        }
    }

    /// The positively weighted interactions the model has rows for: what explanations point to.
    fn liked<'r>(&self, req: &'r ModelRequest) -> Vec<(u32, &'r str)> {
        req.interactions
            .iter()
            .filter(|(_, w)| *w > 0.0)
            .filter_map(|(id, _)| {
                self.artifact
                    .item_index
                    .get(id)
                    .map(|&row| (row, id.as_str()))
            })
            .collect()
    }

    /// The eligibility mask with the trending lift added, the user's exclusions applied and
    /// what goes with the user's dislikes pushed down.
    fn request_mask(&self, user: &User, req: &ModelRequest) -> Vec<f32> {
        let mut mask = self.mask.to_vec();
        self.lift_trending(&mut mask);
        for id in &req.exclude {
            if let Some(&row) = self.artifact.item_index.get(id) {
                mask[row as usize] = f32::NEG_INFINITY;
            }
        }
        if let Some(aversion) = &user.aversion {
            aversion.apply(&mut mask);
        }
        mask
    }

    /// Adds the trending boost to the rows of what is trending now, in proportion to the top.
    fn lift_trending(&self, mask: &mut [f32]) {
        let boost = self.signals.trending_boost;
        let Some(trending) = self.signals.trending.filter(|_| boost > 0.0) else {
            return;
        };
        let top = trending.top_recent(BOOSTED, common::now_millis(), BOOST_MAX_AGE);
        let max = top.first().map_or(1.0, |e| e.score.max(f64::MIN_POSITIVE));
        for e in &top {
            if let Some(&row) = self.artifact.item_index.get(&e.id) {
                // The mask is -inf for filtered items: they stay filtered.
                mask[row as usize] += boost * (e.score / max) as f32;
            }
        }
    }

    /// The model's top `k`, each with its explanation.
    fn model_items(
        &self,
        scorer: &Mutex<Scorer>,
        user: &User,
        liked: &[(u32, &str)],
        req: &ModelRequest,
    ) -> Result<Vec<Recommendation>, ApiError> {
        let artifact = self.artifact;
        let top = scorer
            .lock()
            .top_k(&user.query(artifact), &self.request_mask(user, req), req.k)
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        Ok(top
            .into_iter()
            .map(|(row, score)| {
                // Nothing liked: the version's popularity, less what goes with the dislikes.
                let mut why = vec![if user.likes() {
                    Reason::CollaborativeFiltering
                } else {
                    Reason::Popular
                }];
                if user.from_profile {
                    why.push(Reason::MatchesProfile);
                }
                why.extend(self.nearest(artifact.item_vector(row), liked));
                if let Some((before, _)) = artifact.strongest_predecessor(row, &user.history) {
                    why.push(Reason::OftenNextAfter(
                        artifact.item_ids[before as usize].clone(),
                    ));
                }
                Recommendation {
                    item_id: artifact.item_ids[row as usize].clone(),
                    score,
                    reasons: reasons(why),
                }
            })
            .collect())
    }

    /// The liked item nearest to `vector` in factor space, as a reason.
    fn nearest(&self, vector: &[f32], liked: &[(u32, &str)]) -> Option<Reason> {
        liked
            .iter()
            .map(|(r, id)| (dot(vector, self.artifact.item_vector(*r)), *id))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, id)| Reason::SimilarTo(id.to_owned()))
    }

    /// Scores the unlisted items the request may get by their content, merges them into
    /// `items` and keeps the best `k`.
    fn add_unlisted(
        &self,
        items: &mut Vec<Recommendation>,
        user: &User,
        liked: &[(u32, &str)],
        req: &ModelRequest,
    ) {
        let fresh: Vec<&UnlistedItem> = self
            .unlisted
            .iter()
            .filter(|u| !req.exclude.contains(&u.item_id))
            .filter(|u| {
                req.category
                    .as_deref()
                    .is_none_or(|c| u.categories.iter().any(|x| x == c))
            })
            .collect();
        if fresh.is_empty() {
            return;
        }
        let vectors: Vec<&[f32]> = fresh.iter().map(|u| u.vector.as_slice()).collect();
        let scores = self
            .artifact
            .score_unlisted(&user.query(self.artifact), &vectors);
        for (u, score) in fresh.into_iter().zip(scores) {
            let why = [Reason::NewItemByContent]
                .into_iter()
                .chain(self.nearest(&u.vector, liked));
            items.push(Recommendation {
                item_id: u.item_id.clone(),
                score,
                reasons: reasons(why),
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

#[cfg(test)]
mod tests {
    use common::Item;
    use models::ModelMeta;

    use super::*;

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

    /// A version of 6 items along two axes: x-items (x1..x4) and y-items (y1, y2).
    fn model(
        hybrid: models::HybridParams,
        successors: Vec<Vec<(u32, f32)>>,
    ) -> (ModelArtifact, Mutex<Scorer>) {
        let ids = ["x1", "x2", "x3", "x4", "y1", "y2"];
        let factors = vec![1.0, 0.0, 0.9, 0.1, 0.8, 0.0, 0.7, 0.1, 0.0, 1.0, 0.1, 0.9];
        let meta = ModelMeta {
            hybrid,
            ..testkit::model::meta("v1", 2, 6)
        };
        let artifact = testkit::model::artifact(meta, &ids, factors, successors);
        let scorer =
            Mutex::new(Scorer::new(&artifact.onnx, 6, 2, 1).expect("ONNX Runtime (make setup)"));
        (artifact, scorer)
    }

    async fn fixture() -> (ModelArtifact, Mutex<Scorer>, CatalogView, Popularity) {
        fixture_with(Default::default(), Vec::new()).await
    }

    async fn fixture_with(
        hybrid: models::HybridParams,
        successors: Vec<Vec<(u32, f32)>>,
    ) -> (ModelArtifact, Mutex<Scorer>, CatalogView, Popularity) {
        let (artifact, scorer) = model(hybrid, successors);
        let catalog = CatalogView::open(Arc::new(testkit::NullCatalog))
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
            diversity: Diversity::NONE,
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
                let (items, _) = Ranker {
                    artifact: &artifact,
                    scorer: Some(&scorer),
                    mask: &mask,
                    unlisted: &[],
                    catalog: &catalog,
                    signals: Signals::popular(&popularity),
                }
                .rank(&req)
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
        let (items, vector) = Ranker {
            artifact: &artifact,
            scorer: Some(&scorer),
            mask: &mask,
            unlisted: &[],
            catalog: &catalog,
            signals: Signals::popular(&popularity),
        }
        .rank(&request(4, None))
        .expect("score");
        let ids: Vec<&str> = items.iter().map(|r| r.item_id.as_str()).collect();
        // x2 is the only eligible x-item; the y-items follow; `fresh` is not in the model and
        // comes from popularity.
        assert_eq!(ids[0], "x2");
        assert_eq!(
            items[0].reasons,
            vec![
                "collaborative_filtering".to_owned(),
                "similar_to:x1".to_owned()
            ]
        );
        assert!(ids.contains(&"fresh"), "{ids:?}");
        assert_eq!(
            items
                .iter()
                .find(|r| r.item_id == "fresh")
                .map(|r| r.reasons.clone()),
            Some(vec!["popular".to_owned()])
        );
        assert_eq!(vector.model_version, "v1");

        // A vector carried over for this version is used as is: pointing along y ranks y first.
        let mut req = request(2, None);
        req.vector = Some(UserVector {
            model_version: "v1".into(),
            values: Arc::new(vec![0.0, 1.0]),
        });
        let (items, _) = Ranker {
            artifact: &artifact,
            scorer: Some(&scorer),
            mask: &mask,
            unlisted: &[],
            catalog: &catalog,
            signals: Signals::popular(&popularity),
        }
        .rank(&req)
        .expect("score");
        assert_eq!(items[0].item_id, "y1");
        // A vector from another version is ignored and folded in again.
        req.vector = Some(UserVector {
            model_version: "v0".into(),
            values: Arc::new(vec![0.0, 1.0]),
        });
        let (items, vector) = Ranker {
            artifact: &artifact,
            scorer: Some(&scorer),
            mask: &mask,
            unlisted: &[],
            catalog: &catalog,
            signals: Signals::popular(&popularity),
        }
        .rank(&req)
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
            diversity: Diversity::NONE,
            vector: None,
        };
        let (items, _) = Ranker {
            artifact: &artifact,
            scorer: Some(&scorer),
            mask: &mask,
            unlisted: &[],
            catalog: &catalog,
            signals: Signals::popular(&popularity),
        }
        .rank(&req)
        .expect("score");
        let ids: Vec<&str> = items.iter().map(|r| r.item_id.as_str()).collect();
        assert_eq!(ids, vec!["fresh", "y2", "x2"]);
        assert!(
            items
                .iter()
                .all(|r| r.reasons == vec!["popular".to_owned()])
        );
    }

    #[tokio::test]
    async fn what_usually_comes_next_is_recommended_with_its_reason() {
        // CF alone would pick x2 for an x1 fan; the transitions say y1 follows x1.
        let hybrid = models::HybridParams {
            cf_weight: 0.2,
            ..Default::default()
        };
        let mut successors = vec![Vec::new(); 6];
        successors[0] = vec![(4, 1.0)];
        let (artifact, scorer, catalog, popularity) = fixture_with(hybrid, successors).await;
        let mask = MaskCache::default().get(&artifact, &catalog, None);
        let (items, _) = Ranker {
            artifact: &artifact,
            scorer: Some(&scorer),
            mask: &mask,
            unlisted: &[],
            catalog: &catalog,
            signals: Signals::popular(&popularity),
        }
        .rank(&request(2, None))
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
    async fn what_goes_with_the_whole_history_is_recommended() {
        // y1 was liked long ago (not in the recent history); the item-to-item table says y2
        // goes with it. With the blend on that part, y2 comes first for this x1 fan.
        let (_, _, catalog, popularity) = fixture().await;
        let ids = ["x1", "x2", "x3", "x4", "y1", "y2"];
        let factors = vec![1.0, 0.0, 0.9, 0.1, 0.8, 0.0, 0.7, 0.1, 0.0, 1.0, 0.1, 0.9];
        let mut neighbours = vec![Vec::new(); 6];
        neighbours[4] = vec![(5, 1.0)];
        let meta = ModelMeta {
            blend: Some(models::blend::Blend::fixed(models::blend::Weights::new(
                0.2, 0.8, 0.0,
            ))),
            ..testkit::model::meta("v1", 2, 6)
        };
        let artifact = ModelArtifact::build_hybrid(
            meta,
            ids.iter().map(|&id| id.to_owned()).collect(),
            factors,
            vec![1.0; 6],
            vec![Vec::new(); 6],
            neighbours,
        );
        let scorer =
            Mutex::new(Scorer::new(&artifact.onnx, 6, 2, 1).expect("ONNX Runtime (make setup)"));
        let mask = MaskCache::default().get(&artifact, &catalog, None);
        let mut req = request(2, None);
        req.interactions.push(("y1".into(), 1.0));
        req.exclude.insert("y1".into());
        let (items, _) = Ranker {
            artifact: &artifact,
            scorer: Some(&scorer),
            mask: &mask,
            unlisted: &[],
            catalog: &catalog,
            signals: Signals::popular(&popularity),
        }
        .rank(&req)
        .expect("score");
        assert_eq!(items[0].item_id, "y2", "{items:?}");
        // Without that part, CF alone puts the x-item first.
        let cf_only = ModelArtifact::build_hybrid(
            ModelMeta {
                blend: Some(models::blend::Blend::fixed(models::blend::Weights::new(
                    1.0, 0.0, 0.0,
                ))),
                ..artifact.meta.clone()
            },
            artifact.item_ids.clone(),
            artifact.factors.clone(),
            artifact.popularity.clone(),
            artifact.successors.clone(),
            artifact.neighbours.clone(),
        );
        let (items, _) = Ranker {
            artifact: &cf_only,
            scorer: Some(&scorer),
            mask: &mask,
            unlisted: &[],
            catalog: &catalog,
            signals: Signals::popular(&popularity),
        }
        .rank(&req)
        .expect("score");
        assert_eq!(items[0].item_id, "x2", "{items:?}");
    }

    #[tokio::test]
    async fn a_disliked_item_is_never_returned_and_what_goes_with_it_goes_down() {
        let (base, _, catalog, _) = fixture().await;
        // The x-items go together, the y-items too; CF alone ranks.
        let together = |rows: &[u32]| rows.iter().map(|&r| (r, 0.5)).collect::<Vec<_>>();
        let neighbours = [
            &[1, 2, 3][..],
            &[0, 2, 3],
            &[0, 1, 3],
            &[0, 1, 2],
            &[5],
            &[4],
        ];
        let artifact = ModelArtifact::build_hybrid(
            ModelMeta {
                blend: Some(models::blend::Blend::fixed(models::blend::Weights::new(
                    1.0, 0.0, 0.0,
                ))),
                ..base.meta.clone()
            },
            base.item_ids.clone(),
            base.factors.clone(),
            base.popularity.clone(),
            base.successors.clone(),
            neighbours.map(together).to_vec(),
        );
        let scorer =
            Mutex::new(Scorer::new(&artifact.onnx, 6, 2, 1).expect("ONNX Runtime (make setup)"));
        // x2 is the most popular item: what a user with nothing to go on gets first.
        let popularity = Popularity::new(
            [("x2", 50.0), ("x1", 40.0), ("y2", 30.0), ("y1", 20.0)]
                .map(|(id, p)| (id.to_owned(), p))
                .to_vec(),
        );
        let mask = MaskCache::default().get(&artifact, &catalog, None);
        let rank = |interactions: &[(&str, f32)]| {
            let req = ModelRequest {
                interactions: interactions
                    .iter()
                    .map(|&(id, w)| (id.to_owned(), w))
                    .collect(),
                history: interactions
                    .iter()
                    .filter(|(_, w)| *w > 0.0)
                    .map(|&(id, _)| id.to_owned())
                    .collect(),
                exclude: interactions.iter().map(|&(id, _)| id.to_owned()).collect(),
                profile: vec![],
                k: 4,
                category: None,
                diversity: Diversity::NONE,
                vector: None,
            };
            Ranker {
                artifact: &artifact,
                scorer: Some(&scorer),
                mask: &mask,
                unlisted: &[],
                catalog: &catalog,
                signals: Signals::popular(&popularity),
            }
            .rank(&req)
            .expect("rank")
            .0
        };
        let position = |items: &[Recommendation], id: &str| {
            items
                .iter()
                .position(|r| r.item_id == id)
                .unwrap_or_else(|| panic!("{id} in {items:?}"))
        };
        // Nothing liked, x1 disliked: never x1, and the y-items before the more popular x2.
        let items = rank(&[("x1", -1.0)]);
        assert!(items.iter().all(|r| r.item_id != "x1"), "{items:?}");
        assert!(position(&items, "y1") < position(&items, "x2"), "{items:?}");
        assert!(position(&items, "y2") < position(&items, "x2"), "{items:?}");
        assert_eq!(items[0].reasons, ["popular"]);
        // Both kinds liked, the x-kind a little more: x2 first, until an x-item is disliked.
        let liked = [("x1", 3.0), ("y1", 1.0)];
        assert_eq!(rank(&liked)[0].item_id, "x2");
        let items = rank(&[liked[0], liked[1], ("x3", -1.0)]);
        assert!(position(&items, "y2") < position(&items, "x2"), "{items:?}");
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
            let (items, _) = Ranker {
                artifact: &artifact,
                scorer: Some(&scorer),
                mask: &mask,
                unlisted: &[],
                catalog: &catalog,
                signals,
            }
            .rank(&request(3, None))
            .expect("score");
            items.into_iter().map(|r| r.item_id).collect::<Vec<_>>()
        };
        // An x1 fan: CF puts the other x items first; a strong lift puts the trending y2 first.
        assert_ne!(ranked(0.0)[0], "y2");
        assert_eq!(ranked(10.0)[0], "y2");
    }

    #[tokio::test]
    async fn diversity_brings_another_category_up_and_keeps_every_filter() {
        let (artifact, scorer, catalog, popularity) = fixture().await;
        // Every x-item but the seen x1 back in the catalogue: an x1 fan's list is all x-items.
        catalog.upsert(item("x3", "x", true)).await.expect("upsert");
        catalog.upsert(item("x4", "x", true)).await.expect("upsert");
        catalog
            .upsert(item("y3", "y", false))
            .await
            .expect("upsert");
        let mask = MaskCache::default().get(&artifact, &catalog, None);
        let unlisted = UnlistedCache::default().get(&artifact, &catalog);
        let ranker = Ranker {
            artifact: &artifact,
            scorer: Some(&scorer),
            mask: &mask,
            unlisted: &unlisted,
            catalog: &catalog,
            signals: Signals::popular(&popularity),
        };
        let ranked = |k: usize, diversity: f64| {
            let req = ModelRequest {
                diversity: Diversity::new(diversity).expect("in range"),
                ..request(k, None)
            };
            ranker.rank(&req).expect("rank").0
        };
        let ids =
            |items: &[Recommendation]| items.iter().map(|r| r.item_id.clone()).collect::<Vec<_>>();
        let plain = ranked(3, 0.0);
        assert_eq!(ids(&plain), ["x2", "x3", "x4"], "{plain:?}");
        // Diversity keeps the best item first and brings a y-item up beside it.
        for diversity in [0.7, 1.0] {
            let diverse = ranked(3, diversity);
            assert_eq!(diverse[0].item_id, "x2", "{diverse:?}");
            assert!(diverse[1].item_id.starts_with('y'), "{diverse:?}");
        }
        let eligible = ["x2", "x3", "x4", "y1", "y2", "fresh"];
        for diversity in [0.0, 0.3, 0.7, 1.0] {
            for k in 0..=8 {
                let items = ranked(k, diversity);
                // Only what the plain ranking may return: never seen, unavailable or deleted.
                assert!(
                    items.iter().all(|r| eligible.contains(&r.item_id.as_str())),
                    "{items:?}"
                );
                assert_eq!(items.len(), k.min(eligible.len()), "{items:?}");
                assert!(
                    items.windows(2).all(|w| w[0].score >= w[1].score),
                    "not best first: {items:?}"
                );
            }
        }
        // Diversity 0 is the plain ranking, scores and all.
        assert_eq!(
            ranked(4, 0.0),
            ranker.rank(&request(4, None)).expect("rank").0
        );
    }

    #[test]
    fn reasons_display_as_the_api_strings() {
        let cases = [
            (Reason::CollaborativeFiltering, "collaborative_filtering"),
            (Reason::MatchesProfile, "matches_profile"),
            (Reason::SimilarTo("a:b".into()), "similar_to:a:b"),
            (Reason::OftenNextAfter("x1".into()), "often_next_after:x1"),
            (Reason::NewItemByContent, "new_item_by_content"),
            (Reason::Trending, "trending"),
            (Reason::Popular, "popular"),
        ];
        for (reason, wire) in cases {
            assert_eq!(reason.to_string(), wire);
        }
    }

    mod properties {
        use std::sync::LazyLock;

        use proptest::prelude::*;

        use super::*;

        /// The model's six items, three items it has no row for, and two never catalogued.
        const IDS: [&str; 11] = [
            "x1", "x2", "x3", "x4", "y1", "y2", "n1", "n2", "n3", "u1", "u2",
        ];

        /// One model for every case: building an ONNX session per case would dominate.
        static MODEL: LazyLock<(ModelArtifact, Mutex<Scorer>)> = LazyLock::new(|| {
            let hybrid = models::HybridParams {
                cf_weight: 0.5,
                ..Default::default()
            };
            let mut successors = vec![Vec::new(); 6];
            successors[0] = vec![(4, 1.0)];
            successors[4] = vec![(1, 0.5), (5, 0.5)];
            let (mut artifact, scorer) = model(hybrid, successors);
            // Content models, so that unlisted items and profiles get vectors.
            artifact.content = models::content::ContentModel {
                dim: 2,
                features: vec!["c:x".into(), "c:y".into()],
                weights: vec![1.0, 0.0, 0.0, 1.0, 0.1, 0.1],
            };
            artifact.user_content = models::content::ContentModel {
                dim: 2,
                features: vec!["p:y".into()],
                weights: vec![0.2, 0.9, 0.0, 0.0],
            };
            (artifact, scorer)
        });

        #[derive(Clone, Copy, Debug)]
        enum Status {
            Available,
            Unavailable,
            Deleted,
        }

        /// What one item is in a case: its catalogue status and category (`None` when never
        /// catalogued), its popularity and trending weight, and what the user did with it.
        #[derive(Clone, Debug)]
        struct Case {
            status: Option<(Status, &'static str)>,
            popularity: Option<f64>,
            trending: Option<f64>,
            interaction: Option<f32>,
            excluded: bool,
        }

        fn case() -> impl Strategy<Value = Case> {
            let status = prop_oneof![
                Just(Status::Available),
                Just(Status::Unavailable),
                Just(Status::Deleted)
            ];
            (
                proptest::option::weighted(0.8, (status, prop_oneof![Just("x"), Just("y")])),
                proptest::option::of(1.0..100.0f64),
                proptest::option::of(1.0..10.0f64),
                proptest::option::weighted(0.3, -1.0..5.0f32),
                proptest::bool::weighted(0.2),
            )
                .prop_map(|(status, popularity, trending, interaction, excluded)| {
                    Case {
                        status,
                        popularity,
                        trending,
                        interaction,
                        excluded,
                    }
                })
        }

        fn catalog(cases: &[Case]) -> CatalogView {
            futures::executor::block_on(async {
                let catalog = CatalogView::open(Arc::new(testkit::NullCatalog))
                    .await
                    .expect("view");
                for (id, case) in IDS.iter().zip(cases) {
                    let Some((status, category)) = case.status else {
                        continue;
                    };
                    let available = matches!(status, Status::Available);
                    catalog
                        .upsert(item(id, category, available))
                        .await
                        .expect("upsert");
                    if matches!(status, Status::Deleted) {
                        catalog.delete(id).await.expect("delete");
                    }
                }
                catalog
            })
        }

        /// The post-conditions of any ranked list: at most `k`, no duplicate, nothing the user
        /// has seen, nothing ineligible (deleted, unavailable, never catalogued, off-category),
        /// and exactly `k` when popularity alone knows `k` eligible unseen items.
        fn check(
            items: &[Recommendation],
            req: &ModelRequest,
            catalog: &CatalogView,
            popularity: &Popularity,
        ) -> Result<(), TestCaseError> {
            let view = catalog.read();
            let ids: Vec<&str> = items.iter().map(|r| r.item_id.as_str()).collect();
            prop_assert!(ids.len() <= req.k, "{ids:?}");
            let unique: HashSet<_> = ids.iter().collect();
            prop_assert_eq!(unique.len(), ids.len(), "duplicates: {:?}", ids);
            for id in &ids {
                prop_assert!(!req.exclude.contains(*id), "seen {id} in {ids:?}");
                prop_assert!(
                    eligible(&view, id, req.category.as_deref()),
                    "ineligible {id} in {ids:?}"
                );
            }
            let enough = popularity
                .ranked()
                .iter()
                .filter(|(id, _)| !req.exclude.contains(id))
                .filter(|(id, _)| eligible(&view, id, req.category.as_deref()))
                .count()
                >= req.k;
            if enough {
                prop_assert_eq!(ids.len(), req.k, "{:?}", ids);
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn rankings_keep_their_post_conditions(
                cases in proptest::collection::vec(case(), IDS.len()),
                k in 0usize..14,
                category in prop_oneof![Just(None), Just(Some("x")), Just(Some("y"))],
                boost in prop_oneof![Just(0.0f32), Just(5.0f32)],
                profile in proptest::bool::ANY,
                diversity in prop_oneof![Just(0.0f64), Just(0.3), Just(1.0)],
            ) {
                let (artifact, scorer) = &*MODEL;
                let catalog = catalog(&cases);
                let popularity = Popularity::new(
                    IDS.iter()
                        .zip(&cases)
                        .filter_map(|(id, c)| c.popularity.map(|p| ((*id).to_owned(), p)))
                        .collect(),
                );
                let trending = Trending::new(Duration::from_secs(300), 12, 100.0);
                let now = common::now_millis();
                for (id, c) in IDS.iter().zip(&cases) {
                    if let Some(w) = c.trending {
                        trending.record("someone", id, &[], w, now, now);
                    }
                }
                let interactions: Vec<(String, f32)> = IDS
                    .iter()
                    .zip(&cases)
                    .filter_map(|(id, c)| c.interaction.map(|w| ((*id).to_owned(), w)))
                    .collect();
                let req = ModelRequest {
                    history: interactions
                        .iter()
                        .filter(|(_, w)| *w > 0.0)
                        .map(|(id, _)| id.clone())
                        .collect(),
                    exclude: IDS
                        .iter()
                        .zip(&cases)
                        .filter(|(_, c)| c.excluded || c.interaction.is_some())
                        .map(|(id, _)| (*id).to_owned())
                        .collect(),
                    interactions,
                    profile: if profile { vec!["p:y".into()] } else { vec![] },
                    k,
                    category: category.map(str::to_owned),
                    diversity: Diversity::new(diversity).expect("in range"),
                    vector: None,
                };
                let signals = Signals {
                    popularity: &popularity,
                    trending: Some(&trending),
                    trending_boost: boost,
                };
                let mask = MaskCache::default().get(artifact, &catalog, category);
                let unlisted = UnlistedCache::default().get(artifact, &catalog);
                let ranker = Ranker {
                    artifact,
                    scorer: Some(scorer),
                    mask: &mask,
                    unlisted: &unlisted,
                    catalog: &catalog,
                    signals,
                };
                let (items, _) = ranker.rank(&req).expect("rank");
                check(&items, &req, &catalog, &popularity)?;
                // Without a loaded model the list is all fill, under the same rules.
                let items = fill(Vec::new(), &req, &catalog, signals);
                check(&items, &req, &catalog, &popularity)?;
            }
        }
    }
}
