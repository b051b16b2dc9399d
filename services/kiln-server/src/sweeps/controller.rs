//! A sweep's controller: the tokio task that submits trial jobs through the
//! ordinary job path, follows their events, stops the trials the policy
//! prunes (through the job store's cancel path, ending them CANCELLED with
//! STOP_REASON_PRUNED), publishes the leaderboard, and at the end registers
//! the best trial's model. Every decision is kiln-sweep's (`Controller`,
//! `leaderboard`, `outcome`); this side does the I/O.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kiln::v1 as pb;
use kiln_store::jobs::{is_terminal, now, ListFilter};
use kiln_sweep::{leaderboard, outcome, Adoption, Controller, Plan, Resume, Start};
use pb::sweep_event::Kind as E;
use tokio::sync::mpsc::UnboundedSender;

use super::Entry;
use crate::Kiln;

/// One trial's job event, by trial index.
type TrialEvent = (usize, pb::JobEvent);

/// The controller of one sweep.
pub(super) async fn run(kiln: Arc<Kiln>, entry: Arc<Entry>, plan: Plan, resume: Resume) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<TrialEvent>();
    let mut sweep = Run::new(kiln, entry, plan, resume, tx);
    loop {
        if sweep.lost() {
            return; // another replica controls it now
        }
        sweep.start_trials().await;
        if sweep.controller.is_idle() {
            break;
        }
        let Some((index, event)) = rx.recv().await else {
            break;
        };
        sweep.on_event(index, event);
    }
    if sweep.lost() {
        return;
    }
    finish(&sweep.kiln, &sweep.entry, &sweep.plan).await;
    let _ = sweep.kiln.storage.release_sweep(&sweep.sweep_id);
}

/// A running controller: the sweep, its plan and kiln-sweep's state.
struct Run {
    kiln: Arc<Kiln>,
    entry: Arc<Entry>,
    plan: Plan,
    sweep_id: String,
    controller: Controller,
    /// Where followed trials' events go.
    tx: UnboundedSender<TrialEvent>,
}

impl Run {
    /// Takes over the trials started before a restart, following them again
    /// from their first event so the stopping rules see their whole history.
    fn new(
        kiln: Arc<Kiln>,
        entry: Arc<Entry>,
        plan: Plan,
        resume: Resume,
        tx: UnboundedSender<TrialEvent>,
    ) -> Run {
        let (sweep_id, trials) = entry.with(|r| (r.sweep.id.clone(), r.sweep.trials.clone()));
        let adoption = Adoption::new(resume, &trials, || sweep_jobs(&kiln, &sweep_id));
        let controller = Controller::new(&plan, &sweep_id, adoption);
        let run = Run {
            kiln,
            entry,
            plan,
            sweep_id,
            controller,
            tx,
        };
        for (index, job_id) in run.controller.running() {
            run.follow(index, job_id);
        }
        run
    }

    /// Forwards a trial's events, from its first, to the controller.
    fn follow(&self, index: usize, job_id: String) {
        let store = self.kiln.store.clone();
        let tx = self.tx.clone();
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
    }

    fn cancelled(&self) -> bool {
        self.entry.cancelled.load(Ordering::SeqCst)
    }

    /// The shared mode: this process lost the sweep's lease.
    fn lost(&self) -> bool {
        self.entry.lost.load(Ordering::SeqCst)
    }

    /// Starts trials while the controller lets more run.
    async fn start_trials(&mut self) {
        while let Some((index, start)) = self.controller.next_start(self.cancelled()) {
            if self.lost() {
                return;
            }
            match start {
                Start::Adopt(job) => self.adopt(index, *job),
                Start::Submit => self.submit(index).await,
            }
        }
    }

    /// Follows the job submitted for trial `index` just before a restart.
    fn adopt(&mut self, index: usize, job: pb::Job) {
        tracing::info!(sweep = %self.sweep_id, job = %job.id, trial = index + 1, "trial adopted after a restart");
        let epochs = self.plan.trial_epochs(index, &self.sweep_id);
        self.started(index, &job);
        self.controller.started(index, job.id.clone(), epochs, true);
        self.follow(index, job.id);
    }

    /// Submits trial `index`'s job; a spec or submission error ends the
    /// trial FAILED.
    async fn submit(&mut self, index: usize) {
        let submitted = match self.plan.trial_spec(index, &self.sweep_id) {
            Err(e) => Err(e.to_string()),
            Ok((proto, spec)) => {
                let epochs = spec.training.epochs;
                crate::jobs::submit(&self.kiln, proto, spec)
                    .await
                    .map(|job| (job, epochs))
                    .map_err(|s| s.message().to_string())
            }
        };
        match submitted {
            Err(message) => {
                self.entry.with(|r| {
                    let t = &mut r.sweep.trials[index];
                    t.state = pb::JobState::Failed as i32;
                    t.stop_reason = pb::StopReason::Error as i32;
                    t.message = message;
                });
                self.entry.emit(E::TrialFinished(self.entry.trial(index)));
            }
            Ok((job, epochs)) => {
                self.started(index, &job);
                self.controller
                    .started(index, job.id.clone(), epochs, false);
                // Cancelled while it was being submitted.
                if self.cancelled() {
                    let _ = self.kiln.store.cancel(&job.id);
                }
                self.follow(index, job.id);
            }
        }
    }

    /// Records that trial `index` runs as `job`.
    fn started(&self, index: usize, job: &pb::Job) {
        self.entry.with(|r| {
            let t = &mut r.sweep.trials[index];
            t.job_id = job.id.clone();
            t.state = job.state;
        });
        self.entry.emit(E::TrialStarted(self.entry.trial(index)));
    }

    /// One event of trial `index`'s job (ignored once the trial has ended),
    /// then the leaderboard if it moved.
    fn on_event(&mut self, index: usize, event: pb::JobEvent) {
        let Some(job_id) = self.controller.job(index).map(str::to_string) else {
            return;
        };
        match event.kind {
            Some(pb::job_event::Kind::StateChanged(s)) => {
                self.entry.with(|r| r.sweep.trials[index].state = s.state);
            }
            Some(pb::job_event::Kind::Epoch(m)) => self.on_epoch(index, &job_id, m),
            Some(pb::job_event::Kind::Finished(_)) | Some(pb::job_event::Kind::Failed(_)) => {
                self.on_end(index, &job_id);
            }
            _ => {}
        }
        let ranking = self.entry.with(|r| r.ranking());
        if self.controller.leaderboard_moved(ranking) {
            self.entry.emit(E::Leaderboard(pb::Leaderboard {
                trials: self.entry.with(|r| r.leaderboard()),
            }));
        }
    }

    /// Records an epoch and stops the trial if the policy says so.
    fn on_epoch(&mut self, index: usize, job_id: &str, m: pb::EpochMetrics) {
        let value = self.plan.metric.value(&m).unwrap_or(f64::NAN);
        let goal = self.plan.goal;
        self.entry
            .with(|r| leaderboard::record_epoch(&mut r.sweep.trials[index], goal, &m, value));
        self.entry.emit(E::TrialEpoch(pb::TrialEpoch {
            trial: index as u32 + 1,
            job_id: job_id.to_string(),
            metrics: Some(m.clone()),
        }));
        let store = &self.kiln.store;
        let still_running = || store.get(job_id).is_ok_and(|j| !is_terminal(j.state()));
        let Some(reason) = self
            .controller
            .on_epoch(index, m.epoch, value, still_running)
        else {
            return;
        };
        tracing::info!(sweep = %self.sweep_id, job = %job_id, %reason, "trial pruned");
        let _ = store.stop(job_id, pb::StopReason::Pruned, &reason);
        self.entry.with(|r| r.sweep.trials[index].pruned = true);
        self.entry.emit(E::TrialPruned(pb::TrialPruned {
            trial: index as u32 + 1,
            job_id: job_id.to_string(),
            epoch: m.epoch,
            reason,
        }));
    }

    /// Trial `index`'s job ended: its end as the store has it.
    fn on_end(&mut self, index: usize, job_id: &str) {
        if let Ok(job) = self.kiln.store.get(job_id) {
            if is_terminal(job.state()) {
                self.entry.with(|r| {
                    let t = &mut r.sweep.trials[index];
                    t.state = job.state;
                    t.stop_reason = job.stop_reason;
                    t.message = job.message.clone();
                    t.epochs_completed = job.epochs_completed;
                });
            }
        }
        self.controller.ended(index);
        self.entry.emit(E::TrialFinished(self.entry.trial(index)));
    }
}

/// The jobs of `sweep_id` (by their `sweep` label), newest first.
fn sweep_jobs(kiln: &Kiln, sweep_id: &str) -> Vec<pb::Job> {
    let filter = ListFilter {
        labels: vec![("sweep".into(), sweep_id.into())],
        ..Default::default()
    };
    kiln.store.list_filtered(&filter).unwrap_or_default()
}

/// Serves the best succeeded trial's model under the sweep's name and ends
/// the sweep.
async fn finish(kiln: &Arc<Kiln>, entry: &Arc<Entry>, plan: &Plan) {
    let cancelled = entry.cancelled.load(Ordering::SeqCst);
    let best = entry.with(|r| leaderboard::best_trial(&r.sweep.trials, r.goal));
    let registered = match &best {
        Some(best) => Some(register(kiln, plan, best).await),
        None => None,
    };
    let (state, message) = outcome::ending(
        cancelled,
        best.as_ref().zip(registered.as_ref()),
        plan.metric,
        &plan.model_name,
    );
    // The end state and the last event in one step, so a watcher never sees
    // the sweep ended without its final event.
    entry.with(|r| {
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
            kind: Some(E::SweepFinished(r.snapshot())),
        };
        r.events.push(event);
    });
    let _ = entry.persist();
}

/// Registers `best`'s model under the sweep's model name: the version, or
/// why not.
async fn register(kiln: &Arc<Kiln>, plan: &Plan, best: &pb::Trial) -> Result<u32, String> {
    let models = kiln.models.clone();
    let trial_model = format!("{}-trial-{}", plan.model_name, best.number);
    let name = plan.model_name.clone();
    let serve = kiln.serve_device.clone();
    let trial_job = best.job_id.clone();
    tokio::task::spawn_blocking(move || -> Result<u32, String> {
        let (_, artifact) = models
            .artifact(&trial_model, "")
            .map_err(|e| e.to_string())?;
        // The version's files are the best trial's (models/<its job id>).
        let model = models
            .register(&name, "", &trial_job, artifact, serve.device, &serve.name)
            .map_err(|e| e.to_string())?;
        Ok(model.version)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r)
}
