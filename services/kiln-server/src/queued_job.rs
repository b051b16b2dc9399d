//! A validated job with its prepared data, on its way to a trainer thread.

use std::collections::HashMap;

use kiln_core::prepare::Prepared;
use kiln_core::spec::JobSpec;
use kiln_train::Device;

/// A validated job waiting for its device.
pub struct QueuedJob {
    pub id: String,
    pub model_name: String,
    pub spec: JobSpec,
    /// The spec's labels (the core JobSpec does not keep them).
    pub labels: HashMap<String, String>,
    pub data: Prepared,
    pub device: Device,
    pub device_name: String,
    /// The shared mode: the attempt of this process's lease on the job
    /// (0: the embedded store, no lease).
    pub attempt: u64,
}

impl QueuedJob {
    /// The folder under the models directory its model is written to: one
    /// per attempt in the shared mode, so that a trainer that lost the job
    /// never writes over the files of the one that has it.
    pub fn model_files(&self) -> String {
        match self.attempt {
            0 => self.id.clone(),
            attempt => format!("{}.{attempt}", self.id),
        }
    }
}
