//! What kiln keeps: jobs with their event logs, and uploaded datasets under the
//! data directory. Reads are served from memory; the durable copy is the
//! SQLite database `<data_dir>/kiln.db` ([`db`]), plus dataset files.

pub mod datasets;
pub mod db;
pub mod jobs;

pub use datasets::{DatasetError, DatasetFormat, DatasetMeta, DatasetStore};
pub use db::{Db, DbError, ModelRow};
pub use jobs::{CancelFlag, EventCursor, JobError, JobStore, ListFilter};
