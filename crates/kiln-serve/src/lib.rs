//! kiln's serving side: the registry of loaded models and, per model, a
//! worker thread that batches concurrent requests into one forward pass.

pub mod batcher;
pub mod registry;

pub use batcher::{Answer, BatcherConfig, BatcherHandle};
pub use registry::{ModelRegistry, ServedModel};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServeError {
    #[error("rows must have {expected} values each; got {values} values")]
    WrongWidth { expected: usize, values: usize },
    #[error("the model's queue is full; retry later")]
    QueueFull,
    #[error("the model's worker has stopped")]
    Stopped,
    #[error("loading the model failed: {0}")]
    Load(String),
}
