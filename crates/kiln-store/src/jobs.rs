//! Jobs and their event logs.
//!
//! Every change to a job is an event appended here; the job record is derived
//! from its events (`apply`), so what a watcher replays and what GetJob shows
//! can never disagree. Watchers read the log by position and wait on a counter,
//! so a slow or late watcher sees every event exactly once.
//!
//! Reads are served from memory. A store opened on a database
//! ([`JobStore::open`], [`JobStore::with_db`]) also writes every event, with
//! the job record it produced, through to SQLite in one transaction, and loads
//! them all back at start; [`JobStore::recover`] then decides what becomes of
//! the jobs the previous process left unfinished.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use kiln::v1 as pb;
use kiln_core::spec::Metric;
use pb::job_event::Kind;

use crate::db::{Db, DbError, WriteFault};
use crate::log::{EventLog, Follower};
use crate::storage::{Storage, StoredJob};

/// Why a job store call failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    /// No job with that id.
    #[error("job \"{}\" not found", kiln_core::brief(.0))]
    NotFound(String),
    /// The change could not be made durable, so it was not made.
    #[error("not recorded: {}", .0.message)]
    Unrecorded(WriteFault),
    /// This process's lease on the job ended (the shared mode): another
    /// trainer may run it, so nothing this one writes for it counts.
    #[error("job \"{}\": its lease is no longer held here", kiln_core::brief(.0))]
    Fenced(String),
}

/// What the scheduler needs to know to stop a job.
#[derive(Debug, Default)]
pub struct CancelFlag(AtomicBool);

impl CancelFlag {
    /// Whether the job was cancelled (its trainer stops at the next batch).
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn set(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
    fn clear(&self) {
        self.0.store(false, Ordering::Relaxed)
    }
}

/// Where a running job stands inside its epoch: written by its trainer after
/// every step, read by GetJob. In memory only.
#[derive(Debug, Default)]
pub struct LiveProgress(Mutex<Option<pb::TrainingProgress>>);

impl LiveProgress {
    /// Where the trainer stands now.
    pub fn set(&self, epoch: u32, rows_done: u64) {
        *self.0.lock().unwrap() = Some(pb::TrainingProgress { epoch, rows_done });
    }
    fn clear(&self) {
        *self.0.lock().unwrap() = None;
    }
    fn get(&self) -> Option<pb::TrainingProgress> {
        *self.0.lock().unwrap()
    }
}

struct Entry {
    job: pb::Job,
    events: EventLog<pb::JobEvent>,
    cancel: Arc<CancelFlag>,
    progress: Arc<LiveProgress>,
    /// Set by [`JobStore::stop`]: the reason and message the cancellation
    /// ends with instead of a plain CANCELLED.
    stop: Option<(pb::StopReason, String)>,
    /// Recorded as RUNNING, but nothing runs it ([`JobStore::stall`]).
    stalled: bool,
}

impl Entry {
    /// The record as GetJob and ListJobs show it: with the live progress
    /// of a running job.
    fn current(&self) -> pb::Job {
        let mut job = self.job.clone();
        if self.stalled {
            job.message = STALLED.into();
        } else if job.state() == pb::JobState::Running {
            job.progress = self.progress.get();
        }
        job
    }
}

/// What ListJobs keeps and how it orders them.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only jobs in this state.
    pub state: Option<pb::JobState>,
    /// spec.labels must hold every pair.
    pub labels: Vec<(String, String)>,
    /// A best-epoch metric name (see [`metric_value`]) or "epochs_completed",
    /// "-" first for descending. Empty: newest first.
    pub order_by: String,
}

/// A metric of an epoch by name: train_loss, val_loss, the classification
/// and regression metrics (kiln-core's [`Metric`] table), learning_rate.
pub fn metric_value(m: &pb::EpochMetrics, name: &str) -> Option<f64> {
    match Metric::from_name(name) {
        Some(metric) => metric.value(m),
        None => (name == "learning_rate").then_some(m.learning_rate),
    }
}

/// What ListJobs can order by: every [`Metric`], in its table's order, then
/// learning_rate and epochs_completed.
pub const ORDER_BY_NAMES: [&str; Metric::ALL.len() + 2] = {
    // A loop, not an iterator: this runs at compile time.
    let mut names = [""; Metric::ALL.len() + 2];
    let mut i = 0;
    while i < Metric::ALL.len() {
        names[i] = Metric::ALL[i].name();
        i += 1;
    }
    names[i] = "learning_rate";
    names[i + 1] = "epochs_completed";
    names
};

/// Every job with its event log, in memory, written through to storage.
/// On a shared database ([`Storage::shared`]) other processes write too:
/// [`JobStore::sync`] takes in what they recorded, and an append whose
/// sequence number another process stored first reads the job again and
/// decides anew.
#[derive(Default)]
pub struct JobStore {
    inner: Mutex<Inner>,
    /// The durable copy; `None`: in memory only (unit tests).
    db: Option<Arc<dyn Storage>>,
    /// When the last [`sync`](Self::sync) that succeeded began.
    synced: Mutex<Option<std::time::Instant>>,
}

/// How far back a sync looks before the previous one began: covers a
/// write that committed a while after its record's timestamp was taken.
const SYNC_OVERLAP: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Entry>,
    /// Ids in submission order.
    order: Vec<String>,
}

/// The current time as a protobuf timestamp.
pub fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

/// Whether a job in `state` has ended.
pub fn is_terminal(state: pb::JobState) -> bool {
    matches!(
        state,
        pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled
    )
}

impl JobStore {
    /// A store backed by the SQLite database at `path` (created if missing),
    /// with every job and event already there loaded.
    pub fn open(path: &std::path::Path) -> Result<Self, DbError> {
        Self::with_db(Arc::new(Db::open(path)?))
    }

    /// A store backed by `db`, with every job and event already there loaded.
    pub fn with_db(db: Arc<dyn Storage>) -> Result<Self, DbError> {
        let mut inner = Inner::default();
        for stored in db.jobs()? {
            let id = stored.job.id.clone();
            if let Some(gap) = stored
                .events
                .iter()
                .enumerate()
                .find(|(i, e)| e.sequence != *i as u64)
            {
                return Err(DbError::Other(format!(
                    "job {id}: event at position {} has sequence {}",
                    gap.0, gap.1.sequence
                )));
            }
            inner.order.push(id.clone());
            inner.jobs.insert(
                id,
                Entry {
                    job: stored.job,
                    events: EventLog::new(stored.events),
                    cancel: Arc::default(),
                    progress: Arc::default(),
                    stop: None,
                    stalled: false,
                },
            );
        }
        Ok(Self {
            inner: Mutex::new(inner),
            db: Some(db),
            synced: Mutex::new(Some(std::time::Instant::now())),
        })
    }

    /// Whether other processes write to the same database (the shared mode).
    pub fn shared(&self) -> bool {
        self.db.as_ref().is_some_and(|db| db.shared())
    }

    /// Takes in the jobs and events other processes recorded since the last
    /// sync (the shared mode; nothing otherwise); how many jobs changed.
    /// Watchers of those jobs are woken as if the events were appended here.
    pub fn sync(&self) -> Result<usize, DbError> {
        let Some(db) = self.db.as_ref().filter(|db| db.shared()) else {
            return Ok(0);
        };
        let began = std::time::Instant::now();
        let within = self
            .synced
            .lock()
            .unwrap()
            .map(|last| last.elapsed() + SYNC_OVERLAP);
        let mut changed = 0;
        for (id, events) in db.job_heads(within)? {
            let have = self.read(&id, |e| e.events.len() as u64).unwrap_or(0);
            if have < events && self.read_back(db.as_ref(), &id)? {
                changed += 1;
            }
        }
        *self.synced.lock().unwrap() = Some(began);
        Ok(changed)
    }

    /// Whether this process still holds its lease on the job (always true
    /// without leases).
    pub fn lease_held(&self, id: &str) -> bool {
        self.db.as_ref().is_none_or(|db| db.lease_held(id))
    }

    /// Gives up this process's lease on the job (the shared mode).
    pub fn release_lease(&self, id: &str) {
        if let Some(db) = &self.db {
            if let Err(e) = db.release_lease(id) {
                tracing::warn!(job = %id, error = %e, "lease not released; it expires by itself");
            }
        }
    }

    /// Sets the job's cancel flag here, for its trainer to stop at the
    /// next batch: a cancel asked for on another replica, with a policy's
    /// reason and message (`stop`, see [`stop`](Self::stop)) if it had one.
    pub fn cancel_here(&self, id: &str, stop: Option<(i32, String)>) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(entry) = inner.jobs.get_mut(id) {
            if let Some((reason, message)) = stop {
                let reason = pb::StopReason::try_from(reason).unwrap_or(pb::StopReason::Cancelled);
                entry.stop.get_or_insert((reason, message));
            }
            entry.cancel.set();
        }
    }

    /// What becomes of the jobs a previous process left unfinished (call once,
    /// at start, before anything runs). QUEUED jobs (suspended ones included)
    /// stay as they are. A job that was RUNNING was interrupted: it gets a
    /// `StateChanged(QUEUED)` event to run again, continuing after the
    /// `checkpoint(id)` epochs its checkpoint holds (0: from scratch, and its
    /// record's progress is reset), unless that would be its interruption
    /// number `max_restarts + 1`: then it ends FAILED, saying so. Returns the
    /// jobs to run again, in submission order.
    pub fn recover(&self, max_restarts: u32, checkpoint: &dyn Fn(&str) -> u32) -> Vec<pb::Job> {
        let unfinished: Vec<(String, pb::JobState)> = {
            let inner = self.inner.lock().unwrap();
            inner
                .order
                .iter()
                .map(|id| &inner.jobs[id])
                .filter(|e| !is_terminal(e.job.state()))
                .map(|e| (e.job.id.clone(), e.job.state()))
                .collect()
        };
        let mut again = Vec::new();
        for (id, state) in unfinished {
            let job = match state {
                pb::JobState::Queued => self.get(&id),
                _ => self.interrupted(&id, max_restarts, checkpoint(&id)),
            };
            match job {
                Ok(job) if job.state() == pb::JobState::Queued => again.push(job),
                Err(JobError::Unrecorded(_)) => self.stall(&id),
                _ => {}
            }
        }
        again
    }

    /// A job whose run ended without a word (its process stopped, or its
    /// trainer's lease ended): QUEUED again to continue after the
    /// `resume_after` epochs its checkpoint holds (0: from scratch), unless
    /// that would be its interruption number `max_restarts + 1`: then it
    /// ends FAILED, saying so.
    pub fn interrupted(
        &self,
        id: &str,
        max_restarts: u32,
        resume_after: u32,
    ) -> Result<pb::Job, JobError> {
        let restarts = self.read(id, |e| {
            e.events.events().iter().filter(|e| is_restart(e)).count() as u32
        })?;
        if restarts + 1 > max_restarts {
            return self.append(
                id,
                Kind::Failed(pb::Failed {
                    reason: pb::StopReason::Error as i32,
                    state: pb::JobState::Failed as i32,
                    message: format!(
                        "interrupted {} times while running (its server stopped, or its \
                         trainer lost the lease); max_job_restarts is {max_restarts}, so it \
                         is not run again",
                        restarts + 1
                    ),
                    ..Default::default()
                }),
            );
        }
        self.append(
            id,
            Kind::StateChanged(pb::StateChanged {
                state: pb::JobState::Queued as i32,
                resume_after_epoch: resume_after,
                ..Default::default()
            }),
        )
    }

    /// Reads one job again from a shared database (nothing otherwise).
    pub fn refresh(&self, id: &str) -> Result<(), DbError> {
        match self.db.as_ref().filter(|db| db.shared()) {
            Some(db) => self.read_back(db.as_ref(), id).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Takes in the job's events `db` has past those here; whether `db`
    /// has the job.
    fn read_back(&self, db: &dyn Storage, id: &str) -> Result<bool, DbError> {
        let have = self.read(id, |e| e.events.len() as u64).unwrap_or(0);
        let Some(stored) = db.job_from(id, have)? else {
            return Ok(false);
        };
        catch_up(&mut self.inner.lock().unwrap(), stored);
        Ok(true)
    }

    /// Marks a job recorded as RUNNING that no trainer runs any more, because
    /// what it did could not be recorded: it goes back to the queue when
    /// writes succeed again ([`resume_stalled`](Self::resume_stalled)).
    pub fn stall(&self, id: &str) {
        self.set_stalled(id, true);
    }

    fn set_stalled(&self, id: &str, stalled: bool) {
        if let Some(entry) = self.inner.lock().unwrap().jobs.get_mut(id) {
            entry.stalled = stalled;
            entry.progress.clear();
        }
    }

    /// The jobs [`stall`](Self::stall)ed, in submission order.
    pub fn stalled(&self) -> Vec<String> {
        let inner = self.inner.lock().unwrap();
        let stalled = |id: &&String| inner.jobs[*id].stalled;
        inner.order.iter().filter(stalled).cloned().collect()
    }

    /// Puts the stalled jobs back in the queue now that writes succeed:
    /// each gets a `StateChanged(QUEUED)`, suspended (not counted as a
    /// restart), continuing after the `checkpoint(id)` epochs its checkpoint
    /// holds, with `reason`; a stalled job that was cancelled meanwhile
    /// ends CANCELLED instead. Returns the jobs to run, in submission order;
    /// those whose event still cannot be recorded stay stalled.
    pub fn resume_stalled(&self, checkpoint: &dyn Fn(&str) -> u32, reason: &str) -> Vec<pb::Job> {
        let mut again = Vec::new();
        for id in self.stalled() {
            let cancelled = self.cancel_flag(&id).is_ok_and(|c| c.is_set());
            let kind = if cancelled {
                cancelled_event("cancelled while stopped for lack of space")
            } else {
                Kind::StateChanged(pb::StateChanged {
                    state: pb::JobState::Queued as i32,
                    resume_after_epoch: checkpoint(&id),
                    suspended: true,
                    reason: reason.to_string(),
                    ..Default::default()
                })
            };
            match self.append(&id, kind) {
                Err(JobError::Unrecorded(_)) => continue,
                Ok(job) if job.state() == pb::JobState::Queued => again.push(job),
                _ => {}
            }
            self.set_stalled(&id, false);
        }
        again
    }

    /// Records a new QUEUED job and returns it; when that cannot be made
    /// durable, nothing of it is kept.
    pub fn create(&self, mut job: pb::Job) -> Result<pb::Job, JobError> {
        job.state = pb::JobState::Unspecified as i32;
        job.created_at = Some(now());
        let id = job.id.clone();
        let entry = Entry {
            job,
            events: EventLog::new(Vec::new()),
            cancel: Arc::default(),
            progress: Arc::default(),
            stop: None,
            stalled: false,
        };
        {
            let mut inner = self.inner.lock().unwrap();
            inner.order.push(id.clone());
            inner.jobs.insert(id.clone(), entry);
        }
        let queued = self.append(
            &id,
            Kind::StateChanged(pb::StateChanged {
                state: pb::JobState::Queued as i32,
                ..Default::default()
            }),
        );
        if queued.is_err() {
            let mut inner = self.inner.lock().unwrap();
            inner.jobs.remove(&id);
            inner.order.retain(|o| *o != id);
        }
        queued
    }

    /// Appends an event and returns the job as it now stands. Events after a
    /// terminal one are dropped: a job ends once. An event that cannot be
    /// made durable is not appended either ([`JobError::Unrecorded`]): what
    /// watchers and GetJob see is always what a restart would load.
    pub fn append(&self, id: &str, kind: Kind) -> Result<pb::Job, JobError> {
        self.append_when(id, kind, |_| true)
    }

    /// [`append`](Self::append) if `when` holds for the job as it stands
    /// (else the job is returned unchanged). On a shared database, when
    /// another process recorded an event first, the job is read again and
    /// `when` asked again.
    fn append_when(
        &self,
        id: &str,
        kind: Kind,
        when: impl Fn(&pb::Job) -> bool,
    ) -> Result<pb::Job, JobError> {
        let (mut inner, mut kind) = (self.inner.lock().unwrap(), kind);
        loop {
            match self.try_append(&mut inner, id, kind, &when) {
                Err(AppendError::Conflict(unrecorded)) => {
                    kind = *unrecorded;
                    let db = self.db.as_ref().expect("a conflict comes from a database");
                    let from = inner.jobs.get(id).map_or(0, |e| e.events.len() as u64);
                    match db.job_from(id, from) {
                        Ok(Some(stored)) => catch_up(&mut inner, stored),
                        Ok(None) => return Err(JobError::NotFound(id.to_string())),
                        Err(e) => return Err(JobError::Unrecorded(WriteFault::from(&e))),
                    }
                }
                Err(AppendError::Job(e)) => return Err(e),
                Ok(job) => return Ok(job),
            }
        }
    }

    fn try_append(
        &self,
        inner: &mut Inner,
        id: &str,
        kind: Kind,
        when: &impl Fn(&pb::Job) -> bool,
    ) -> Result<pb::Job, AppendError> {
        let entry = inner
            .jobs
            .get_mut(id)
            .ok_or_else(|| JobError::NotFound(id.to_string()))?;
        if is_terminal(entry.job.state()) || !when(&entry.job) {
            return Ok(entry.job.clone());
        }
        let kind = match (kind, &entry.stop) {
            (Kind::Failed(f), Some((reason, message)))
                if f.reason() == pb::StopReason::Cancelled =>
            {
                Kind::Failed(pb::Failed {
                    reason: *reason as i32,
                    message: message.clone(),
                    ..f
                })
            }
            (kind, _) => kind,
        };
        let event = pb::JobEvent {
            job_id: id.to_string(),
            sequence: entry.events.len() as u64,
            time: Some(now()),
            kind: Some(kind),
        };
        if matches!(event.kind, Some(Kind::StateChanged(_))) {
            // A new run (or none): its steps are counted afresh.
            entry.progress.clear();
        }
        let mut job = entry.job.clone();
        apply(&mut job, &event);
        if let Some(db) = &self.db {
            // Durable first: memory only ever holds what the database does.
            let spec = job.spec.take();
            match db.append_event(&job, spec.as_ref(), &event) {
                Ok(()) => {}
                Err(DbError::Conflict(_)) => {
                    let kind = event.kind.expect("built with a kind above");
                    return Err(AppendError::Conflict(Box::new(kind)));
                }
                Err(DbError::Fenced(_)) => return Err(JobError::Fenced(id.to_string()).into()),
                Err(e) => {
                    tracing::error!(job = %id, sequence = event.sequence, error = %e, "event not recorded");
                    return Err(JobError::Unrecorded(WriteFault::from(&e)).into());
                }
            }
            job.spec = spec;
        }
        entry.job = job;
        entry.events.push(event);
        Ok(entry.job.clone())
    }

    /// Why the store's writes fail now, if they do.
    pub fn write_fault(&self) -> Option<WriteFault> {
        self.db.as_ref().and_then(|db| db.write_fault())
    }

    /// A job's record as GetJob shows it.
    pub fn get(&self, id: &str) -> Result<pb::Job, JobError> {
        self.read(id, Entry::current)
    }

    /// `f` of the job's entry, under the lock.
    fn read<T>(&self, id: &str, f: impl FnOnce(&Entry) -> T) -> Result<T, JobError> {
        let inner = self.inner.lock().unwrap();
        inner
            .jobs
            .get(id)
            .map(f)
            .ok_or_else(|| JobError::NotFound(id.to_string()))
    }

    /// Newest first, optionally only one state.
    pub fn list(&self, state: Option<pb::JobState>) -> Vec<pb::Job> {
        let inner = self.inner.lock().unwrap();
        inner
            .order
            .iter()
            .rev()
            .map(|id| &inner.jobs[id])
            .filter(|e| state.is_none_or(|s| e.job.state() == s))
            .map(Entry::current)
            .collect()
    }

    /// Filtered by state and labels; newest first, or by a best-epoch metric
    /// (jobs without it last, newest first among themselves). An unknown
    /// `order_by` is an error naming the choices.
    pub fn list_filtered(&self, filter: &ListFilter) -> Result<Vec<pb::Job>, String> {
        let (descending, key) = match filter.order_by.strip_prefix('-') {
            Some(key) => (true, key),
            None => (false, filter.order_by.as_str()),
        };
        if !key.is_empty() && !ORDER_BY_NAMES.contains(&key) {
            return Err(format!(
                "\"{}\" is not a metric; one of {} (\"-\" first for descending)",
                filter.order_by,
                ORDER_BY_NAMES.join(", ")
            ));
        }
        let mut jobs: Vec<pb::Job> = self
            .list(filter.state)
            .into_iter()
            .filter(|j| {
                let labels = j.spec.as_ref().map(|s| &s.labels);
                filter
                    .labels
                    .iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .collect();
        if !key.is_empty() {
            let value = |j: &pb::Job| -> Option<f64> {
                if key == "epochs_completed" {
                    return Some(j.epochs_completed as f64);
                }
                j.best
                    .as_ref()
                    .and_then(|m| metric_value(m, key))
                    .filter(|v| !v.is_nan())
            };
            // Stable: ties keep newest first.
            jobs.sort_by(|a, b| match (value(a), value(b)) {
                (Some(x), Some(y)) if descending => y.total_cmp(&x),
                (Some(x), Some(y)) => x.total_cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            });
        }
        Ok(jobs)
    }

    /// Every event of a job so far.
    pub fn events(&self, id: &str) -> Result<Vec<pb::JobEvent>, JobError> {
        let inner = self.inner.lock().unwrap();
        inner
            .jobs
            .get(id)
            .map(|e| e.events.events().to_vec())
            .ok_or_else(|| JobError::NotFound(id.to_string()))
    }

    /// Cancels a job on behalf of a policy: it ends CANCELLED with `reason`
    /// (e.g. PRUNED) and `message` instead of a plain cancellation.
    pub fn stop(
        &self,
        id: &str,
        reason: pb::StopReason,
        message: &str,
    ) -> Result<pb::Job, JobError> {
        {
            let mut inner = self.inner.lock().unwrap();
            let entry = inner
                .jobs
                .get_mut(id)
                .ok_or_else(|| JobError::NotFound(id.to_string()))?;
            if entry.stop.is_none() {
                entry.stop = Some((reason, message.to_string()));
            }
        }
        self.cancel(id)
    }

    /// The handle a job's trainer reports its steps through.
    pub fn live_progress(&self, id: &str) -> Result<Arc<LiveProgress>, JobError> {
        self.read(id, |e| e.progress.clone())
    }

    /// The flag its trainer polls to stop when the job is cancelled.
    pub fn cancel_flag(&self, id: &str) -> Result<Arc<CancelFlag>, JobError> {
        self.read(id, |e| e.cancel.clone())
    }

    /// Asks a job to stop. A queued job is cancelled at once; a running one
    /// when its trainer next checks (within one batch); a finished one is left
    /// as it is. Returns the job as it stands.
    pub fn cancel(&self, id: &str) -> Result<pb::Job, JobError> {
        let (job, flag, stop) = {
            let inner = self.inner.lock().unwrap();
            let entry = inner
                .jobs
                .get(id)
                .ok_or_else(|| JobError::NotFound(id.to_string()))?;
            entry.cancel.set();
            (entry.job.clone(), entry.cancel.clone(), entry.stop.clone())
        };
        if let Some(db) = self.db.as_ref().filter(|db| db.shared()) {
            if is_terminal(job.state()) {
                return Ok(job);
            }
            // Whichever trainer holds the job (or takes it next) stops it;
            // a queued one ends here, unless a trainer took it meanwhile.
            let stop = stop.as_ref().map(|(r, m)| (*r as i32, m.as_str()));
            if let Err(e) = db.request_cancel(id, stop) {
                flag.clear();
                return Err(JobError::Unrecorded(WriteFault::from(&e)));
            }
            return self.append_when(id, cancelled_event("cancelled while queued"), |j| {
                j.state() == pb::JobState::Queued
            });
        }
        if job.state() == pb::JobState::Queued {
            let cancelled = self.append(id, cancelled_event("cancelled while queued"));
            if matches!(cancelled, Err(JobError::Unrecorded(_))) {
                flag.clear(); // not cancelled: it runs as if never asked
            }
            return cancelled;
        }
        if self.read(id, |e| e.stalled)? {
            // No trainer to see the flag: it ends here, or once writes
            // succeed again (`resume_stalled`).
            let job = self.append(
                id,
                cancelled_event("cancelled while stopped for lack of space"),
            )?;
            self.set_stalled(id, false);
            return Ok(job);
        }
        Ok(job)
    }

    /// Follows a job's events from the first one.
    pub fn watch(&self, id: &str) -> Result<EventCursor<'_>, JobError> {
        self.watch_from(id, 0)
    }

    /// Follows a job's events from sequence number `from`.
    pub fn watch_from(&self, id: &str, from: u64) -> Result<EventCursor<'_>, JobError> {
        let inner = self.inner.lock().unwrap();
        let entry = inner
            .jobs
            .get(id)
            .ok_or_else(|| JobError::NotFound(id.to_string()))?;
        Ok(EventCursor {
            store: self,
            id: id.to_string(),
            follower: entry.events.follow_from(from as usize),
        })
    }

    /// Events from position `from`, and whether the job has ended.
    fn events_from(&self, id: &str, from: usize) -> (Vec<pb::JobEvent>, bool) {
        let inner = self.inner.lock().unwrap();
        let entry = &inner.jobs[id];
        (
            entry.events.events_from(from),
            is_terminal(entry.job.state()),
        )
    }
}

/// Why [`JobStore::try_append`] did not append.
enum AppendError {
    /// Another process stored that sequence number first: the event's kind,
    /// to try again with.
    Conflict(Box<Kind>),
    Job(JobError),
}

impl From<JobError> for AppendError {
    fn from(e: JobError) -> Self {
        AppendError::Job(e)
    }
}

/// Brings a job in memory up to `stored` (read from the shared database):
/// a job not seen before is added; events already here are skipped.
fn catch_up(inner: &mut Inner, stored: StoredJob) {
    let id = stored.job.id.clone();
    if !inner.jobs.contains_key(&id) {
        inner.order.push(id.clone());
    }
    let entry = inner.jobs.entry(id.clone()).or_insert_with(|| Entry {
        job: stored.job.clone(),
        events: EventLog::new(Vec::new()),
        cancel: Arc::default(),
        progress: Arc::default(),
        stop: None,
        stalled: false,
    });
    let mut latest = false;
    for event in stored.events {
        if event.sequence == entry.events.len() as u64 {
            if matches!(event.kind, Some(Kind::StateChanged(_))) {
                entry.progress.clear();
            }
            entry.events.push(event);
            latest = true;
        }
    }
    if latest {
        // The record as of the last event taken in: the database's.
        let spec = entry.job.spec.take();
        entry.job = stored.job;
        if entry.job.spec.is_none() {
            entry.job.spec = spec;
        }
    }
}

/// The final event of a cancelled job.
pub fn cancelled_event(message: &str) -> Kind {
    Kind::Failed(pb::Failed {
        reason: pb::StopReason::Cancelled as i32,
        message: message.to_string(),
        state: pb::JobState::Cancelled as i32,
        ..Default::default()
    })
}

/// Reads a job's log in order, waiting for new events until the job ends.
pub struct EventCursor<'a> {
    store: &'a JobStore,
    id: String,
    follower: Follower,
}

impl EventCursor<'_> {
    /// The next batch of events, or `None` once the job has ended and every
    /// event was returned.
    pub async fn next_batch(&mut self) -> Option<Vec<pb::JobEvent>> {
        let (store, id) = (self.store, &self.id);
        self.follower
            .next_batch(|from| store.events_from(id, from))
            .await
    }
}

/// What GetJob says of a stalled job (see [`JobStore::stall`]).
pub const STALLED: &str = "stopped: its events cannot be recorded (the data directory is \
                           full); it continues from its checkpoint once space is back";

/// The message of a job re-queued by [`JobStore::recover`] to start over.
pub const RESTARTED: &str = "restarted after an interruption (the server stopped while it ran)";

/// A QUEUED event after the first: the job ran and will run again.
fn is_requeue(event: &pb::JobEvent) -> Option<&pb::StateChanged> {
    match &event.kind {
        Some(Kind::StateChanged(s))
            if event.sequence > 0 && s.state == pb::JobState::Queued as i32 =>
        {
            Some(s)
        }
        _ => None,
    }
}

/// An interruption without warning, which counts against `max_job_restarts`
/// (a graceful shutdown's suspension does not).
fn is_restart(event: &pb::JobEvent) -> bool {
    is_requeue(event).is_some_and(|s| !s.suspended)
}

/// The record's message for a job queued again.
fn requeued_message(s: &pb::StateChanged) -> String {
    match (s.suspended, s.resume_after_epoch) {
        (true, 0) => "suspended by a server shutdown; runs from the start when the server is back"
            .to_string(),
        (true, k) => format!(
            "suspended by a server shutdown; continues from its checkpoint after epoch {k} when the server is back"
        ),
        (false, 0) => RESTARTED.to_string(),
        (false, k) => format!(
            "restarted after an interruption (the server stopped while it ran); continues from its checkpoint after epoch {k}"
        ),
    }
}

/// Folds one event into the job record.
fn apply(job: &mut pb::Job, event: &pb::JobEvent) {
    match event.kind.as_ref() {
        Some(Kind::StateChanged(s)) if is_requeue(event).is_some() => {
            job.state = s.state;
            job.message = requeued_message(s);
            job.device.clear();
            job.started_at = None;
            if s.resume_after_epoch == 0 {
                // No checkpoint: the new run starts over.
                job.epochs_completed = 0;
                job.best = None;
                job.lr_range = None;
            }
        }
        Some(Kind::StateChanged(s)) => {
            job.state = s.state;
            if s.state == pb::JobState::Running as i32 {
                job.started_at = event.time;
                job.device = s.device.clone();
            }
        }
        Some(Kind::Epoch(m)) => {
            job.epochs_completed = m.epoch;
            if m.improved {
                job.best = Some(m.clone());
            }
        }
        Some(Kind::EarlyStopped(_) | Kind::LrRangePoint(_)) => {}
        Some(Kind::LrRangeResult(r)) => job.lr_range = Some(*r),
        Some(Kind::DataReport(r)) => job.data_report = Some(r.clone()),
        Some(Kind::Finished(f)) => {
            job.state = pb::JobState::Succeeded as i32;
            job.confusion_matrix = f.confusion_matrix.clone();
            job.decision_threshold = f.decision_threshold;
            job.stop_reason = f.reason;
            job.best = f.best.clone();
            job.epochs_completed = f.epochs_completed;
            job.finished_at = event.time;
            job.message = match f.reason() {
                _ if job.lr_range.is_some() && f.model_name.is_empty() => {
                    "LR range test completed".to_string()
                }
                pb::StopReason::EarlyStopped => {
                    format!(
                        "early stopped at epoch {}; best epoch {}",
                        f.epochs_completed, f.best_epoch
                    )
                }
                _ => format!(
                    "completed {} epochs; best epoch {}",
                    f.epochs_completed, f.best_epoch
                ),
            };
        }
        Some(Kind::Failed(f)) => {
            job.state = f.state;
            job.stop_reason = f.reason;
            job.message = f.message.clone();
            job.finished_at = event.time;
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_job() -> JobStore {
        let store = JobStore::default();
        store
            .create(pb::Job {
                id: "j1".into(),
                ..Default::default()
            })
            .unwrap();
        store
    }

    fn epoch(n: u32) -> Kind {
        Kind::Epoch(pb::EpochMetrics {
            epoch: n,
            ..Default::default()
        })
    }

    fn state(s: pb::JobState) -> Kind {
        Kind::StateChanged(pb::StateChanged {
            state: s as i32,
            ..Default::default()
        })
    }

    #[test]
    fn live_progress_shows_only_while_running_and_restarts_with_each_run() {
        let store = store_with_job();
        let progress = store.live_progress("j1").unwrap();
        progress.set(1, 8);
        assert_eq!(store.get("j1").unwrap().progress, None, "queued");
        store.append("j1", state(pb::JobState::Running)).unwrap();
        assert_eq!(store.get("j1").unwrap().progress, None, "a new run");
        progress.set(2, 16);
        let want = Some(pb::TrainingProgress {
            epoch: 2,
            rows_done: 16,
        });
        assert_eq!(store.get("j1").unwrap().progress, want);
        assert_eq!(store.list(None)[0].progress, want);
        store.append("j1", epoch(1)).unwrap();
        assert_eq!(store.get("j1").unwrap().progress, want, "epochs keep it");
        store.append("j1", state(pb::JobState::Queued)).unwrap();
        assert_eq!(store.get("j1").unwrap().progress, None, "requeued");
    }

    #[tokio::test]
    async fn late_watchers_replay_then_follow() {
        let store = Arc::new(store_with_job());
        store.append("j1", epoch(1)).unwrap();
        let mut early = store.watch("j1").unwrap();
        let first = early.next_batch().await.unwrap();
        assert_eq!(first.len(), 2);

        let s2 = store.clone();
        let follower = tokio::spawn(async move {
            let mut cursor = s2.watch("j1").unwrap();
            let mut seen = Vec::new();
            while let Some(batch) = cursor.next_batch().await {
                seen.extend(batch.into_iter().map(|e| e.sequence));
            }
            seen
        });
        for n in 2..=50 {
            store.append("j1", epoch(n)).unwrap();
            if n % 10 == 0 {
                tokio::task::yield_now().await;
            }
        }
        store
            .append(
                "j1",
                Kind::Finished(pb::Finished {
                    reason: pb::StopReason::Completed as i32,
                    epochs_completed: 50,
                    ..Default::default()
                }),
            )
            .unwrap();
        let seen = follower.await.unwrap();
        assert_eq!(
            seen,
            (0..52).collect::<Vec<u64>>(),
            "every event once, in order"
        );

        let mut rest = Vec::new();
        while let Some(batch) = early.next_batch().await {
            rest.extend(batch);
        }
        assert_eq!(rest.len(), 50);
        let job = store.get("j1").unwrap();
        assert_eq!(job.state(), pb::JobState::Succeeded);
        assert_eq!(job.epochs_completed, 50);
    }

    fn running() -> Kind {
        Kind::StateChanged(pb::StateChanged {
            state: pb::JobState::Running as i32,
            device: "cpu".into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_reopened_store_has_every_job_and_event_and_recovers_them() {
        let dir = std::env::temp_dir().join(format!("kiln-jobs-db-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("kiln.db");
        let ids = ["done", "queued", "running", "doomed"];
        {
            let store = JobStore::open(&path).unwrap();
            for id in ids {
                store
                    .create(pb::Job {
                        id: id.into(),
                        ..Default::default()
                    })
                    .unwrap();
            }
            for id in ["done", "running", "doomed"] {
                store.append(id, running()).unwrap();
                store.append(id, epoch(1)).unwrap();
            }
            store
                .append(
                    "done",
                    Kind::Finished(pb::Finished {
                        reason: pb::StopReason::Completed as i32,
                        epochs_completed: 1,
                        ..Default::default()
                    }),
                )
                .unwrap();
        }
        // Two earlier interruptions of "doomed": appended through a store.
        {
            let store = JobStore::open(&path).unwrap();
            for _ in 0..2 {
                store.recover(5, &|_| 0);
                store.append("doomed", running()).unwrap();
            }
            store.append("running", running()).unwrap();
        }
        let before = {
            let store = JobStore::open(&path).unwrap();
            let all: Vec<_> = ids.iter().map(|id| store.events(id).unwrap()).collect();
            for (id, events) in ids.iter().zip(&all) {
                let seq: Vec<u64> = events.iter().map(|e| e.sequence).collect();
                assert_eq!(seq, (0..events.len() as u64).collect::<Vec<_>>(), "{id}");
            }
            all
        };
        let store = JobStore::open(&path).unwrap();
        assert_eq!(
            store
                .list(None)
                .iter()
                .map(|j| j.id.as_str())
                .collect::<Vec<_>>(),
            ["doomed", "running", "queued", "done"]
        );
        assert_eq!(store.get("done").unwrap().state(), pb::JobState::Succeeded);
        // "doomed" was interrupted twice before; a third time is over a budget
        // of 2. "running" was interrupted once before: this is its second.
        let again: Vec<_> = store.recover(2, &|_| 0).into_iter().map(|j| j.id).collect();
        assert_eq!(again, ["queued", "running"], "submission order");
        let doomed = store.get("doomed").unwrap();
        assert_eq!(doomed.state(), pb::JobState::Failed);
        assert!(
            doomed.message.contains("interrupted 3 times"),
            "{}",
            doomed.message
        );
        let job = store.get("running").unwrap();
        assert_eq!(job.state(), pb::JobState::Queued);
        assert_eq!((job.message.as_str(), job.epochs_completed), (RESTARTED, 0));
        assert!(job.best.is_none() && job.started_at.is_none());
        // The restart is one more event; a watcher sees the whole history.
        let mut cursor = store.watch("running").unwrap();
        let replay = cursor.next_batch().await.unwrap();
        assert_eq!(replay[..before[2].len()], before[2][..]);
        assert_eq!(replay.len(), before[2].len() + 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn events_after_the_end_are_dropped() {
        let store = store_with_job();
        store.cancel("j1").unwrap();
        assert_eq!(store.get("j1").unwrap().state(), pb::JobState::Cancelled);
        store.append("j1", epoch(1)).unwrap();
        assert_eq!(store.get("j1").unwrap().epochs_completed, 0);
        assert!(store.cancel_flag("j1").unwrap().is_set());
    }

    fn job_with(id: &str, labels: &[(&str, &str)], val_loss: Option<f64>) -> pb::Job {
        pb::Job {
            id: id.into(),
            spec: Some(pb::JobSpec {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            best: val_loss.map(|v| pb::EpochMetrics {
                val_loss: v,
                val_accuracy: Some(1.0 - v),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn list_filters_by_labels_and_sorts_by_metric() {
        let store = JobStore::default();
        store
            .create(job_with("a", &[("sweep", "s1")], Some(0.5)))
            .unwrap();
        store
            .create(job_with("b", &[("sweep", "s1")], None))
            .unwrap();
        store
            .create(job_with("c", &[("sweep", "s1"), ("x", "y")], Some(0.2)))
            .unwrap();
        store
            .create(job_with("d", &[("sweep", "s2")], Some(0.1)))
            .unwrap();
        let ids = |f: ListFilter| -> Vec<String> {
            store
                .list_filtered(&f)
                .unwrap()
                .into_iter()
                .map(|j| j.id)
                .collect()
        };
        let s1 = vec![("sweep".to_string(), "s1".to_string())];
        assert_eq!(
            ids(ListFilter {
                labels: s1.clone(),
                ..Default::default()
            }),
            ["c", "b", "a"]
        );
        assert_eq!(
            ids(ListFilter {
                labels: s1.clone(),
                order_by: "val_loss".into(),
                ..Default::default()
            }),
            ["c", "a", "b"]
        );
        assert_eq!(
            ids(ListFilter {
                labels: s1.clone(),
                order_by: "-val_loss".into(),
                ..Default::default()
            }),
            ["a", "c", "b"]
        );
        assert_eq!(
            ids(ListFilter {
                order_by: "-val_accuracy".into(),
                ..Default::default()
            }),
            ["d", "c", "a", "b"]
        );
        let both = vec![
            ("sweep".to_string(), "s1".to_string()),
            ("x".to_string(), "y".to_string()),
        ];
        assert_eq!(
            ids(ListFilter {
                labels: both,
                ..Default::default()
            }),
            ["c"]
        );
        let e = store
            .list_filtered(&ListFilter {
                order_by: "loss".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.contains("val_loss"), "{e}");
    }

    #[test]
    fn a_resumed_job_keeps_its_progress_and_a_suspension_is_not_a_restart() {
        let store = store_with_job();
        let improved = |n: u32| {
            Kind::Epoch(pb::EpochMetrics {
                epoch: n,
                improved: true,
                ..Default::default()
            })
        };
        store.append("j1", running()).unwrap();
        for n in 1..=3 {
            store.append("j1", improved(n)).unwrap();
        }
        // A graceful shutdown checkpointed it after epoch 3.
        store
            .append(
                "j1",
                Kind::StateChanged(pb::StateChanged {
                    state: pb::JobState::Queued as i32,
                    resume_after_epoch: 3,
                    suspended: true,
                    ..Default::default()
                }),
            )
            .unwrap();
        let job = store.get("j1").unwrap();
        assert_eq!(job.state(), pb::JobState::Queued);
        assert_eq!(job.epochs_completed, 3);
        assert_eq!(job.best.as_ref().map(|b| b.epoch), Some(3));
        assert!(job.message.contains("after epoch 3"), "{}", job.message);
        // It runs on, then the server is killed; its checkpoint holds 4 epochs.
        store.append("j1", running()).unwrap();
        store.append("j1", improved(4)).unwrap();
        // The suspension does not count: this is restart 1 of a budget of 1.
        let again = store.recover(1, &|_| 4);
        assert_eq!(again.len(), 1);
        let job = store.get("j1").unwrap();
        assert_eq!(
            (job.state(), job.epochs_completed),
            (pb::JobState::Queued, 4)
        );
        assert!(job.message.contains("after epoch 4"), "{}", job.message);
        // Killed again without a checkpoint: over the budget, it fails.
        store.append("j1", running()).unwrap();
        assert!(store.recover(1, &|_| 0).is_empty());
        assert_eq!(store.get("j1").unwrap().state(), pb::JobState::Failed);
    }

    #[test]
    fn a_stop_ends_cancelled_with_its_reason() {
        let store = store_with_job();
        store
            .append(
                "j1",
                Kind::StateChanged(pb::StateChanged {
                    state: pb::JobState::Running as i32,
                    device: "cpu".into(),
                    ..Default::default()
                }),
            )
            .unwrap();
        store
            .stop(
                "j1",
                pb::StopReason::Pruned,
                "stopped by ASHA at epoch 1 (rung 0)",
            )
            .unwrap();
        assert!(store.cancel_flag("j1").unwrap().is_set());
        // The trainer notices and reports a plain cancellation.
        let job = store
            .append("j1", cancelled_event("cancelled at epoch 2"))
            .unwrap();
        assert_eq!(job.state(), pb::JobState::Cancelled);
        assert_eq!(job.stop_reason(), pb::StopReason::Pruned);
        assert_eq!(job.message, "stopped by ASHA at epoch 1 (rung 0)");
        assert_eq!(store.events("j1").unwrap().len(), 3);
    }

    #[test]
    fn list_filters_and_orders_newest_first() {
        let store = store_with_job();
        store
            .create(pb::Job {
                id: "j2".into(),
                ..Default::default()
            })
            .unwrap();
        store.cancel("j2").unwrap();
        let ids: Vec<_> = store.list(None).into_iter().map(|j| j.id).collect();
        assert_eq!(ids, ["j2", "j1"]);
        let queued: Vec<_> = store
            .list(Some(pb::JobState::Queued))
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(queued, ["j1"]);
        assert_eq!(store.get("nope"), Err(JobError::NotFound("nope".into())));
    }
}
