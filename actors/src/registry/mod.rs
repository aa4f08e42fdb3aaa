//! Model versions on the object store, and which one is active.
//!
//! `models/manifest.json` names the active version and lists every version with its metrics;
//! it is written after a version's files, so a crash never activates a half-written model. The
//! active artifact is also held in memory, where model actors pick it up.
//!
//! A new version must pass a gate before it is activated: its NDCG@10 may not fall more than
//! `model.max_regression` below the active version's, both scored on the same fresh hold-out
//! (events neither trained on, [`models::gate`]) when the trainer could cut one of enough users,
//! else each on its own hold-out (the verdict says which). A rejected version is kept (for
//! inspection, or to activate by hand) and says why. Any stored version can be activated again,
//! and a rollback returns to the version that was active before the current one.
//!
//! The nodes of a cluster share the object store, and so the manifest: every change reads the
//! stored manifest afresh before writing it, [`ModelRegistry::refresh`] (every few seconds) makes
//! a version activated or rolled back on any node active on this one too, and a lease
//! (`models/lease.json`, [`ModelRegistry::try_lease`]) lets one node train at a time. The object
//! store has no conditional write, so the lease is taken by writing it and reading it back: two
//! nodes that take it within the same instant may both train, and the manifest then lists both
//! versions, the later activation winning, as after two runs one after the other.
//!
//! Every change of the in-memory active version goes through one method (`set_active`), which
//! keeps `streamrec_model_active` and `streamrec_model_activations_total` with it.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwapOption;
use common::ApiError;
use models::ModelArtifact;
use prometheus::{IntCounter, IntGauge, register_int_counter, register_int_gauge};
use serde::{Deserialize, Serialize};
use storage::ObjectStore;
use tokio::sync::Mutex;

mod gate;
mod lease;

pub use gate::Verdict;
use gate::gate;

static MODEL_ACTIVE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "streamrec_model_active",
        "1 when a model version is active on this node (its registry holds one for the model \
         actors to serve), 0 before the first."
    )
    .expect("metric registers once")
});

static MODEL_ACTIVATIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "streamrec_model_activations_total",
        "Times the active model version changed on this node: loaded at start, a trained version \
         that passed the gate, an activation or rollback here, or one followed from another node."
    )
    .expect("metric registers once")
});

/// Registers the model gauge and the activations counter (both at 0 until a version is active).
/// Called once at start (`supervisors::Node::start`); calling it again changes nothing.
pub fn register_metrics() {
    LazyLock::force(&MODEL_ACTIVE);
    LazyLock::force(&MODEL_ACTIVATIONS);
}

const MANIFEST: &str = "models/manifest.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Manifest {
    pub active: Option<String>,
    pub versions: Vec<VersionInfo>,
    /// Versions in the order they were activated, latest last (rollback walks it back).
    #[serde(default)]
    pub activations: Vec<String>,
    /// Personal profile fields (lower case) that every stored version's profile map has been
    /// rewritten without ([`ModelRegistry::scrub_personal_features`]); the rewrite runs again
    /// only when `pii.fields` names one that is not here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub personal_fields_scrubbed: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionInfo {
    pub version: String,
    pub created_at: i64,
    pub metrics: BTreeMap<String, f64>,
    /// Timestamps (epoch ms) of the oldest and newest training event.
    #[serde(default)]
    #[schema(value_type = Option<Vec<i64>>, min_items = 2, max_items = 2)]
    pub data_range: Option<(i64, i64)>,
    /// What the version was trained on and with.
    #[serde(default)]
    pub features: Option<VersionFeatures>,
    /// Why the gate kept this version from being activated, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    /// What the gate compared (both figures, and on which hold-out), if it compared anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
}

/// The shape of a version: its data and its parts.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionFeatures {
    pub num_items: usize,
    pub num_users: usize,
    pub num_interactions: usize,
    pub dim: usize,
    #[schema(value_type = Object)]
    pub hybrid: models::HybridParams,
    /// Content features the content map knows (categories, tags, attributes, title words).
    pub content_features: usize,
    /// The weights of CF, item-to-item and transitions the trainer chose, by history length
    /// (absent for versions from before the blend was chosen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub blend: Option<models::blend::Blend>,
    /// The item-to-item part's parameters (absent for versions without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub item_item: Option<models::item_item::ItemItemParams>,
}

/// What publishing a version did.
#[derive(Clone, Debug, PartialEq)]
pub enum Published {
    Activated,
    Rejected(String),
}

/// The metric the gate compares.
pub const GATE_METRIC: &str = "ndcg@10";

pub struct ModelRegistry {
    objects: Arc<dyn ObjectStore>,
    active: ArcSwapOption<ModelArtifact>,
    manifest: Mutex<Manifest>,
}

fn io(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("model store: {e}"))
}

impl ModelRegistry {
    /// Opens the registry and loads the active version, if any.
    pub async fn open(objects: Arc<dyn ObjectStore>) -> Result<Self, ApiError> {
        let manifest: Manifest = match objects.get(MANIFEST).await.map_err(io)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(io)?,
            None => Manifest::default(),
        };
        let registry = Self {
            objects,
            active: ArcSwapOption::empty(),
            manifest: Mutex::new(manifest.clone()),
        };
        if let Some(version) = &manifest.active {
            registry.set_active(Arc::new(registry.load(version).await?));
        }
        Ok(registry)
    }

    /// Makes `artifact` the active version in memory, where model actors load it from; the one
    /// place that does, so the metrics follow it. Replacing a version by itself (reloaded after a
    /// scrub, or activated again) is no activation.
    fn set_active(&self, artifact: Arc<ModelArtifact>) {
        let version = artifact.meta.version.clone();
        let previous = self.active.swap(Some(artifact));
        MODEL_ACTIVE.set(1);
        if previous.is_none_or(|p| p.meta.version != version) {
            MODEL_ACTIVATIONS.inc();
        }
    }

    async fn load(&self, version: &str) -> Result<ModelArtifact, ApiError> {
        let get = |name: &'static str| {
            let key = format!("models/{version}/{name}");
            async move {
                self.objects
                    .get(&key)
                    .await
                    .map_err(io)?
                    .ok_or_else(|| io(format!("{key} is missing")))
            }
        };
        let (meta, items, factors, onnx) = (
            get("meta.json").await?,
            get("items.json").await?,
            get("factors.bin").await?,
            get("model.onnx").await?,
        );
        // Versions from before the hybrid have no transition table.
        let transitions = self
            .objects
            .get(&format!("models/{version}/transitions.bin"))
            .await
            .map_err(io)?;
        let content = self
            .objects
            .get(&format!("models/{version}/content.json"))
            .await
            .map_err(io)?;
        let user_content = self
            .objects
            .get(&format!("models/{version}/user_content.json"))
            .await
            .map_err(io)?;
        ModelArtifact::from_files(
            &meta,
            &items,
            &factors,
            transitions.as_deref(),
            content.as_deref(),
            user_content.as_deref(),
            onnx,
        )
        .map_err(io)
    }

    /// The object store the registry (and the archive) writes to.
    pub fn objects(&self) -> &dyn ObjectStore {
        self.objects.as_ref()
    }

    /// Whether the object store answers.
    pub async fn health(&self) -> Result<(), String> {
        self.objects.health().await
    }

    pub fn active(&self) -> Option<Arc<ModelArtifact>> {
        self.active.load_full()
    }

    pub async fn manifest(&self) -> Manifest {
        self.manifest.lock().await.clone()
    }

    /// Stores a new version and activates it if it passes the gate: its `ndcg@10` is at least
    /// `(1 - max_regression)` times the active version's, on the shared hold-out if its metrics
    /// hold one (see [`gate`]). Versions without metrics (too little data to hold any out) pass,
    /// as does the first version.
    pub async fn publish(
        &self,
        artifact: ModelArtifact,
        max_regression: f64,
    ) -> Result<Published, ApiError> {
        let version = artifact.meta.version.clone();
        for (name, bytes) in artifact.to_files().map_err(io)? {
            self.objects
                .put(&format!("models/{version}/{name}"), bytes)
                .await
                .map_err(io)?;
        }
        let verdict = self
            .active()
            .and_then(|active| gate(&active.meta, &artifact.meta, max_regression));
        let rejected = verdict
            .as_ref()
            .filter(|v| !v.pass)
            .map(|v| v.message.clone());
        let mut manifest = self.manifest.lock().await;
        let mut next = self.stored(&manifest).await?;
        let meta = &artifact.meta;
        next.versions.push(VersionInfo {
            version: meta.version.clone(),
            created_at: meta.created_at,
            metrics: meta.metrics.clone(),
            data_range: meta.data_range,
            rejected: rejected.clone(),
            gate: verdict.map(|v| v.message),
            features: Some(VersionFeatures {
                num_items: meta.num_items,
                num_users: meta.num_users,
                num_interactions: meta.num_interactions,
                dim: meta.dim,
                hybrid: meta.hybrid,
                content_features: artifact.content.features.len(),
                blend: meta.blend.clone(),
                item_item: meta.item_item,
            }),
        });
        if rejected.is_none() {
            next.active = Some(version.clone());
            next.activations.push(version);
        }
        self.write_manifest(&next).await?;
        *manifest = next;
        Ok(match rejected {
            None => {
                self.set_active(Arc::new(artifact));
                Published::Activated
            }
            Some(why) => Published::Rejected(why),
        })
    }

    /// Makes a stored version the active one again.
    pub async fn activate(&self, version: &str) -> Result<Arc<ModelArtifact>, ApiError> {
        let mut manifest = self.manifest.lock().await;
        *manifest = self.stored(&manifest).await?;
        if !manifest.versions.iter().any(|v| v.version == version) {
            return Err(ApiError::not_found(format!("no model version {version:?}")));
        }
        let artifact = Arc::new(self.load(version).await?);
        let mut next = self.stored(&manifest).await?;
        next.active = Some(version.to_owned());
        next.activations.push(version.to_owned());
        self.write_manifest(&next).await?;
        *manifest = next;
        self.set_active(artifact.clone());
        Ok(artifact)
    }

    /// A one-time migration: rewrites the profile map (`user_content.json`) of every stored
    /// version without the features of personal fields, which versions trained before profiles
    /// were filtered may hold (`a:email=…`, `a:name:…`). Dropping a feature drops its weight row;
    /// every profile without personal fields embeds as before. A map that does not parse is
    /// replaced by an empty one (the version then serves without profiles). The manifest records
    /// the fields scrubbed, so this runs once per set of `pii.fields`; returns how many versions
    /// were rewritten.
    pub async fn scrub_personal_features(&self, fields: &[String]) -> Result<usize, ApiError> {
        let personal = common::pii::PersonalFields::new(fields);
        let mut manifest = self.manifest.lock().await;
        let done = common::pii::PersonalFields::new(&manifest.personal_fields_scrubbed);
        if fields.iter().all(|f| done.is_personal(f)) {
            return Ok(0);
        }
        let mut rewritten = Vec::new();
        // Every version in the store, listed or not (one written just before a crash, say).
        for key in self.objects.list("models/").await.map_err(io)? {
            let Some(version) = key
                .strip_prefix("models/")
                .and_then(|k| k.strip_suffix("/user_content.json"))
            else {
                continue;
            };
            let Some(bytes) = self.objects.get(&key).await.map_err(io)? else {
                continue;
            };
            let clean = match serde_json::from_slice::<models::content::ContentModel>(&bytes) {
                Ok(map) => map.without_features(|f| personal.is_personal_token(f)),
                Err(error) => {
                    tracing::warn!(%version, %error, "unreadable profile map replaced by an empty one");
                    Some(models::content::ContentModel::default())
                }
            };
            if let Some(clean) = clean {
                let bytes = serde_json::to_vec_pretty(&clean).map_err(io)?;
                self.objects.put(&key, bytes).await.map_err(io)?;
                rewritten.push(version.to_owned());
            }
        }
        let mut next = self.stored(&manifest).await?;
        next.personal_fields_scrubbed
            .extend(fields.iter().map(|f| f.to_lowercase()));
        next.personal_fields_scrubbed.sort_unstable();
        next.personal_fields_scrubbed.dedup();
        self.write_manifest(&next).await?;
        *manifest = next;
        tracing::info!(
            num_versions = rewritten.len(),
            "stored profile maps scrubbed of personal fields"
        );
        // The artifact in memory is the stored one again.
        if let Some(active) = manifest.active.as_deref()
            && rewritten.iter().any(|v| v == active)
        {
            self.set_active(Arc::new(self.load(active).await?));
        }
        Ok(rewritten.len())
    }

    /// The version active before the current one, if any.
    pub async fn previous(&self) -> Option<String> {
        let manifest = self.manifest.lock().await;
        let current = manifest.active.as_deref()?;
        manifest
            .activations
            .iter()
            .rev()
            .find(|v| v.as_str() != current)
            .cloned()
    }

    /// Reads the manifest again (another node may have changed it): if another version is
    /// active now, loads it and makes it this node's active one. Returns whether it did.
    pub async fn refresh(&self) -> Result<bool, ApiError> {
        let mut manifest = self.manifest.lock().await;
        let stored = self.stored(&manifest).await?;
        let changed = stored.active.is_some() && stored.active != manifest.active;
        if let Some(version) = stored.active.as_deref().filter(|_| changed) {
            let artifact = self.load(version).await?;
            self.set_active(Arc::new(artifact));
            tracing::info!(%version, "model version activated on another node");
        }
        *manifest = stored;
        Ok(changed)
    }

    /// The manifest as stored, or `cached` when none is stored yet.
    async fn stored(&self, cached: &Manifest) -> Result<Manifest, ApiError> {
        match self.objects.get(MANIFEST).await.map_err(io)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(io),
            None => Ok(cached.clone()),
        }
    }

    async fn write_manifest(&self, manifest: &Manifest) -> Result<(), ApiError> {
        self.objects
            .put(MANIFEST, serde_json::to_vec_pretty(manifest).map_err(io)?)
            .await
            .map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use models::ModelMeta;

    use super::*;

    /// A one-item version with hold-out NDCG@10 `ndcg` (none: too little data to hold out).
    fn artifact(version: &str, ndcg: Option<f64>) -> ModelArtifact {
        let meta = ModelMeta {
            metrics: ndcg
                .map(|n| BTreeMap::from([(GATE_METRIC.to_owned(), n)]))
                .unwrap_or_default(),
            ..testkit::model::meta(version, 1, 1)
        };
        testkit::model::artifact(meta, &["i"], vec![1.0], Vec::new())
    }

    async fn registry(dir: &std::path::Path) -> ModelRegistry {
        let objects = Arc::new(storage::LocalObjectStore::new(dir).expect("store"));
        ModelRegistry::open(objects).await.expect("open")
    }

    #[tokio::test]
    async fn nodes_sharing_the_store_follow_each_others_versions_and_keep_all_of_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (registry(dir.path()).await, registry(dir.path()).await);
        a.publish(artifact("v1", Some(0.2)), 0.05)
            .await
            .expect("v1");
        assert!(b.active().is_none());
        assert!(b.refresh().await.expect("refresh"), "b follows a");
        assert_eq!(b.active().expect("active").meta.version, "v1");
        assert!(!b.refresh().await.expect("refresh"), "nothing new");
        // b publishes from a manifest it reads afresh: v1 stays listed.
        b.publish(artifact("v2", Some(0.3)), 0.05)
            .await
            .expect("v2");
        assert!(a.refresh().await.expect("refresh"));
        assert_eq!(a.active().expect("active").meta.version, "v2");
        let listed: Vec<String> = a
            .manifest()
            .await
            .versions
            .into_iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(listed, ["v1", "v2"]);
        // A rollback on a reaches b.
        a.activate("v1").await.expect("rollback");
        assert!(b.refresh().await.expect("refresh"));
        assert_eq!(b.active().expect("active").meta.version, "v1");
    }

    #[tokio::test]
    async fn the_manifest_shows_the_blend_a_version_was_trained_with() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registry(dir.path()).await;
        let blend = models::blend::Blend {
            by_history: vec![
                (0, models::blend::Weights::new(0.2, 0.1, 0.7)),
                (10, models::blend::Weights::new(0.3, 0.3, 0.4)),
            ],
        };
        let mut chosen = artifact("v1", Some(0.2));
        chosen.meta.blend = Some(blend.clone());
        r.publish(chosen, 0.05).await.expect("v1");
        r.publish(artifact("v2", Some(0.2)), 0.05)
            .await
            .expect("v2");
        let manifest = r.manifest().await;
        let features = |v: &str| {
            manifest
                .versions
                .iter()
                .find(|i| i.version == v)
                .and_then(|i| i.features.clone())
                .expect("features")
        };
        assert_eq!(features("v1").blend, Some(blend));
        assert_eq!(
            features("v2").blend,
            None,
            "a version without one shows none"
        );
    }

    #[tokio::test]
    async fn one_node_holds_the_training_lease_until_it_ends_or_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (registry(dir.path()).await, registry(dir.path()).await);
        let hour = std::time::Duration::from_secs(3600);
        assert!(a.try_lease("node-a", hour).await.expect("lease"));
        assert!(a.try_lease("node-a", hour).await.expect("renewed"));
        assert!(!b.try_lease("node-b", hour).await.expect("held"));
        b.end_lease("node-b").await.expect("not b's to end");
        assert!(!b.try_lease("node-b", hour).await.expect("still held"));
        a.end_lease("node-a").await.expect("ended");
        assert!(
            b.try_lease("node-b", std::time::Duration::ZERO)
                .await
                .expect("free")
        );
        // Expired at once: anyone may take it.
        assert!(a.try_lease("node-a", hour).await.expect("expired"));
    }

    #[tokio::test]
    async fn a_worse_version_is_kept_out_and_can_still_be_activated_by_hand() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registry(dir.path()).await;
        assert_eq!(
            r.publish(artifact("v1", Some(0.20)), 0.05)
                .await
                .expect("v1"),
            Published::Activated
        );
        // Within 5%: activated. More than 5% worse: stored, rejected, v2 stays.
        assert_eq!(
            r.publish(artifact("v2", Some(0.195)), 0.05)
                .await
                .expect("v2"),
            Published::Activated
        );
        let verdict = r
            .publish(artifact("v3", Some(0.15)), 0.05)
            .await
            .expect("v3");
        assert!(
            matches!(&verdict, Published::Rejected(why)
                if why.contains("own hold-out: candidate 0.1500, active 0.1950")),
            "{verdict:?}"
        );
        assert_eq!(r.active().expect("active").meta.version, "v2");
        // No metrics (too little data to hold out): nothing to compare, activated.
        assert_eq!(
            r.publish(artifact("v4", None), 0.05).await.expect("v4"),
            Published::Activated
        );

        // The manifest survives a restart: active version, rejection reason, activation order.
        let r = registry(dir.path()).await;
        let manifest = r.manifest().await;
        assert_eq!(manifest.active.as_deref(), Some("v4"));
        let v3 = manifest
            .versions
            .iter()
            .find(|v| v.version == "v3")
            .expect("v3 kept");
        assert!(v3.rejected.is_some());
        let features = v3.features.as_ref().expect("features recorded");
        assert_eq!((features.num_items, features.dim), (1, 1));
        assert_eq!(r.previous().await.as_deref(), Some("v2"));
        r.activate("v3").await.expect("activate by hand");
        assert_eq!(r.active().expect("active").meta.version, "v3");
        assert_eq!(r.previous().await.as_deref(), Some("v4"));
        let Err(missing) = r.activate("v9").await else {
            panic!("an unknown version was activated");
        };
        assert_eq!(missing.code, common::ErrorCode::NotFound);
    }

    /// A version with its own hold-out NDCG@10 `own` and, scored beside the active version on a
    /// shared hold-out of `users` users, the candidate's and the active version's figures.
    fn scored(version: &str, own: f64, users: usize, shared: Option<(f64, f64)>) -> ModelArtifact {
        use models::gate::{ACTIVE_SHARED_NDCG, SHARED_NDCG, SHARED_USERS};
        let mut a = artifact(version, Some(own));
        a.meta.metrics.insert(SHARED_USERS.into(), users as f64);
        if let Some((candidate, active)) = shared {
            a.meta.metrics.insert(SHARED_NDCG.into(), candidate);
            a.meta.metrics.insert(ACTIVE_SHARED_NDCG.into(), active);
        }
        a
    }

    #[tokio::test]
    async fn versions_are_compared_on_the_shared_hold_out_not_on_their_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registry(dir.path()).await;
        r.publish(artifact("v1", Some(0.30)), 0.05)
            .await
            .expect("v1");
        // Its own metric is a third below v1's, but on the same events it does better.
        let v2 = r
            .publish(scored("v2", 0.20, 80, Some((0.25, 0.22))), 0.05)
            .await
            .expect("v2");
        assert_eq!(v2, Published::Activated);
        // Its own metric is the best yet, but on the same events it is far worse.
        let v3 = r
            .publish(scored("v3", 0.40, 80, Some((0.18, 0.25))), 0.05)
            .await
            .expect("v3");
        let Published::Rejected(why) = v3 else {
            panic!("v3 was activated: {v3:?}");
        };
        assert!(
            why.contains("shared hold-out of 80 users: candidate 0.1800, active 0.2500"),
            "{why}"
        );
        assert_eq!(r.active().expect("active").meta.version, "v2");
        // Too few fresh users to compare on: each version's own metric, and the verdict says so.
        let v4 = r
            .publish(scored("v4", 0.10, 12, None), 0.05)
            .await
            .expect("v4");
        assert!(
            matches!(&v4, Published::Rejected(why) if why.contains("only 12 users")
                && why.contains("candidate 0.1000, active 0.2000")),
            "{v4:?}"
        );

        let manifest = registry(dir.path()).await.manifest().await;
        let info = |v: &str| {
            manifest
                .versions
                .iter()
                .find(|i| i.version == v)
                .expect("listed")
                .clone()
        };
        let (v2, v3) = (info("v2"), info("v3"));
        assert!(v2.rejected.is_none());
        assert!(
            v2.gate
                .as_deref()
                .is_some_and(|g| g.contains("candidate 0.2500, active 0.2200")),
            "{:?}",
            v2.gate
        );
        assert_eq!(v3.rejected.as_deref(), Some(why.as_str()));
        assert_eq!(v3.metrics[models::gate::SHARED_NDCG], 0.18);
        assert_eq!(v3.metrics[models::gate::ACTIVE_SHARED_NDCG], 0.25);
    }

    #[tokio::test]
    async fn stored_versions_are_rewritten_once_without_personal_profile_features() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = registry(dir.path()).await;
        // A version trained before profiles were filtered: its profile map learned from emails,
        // names and notes (any case) beside a harmless field.
        let mut old = artifact("v1", None);
        let features: Vec<String> = [
            "a:Email=ada@example.org",
            "a:age=36",
            "a:email:example",
            "a:name:lovelace",
            "a:notes~1990",
        ]
        .map(String::from)
        .to_vec();
        old.user_content = models::content::ContentModel {
            dim: 1,
            weights: (0..=features.len()).map(|i| i as f32).collect(),
            features,
        };
        r.publish(old, 0.05).await.expect("v1");
        let key = dir.path().join("models/v1/user_content.json");
        let fields = ["email", "name", "notes"].map(String::from);

        assert_eq!(r.scrub_personal_features(&fields).await.expect("scrub"), 1);
        let stored = std::fs::read_to_string(&key).expect("user content");
        for secret in ["ada@example.org", "example", "lovelace", "notes", "Email"] {
            assert!(!stored.contains(secret), "{secret} in {stored}");
        }
        let map: models::content::ContentModel =
            serde_json::from_str(&stored).expect("still a profile map");
        assert_eq!(map.features, ["a:age=36"]);
        // The harmless feature keeps its row, and the intercept its own.
        assert_eq!(map.weights, [1.0, 5.0]);
        assert_eq!(r.active().expect("active").user_content, map);
        assert_eq!(r.manifest().await.personal_fields_scrubbed, fields);

        // Recorded in the manifest: a restart does not rewrite again, a new field does.
        let planted = models::content::ContentModel {
            dim: 1,
            features: vec!["a:phone=555".into()],
            weights: vec![1.0, 2.0],
        };
        std::fs::write(&key, serde_json::to_vec(&planted).expect("json")).expect("plant");
        let r = registry(dir.path()).await;
        assert_eq!(r.scrub_personal_features(&fields).await.expect("scrub"), 0);
        assert!(std::fs::read_to_string(&key).expect("kept").contains("555"));
        let more = ["email", "name", "notes", "phone"].map(String::from);
        assert_eq!(r.scrub_personal_features(&more).await.expect("scrub"), 1);
        let map: models::content::ContentModel =
            serde_json::from_slice(&std::fs::read(&key).expect("rewritten")).expect("parses");
        assert_eq!((map.features.len(), map.weights), (0, vec![2.0]));
    }
}
