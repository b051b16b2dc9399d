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
}
