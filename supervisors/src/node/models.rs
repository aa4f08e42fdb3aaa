//! The model part of the facade: training runs and their status, the stored versions,
//! activation and rollback. Training goes to the trainer actor; the registry knows the versions.

use std::time::Duration;

use actors::trainer::{TrainerMsg, TrainerObs};
use actors::{CALL_TIMEOUT, call, slot_get};
use common::ApiError;

use super::Node;

impl Node {
    /// Starts a training run; with `wait`, returns the new version once it is active.
    pub async fn train(&self, wait: bool) -> Result<String, ApiError> {
        let trainer = slot_get(&self.trainer, "trainer")?;
        let timeout = if wait {
            Duration::from_secs(3600)
        } else {
            CALL_TIMEOUT
        };
        call(
            &trainer,
            "trainer",
            |reply| TrainerMsg::Train {
                wait,
                reply: Some(reply),
            },
            timeout,
        )
        .await
    }

    /// Whether a training run is going, and how the last one ended: the trainer's observable
    /// state, read without sending it a message.
    pub fn training(&self) -> Result<TrainerObs, ApiError> {
        let trainer = slot_get(&self.trainer, "trainer")?;
        self.services
            .obs
            .get(&trainer.get_cell())
            .ok_or_else(|| ApiError::unavailable("the trainer is not available"))
    }

    /// Makes a stored model version the active one on every model actor.
    pub async fn activate(&self, version: &str) -> Result<(), ApiError> {
        actors::trainer::activate(&self.services, version).await
    }

    /// Returns to the version that was active before the current one; returns it.
    pub async fn rollback(&self) -> Result<String, ApiError> {
        let previous = self.services.registry.previous().await.ok_or_else(|| {
            ApiError::new(
                common::ErrorCode::Conflict,
                "no earlier active version to roll back to",
            )
        })?;
        self.activate(&previous).await?;
        Ok(previous)
    }

    pub async fn models(&self) -> actors::registry::Manifest {
        self.services.registry.manifest().await
    }
}
