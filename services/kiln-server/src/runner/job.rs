//! One job's life on a trainer thread: RUNNING, training (or the LR range
//! test) with its events recorded as they come, then either back to QUEUED
//! with a checkpoint (a shutdown) or its final event, after its model is
//! published.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kiln::v1 as pb;
use kiln_core::spec::JobKind;
use kiln_store::jobs::LiveProgress;
use kiln_store::jobs::{cancelled_event, CancelFlag};
use kiln_store::JobError;
use kiln_train::{Checkpoint, Control, LrRangeReport, StopReason, TrainError, TrainEvent};
use pb::job_event::Kind;

use super::events::{
    epoch_metrics, event_kind, failed, failed_message, gradient_health, libtorch_summary,
    lr_range_result, panic_message,
};
use super::{Context, QueuedJob};
use crate::tensorboard::JobLog;

/// What a job produced.
enum Outcome {
    Trained(Box<kiln_train::Trained>),
    LrRangeTest(LrRangeReport),
}

/// What [`Context::start`] hands to the training step.
struct Started {
    cancel: Arc<CancelFlag>,
    progress: Arc<LiveProgress>,
    /// Epochs already reported (by a run before a restart or shutdown):
    /// their events are not sent again when the resumed run repeats them.
    reported: u32,
    resume: Option<Checkpoint>,
}

/// How training ended: its result, or the panic that ended it.
type Ended = std::thread::Result<Result<Outcome, TrainError>>;

impl Context {
    pub(super) fn run_job(&self, job: QueuedJob) {
        let Some(started) = self.start(&job) else {
            return;
        };
        let cancel = started.cancel.clone();
        // One span per job, from RUNNING to its final event (exported over
        // OTLP when configured).
        let span = tracing::info_span!(
            "job",
            otel.name = "kiln.job",
            job.id = %job.id,
            job.kind = ?job.spec.kind,
            model = %job.model_name,
            device = %job.device_name,
            outcome = tracing::field::Empty,
        );
        let _span = span.enter();
        tracing::info!(job = %job.id, device = %job.device_name, "training started");
        let mut tensorboard =
            crate::tensorboard::JobLog::start(self.tensorboard_dir.as_deref(), &job);
        let unrecorded = AtomicBool::new(false);
        let ended = self.train(&job, started, &mut tensorboard, &unrecorded);
        if self.is_lost(&job.id) {
            // Another trainer has the job now: nothing of this run counts.
            span.record("outcome", "lease lost");
            tracing::warn!(job = %job.id, attempt = job.attempt, "lease lost: the job was stopped here, another trainer continues it");
            return;
        }
        if unrecorded.load(Ordering::SeqCst) {
            span.record("outcome", "stalled");
            let checkpoint = match &ended {
                Ok(Err(TrainError::Suspended(c))) => Some(c.as_ref()),
                _ => None,
            };
            self.stall(&job.id, checkpoint);
            return;
        }
        if let Some(checkpoint) = suspension(&ended, &cancel) {
            span.record("outcome", "suspended");
            self.back_to_queue(&job.id, checkpoint);
            return;
        }
        // What follows cannot all be fenced in the database (the model's
        // files, removing the checkpoint): asked once more here.
        if !self.store.lease_held(&job.id) {
            span.record("outcome", "lease lost");
            tracing::warn!(job = %job.id, "lease lost before the job's end was recorded; another trainer continues it");
            return;
        }
        let Some(final_event) = self.final_event(&job, ended) else {
            // Its model could not be written: it runs again once there is space.
            span.record("outcome", "stalled");
            self.stall(&job.id, None);
            return;
        };
        span.record(
            "outcome",
            match &final_event {
                Kind::Finished(_) => "succeeded",
                Kind::Failed(f) if f.state() == pb::JobState::Cancelled => "cancelled",
                _ => "failed",
            },
        );
        tracing::info!(job = %job.id, event = ?final_event, "job ended");
        tensorboard.end(&final_event);
        self.push_tensorboard(&job);
        // Gone before the final event is published: a watcher that sees the
        // job end finds no checkpoint left. Should that event not be
        // recorded (a full disk), the job runs again from the start once
        // there is space.
        self.checkpoints.remove(&job.id);
        let mut recorded = self.store.append(&job.id, final_event.clone());
        // The shared mode: the database may be back within the lease.
        while matches!(recorded, Err(JobError::Unrecorded(_)))
            && self.store.shared()
            && !self.suspend.load(Ordering::SeqCst)
        {
            std::thread::sleep(std::time::Duration::from_secs(1));
            recorded = self.store.append(&job.id, final_event.clone());
        }
        if let Err(JobError::Unrecorded(_)) = recorded {
            self.store.stall(&job.id);
        }
    }

    /// With object storage: the job's TensorBoard run, as it ended, under
    /// `tensorboard/<group>/<job id>/` in the store (for a TensorBoard that
    /// reads the bucket). A failure is logged; the job's end is not held up.
    fn push_tensorboard(&self, job: &QueuedJob) {
        let (Some(blobs), Some(root)) = (&self.checkpoints.blobs, &self.tensorboard_dir) else {
            return;
        };
        let dir = crate::tensorboard::run_dir(root, &job.id, &job.model_name, &job.labels);
        let Ok(rel) = dir.strip_prefix(root) else {
            return;
        };
        let key = std::path::Path::new("tensorboard").join(rel);
        if let Err(e) = blobs.push_tree(&dir, &key) {
            tracing::warn!(job = %job.id, error = %e, "tensorboard log not pushed to the object store");
        }
    }

    /// The job's events could not be recorded (the disk is full): it stops
    /// where it stands and goes back to the queue once writes succeed
    /// (`JobStore::resume_stalled`). Its checkpoint is kept only up to the
    /// epochs its recorded events reach, so that the curve has no gap.
    ///
    /// The shared mode has no stalled jobs: the trainer keeps its lease and
    /// puts the job back QUEUED (suspended, not a restart) once the database
    /// takes writes again, for any trainer to continue; should its lease end
    /// first, another trainer takes the job over as an interruption.
    fn stall(&self, id: &str, checkpoint: Option<&Checkpoint>) {
        let recorded = self.store.get(id).map_or(0, |j| j.epochs_completed);
        // The last periodic checkpoint, unless the one of the stop is newer.
        let mut resume_after = Checkpoint::epochs_in(&self.checkpoints.path(id))
            .filter(|&epochs| epochs <= recorded)
            .unwrap_or(0);
        if let Some(c) = checkpoint {
            if c.epochs_completed() <= recorded && self.checkpoints.save(id, c) {
                resume_after = c.epochs_completed();
            }
        }
        tracing::warn!(job = %id, recorded_epochs = recorded, "job stopped: its events cannot be recorded");
        if !self.store.shared() {
            self.store.stall(id);
            return;
        }
        let queued = Kind::StateChanged(pb::StateChanged {
            state: pb::JobState::Queued as i32,
            resume_after_epoch: resume_after,
            suspended: true,
            reason: "its events could not be recorded (the database did not take writes)".into(),
            ..Default::default()
        });
        while let Err(JobError::Unrecorded(_)) = self.store.append(id, queued.clone()) {
            if self.suspend.load(Ordering::SeqCst) || self.is_lost(id) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }

    /// Marks the job RUNNING, unless it was cancelled while queued (or is
    /// being cancelled now); finds where it resumes.
    fn start(&self, job: &QueuedJob) -> Option<Started> {
        let id = &job.id;
        let (Ok(cancel), Ok(progress)) = (self.store.cancel_flag(id), self.store.live_progress(id))
        else {
            return None;
        };
        if cancel.is_set() {
            self.checkpoints.remove(id);
            return None; // cancelled while queued: already recorded
        }
        let resume = self.resume_point(job);
        let reported = self.store.get(id).map_or(0, |j| j.epochs_completed);
        let running = loop {
            let running = self.store.append(
                id,
                Kind::StateChanged(pb::StateChanged {
                    state: pb::JobState::Running as i32,
                    device: job.device_name.clone(),
                    ..Default::default()
                }),
            );
            // A job starts only once that is recorded: while the disk is
            // full it waits here, QUEUED (a shutdown leaves it so).
            match running {
                Err(JobError::Unrecorded(_)) if !self.suspend.load(Ordering::SeqCst) => {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
                running => break running,
            }
        };
        // A cancel can land between the check above and this append.
        if !running.is_ok_and(|j| j.state() == pb::JobState::Running) {
            return None;
        }
        Some(Started {
            cancel,
            progress,
            reported,
            resume,
        })
    }

    /// Trains (or runs the LR range test), recording each event as it comes;
    /// a panic inside (libtorch's errors among them) is caught and returned.
    /// An event that cannot be recorded sets `unrecorded` and stops the
    /// run at its next poll, as a shutdown does.
    fn train(
        &self,
        job: &QueuedJob,
        started: Started,
        tensorboard: &mut JobLog,
        unrecorded: &AtomicBool,
    ) -> Ended {
        let Started {
            cancel,
            progress,
            reported,
            resume,
        } = started;
        let id = &job.id;
        catch_unwind(AssertUnwindSafe(|| {
            // An epoch's gradient health arrives just before it and travels in its event.
            let mut health = None;
            let record = |kind| match self.store.append(id, kind) {
                Err(JobError::Unrecorded(_)) => unrecorded.store(true, Ordering::SeqCst),
                Err(JobError::Fenced(_)) => {
                    self.lost.lock().unwrap().insert(id.clone());
                }
                _ => {}
            };
            let mut on_event = |event| match event {
                TrainEvent::Health(h) if h.epoch <= reported => {}
                TrainEvent::Epoch(r) if r.epoch <= reported => {}
                TrainEvent::EarlyStopped { epoch, .. } if epoch <= reported => {}
                TrainEvent::Health(h) => health = Some(h),
                TrainEvent::Epoch(report) => {
                    crate::metrics::observe_epoch(report.epoch_seconds);
                    let health = health.take();
                    tensorboard.epoch(&report, health.as_ref());
                    let mut metrics = epoch_metrics(&report);
                    metrics.gradient_health = health.map(|h| gradient_health(&h));
                    record(Kind::Epoch(metrics));
                }
                event => {
                    if let Some(kind) = event_kind(event) {
                        record(kind);
                    }
                }
            };
            let (spec, data, device) = (&job.spec, &job.data, &job.device);
            let cancelled = || cancel.is_set();
            let suspended = || {
                self.suspend.load(Ordering::SeqCst)
                    || unrecorded.load(Ordering::SeqCst)
                    || self.is_lost(id)
            };
            match spec.kind {
                JobKind::Train => {
                    let control = Control {
                        cancelled: &cancelled,
                        suspended: &suspended,
                        on_step: &|epoch, rows| progress.set(epoch, rows as u64),
                        checkpoint_every: self.checkpoints.every_epochs,
                        // Not past the recorded events, nor for a lost job.
                        on_checkpoint: &mut |c| {
                            if !self.is_lost(id) && !unrecorded.load(Ordering::SeqCst) {
                                self.checkpoints.save(id, c);
                            }
                        },
                        resume,
                    };
                    kiln_train::train_with(spec, data, device, control, &mut on_event)
                        .map(|t| Outcome::Trained(Box::new(t)))
                }
                // Short, and not checkpointed: a shutdown stops it and it
                // runs again from the start.
                JobKind::LrRangeTest => {
                    let stop = || cancelled() || suspended();
                    kiln_train::lr_range_test(spec, data, device, &stop, &mut on_event)
                        .map(Outcome::LrRangeTest)
                }
            }
        }))
    }

    /// A shutdown stopped the job: back to QUEUED where it stands (its
    /// checkpoint, if one could be written); the next process continues it.
    fn back_to_queue(&self, id: &str, checkpoint: Option<&Checkpoint>) {
        let resume_after_epoch = match checkpoint {
            Some(c) if self.checkpoints.save(id, c) => c.epochs_completed(),
            _ => {
                self.checkpoints.remove(id);
                0
            }
        };
        tracing::info!(job = %id, resume_after_epoch, "job suspended by the shutdown");
        let queued = self.store.append(
            id,
            Kind::StateChanged(pb::StateChanged {
                state: pb::JobState::Queued as i32,
                resume_after_epoch,
                suspended: true,
                ..Default::default()
            }),
        );
        if let Err(JobError::Unrecorded(_)) = queued {
            self.store.stall(id); // recorded RUNNING: recovered as interrupted
        }
    }

    /// The job's final event; a trained model is published first, so that it
    /// answers Predict once the job is seen SUCCEEDED. `None`: its model could
    /// not be written for lack of space.
    fn final_event(&self, job: &QueuedJob, ended: Ended) -> Option<Kind> {
        let id = &job.id;
        Some(match ended {
            Ok(Ok(Outcome::LrRangeTest(report))) => {
                let _ = self
                    .store
                    .append(id, Kind::LrRangeResult(lr_range_result(&report)));
                // No model: the job's answer is the curve and its suggestions.
                Kind::Finished(pb::Finished {
                    reason: pb::StopReason::Completed as i32,
                    ..Default::default()
                })
            }
            Ok(Err(e @ (TrainError::LrRangeTest(_) | TrainError::Checkpoint(_)))) => {
                failed(pb::StopReason::Error, e.to_string())
            }
            Ok(Err(TrainError::Suspended(_))) => unreachable!("handled by back_to_queue"),
            Ok(Ok(Outcome::Trained(trained))) => match self.publish(job, &trained) {
                Ok(()) => Kind::Finished(pb::Finished {
                    reason: match trained.reason {
                        StopReason::Completed => pb::StopReason::Completed,
                        StopReason::EarlyStopped => pb::StopReason::EarlyStopped,
                    } as i32,
                    best_epoch: trained.best.epoch,
                    best: Some(epoch_metrics(&trained.best)),
                    epochs_completed: trained.epochs_completed,
                    model_name: job.model_name.clone(),
                    train_seconds: trained.train_seconds,
                    swa: trained.swa.as_ref().map(epoch_metrics),
                    served_swa: trained.served_swa,
                    confusion_matrix: trained
                        .decisions
                        .as_ref()
                        .map(|d| d.confusion.to_proto(&job.data.class_labels)),
                    decision_threshold: trained.decisions.as_ref().and_then(|d| d.threshold),
                }),
                Err((true, _)) => return None,
                Err((false, message)) => failed(pb::StopReason::Error, message),
            },
            Ok(Err(e @ TrainError::Cancelled { .. })) => cancelled_event(&e.to_string()),
            Ok(Err(
                ref e @ TrainError::Diverged {
                    epoch, ref layer, ..
                },
            )) => Kind::Failed(pb::Failed {
                epoch,
                layer: layer.as_ref().map(|l| l.layer.clone()).unwrap_or_default(),
                ..failed_message(pb::StopReason::Diverged, e.to_string())
            }),
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                let message = libtorch_summary(&message);
                if kiln_train::device::is_out_of_memory(message) {
                    failed(
                        pb::StopReason::OutOfMemory,
                        format!(
                            "out of memory on {}: {message}; try a smaller \
                             spec.training.batch_size or fewer units",
                            job.device_name
                        ),
                    )
                } else {
                    failed(pb::StopReason::Error, format!("training failed: {message}"))
                }
            }
        })
    }

    /// The checkpoint a job continues from. One that cannot continue this
    /// job (another format, spec or data) is dropped; if the job had reported
    /// progress, a restart event then says it starts over.
    fn resume_point(&self, job: &QueuedJob) -> Option<Checkpoint> {
        if job.spec.kind != JobKind::Train {
            return None;
        }
        // A checkpoint past the epochs whose events were recorded (written
        // after an event that could not be) would leave a gap in the curve.
        let recorded = self.store.get(&job.id).map_or(0, |j| j.epochs_completed);
        let checkpoint = self
            .checkpoints
            .load(&job.id)
            .filter(|c| c.matches(&job.spec, &job.data))
            .filter(|c| c.epochs_completed() <= recorded);
        if checkpoint.is_none() {
            self.checkpoints.remove(&job.id);
            let progressed = self
                .store
                .get(&job.id)
                .is_ok_and(|j| j.epochs_completed > 0 || j.lr_range.is_some());
            if progressed {
                let _ = self.store.append(
                    &job.id,
                    Kind::StateChanged(pb::StateChanged {
                        state: pb::JobState::Queued as i32,
                        ..Default::default()
                    }),
                );
            }
        }
        checkpoint
    }
}

/// Whether training stopped for a shutdown (not a cancel): `Some` with the
/// checkpoint to continue from, if there is one.
fn suspension<'a>(ended: &'a Ended, cancel: &CancelFlag) -> Option<Option<&'a Checkpoint>> {
    match ended {
        Ok(Err(TrainError::Suspended(c))) => Some(Some(c)),
        Ok(Err(TrainError::Cancelled { .. })) if !cancel.is_set() => Some(None),
        _ => None,
    }
}
