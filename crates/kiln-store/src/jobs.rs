//! Jobs and their event logs.
//!
//! Every change to a job is an event appended here; the job record is derived
//! from its events (`apply`), so what a watcher replays and what GetJob shows
//! can never disagree. Watchers read the log by position and wait on a counter,
//! so a slow or late watcher sees every event exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use kiln::v1 as pb;
use pb::job_event::Kind;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    #[error("job \"{0}\" not found")]
    NotFound(String),
}

/// What the scheduler needs to know to stop a job.
#[derive(Debug, Default)]
pub struct CancelFlag(AtomicBool);

impl CancelFlag {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn set(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
}

struct Entry {
    job: pb::Job,
    events: Vec<pb::JobEvent>,
    /// Number of events in `events`; watchers wait on it.
    published: watch::Sender<usize>,
    cancel: Arc<CancelFlag>,
}

#[derive(Default)]
pub struct JobStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, Entry>,
    /// Ids in submission order.
    order: Vec<String>,
}

pub fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

pub fn is_terminal(state: pb::JobState) -> bool {
    matches!(
        state,
        pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled
    )
}

impl JobStore {
    /// Records a new QUEUED job and returns it.
    pub fn create(&self, mut job: pb::Job) -> pb::Job {
        job.state = pb::JobState::Unspecified as i32;
        job.created_at = Some(now());
        let id = job.id.clone();
        let (published, _) = watch::channel(0);
        let entry = Entry {
            job,
            events: Vec::new(),
            published,
            cancel: Arc::default(),
        };
        {
            let mut inner = self.inner.lock().unwrap();
            inner.order.push(id.clone());
            inner.jobs.insert(id.clone(), entry);
        }
        self.append(
            &id,
            Kind::StateChanged(pb::StateChanged {
                state: pb::JobState::Queued as i32,
                device: String::new(),
            }),
        )
        .expect("job was just inserted")
    }

    /// Appends an event and returns the job as it now stands. Events after a
    /// terminal one are dropped: a job ends once.
    pub fn append(&self, id: &str, kind: Kind) -> Result<pb::Job, JobError> {
        let mut inner = self.inner.lock().unwrap();
        let entry = inner
            .jobs
            .get_mut(id)
            .ok_or_else(|| JobError::NotFound(id.to_string()))?;
        if is_terminal(entry.job.state()) {
            return Ok(entry.job.clone());
        }
        let event = pb::JobEvent {
            job_id: id.to_string(),
            sequence: entry.events.len() as u64,
            time: Some(now()),
            kind: Some(kind),
        };
        apply(&mut entry.job, &event);
        entry.events.push(event);
        entry.published.send_replace(entry.events.len());
        Ok(entry.job.clone())
    }

    pub fn get(&self, id: &str) -> Result<pb::Job, JobError> {
        let inner = self.inner.lock().unwrap();
        inner
            .jobs
            .get(id)
            .map(|e| e.job.clone())
            .ok_or_else(|| JobError::NotFound(id.to_string()))
    }

    /// Newest first, optionally only one state.
    pub fn list(&self, state: Option<pb::JobState>) -> Vec<pb::Job> {
        let inner = self.inner.lock().unwrap();
        inner
            .order
            .iter()
            .rev()
            .map(|id| &inner.jobs[id].job)
            .filter(|j| state.is_none_or(|s| j.state() == s))
            .cloned()
            .collect()
    }

    pub fn cancel_flag(&self, id: &str) -> Result<Arc<CancelFlag>, JobError> {
        let inner = self.inner.lock().unwrap();
        inner
            .jobs
            .get(id)
            .map(|e| e.cancel.clone())
            .ok_or_else(|| JobError::NotFound(id.to_string()))
    }

    /// Asks a job to stop. A queued job is cancelled at once; a running one
    /// when its trainer next checks (within one batch); a finished one is left
    /// as it is. Returns the job as it stands.
    pub fn cancel(&self, id: &str) -> Result<pb::Job, JobError> {
        let job = {
            let inner = self.inner.lock().unwrap();
            let entry = inner
                .jobs
                .get(id)
                .ok_or_else(|| JobError::NotFound(id.to_string()))?;
            entry.cancel.set();
            entry.job.clone()
        };
        if job.state() == pb::JobState::Queued {
            return self.append(id, cancelled_event("cancelled while queued"));
        }
        Ok(job)
    }

    /// Follows a job's events from the first one.
    pub fn watch(&self, id: &str) -> Result<EventCursor<'_>, JobError> {
        let inner = self.inner.lock().unwrap();
        let entry = inner
            .jobs
            .get(id)
            .ok_or_else(|| JobError::NotFound(id.to_string()))?;
        Ok(EventCursor {
            store: self,
            id: id.to_string(),
            next: 0,
            published: entry.published.subscribe(),
        })
    }

    /// Events from position `from`, and whether the job has ended.
    fn events_from(&self, id: &str, from: usize) -> (Vec<pb::JobEvent>, bool) {
        let inner = self.inner.lock().unwrap();
        let entry = &inner.jobs[id];
        (
            entry.events[from.min(entry.events.len())..].to_vec(),
            is_terminal(entry.job.state()),
        )
    }
}

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
    next: usize,
    published: watch::Receiver<usize>,
}

impl EventCursor<'_> {
    /// The next batch of events, or `None` once the job has ended and every
    /// event was returned.
    pub async fn next_batch(&mut self) -> Option<Vec<pb::JobEvent>> {
        loop {
            // Mark the current count seen before reading, so an append that
            // lands after the read wakes `changed` below.
            self.published.borrow_and_update();
            let (events, ended) = self.store.events_from(&self.id, self.next);
            if !events.is_empty() {
                self.next += events.len();
                return Some(events);
            }
            if ended {
                return None;
            }
            if self.published.changed().await.is_err() {
                return None;
            }
        }
    }
}

/// Folds one event into the job record.
fn apply(job: &mut pb::Job, event: &pb::JobEvent) {
    match event.kind.as_ref() {
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
        Some(Kind::EarlyStopped(_)) => {}
        Some(Kind::Finished(f)) => {
            job.state = pb::JobState::Succeeded as i32;
            job.stop_reason = f.reason;
            job.best = f.best.clone();
            job.epochs_completed = f.epochs_completed;
            job.finished_at = event.time;
            job.message = match f.reason() {
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
        store.create(pb::Job {
            id: "j1".into(),
            ..Default::default()
        });
        store
    }

    fn epoch(n: u32) -> Kind {
        Kind::Epoch(pb::EpochMetrics {
            epoch: n,
            ..Default::default()
        })
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

    #[test]
    fn events_after_the_end_are_dropped() {
        let store = store_with_job();
        store.cancel("j1").unwrap();
        assert_eq!(store.get("j1").unwrap().state(), pb::JobState::Cancelled);
        store.append("j1", epoch(1)).unwrap();
        assert_eq!(store.get("j1").unwrap().epochs_completed, 0);
        assert!(store.cancel_flag("j1").unwrap().is_set());
    }

    #[test]
    fn list_filters_and_orders_newest_first() {
        let store = store_with_job();
        store.create(pb::Job {
            id: "j2".into(),
            ..Default::default()
        });
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
