//! The recommendation model, synchronous and free of actors: a hybrid of implicit-feedback
//! matrix factorisation (ALS, with a real-time fold-in of a user's live interactions), an
//! order-free item-to-item part learned as EASE learns it ([`item_item`]) and sequential
//! transitions ([`transitions`]), each standardised and blended ([`blend`]) with weights chosen
//! on validation ([`validation`]). Trained in Rust, exported as one ONNX graph (parts → blend +
//! item bias + filter mask → TopK), served through ONNX Runtime. [`diversify`] re-ranks a list
//! for diversity on request, the same way in serving and offline. [`movielens`] reads the
//! yardstick data set and evaluates the models on it offline.

pub mod als;
pub mod artifact;
pub mod aversion;
pub mod blend;
pub mod content;
pub mod diversify;
pub mod eval;
pub mod gate;
pub mod item_item;
pub mod linalg;
pub mod movielens;
pub mod onnx;
pub mod runtime;
pub mod scorer;
pub mod training;
pub mod transitions;
pub mod validation;

pub use als::{Interactions, TrainParams};
pub use artifact::{HybridParams, ModelArtifact, ModelMeta};
pub use scorer::Scorer;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    RuntimeMissing(String),
    #[error("onnx runtime: {0}")]
    Ort(String),
    #[error("artifact: {0}")]
    Artifact(String),
}

impl From<ort::Error> for ModelError {
    fn from(e: ort::Error) -> Self {
        ModelError::Ort(e.to_string())
    }
}
