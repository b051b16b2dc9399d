//! What kiln keeps: jobs with their event logs, uploaded datasets under the
//! data directory, the model registry's versions and aliases ([`models`]),
//! and sweeps' records ([`sweeps`]). Reads are served from memory; the durable copy is the
//! SQLite database `<data_dir>/kiln.db` ([`db`]), plus dataset files.
#![warn(missing_docs)]

pub mod blobs;
pub mod datasets;
pub mod db;
pub mod jobs;
pub mod log;
pub mod models;
pub mod pg;
pub mod storage;
pub mod sweeps;

pub use blobs::Blobs;
pub use datasets::{DatasetError, DatasetFormat, DatasetMeta, DatasetStore};
pub use db::{Db, DbError, ModelRow};
pub use jobs::{CancelFlag, EventCursor, JobError, JobStore, ListFilter};
pub use log::{EventLog, Follower};
pub use models::{ModelCatalog, SavedRegistry};
pub use pg::PgStorage;
pub use storage::{io_out_of_space, Claim, LeaseState, Storage, StoredJob, WriteFault};
pub use sweeps::SweepRecords;
