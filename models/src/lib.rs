//! The recommendation model, synchronous and free of actors: implicit-feedback matrix
//! factorisation (ALS) trained in Rust, exported as an ONNX graph (user vector × item matrix +
//! item bias + filter mask → TopK), served through ONNX Runtime, with a real-time fold-in of a
//! user's live interactions. [`movielens`] reads the yardstick data set and evaluates the models
//! on it offline.

pub mod als;
pub mod artifact;
pub mod blend;
pub mod content;
pub mod eval;
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
