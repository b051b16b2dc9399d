//! `kiln.v1.SweepService`: hyper-parameter sweeps. A sweep is a tokio task
//! (its controller, in `controller`) that submits trial jobs through the
//! ordinary job path, never more than `max_concurrent_trials` unfinished at
//! once, follows their events, stops weak trials with the early-termination
//! policy (through the job store's cancel path, ending them CANCELLED with
//! STOP_REASON_PRUNED), keeps the leaderboard, and when every trial has ended
//! registers the best trial's model under the sweep's model name. Every
//! decision (the plan, the leaderboard, pruning, what a restart takes over,
//! the end state) is `kiln-sweep`'s; this module keeps the sweeps, serves
//! them and does the I/O.
//!
//! A sweep's record (request, state, trials and their jobs) is written to the
//! database whenever a trial starts or ends and when the sweep ends. After a
//! restart an unfinished sweep's controller starts again: it follows the
//! trials it had started (their jobs come back on their own) from their first
//! event, so the stopping rules see their whole history, and starts the rest.

mod controller;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kiln::v1 as pb;
use kiln_store::jobs::now;
use kiln_store::{EventLog, SweepRecords};
use kiln_sweep::{leaderboard, outcome, plan, Goal, Resume};
use pb::sweep_service_server::SweepService;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{status, Kiln};

/// Every sweep of this server (in memory, like jobs).
#[derive(Default)]
pub struct Sweeps {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    sweeps: HashMap<String, Arc<Entry>>,
    /// Ids in submission order.
    order: Vec<String>,
}

struct Entry {
    record: Mutex<Record>,
    cancelled: AtomicBool,
    records: Arc<SweepRecords>,
    /// Its controller runs in this process.
    controlled: AtomicBool,
    /// The shared mode: this process lost the sweep's lease; its controller
    /// stops at its next step (another replica's continues the sweep).
    lost: AtomicBool,
}

struct Record {
    /// Trials in number order (the snapshot ranks them).
    sweep: pb::Sweep,
    events: EventLog<pb::SweepEvent>,
    goal: Goal,
}

impl Record {
    /// Trial indices, best first (see `kiln_sweep::leaderboard`).
    fn ranking(&self) -> Vec<usize> {
        leaderboard::ranking(&self.sweep.trials, self.goal)
    }

    fn leaderboard(&self) -> Vec<pb::Trial> {
        leaderboard::leaderboard(&self.sweep.trials, self.goal)
    }

    fn snapshot(&self) -> pb::Sweep {
        pb::Sweep {
            trials: self.leaderboard(),
            ..self.sweep.clone()
        }
    }
}

impl Entry {
    fn new(sweep: pb::Sweep, goal: Goal, records: Arc<SweepRecords>) -> Arc<Entry> {
        Arc::new(Entry {
            record: Mutex::new(Record {
                sweep,
                events: EventLog::new(Vec::new()),
                goal,
            }),
            cancelled: AtomicBool::new(false),
            records,
            controlled: AtomicBool::new(false),
            lost: AtomicBool::new(false),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Record) -> T) -> T {
        f(&mut self.record.lock().unwrap())
    }

    /// Writes the record to the database. A failure is logged and returned:
    /// the sweep goes on, and its next write records where it stands.
    fn persist(&self) -> Result<(), kiln_store::DbError> {
        let sweep = self.with(|r| r.sweep.clone());
        let saved = self.records.save(&sweep);
        if let Err(e) = &saved {
            tracing::error!(sweep = %sweep.id, error = %e, "sweep not persisted");
        }
        saved
    }

    fn snapshot(&self) -> pb::Sweep {
        self.with(|r| r.snapshot())
    }

    fn emit(&self, kind: pb::sweep_event::Kind) {
        use pb::sweep_event::Kind as E;
        let started_or_ended = matches!(kind, E::TrialStarted(_) | E::TrialFinished(_));
        self.with(|r| {
            let event = pb::SweepEvent {
                sweep_id: r.sweep.id.clone(),
                sequence: r.events.len() as u64,
                time: Some(now()),
                kind: Some(kind),
            };
            r.events.push(event);
        });
        if started_or_ended {
            let _ = self.persist();
        }
    }

    fn trial(&self, index: usize) -> pb::Trial {
        self.with(|r| r.sweep.trials[index].clone())
    }

    /// Events from `from`, and whether the sweep has ended.
    fn events_from(&self, from: usize) -> (Vec<pb::SweepEvent>, bool) {
        self.with(|r| {
            (
                r.events.events_from(from),
                outcome::is_ended(r.sweep.state()),
            )
        })
    }
}

impl Sweeps {
    fn get(&self, id: &str) -> Result<Arc<Entry>, Status> {
        self.inner
            .lock()
            .unwrap()
            .sweeps
            .get(id)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!("sweep \"{}\" not found", kiln_core::brief(id)))
            })
    }

    /// Adds a sweep, or replaces this process's copy of it.
    fn insert(&self, entry: Arc<Entry>, id: String) {
        let mut inner = self.inner.lock().unwrap();
        if inner.sweeps.insert(id.clone(), entry).is_none() {
            inner.order.push(id);
        }
    }

    fn find(&self, id: &str) -> Option<Arc<Entry>> {
        self.inner.lock().unwrap().sweeps.get(id).cloned()
    }

    fn all(&self) -> Vec<Arc<Entry>> {
        let inner = self.inner.lock().unwrap();
        inner
            .order
            .iter()
            .rev()
            .map(|id| inner.sweeps[id].clone())
            .collect()
    }
}

pub struct SweepSvc(pub Arc<Kiln>);

#[tonic::async_trait]
impl SweepService for SweepSvc {
    async fn submit_sweep(
        &self,
        request: Request<pb::SubmitSweepRequest>,
    ) -> Result<Response<pb::Sweep>, Status> {
        let request = request.into_inner();
        crate::durability::refuse_writes(&self.0)?;
        let id = format!("sweep-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let plan = plan(&request, &id).map_err(status::invalid)?;
        let sweep = plan.new_sweep(&id, request, now());
        let entry = Entry::new(sweep, plan.goal, self.0.sweep_records.clone());
        // The shared mode: controlled here, under a lease, so that no other
        // replica runs it while this one does.
        if self.0.shared {
            self.0
                .storage
                .hold_sweep(&id, lease(&self.0))
                .map_err(|e| crate::durability::unrecorded(&(&e).into()))?;
        }
        // Accepted only once recorded.
        entry
            .persist()
            .map_err(|e| crate::durability::unrecorded(&(&e).into()))?;
        self.0.sweeps.insert(entry.clone(), id.clone());
        tracing::info!(sweep = %id, trials = plan.points.len(), model = %plan.model_name, "sweep started");
        let snapshot = entry.snapshot();
        start(&self.0, entry, plan, Resume::No);
        Ok(Response::new(snapshot))
    }

    async fn get_sweep(
        &self,
        request: Request<pb::GetSweepRequest>,
    ) -> Result<Response<pb::Sweep>, Status> {
        let entry = self.0.sweeps.get(&request.into_inner().sweep_id)?;
        Ok(Response::new(entry.snapshot()))
    }

    async fn list_sweeps(
        &self,
        _request: Request<pb::ListSweepsRequest>,
    ) -> Result<Response<pb::ListSweepsResponse>, Status> {
        Ok(Response::new(pb::ListSweepsResponse {
            sweeps: self.0.sweeps.all().iter().map(|e| e.snapshot()).collect(),
        }))
    }

    async fn cancel_sweep(
        &self,
        request: Request<pb::CancelSweepRequest>,
    ) -> Result<Response<pb::Sweep>, Status> {
        let id = request.into_inner().sweep_id;
        let entry = self.0.sweeps.get(&id)?;
        // The shared mode: for the replica that controls it, wherever it is.
        if self.0.shared {
            self.0
                .storage
                .request_sweep_cancel(&id)
                .map_err(|e| crate::durability::unrecorded(&(&e).into()))?;
        }
        entry.cancelled.store(true, Ordering::SeqCst);
        cancel_trials(&self.0, &entry);
        Ok(Response::new(entry.snapshot()))
    }

    type WatchSweepStream = ReceiverStream<Result<pb::SweepEvent, Status>>;

    async fn watch_sweep(
        &self,
        request: Request<pb::WatchSweepRequest>,
    ) -> Result<Response<Self::WatchSweepStream>, Status> {
        let request = request.into_inner();
        let entry = self.0.sweeps.get(&request.sweep_id)?;
        let from = request.from_sequence as usize;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut stopping = self.0.stopping.clone();
        tokio::spawn(async move {
            let mut follower = entry.with(|r| r.events.follow_from(from));
            loop {
                let events = tokio::select! {
                    batch = follower.next_batch(|from| entry.events_from(from)) => match batch {
                        Some(events) => events,
                        None => return,
                    },
                    // A shutdown ends the stream (see WatchJob).
                    _ = crate::status::shutdown_begun(&mut stopping) => {
                        let _ = tx.send(Err(crate::status::shutting_down())).await;
                        return;
                    }
                };
                for event in events {
                    if tx.send(Ok(event)).await.is_err() {
                        return; // the watcher has gone
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Cancels the sweep's trial jobs (their trainers stop them).
fn cancel_trials(kiln: &Kiln, entry: &Entry) {
    let jobs: Vec<String> = entry.with(|r| {
        r.sweep
            .trials
            .iter()
            .filter(|t| !t.job_id.is_empty())
            .map(|t| t.job_id.clone())
            .collect()
    });
    for job in jobs {
        let _ = kiln.store.cancel(&job);
    }
}

/// A sweep controller's lease (`lease_seconds`, as trainers' job leases).
fn lease(kiln: &Kiln) -> std::time::Duration {
    std::time::Duration::from_secs_f64(kiln.config.lease_seconds.max(0.3))
}

/// The shared mode, on an api replica: every second, renews the leases of
/// the sweeps controlled here (a lost one's controller stops), takes over
/// (with `take_over_sweeps`: the replica serves too) an unfinished sweep
/// whose controller's process stopped renewing (resumed as
/// after a restart: the trials it had started are adopted, not run again),
/// and brings this replica's copies of the sweeps controlled elsewhere up to
/// their stored records, so GetSweep and ListSweeps answer anywhere.
pub fn follow(kiln: Arc<Kiln>, take_over_sweeps: bool) {
    // Renewed three times a lease, at least every second.
    let every = (lease(&kiln) / 3).min(std::time::Duration::from_secs(1));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let work = kiln.clone();
            let claimed = tokio::task::spawn_blocking(move || {
                match work.storage.renew_sweep_leases(lease(&work)) {
                    Ok((lost, cancelled)) => {
                        for id in lost {
                            if let Some(entry) = work.sweeps.find(&id) {
                                tracing::warn!(sweep = %id, "sweep lease lost: another replica continues it");
                                entry.lost.store(true, Ordering::SeqCst);
                                entry.controlled.store(false, Ordering::SeqCst);
                            }
                        }
                        for id in cancelled {
                            if let Some(entry) = work.sweeps.find(&id) {
                                if !entry.cancelled.swap(true, Ordering::SeqCst) {
                                    cancel_trials(&work, &entry);
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "sweep leases not renewed"),
                }
                // Only a replica that serves can finish a sweep (it registers
                // the best trial's model).
                let claimed = match take_over_sweeps {
                    true => work.storage.claim_sweep(lease(&work)).ok().flatten(),
                    false => None,
                };
                (claimed, work.sweep_records.load())
            })
            .await;
            let Ok((claimed, records)) = claimed else {
                continue;
            };
            let Ok(records) = records else {
                continue;
            };
            for sweep in records {
                let id = sweep.id.clone();
                if claimed.as_deref() == Some(id.as_str()) {
                    take_over(&kiln, sweep);
                } else {
                    mirror(&kiln, sweep);
                }
            }
        }
    });
}

/// This replica's copy of a sweep controlled elsewhere, as stored; once it
/// ended, its watchers get the final event.
fn mirror(kiln: &Kiln, sweep: pb::Sweep) {
    let entry = copy_of(kiln, &sweep);
    if entry.controlled.load(Ordering::SeqCst) {
        return;
    }
    entry.with(|r| {
        let ended = outcome::is_ended(sweep.state());
        let had_ended = outcome::is_ended(r.sweep.state());
        r.sweep = sweep;
        if ended && !had_ended {
            let event = pb::SweepEvent {
                sweep_id: r.sweep.id.clone(),
                sequence: r.events.len() as u64,
                time: Some(now()),
                kind: Some(pb::sweep_event::Kind::SweepFinished(r.snapshot())),
            };
            r.events.push(event);
        }
    });
}

/// Controls a sweep this replica just took the lease of.
fn take_over(kiln: &Arc<Kiln>, sweep: pb::Sweep) {
    let id = sweep.id.clone();
    if outcome::is_ended(sweep.state()) {
        // Stored before its end was marked (a record of an older schema).
        let _ = kiln.sweep_records.save(&sweep);
        let _ = kiln.storage.release_sweep(&id);
        return mirror(kiln, sweep);
    }
    tracing::info!(sweep = %id, "sweep taken over from a replica whose lease ended");
    let planned = sweep
        .request
        .as_ref()
        .ok_or_else(|| "no request stored".to_string())
        .and_then(|request| plan(request, &id).map_err(|e| e.to_string()));
    // This replica's copy (its watchers go on), as stored.
    let entry = copy_of(kiln, &sweep);
    entry.with(|r| r.sweep = sweep);
    entry.lost.store(false, Ordering::SeqCst);
    match planned {
        Ok(plan) => start(kiln, entry, plan, Resume::AfterRestart),
        Err(error) => {
            fail(&entry, format!("could not be taken over: {error}"));
            let _ = kiln.storage.release_sweep(&id);
        }
    }
}

/// This replica's copy of `sweep`: the one it has, or a new one from the
/// record.
fn copy_of(kiln: &Kiln, sweep: &pb::Sweep) -> Arc<Entry> {
    if let Some(entry) = kiln.sweeps.find(&sweep.id) {
        return entry;
    }
    let entry = Entry::new(
        sweep.clone(),
        Goal::of_sweep(sweep),
        kiln.sweep_records.clone(),
    );
    kiln.sweeps.insert(entry.clone(), sweep.id.clone());
    entry
}

/// Ends a sweep that cannot go on FAILED, saying why, and records it.
fn fail(entry: &Entry, message: String) {
    entry.with(|r| {
        r.sweep.state = pb::SweepState::Failed as i32;
        r.sweep.finished_at = Some(now());
        r.sweep.message = message;
    });
    let _ = entry.persist();
}

/// Starts a sweep's controller in this process.
fn start(kiln: &Arc<Kiln>, entry: Arc<Entry>, plan: kiln_sweep::Plan, resume: Resume) {
    entry.controlled.store(true, Ordering::SeqCst);
    tokio::spawn(controller::run(kiln.clone(), entry, plan, resume));
}

/// At start: puts back every stored sweep, and (with `control`) starts again
/// the controllers of those that had not ended. The shared mode does not:
/// there an unfinished sweep is taken over by lease ([`follow`]).
pub fn resume(kiln: &Arc<Kiln>, control: bool) {
    let stored = match kiln.sweep_records.load() {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the sweeps from the database");
            return;
        }
    };
    for sweep in stored {
        let id = sweep.id.clone();
        let goal = Goal::of_sweep(&sweep);
        let ended = outcome::is_ended(sweep.state());
        let planned = sweep
            .request
            .as_ref()
            .ok_or_else(|| "no request stored".to_string())
            .and_then(|request| plan(request, &id).map_err(|e| e.to_string()));
        let entry = Entry::new(sweep, goal, kiln.sweep_records.clone());
        kiln.sweeps.insert(entry.clone(), id.clone());
        if ended {
            continue;
        }
        if !control {
            continue; // the shared mode: taken over by lease (follow)
        }
        match planned {
            Ok(plan) => {
                tracing::info!(sweep = %id, "sweep resumed after a restart");
                start(kiln, entry, plan, Resume::AfterRestart);
            }
            Err(error) => {
                tracing::error!(sweep = %id, %error, "sweep cannot resume");
                fail(&entry, format!("could not resume after a restart: {error}"));
            }
        }
    }
}
