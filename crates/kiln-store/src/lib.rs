//! What kiln keeps: jobs with their event logs, and uploaded datasets under the
//! data directory. Jobs live in memory for now; datasets are files.

pub mod datasets;
pub mod jobs;

pub use datasets::{DatasetError, DatasetFormat, DatasetMeta, DatasetStore};
pub use jobs::{CancelFlag, EventCursor, JobError, JobStore};
