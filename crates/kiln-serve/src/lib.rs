//! kiln's serving side: the registry of model versions and aliases and, per
//! loaded version, worker threads that batch concurrent requests into one
//! forward pass.
#![warn(missing_docs)]

pub mod batcher;
pub mod journal;
pub mod registry;

pub use batcher::{Answer, BatcherConfig, BatcherHandle, StatsSnapshot};
pub use journal::{RegistryJournal, SavedVersion};
pub use registry::{ModelRegistry, ServedModel, VersionInfo};

/// Why a registry or batcher call failed; the server maps each to a gRPC status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServeError {
    /// Rows of the wrong width for the model.
    #[error("rows must have {expected} values each; got {values} values")]
    WrongWidth {
        /// The model's number of features.
        expected: usize,
        /// The number of values sent.
        values: usize,
    },
    /// The version's queue is at its capacity (RESOURCE_EXHAUSTED).
    #[error("the model's queue is full; retry later")]
    QueueFull,
    /// The version's workers are gone (it was unloaded).
    #[error("the model's worker has stopped")]
    Stopped,
    /// The request's deadline passed while it waited.
    #[error("the request's deadline passed before it was answered")]
    DeadlineExceeded,
    /// The model could not be loaded.
    #[error("loading the model failed: {0}")]
    Load(String),
    /// No such model, version or alias.
    #[error("{0}")]
    NotFound(String),
    /// The version exists but is not loaded (or cannot be).
    #[error("{0}")]
    NotLoaded(String),
    /// A bad argument (an alias name, a missing version).
    #[error("{0}")]
    Invalid(String),
    /// The change was made in memory but its journal could not record it.
    #[error("{0}")]
    NotSaved(String),
}
