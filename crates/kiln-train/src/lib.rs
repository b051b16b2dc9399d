//! kiln's training engine, on burn with the libtorch backend: the network a
//! spec describes, its loss and optimizer, the training loop with early
//! stopping, and the artifact and predictor of the model it produces.

#![warn(missing_docs)]

pub mod artifact;
mod backend;
pub mod checkpoint;
pub mod device;
pub mod early_stop;
pub mod health;
mod libtorch;
pub mod loss;
pub mod lr_find;
pub mod model;
pub mod optim;
mod outcome;
mod report;
pub mod schedule;
pub mod swa;
mod tensors;
pub mod train;

/// The backend kiln trains and serves on: the one line that selects it
/// (see `backend.rs` for the seam another backend implements).
pub(crate) type Active = libtorch::TorchBackend;

pub use artifact::{ArtifactError, ModelArtifact, ModelMeta, Output, Predictor};
pub use burn::tensor::Device;
pub use checkpoint::{Checkpoint, CheckpointError};
pub use health::{GradientHealth, LayerHealth};
pub use lr_find::{lr_range_test, LrPoint, LrRangeReport, LrSuggestions};
pub use train::{
    train, train_with, Control, EpochReport, NonFinite, StopReason, TrainError, TrainEvent, Trained,
};
