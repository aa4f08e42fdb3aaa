//! Model versions on the object store, and which one is active.
//!
//! `models/manifest.json` names the active version and lists every version with its metrics;
//! it is written after a version's files, so a crash never activates a half-written model. The
//! active artifact is also held in memory, where model actors pick it up.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use common::ApiError;
use models::{ModelArtifact, ModelMeta};
use serde::{Deserialize, Serialize};
use storage::ObjectStore;
use tokio::sync::Mutex;

const MANIFEST: &str = "models/manifest.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub active: Option<String>,
    pub versions: Vec<VersionInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: String,
    pub created_at: i64,
    pub metrics: BTreeMap<String, f64>,
}

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
            registry
                .active
                .store(Some(Arc::new(registry.load(version).await?)));
        }
        Ok(registry)
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
        ModelArtifact::from_files(&meta, &items, &factors, transitions.as_deref(), onnx).map_err(io)
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

    /// Stores a new version and makes it the active one.
    pub async fn publish(&self, artifact: ModelArtifact) -> Result<Arc<ModelArtifact>, ApiError> {
        let version = artifact.meta.version.clone();
        for (name, bytes) in artifact.to_files().map_err(io)? {
            self.objects
                .put(&format!("models/{version}/{name}"), bytes)
                .await
                .map_err(io)?;
        }
        let mut manifest = self.manifest.lock().await;
        let mut next = manifest.clone();
        next.versions.push(info(&artifact.meta));
        next.active = Some(version);
        self.objects
            .put(MANIFEST, serde_json::to_vec_pretty(&next).map_err(io)?)
            .await
            .map_err(io)?;
        *manifest = next;
        let artifact = Arc::new(artifact);
        self.active.store(Some(artifact.clone()));
        Ok(artifact)
    }
}

fn info(meta: &ModelMeta) -> VersionInfo {
    VersionInfo {
        version: meta.version.clone(),
        created_at: meta.created_at,
        metrics: meta.metrics.clone(),
    }
}
