//! `kiln.v1.SweepService`: hyper-parameter sweeps. A sweep is a tokio task
//! (its controller) that submits trial jobs through the ordinary job path,
//! never more than `max_concurrent_trials` unfinished at once, follows their
//! events, stops weak trials with the early-termination policy (through the
//! job store's cancel path, ending them CANCELLED with STOP_REASON_PRUNED),
//! keeps the leaderboard, and when every trial has ended registers the best
//! trial's model under the sweep's model name. The pure logic (search
//! spaces, trial specs, the median rule and ASHA) is in `kiln-sweep`.
//!
//! A sweep's record (request, state, trials and their jobs) is written to the
//! database whenever a trial starts or ends and when the sweep ends. After a
//! restart an unfinished sweep's controller starts again: it follows the
//! trials it had started (their jobs come back on their own) from their first
//! event, so the stopping rules see their whole history, and starts the rest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kiln::v1 as pb;
use kiln_core::spec::{JobSpec, Metric};
use kiln_core::FieldError;
use kiln_store::jobs::{is_terminal, metric_value, now, ListFilter};
use kiln_sweep::{Asha, AshaRungs, Goal, MedianStopping, Rng, SearchSpace, TrialParams};
use pb::sweep_service_server::SweepService;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{status, Kiln};

/// RANDOM's trial budget when max_trials is unset.
const DEFAULT_RANDOM_TRIALS: usize = 10;

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
    /// Number of events; watchers wait on it.
    published: watch::Sender<usize>,
    cancelled: AtomicBool,
    db: Option<Arc<kiln_store::Db>>,
}

struct Record {
    /// Trials in number order (the snapshot ranks them).
    sweep: pb::Sweep,
    events: Vec<pb::SweepEvent>,
    goal: Goal,
}

fn sweep_terminal(state: pb::SweepState) -> bool {
    matches!(
        state,
        pb::SweepState::Succeeded | pb::SweepState::Failed | pb::SweepState::Cancelled
    )
}

impl Record {
    /// Trial indices, best first: trials with a value by it (ties by
    /// number), then the rest by number.
    fn ranking(&self) -> Vec<usize> {
        let trials = &self.sweep.trials;
        let mut ranked: Vec<usize> = (0..trials.len())
            .filter(|&i| trials[i].best_value.is_some_and(|v| !v.is_nan()))
            .collect();
        ranked.sort_by(|&a, &b| {
            self.goal
                .order(trials[a].best_value.unwrap(), trials[b].best_value.unwrap())
                .then(trials[a].number.cmp(&trials[b].number))
        });
        ranked
    }

    /// The leaderboard: ranked trials (rank set), then the unranked ones.
    fn leaderboard(&self) -> Vec<pb::Trial> {
        let ranking = self.ranking();
        let mut out: Vec<pb::Trial> = ranking
            .iter()
            .enumerate()
            .map(|(place, &i)| pb::Trial {
                rank: place as u32 + 1,
                ..self.sweep.trials[i].clone()
            })
            .collect();
        out.extend(
            (0..self.sweep.trials.len())
                .filter(|i| !ranking.contains(i))
                .map(|i| pb::Trial {
                    rank: 0,
                    ..self.sweep.trials[i].clone()
                }),
        );
        out
    }

    fn snapshot(&self) -> pb::Sweep {
        pb::Sweep {
            trials: self.leaderboard(),
            ..self.sweep.clone()
        }
    }
}

impl Entry {
    fn new(sweep: pb::Sweep, goal: Goal, db: Option<Arc<kiln_store::Db>>) -> Arc<Entry> {
        Arc::new(Entry {
            record: Mutex::new(Record {
                sweep,
                events: Vec::new(),
                goal,
            }),
            published: watch::channel(0).0,
            cancelled: AtomicBool::new(false),
            db,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Record) -> T) -> T {
        f(&mut self.record.lock().unwrap())
    }

    /// Writes the record to the database (a failure is logged: the sweep
    /// goes on, and would not come back after a restart).
    fn persist(&self) {
        let Some(db) = &self.db else { return };
        let sweep = self.with(|r| r.sweep.clone());
        if let Err(e) = db.put_sweep(&sweep) {
            tracing::error!(sweep = %sweep.id, error = %e, "sweep not persisted");
        }
    }

    fn snapshot(&self) -> pb::Sweep {
        self.with(|r| r.snapshot())
    }

    fn emit(&self, kind: pb::sweep_event::Kind) {
        use pb::sweep_event::Kind as E;
        let started_or_ended = matches!(kind, E::TrialStarted(_) | E::TrialFinished(_));
        let count = self.with(|r| {
            let event = pb::SweepEvent {
                sweep_id: r.sweep.id.clone(),
                sequence: r.events.len() as u64,
                time: Some(now()),
                kind: Some(kind),
            };
            r.events.push(event);
            r.events.len()
        });
        self.published.send_replace(count);
        if started_or_ended {
            self.persist();
        }
    }

    fn trial(&self, index: usize) -> pb::Trial {
        self.with(|r| r.sweep.trials[index].clone())
    }

    /// Events from `from`, and whether the sweep has ended.
    fn events_from(&self, from: usize) -> (Vec<pb::SweepEvent>, bool) {
        self.with(|r| {
            (
                r.events[from.min(r.events.len())..].to_vec(),
                sweep_terminal(r.sweep.state()),
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
            .ok_or_else(|| Status::not_found(format!("sweep \"{id}\" not found")))
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

/// The early-termination policy in force.
#[derive(Debug, Clone, Copy)]
enum Policy {
    None,
    Median(MedianStopping),
    Asha(Asha),
}

/// What the controller runs: everything validated.
struct Plan {
    base: pb::JobSpec,
    points: Vec<TrialParams>,
    model_name: String,
    metric: Metric,
    goal: Goal,
    max_concurrent: usize,
    policy: Policy,
}

pub struct SweepSvc(pub Arc<Kiln>);

fn invalid(e: FieldError) -> Status {
    status::invalid(e)
}

/// Validates a request into a plan (and its trial specs up front: every grid
/// point, or the first random sample).
fn plan(request: &pb::SubmitSweepRequest, sweep_id: &str) -> Result<Plan, Status> {
    let base = request
        .base
        .clone()
        .ok_or_else(|| Status::invalid_argument("base: required"))?;
    let validated_base = JobSpec::from_proto(&base).map_err(|e| {
        let field = match e.field.strip_prefix("spec") {
            Some(rest) => format!("base{rest}"),
            None => e.field.clone(),
        };
        invalid(FieldError::new(field, e.message))
    })?;
    let task = validated_base.task;
    let metric = if request.metric.is_empty() {
        Metric::ValLoss
    } else {
        Metric::ALL
            .iter()
            .copied()
            .find(|m| m.name() == request.metric && m.applies_to(task))
            .ok_or_else(|| {
                let names: Vec<_> = Metric::ALL
                    .iter()
                    .filter(|m| m.applies_to(task))
                    .map(|m| m.name())
                    .collect();
                invalid(FieldError::new(
                    "metric",
                    format!(
                        "\"{}\" is not a metric of this task; one of {}",
                        request.metric,
                        names.join(", ")
                    ),
                ))
            })?
    };
    let goal = match pb::Goal::try_from(request.goal) {
        Ok(pb::Goal::Auto) if metric.higher_is_better() => Goal::Maximize,
        Ok(pb::Goal::Auto) | Ok(pb::Goal::Minimize) => Goal::Minimize,
        Ok(pb::Goal::Maximize) => Goal::Maximize,
        Err(_) => return Err(Status::invalid_argument("goal: unknown value")),
    };
    let model_name = if !request.model_name.is_empty() {
        kiln_core::spec::check_model_name("model_name", &request.model_name).map_err(invalid)?;
        request.model_name.clone()
    } else if !base.model_name.is_empty() {
        base.model_name.clone()
    } else {
        sweep_id.to_string()
    };
    let space = SearchSpace::from_proto(&request.search_space).map_err(invalid)?;
    let method = pb::SearchMethod::try_from(request.method)
        .map_err(|_| Status::invalid_argument("method: unknown value"))?;
    let points = match method {
        pb::SearchMethod::Grid => {
            let mut points = space.grid().map_err(invalid)?;
            if request.max_trials > 0 {
                points.truncate(request.max_trials as usize);
            }
            points
        }
        pb::SearchMethod::Random => {
            let n = match request.max_trials {
                0 => DEFAULT_RANDOM_TRIALS,
                n => n as usize,
            };
            let mut rng = Rng::new(request.seed);
            (0..n).map(|_| space.sample(&mut rng)).collect()
        }
    };
    let check = match method {
        pb::SearchMethod::Grid => points.len(),
        pb::SearchMethod::Random => 1,
    };
    for (i, params) in points.iter().take(check).enumerate() {
        kiln_sweep::trial_spec(&base, params, i as u32 + 1, sweep_id, &model_name)
            .map_err(invalid)?;
    }
    let policy = match request
        .early_termination
        .as_ref()
        .and_then(|e| e.policy.as_ref())
    {
        None => Policy::None,
        Some(pb::early_termination::Policy::Median(m)) => {
            let defaults = MedianStopping::default();
            Policy::Median(MedianStopping {
                grace_period: if m.grace_period == 0 {
                    defaults.grace_period
                } else {
                    m.grace_period
                },
                min_samples: if m.min_samples == 0 {
                    defaults.min_samples
                } else {
                    m.min_samples as usize
                },
            })
        }
        Some(pb::early_termination::Policy::Asha(a)) => {
            let defaults = Asha::default();
            if a.reduction_factor == 1 {
                return Err(Status::invalid_argument(
                    "early_termination.asha.reduction_factor: must be >= 2",
                ));
            }
            Policy::Asha(Asha {
                min_epochs: if a.min_epochs == 0 {
                    defaults.min_epochs
                } else {
                    a.min_epochs
                },
                reduction_factor: if a.reduction_factor == 0 {
                    defaults.reduction_factor
                } else {
                    a.reduction_factor
                },
            })
        }
    };
    Ok(Plan {
        base,
        points,
        model_name,
        metric,
        goal,
        max_concurrent: request.max_concurrent_trials.max(1) as usize,
        policy,
    })
}

#[tonic::async_trait]
impl SweepService for SweepSvc {
    async fn submit_sweep(
        &self,
        request: Request<pb::SubmitSweepRequest>,
    ) -> Result<Response<pb::Sweep>, Status> {
        let request = request.into_inner();
        let id = format!("sweep-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let plan = plan(&request, &id)?;
        let trials = plan
            .points
            .iter()
            .enumerate()
            .map(|(i, params)| pb::Trial {
                number: i as u32 + 1,
                parameters: params
                    .iter()
                    .map(|(path, value)| pb::ParameterValue {
                        path: path.clone(),
                        value: Some(value.clone()),
                    })
                    .collect(),
                state: pb::JobState::Unspecified as i32,
                ..Default::default()
            })
            .collect();
        let sweep = pb::Sweep {
            id: id.clone(),
            state: pb::SweepState::Running as i32,
            model_name: plan.model_name.clone(),
            metric: plan.metric.name().to_string(),
            goal: match plan.goal {
                Goal::Minimize => pb::Goal::Minimize,
                Goal::Maximize => pb::Goal::Maximize,
            } as i32,
            total_trials: plan.points.len() as u32,
            trials,
            created_at: Some(now()),
            request: Some(request),
            ..Default::default()
        };
        let entry = Entry::new(sweep, plan.goal, self.0.store.db().cloned());
        entry.persist();
        self.0.sweeps.insert(entry.clone(), id.clone());
        tracing::info!(sweep = %id, trials = plan.points.len(), model = %plan.model_name, "sweep started");
        let snapshot = entry.snapshot();
        tokio::spawn(run(self.0.clone(), entry, plan, Resume::No));
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
        let entry = self.0.sweeps.get(&request.into_inner().sweep_id)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut stopping = self.0.stopping.clone();
        tokio::spawn(async move {
            let mut published = entry.published.subscribe();
            let mut next = 0;
            loop {
                published.borrow_and_update();
                let (events, ended) = entry.events_from(next);
                if events.is_empty() {
                    if ended {
                        return;
                    }
                    tokio::select! {
                        changed = published.changed() => if changed.is_err() { return },
                        // A shutdown ends the stream (see WatchJob).
                        _ = crate::status::shutdown_begun(&mut stopping) => {
                            let _ = tx.send(Err(crate::status::shutting_down())).await;
                            return;
                        }
                    }
                    continue;
                }
                next += events.len();
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

/// Whether a sweep's controller starts fresh or takes over after a restart.
#[derive(Clone, Copy, PartialEq)]
enum Resume {
    No,
    AfterRestart,
}

/// The jobs already submitted for `sweep_id`, by trial number, from their
/// `sweep` and `trial` labels.
fn submitted_trials(kiln: &Kiln, sweep_id: &str) -> HashMap<u32, pb::Job> {
    let filter = ListFilter {
        labels: vec![("sweep".into(), sweep_id.into())],
        ..Default::default()
    };
    let jobs = kiln.store.list_filtered(&filter).unwrap_or_default();
    // Newest first: the first job seen for a trial wins.
    let mut by_trial = HashMap::new();
    for job in jobs {
        let trial = job.spec.as_ref().and_then(|s| s.labels.get("trial"));
        if let Some(number) = trial.and_then(|t| t.parse().ok()) {
            by_trial.entry(number).or_insert(job);
        }
    }
    by_trial
}

/// The epochs trial `index` was set to run (0 if its spec is invalid: such
/// a trial failed at submission and is never followed).
fn trial_epochs(plan: &Plan, index: usize, sweep_id: &str) -> u32 {
    kiln_sweep::trial_spec(
        &plan.base,
        &plan.points[index],
        index as u32 + 1,
        sweep_id,
        &plan.model_name,
    )
    .map_or(0, |(_, spec)| spec.training.epochs)
}

/// The controller of one sweep.
async fn run(kiln: Arc<Kiln>, entry: Arc<Entry>, plan: Plan, resume: Resume) {
    use pb::sweep_event::Kind as E;
    let sweep_id = entry.with(|r| r.sweep.id.clone());
    // After a restart: a trial whose job was submitted in the instant before
    // the kill, before its job id was saved, is adopted, not run twice.
    let mut unrecorded = match resume {
        Resume::AfterRestart => submitted_trials(&kiln, &sweep_id),
        Resume::No => HashMap::new(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, pb::JobEvent)>();
    let n = plan.points.len();
    // Trial index -> job id, for the unfinished trials.
    let mut running: HashMap<usize, String> = HashMap::new();
    // Per trial: the metric per epoch, and the epochs it was set to run.
    let mut curves: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut budgets: Vec<u32> = vec![0; n];
    let mut pruned = vec![false; n];
    let mut rungs = AshaRungs::default();
    let mut last_ranking: Vec<usize> = Vec::new();
    // Forwards a trial's events, from its first, to the controller.
    let follow = |index: usize, job_id: String| {
        let store = kiln.store.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut cursor) = store.watch(&job_id) else {
                return;
            };
            while let Some(batch) = cursor.next_batch().await {
                for event in batch {
                    if tx.send((index, event)).is_err() {
                        return;
                    }
                }
            }
        });
    };
    // Resumed after a restart: the trials started before are followed again
    // (trials start in number order, so they are a prefix).
    let started: Vec<(usize, String, bool)> = entry.with(|r| {
        r.sweep
            .trials
            .iter()
            .enumerate()
            .take_while(|(_, t)| !t.job_id.is_empty() || t.state() != pb::JobState::Unspecified)
            .map(|(i, t)| (i, t.job_id.clone(), t.job_id.is_empty()))
            .collect()
    });
    let mut next = started.len();
    let mut adopted = vec![false; n];
    for (index, job_id, never_submitted) in started {
        if never_submitted {
            continue; // its submission failed: it has its end already
        }
        budgets[index] = trial_epochs(&plan, index, &sweep_id);
        adopted[index] = true;
        running.insert(index, job_id.clone());
        follow(index, job_id);
    }

    loop {
        while !entry.cancelled.load(Ordering::SeqCst)
            && running.len() < plan.max_concurrent
            && next < n
        {
            let index = next;
            next += 1;
            let number = index as u32 + 1;
            if let Some(job) = unrecorded.remove(&number) {
                tracing::info!(sweep = %sweep_id, job = %job.id, trial = number, "trial adopted after a restart");
                budgets[index] = trial_epochs(&plan, index, &sweep_id);
                entry.with(|r| {
                    let t = &mut r.sweep.trials[index];
                    t.job_id = job.id.clone();
                    t.state = job.state;
                });
                entry.emit(E::TrialStarted(entry.trial(index)));
                adopted[index] = true;
                running.insert(index, job.id.clone());
                follow(index, job.id);
                continue;
            }
            let submitted = match kiln_sweep::trial_spec(
                &plan.base,
                &plan.points[index],
                number,
                &sweep_id,
                &plan.model_name,
            ) {
                Err(e) => Err(e.to_string()),
                Ok((proto, spec)) => {
                    budgets[index] = spec.training.epochs;
                    crate::jobs::submit(&kiln, proto, spec)
                        .await
                        .map_err(|s| s.message().to_string())
                }
            };
            match submitted {
                Err(message) => {
                    entry.with(|r| {
                        let t = &mut r.sweep.trials[index];
                        t.state = pb::JobState::Failed as i32;
                        t.stop_reason = pb::StopReason::Error as i32;
                        t.message = message;
                    });
                    entry.emit(E::TrialFinished(entry.trial(index)));
                }
                Ok(job) => {
                    entry.with(|r| {
                        let t = &mut r.sweep.trials[index];
                        t.job_id = job.id.clone();
                        t.state = job.state;
                    });
                    entry.emit(E::TrialStarted(entry.trial(index)));
                    running.insert(index, job.id.clone());
                    if entry.cancelled.load(Ordering::SeqCst) {
                        let _ = kiln.store.cancel(&job.id);
                    }
                    follow(index, job.id.clone());
                }
            }
        }
        if running.is_empty() {
            break;
        }
        let Some((index, event)) = rx.recv().await else {
            break;
        };
        let Some(job_id) = running.get(&index).cloned() else {
            continue;
        };
        match event.kind {
            Some(pb::job_event::Kind::StateChanged(s)) => {
                entry.with(|r| r.sweep.trials[index].state = s.state);
            }
            Some(pb::job_event::Kind::Epoch(m)) => {
                let value = metric_value(&m, plan.metric.name()).unwrap_or(f64::NAN);
                curves[index].push(value);
                entry.with(|r| {
                    let t = &mut r.sweep.trials[index];
                    t.epochs_completed = m.epoch;
                    let better = match t.best_value {
                        None => !value.is_nan(),
                        Some(best) => plan.goal.better(value, best),
                    };
                    if better {
                        t.best_value = Some(value);
                        t.best = Some(m.clone());
                    }
                });
                entry.emit(E::TrialEpoch(pb::TrialEpoch {
                    trial: index as u32 + 1,
                    job_id: job_id.clone(),
                    metrics: Some(m.clone()),
                }));
                // A trial followed again after a restart may have ended long
                // ago: only a trial still going is judged.
                let going = !adopted[index]
                    || kiln
                        .store
                        .get(&job_id)
                        .is_ok_and(|j| !is_terminal(j.state()));
                if !pruned[index] && going {
                    let reason = match plan.policy {
                        Policy::None => None,
                        Policy::Median(rule) => {
                            let others: Vec<&[f64]> = curves
                                .iter()
                                .enumerate()
                                .filter(|(i, _)| *i != index)
                                .map(|(_, c)| c.as_slice())
                                .collect();
                            rule.should_stop(plan.goal, &curves[index], &others)
                                .then(|| {
                                    format!(
                                        "stopped by the median stopping rule at epoch {}",
                                        m.epoch
                                    )
                                })
                        }
                        Policy::Asha(asha) => asha
                            .rung_at(m.epoch, budgets[index])
                            .filter(|&rung| !rungs.promote(&asha, plan.goal, rung, value))
                            .map(|rung| {
                                format!("stopped by ASHA at epoch {} (rung {rung})", m.epoch)
                            }),
                    };
                    if let Some(reason) = reason {
                        pruned[index] = true;
                        tracing::info!(sweep = %sweep_id, job = %job_id, %reason, "trial pruned");
                        let _ = kiln.store.stop(&job_id, pb::StopReason::Pruned, &reason);
                        entry.with(|r| r.sweep.trials[index].pruned = true);
                        entry.emit(E::TrialPruned(pb::TrialPruned {
                            trial: index as u32 + 1,
                            job_id: job_id.clone(),
                            epoch: m.epoch,
                            reason,
                        }));
                    }
                }
            }
            Some(pb::job_event::Kind::Finished(_)) | Some(pb::job_event::Kind::Failed(_)) => {
                if let Ok(job) = kiln.store.get(&job_id) {
                    if is_terminal(job.state()) {
                        entry.with(|r| {
                            let t = &mut r.sweep.trials[index];
                            t.state = job.state;
                            t.stop_reason = job.stop_reason;
                            t.message = job.message.clone();
                            t.epochs_completed = job.epochs_completed;
                        });
                    }
                }
                running.remove(&index);
                entry.emit(E::TrialFinished(entry.trial(index)));
            }
            _ => {}
        }
        let ranking = entry.with(|r| r.ranking());
        if ranking != last_ranking {
            last_ranking = ranking;
            entry.emit(E::Leaderboard(pb::Leaderboard {
                trials: entry.with(|r| r.leaderboard()),
            }));
        }
    }
    finish(&kiln, &entry, &plan).await;
}

/// Serves the best succeeded trial's model under the sweep's name and ends
/// the sweep.
async fn finish(kiln: &Arc<Kiln>, entry: &Arc<Entry>, plan: &Plan) {
    let cancelled = entry.cancelled.load(Ordering::SeqCst);
    let best = entry.with(|r| {
        r.leaderboard()
            .into_iter()
            .find(|t| t.state() == pb::JobState::Succeeded)
    });
    let message;
    let mut served = None;
    if let Some(best) = &best {
        let models = kiln.models.clone();
        let trial_model = format!("{}-trial-{}", plan.model_name, best.number);
        let name = plan.model_name.clone();
        let device_choice = JobSpec::from_proto(&plan.base).map(|s| s.device);
        let (store, trial_job) = (kiln.store.clone(), best.job_id.clone());
        let registered = tokio::task::spawn_blocking(move || -> Result<u32, String> {
            let (_, artifact) = models
                .artifact(&trial_model, "")
                .map_err(|e| e.to_string())?;
            let choice = device_choice.map_err(|e| e.to_string())?;
            let (device, device_name) = kiln_train::device::resolve(choice)?;
            let model = models
                .register(&name, "", artifact, device, &device_name)
                .map_err(|e| e.to_string())?;
            // The version's files are the best trial's (models/<its job id>);
            // recorded so that a restart serves it again.
            crate::runner::record_model(&store, &model, &trial_job);
            Ok(model.version)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        match registered {
            Ok(version) => {
                served = Some(version);
                message = format!(
                    "best trial {} ({}): {} {}; served as model \"{}\" version {version}",
                    best.number,
                    best.job_id,
                    plan.metric.name(),
                    best.best_value
                        .map(kiln_sweep::format_number)
                        .unwrap_or_default(),
                    plan.model_name
                );
            }
            Err(e) => {
                message = format!(
                    "best trial {} ({}), but serving it as \"{}\" failed: {e}",
                    best.number, best.job_id, plan.model_name
                );
            }
        }
    } else {
        message = "no trial succeeded".into();
    }
    let state = if cancelled {
        pb::SweepState::Cancelled
    } else if served.is_some() {
        pb::SweepState::Succeeded
    } else {
        pb::SweepState::Failed
    };
    // The end state and the last event in one step, so a watcher never sees
    // the sweep ended without its final event.
    let count = entry.with(|r| {
        r.sweep.state = state as i32;
        r.sweep.finished_at = Some(now());
        r.sweep.message = message.clone();
        if let Some(best) = &best {
            r.sweep.best_trial = best.number;
            r.sweep.best_job_id = best.job_id.clone();
        }
        tracing::info!(sweep = %r.sweep.id, %message, "sweep ended");
        let event = pb::SweepEvent {
            sweep_id: r.sweep.id.clone(),
            sequence: r.events.len() as u64,
            time: Some(now()),
            kind: Some(pb::sweep_event::Kind::SweepFinished(r.snapshot())),
        };
        r.events.push(event);
        r.events.len()
    });
    entry.published.send_replace(count);
    entry.persist();
}

/// At start: puts back every stored sweep, and starts again the controllers
/// of those that had not ended.
pub fn resume(kiln: &Arc<Kiln>) {
    let Some(db) = kiln.store.db() else { return };
    let stored = match db.sweeps() {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the sweeps from the database");
            return;
        }
    };
    for sweep in stored {
        let id = sweep.id.clone();
        let goal = match sweep.goal() {
            pb::Goal::Maximize => Goal::Maximize,
            _ => Goal::Minimize,
        };
        let ended = sweep_terminal(sweep.state());
        let planned = sweep
            .request
            .as_ref()
            .ok_or_else(|| Status::internal("no request stored"))
            .and_then(|request| plan(request, &id));
        let entry = Entry::new(sweep, goal, Some(db.clone()));
        kiln.sweeps.insert(entry.clone(), id.clone());
        if ended {
            continue;
        }
        match planned {
            Ok(plan) => {
                tracing::info!(sweep = %id, "sweep resumed after a restart");
                tokio::spawn(run(kiln.clone(), entry, plan, Resume::AfterRestart));
            }
            Err(status) => {
                tracing::error!(sweep = %id, error = %status.message(), "sweep cannot resume");
                entry.with(|r| {
                    r.sweep.state = pb::SweepState::Failed as i32;
                    r.sweep.finished_at = Some(now());
                    r.sweep.message =
                        format!("could not resume after a restart: {}", status.message());
                });
                entry.persist();
            }
        }
    }
}
