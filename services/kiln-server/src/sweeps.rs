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

    fn insert(&self, entry: Arc<Entry>, id: String) {
        let mut inner = self.inner.lock().unwrap();
        inner.order.push(id.clone());
        inner.sweeps.insert(id, entry);
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
        // Accepted only once recorded.
        entry
            .persist()
            .map_err(|e| crate::durability::unrecorded(&(&e).into()))?;
        self.0.sweeps.insert(entry.clone(), id.clone());
        tracing::info!(sweep = %id, trials = plan.points.len(), model = %plan.model_name, "sweep started");
        let snapshot = entry.snapshot();
        tokio::spawn(controller::run(self.0.clone(), entry, plan, Resume::No));
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
        let entry = self.0.sweeps.get(&request.into_inner().sweep_id)?;
        entry.cancelled.store(true, Ordering::SeqCst);
        let jobs: Vec<String> = entry.with(|r| {
            r.sweep
                .trials
                .iter()
                .filter(|t| !t.job_id.is_empty())
                .map(|t| t.job_id.clone())
                .collect()
        });
        for job in jobs {
            let _ = self.0.store.cancel(&job);
        }
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

/// At start: puts back every stored sweep, and (with `control`) starts again
/// the controllers of those that had not ended. The shared mode does not:
/// a sweep's controller is not leased, so two replicas would both run it;
/// an unfinished sweep is listed as it stood.
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
            tracing::warn!(sweep = %id, "unfinished sweep not resumed: in the shared mode a sweep is controlled by the replica it was submitted to, while that replica runs");
            continue;
        }
        match planned {
            Ok(plan) => {
                tracing::info!(sweep = %id, "sweep resumed after a restart");
                tokio::spawn(controller::run(
                    kiln.clone(),
                    entry,
                    plan,
                    Resume::AfterRestart,
                ));
            }
            Err(error) => {
                tracing::error!(sweep = %id, %error, "sweep cannot resume");
                entry.with(|r| {
                    r.sweep.state = pb::SweepState::Failed as i32;
                    r.sweep.finished_at = Some(now());
                    r.sweep.message = format!("could not resume after a restart: {error}");
                });
                let _ = entry.persist();
            }
        }
    }
}
