//! kiln's serving side: the registry of model versions and aliases and, per
//! loaded version, worker threads that batch concurrent requests into one
//! forward pass.

pub mod batcher;
pub mod journal;
pub mod registry;

pub use batcher::{Answer, BatcherConfig, BatcherHandle, StatsSnapshot};
pub use journal::{RegistryJournal, SavedVersion};
pub use registry::{ModelRegistry, ServedModel, VersionInfo};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServeError {
    #[error("rows must have {expected} values each; got {values} values")]
    WrongWidth { expected: usize, values: usize },
    #[error("the model's queue is full; retry later")]
    QueueFull,
    #[error("the model's worker has stopped")]
    Stopped,
    #[error("the request's deadline passed before it was answered")]
    DeadlineExceeded,
    #[error("loading the model failed: {0}")]
    Load(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotLoaded(String),
    #[error("{0}")]
    Invalid(String),
    /// The change was made in memory but its journal could not record it.
    #[error("{0}")]
    NotSaved(String),
}
