//! The one interface kiln's state is saved through. The stores above it
//! (jobs, datasets, the registry's catalog, sweeps' records) keep their
//! state in memory and write through this; at start they load from it.
//! SQLite ([`crate::Db`]) implements it today; another backend (PostgreSQL,
//! for several replicas) implements the same trait, and no store or caller
//! changes.

use kiln::v1 as pb;

/// Why a read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The SQLite backend's own error.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored record that does not decode.
    #[error("database: undecodable {what}: {error}")]
    Decode {
        /// Which record.
        what: String,
        /// What the decoder said.
        error: prost::DecodeError,
    },
    /// The disk (or the filesystem's quota) is full: nothing was written.
    #[error("database: out of space: {0}")]
    OutOfSpace(String),
    /// Anything else, said in words.
    #[error("database: {0}")]
    Other(String),
}

impl DbError {
    /// Whether the write failed for lack of space (then freeing space, and
    /// nothing else, makes it succeed).
    pub fn is_out_of_space(&self) -> bool {
        match self {
            DbError::OutOfSpace(_) => true,
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
                    || e.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE
            }
            _ => false,
        }
    }
}

/// Why writes fail now: what health and refused calls report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFault {
    /// Out of space (RESOURCE_EXHAUSTED) rather than a store that is down
    /// (UNAVAILABLE).
    pub out_of_space: bool,
    /// What the last failed write said.
    pub message: String,
}

impl From<&DbError> for WriteFault {
    fn from(e: &DbError) -> Self {
        WriteFault {
            out_of_space: e.is_out_of_space(),
            message: e.to_string(),
        }
    }
}

/// Whether a file operation failed for lack of space (kiln-core's, here
/// where the stores' callers look for it).
pub use kiln_core::files::is_out_of_space as io_out_of_space;

/// A job as stored: its record and its whole event log, in sequence order.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredJob {
    /// The job's record.
    pub job: pb::Job,
    /// Its events, by sequence number.
    pub events: Vec<pb::JobEvent>,
}

/// A model registry version as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRow {
    /// The model's name.
    pub name: String,
    /// Its version number.
    pub version: u32,
    /// Empty for an imported model.
    pub job_id: String,
    /// Its directory under `<data_dir>/models`.
    pub artifact: String,
    /// The artifact's `ModelMeta` as JSON (kept here too, so a version whose
    /// files are damaged can still be listed).
    pub meta: String,
}

/// Durable, transactional storage of kiln's state. Every method returns
/// only once its write is durable (or failed).
pub trait Storage: Send + Sync {
    /// Stores `event` and the job record as it stands after it, atomically.
    /// `record` is the job without its spec; `spec` is stored with the first
    /// event (sequence 0) only. A sequence number already stored for the
    /// job is an error (nothing is written).
    fn append_event(
        &self,
        record: &pb::Job,
        spec: Option<&pb::JobSpec>,
        event: &pb::JobEvent,
    ) -> Result<(), DbError>;

    /// Every job in submission order, with its events.
    fn jobs(&self) -> Result<Vec<StoredJob>, DbError>;

    /// One job's record (with its spec) and its events from sequence
    /// `from` on; `None` for a job it does not hold. For readers that are
    /// not the writer (a serving replica following a job).
    fn job_from(&self, id: &str, from: u64) -> Result<Option<StoredJob>, DbError>;

    /// Records a dataset's metadata (JSON).
    fn put_dataset(
        &self,
        id: &str,
        name: &str,
        created_unix: i64,
        meta_json: &str,
    ) -> Result<(), DbError>;

    /// Every dataset's metadata JSON.
    fn datasets(&self) -> Result<Vec<String>, DbError>;

    /// Records a registry version.
    fn put_model(&self, model: &ModelRow) -> Result<(), DbError>;

    /// Forgets a registry version and the aliases pointing at it.
    fn delete_model(&self, name: &str, version: u32) -> Result<(), DbError>;

    /// Every registry version, by name then version.
    fn models(&self) -> Result<Vec<ModelRow>, DbError>;

    /// Points `alias` of `name` at `version`.
    fn set_alias(&self, name: &str, alias: &str, version: u32) -> Result<(), DbError>;

    /// Every alias as (model name, alias, version), by name then alias.
    fn aliases(&self) -> Result<Vec<(String, String, u32)>, DbError>;

    /// Stores a sweep's record, replacing the one stored before; sweeps keep
    /// their submission order.
    fn put_sweep(&self, sweep: &pb::Sweep) -> Result<(), DbError>;

    /// Every sweep's last stored record, in submission order.
    fn sweeps(&self) -> Result<Vec<pb::Sweep>, DbError>;

    /// Why the last write failed, until a write (or [`probe`](Self::probe))
    /// succeeds again; `None` while writes succeed.
    fn write_fault(&self) -> Option<WriteFault>;

    /// Makes a small durable write now, to learn whether writes succeed
    /// again (a full disk that got space back).
    fn probe(&self) -> Result<(), DbError>;
}
