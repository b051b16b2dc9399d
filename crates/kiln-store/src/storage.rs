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
    /// Another process stored that job event's sequence number first
    /// (the shared mode): read the job again, then decide.
    #[error("database: conflict: {0}")]
    Conflict(String),
    /// This process no longer holds the job's lease (it expired, and
    /// another trainer may run the job): its write was refused.
    #[error("database: the lease on job {0} is no longer held by this process")]
    Fenced(String),
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

    /// A write refused for what it said, not for the store's health: the
    /// store is fine, and nothing was written.
    pub fn is_refusal(&self) -> bool {
        matches!(self, DbError::Conflict(_) | DbError::Fenced(_))
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

/// The spec bytes stored with a job's event: the spec with its first event
/// (sequence 0), nothing after.
pub(crate) fn spec_to_store(spec: Option<&pb::JobSpec>, event: &pb::JobEvent) -> Option<Vec<u8>> {
    use prost::Message;
    spec.filter(|_| event.sequence == 0)
        .map(Message::encode_to_vec)
}

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

/// A job a trainer took from the shared queue ([`Storage::claim_job`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The job.
    pub job_id: String,
    /// Its lease's attempt number: 1 for the first trainer, one more for
    /// each that took it after a lease ended.
    pub attempt: u64,
    /// A cancel was asked for while nobody held it.
    pub cancel_requested: bool,
}

/// What renewing a held lease found ([`Storage::renew_leases`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    /// The job.
    pub job_id: String,
    /// Still held (renewed); `false`: it expired or another trainer took
    /// it, and every write for the job is refused from now on.
    pub held: bool,
    /// A cancel was asked for (CancelJob on any replica).
    pub cancel_requested: bool,
    /// The reason and message the cancel ends the job with, when a policy
    /// asked for it (a sweep's pruning); `None`: a plain cancel.
    pub stop: Option<(i32, String)>,
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

    // The shared mode: several processes on one database. The defaults are
    // the embedded store's, which one process owns.

    /// Whether other processes write to this storage too: then the stores
    /// above it read back what they did not write themselves
    /// ([`job_heads`](Self::job_heads)) and trainers take jobs by lease.
    fn shared(&self) -> bool {
        false
    }

    /// The jobs whose record changed in the last `within` (every job when
    /// `None`), in submission order, each with how many events it has.
    fn job_heads(
        &self,
        within: Option<std::time::Duration>,
    ) -> Result<Vec<(String, u64)>, DbError> {
        let _ = within;
        Ok(Vec::new())
    }

    /// Takes the oldest job no live lease holds (QUEUED, or RUNNING on a
    /// trainer whose lease ended) for `lease`; only a trainer with a GPU
    /// (`gpu`) takes one that asks for CUDA. From then on every write for
    /// the job is fenced by this lease.
    fn claim_job(&self, lease: std::time::Duration, gpu: bool) -> Result<Option<Claim>, DbError> {
        let _ = (lease, gpu);
        Ok(None)
    }

    /// Extends every lease this process holds by `lease` from now; one that
    /// ended is reported not held (and its job's writes stay refused until
    /// [`release_lease`](Self::release_lease)).
    fn renew_leases(&self, lease: std::time::Duration) -> Result<Vec<LeaseState>, DbError> {
        let _ = lease;
        Ok(Vec::new())
    }

    /// Gives up this process's lease on a job (it ended, or went back to
    /// the queue for another trainer).
    fn release_lease(&self, job_id: &str) -> Result<(), DbError> {
        let _ = job_id;
        Ok(())
    }

    /// Asks whichever trainer holds (or next takes) the job to cancel it,
    /// with `stop`'s reason and message when a policy asks (see
    /// [`LeaseState::stop`]).
    fn request_cancel(&self, job_id: &str, stop: Option<(i32, &str)>) -> Result<(), DbError> {
        let _ = (job_id, stop);
        Ok(())
    }

    /// Takes a lease on sweep `id` for this process, to control it (a sweep
    /// just submitted here, not recorded yet). From then on its record's
    /// writes from this process are fenced by the lease.
    fn hold_sweep(&self, id: &str, lease: std::time::Duration) -> Result<(), DbError> {
        let _ = (id, lease);
        Ok(())
    }

    /// Takes the oldest unfinished sweep no live lease holds (its
    /// controller's process stopped renewing) for `lease`; its id.
    fn claim_sweep(&self, lease: std::time::Duration) -> Result<Option<String>, DbError> {
        let _ = lease;
        Ok(None)
    }

    /// Extends the sweep leases this process holds: the ids of those it
    /// lost (expired, or taken by another process), and of those a cancel
    /// was asked for (CancelSweep on another replica).
    fn renew_sweep_leases(
        &self,
        lease: std::time::Duration,
    ) -> Result<(Vec<String>, Vec<String>), DbError> {
        let _ = lease;
        Ok((Vec::new(), Vec::new()))
    }

    /// Asks the replica that controls sweep `id` (or next takes it) to
    /// cancel it.
    fn request_sweep_cancel(&self, id: &str) -> Result<(), DbError> {
        let _ = id;
        Ok(())
    }

    /// Whether this process still holds the lease on a job it leased (true
    /// where there are no leases): asked before a step that cannot be
    /// fenced in the database (removing a checkpoint file).
    fn lease_held(&self, job_id: &str) -> bool {
        let _ = job_id;
        true
    }

    /// Gives up this process's lease on a sweep (it ended).
    fn release_sweep(&self, id: &str) -> Result<(), DbError> {
        let _ = id;
        Ok(())
    }

    /// Waits until another process may have recorded something (a job
    /// event, a dataset), at most `timeout`; `seen` is the caller's count of
    /// changes, updated. The embedded store has no other process: it waits
    /// out the timeout.
    fn wait_for_changes(&self, seen: &mut u64, timeout: std::time::Duration) {
        let _ = seen;
        std::thread::sleep(timeout);
    }

    /// The number the next version of model `name` gets, as the database
    /// sees it (`None`: the registry in memory knows best).
    fn next_model_version(&self, name: &str) -> Result<Option<u32>, DbError> {
        let _ = name;
        Ok(None)
    }
}
