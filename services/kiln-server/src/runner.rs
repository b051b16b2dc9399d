//! Runs queued jobs: `max_concurrent_jobs` trainer threads per device (one by
//! default, so one job trains per device at a time) sharing the device's
//! queue; the rest wait QUEUED, in submission order. A finished
//! job's best model is written to the data directory and registered for
//! Predict before its final event is published.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use kiln::v1 as pb;
use kiln_core::prepare::Prepared;
use kiln_core::spec::JobKind;
use kiln_core::spec::JobSpec;
use kiln_serve::ModelRegistry;
use kiln_store::jobs::cancelled_event;
use kiln_store::JobStore;
use kiln_train::{
    Checkpoint, Control, Device, EpochReport, GradientHealth, LrRangeReport, ModelArtifact,
    StopReason, TrainError, TrainEvent,
};
use pb::job_event::Kind;

/// A validated job waiting for its device.
pub struct QueuedJob {
    pub id: String,
    pub model_name: String,
    pub spec: JobSpec,
    /// The spec's labels (the core JobSpec does not keep them).
    pub labels: HashMap<String, String>,
    pub data: Prepared,
    pub device: Device,
    pub device_name: String,
}

pub struct Runner {
    queues: Mutex<HashMap<String, mpsc::Sender<QueuedJob>>>,
    context: Arc<Context>,
    /// Trainer threads per device (the `max_concurrent_jobs` config key).
    threads_per_device: usize,
}

struct Context {
    store: Arc<JobStore>,
    models: Arc<ModelRegistry>,
    models_dir: PathBuf,
    /// Root of the jobs' TensorBoard logs; `None`: off.
    tensorboard_dir: Option<PathBuf>,
    checkpoints: Checkpoints,
    /// Set by a shutdown: running jobs checkpoint and go back to QUEUED,
    /// queued ones stay queued.
    suspend: AtomicBool,
    /// Jobs in [`Context::run`] now; a shutdown waits for none.
    active: (Mutex<usize>, Condvar),
}

/// Where training checkpoints live (`<data_dir>/checkpoints/<job id>.ckpt`)
/// and how often they are written.
#[derive(Clone)]
pub struct Checkpoints {
    pub dir: PathBuf,
    /// Epochs between checkpoints; 0: only on suspension.
    pub every_epochs: u32,
}

impl Checkpoints {
    fn path(&self, job_id: &str) -> PathBuf {
        self.dir.join(format!("{job_id}.ckpt"))
    }

    /// The job's checkpoint; `None` when it has none. A file that is
    /// corrupted or of another format is reported and ignored.
    fn load(&self, job_id: &str) -> Option<Checkpoint> {
        let path = self.path(job_id);
        match Checkpoint::load(&path) {
            Ok(c) => Some(c),
            Err(kiln_train::CheckpointError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                None
            }
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, path = %path.display(), "checkpoint ignored");
                None
            }
        }
    }

    fn save(&self, job_id: &str, checkpoint: &Checkpoint) -> bool {
        match checkpoint.save(&self.path(job_id)) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(job = %job_id, error = %e, "checkpoint not written");
                false
            }
        }
    }

    fn remove(&self, job_id: &str) {
        let _ = std::fs::remove_file(self.path(job_id));
    }
}

impl Runner {
    pub fn new(
        store: Arc<JobStore>,
        models: Arc<ModelRegistry>,
        models_dir: PathBuf,
        tensorboard_dir: Option<PathBuf>,
        checkpoints: Checkpoints,
    ) -> Self {
        Self {
            queues: Mutex::default(),
            threads_per_device: 1,
            context: Arc::new(Context {
                store,
                models,
                models_dir,
                tensorboard_dir,
                checkpoints,
                suspend: AtomicBool::new(false),
                active: Default::default(),
            }),
        }
    }

    /// For a shutdown: running jobs stop at their next batch, write a
    /// checkpoint and go back to QUEUED; queued jobs are not started.
    pub fn suspend_all(&self) {
        self.context.suspend.store(true, Ordering::SeqCst);
    }

    /// Waits until no job is running (after [`suspend_all`](Self::suspend_all)),
    /// at most `timeout`; whether none is.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let (count, idle) = &self.context.active;
        let count = count.lock().unwrap();
        let (count, _) = idle.wait_timeout_while(count, timeout, |n| *n > 0).unwrap();
        *count == 0
    }

    /// Lets up to `jobs` jobs train at once on each device (at least 1): the
    /// number of trainer threads each device's queue gets.
    pub fn with_max_concurrent_jobs(mut self, jobs: usize) -> Self {
        self.threads_per_device = jobs.max(1);
        self
    }

    pub fn checkpoints(&self) -> Checkpoints {
        self.context.checkpoints.clone()
    }

    /// Queues a job on its device's trainer threads (started on first use).
    pub fn submit(&self, job: QueuedJob) {
        let mut queues = self.queues.lock().unwrap();
        let queue = queues.entry(job.device_name.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel::<QueuedJob>();
            // The device's trainer threads take jobs from one queue, in order.
            let rx = Arc::new(Mutex::new(rx));
            for n in 0..self.threads_per_device {
                let context = self.context.clone();
                let rx = rx.clone();
                let name = if self.threads_per_device == 1 {
                    format!("train-{}", job.device_name)
                } else {
                    format!("train-{}-{n}", job.device_name)
                };
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || loop {
                        // Hold the lock only while taking a job, not while training it.
                        let next = rx.lock().unwrap().recv();
                        match next {
                            Ok(job) => context.run(job),
                            Err(_) => return,
                        }
                    })
                    .expect("spawn trainer thread");
            }
            tx
        });
        queue
            .send(job)
            .expect("trainer threads live as long as the runner");
    }
}

impl Context {
    fn run(&self, job: QueuedJob) {
        if self.suspend.load(Ordering::SeqCst) {
            return; // shutting down: it stays QUEUED and runs after the restart
        }
        *self.active.0.lock().unwrap() += 1;
        // Counted down however run_job ends, a panic outside training included.
        struct Done<'a>(&'a (Mutex<usize>, Condvar));
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                let mut count = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
                *count -= 1;
                self.0 .1.notify_all();
            }
        }
        let _done = Done(&self.active);
        self.run_job(job);
    }

    fn run_job(&self, job: QueuedJob) {
        let id = job.id.clone();
        let (Ok(cancel), Ok(progress)) =
            (self.store.cancel_flag(&id), self.store.live_progress(&id))
        else {
            return;
        };
        if cancel.is_set() {
            self.checkpoints.remove(&id);
            return; // cancelled while queued: already recorded
        }
        let resume = self.resume_point(&job);
        // Epochs already reported (by a run before a restart or shutdown):
        // their events are not sent again when the resumed run repeats them.
        let reported = self.store.get(&id).map_or(0, |j| j.epochs_completed);
        let running = self.store.append(
            &id,
            Kind::StateChanged(pb::StateChanged {
                state: pb::JobState::Running as i32,
                device: job.device_name.clone(),
                ..Default::default()
            }),
        );
        // A cancel can land between the check above and this append.
        if !running.is_ok_and(|j| j.state() == pb::JobState::Running) {
            return;
        }
        // One span per job, from RUNNING to its final event (exported over
        // OTLP when configured).
        let span = tracing::info_span!(
            "job",
            otel.name = "kiln.job",
            job.id = %id,
            job.kind = ?job.spec.kind,
            model = %job.model_name,
            device = %job.device_name,
            outcome = tracing::field::Empty,
        );
        let _span = span.enter();
        tracing::info!(job = %id, device = %job.device_name, "training started");
        let mut tensorboard =
            crate::tensorboard::JobLog::start(self.tensorboard_dir.as_deref(), &job);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            // An epoch's gradient health arrives just before it and travels in its event.
            let mut health = None;
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
                    let _ = self.store.append(&id, Kind::Epoch(metrics));
                }
                event => {
                    if let Some(kind) = event_kind(event) {
                        let _ = self.store.append(&id, kind);
                    }
                }
            };
            let (spec, data, device) = (&job.spec, &job.data, &job.device);
            let cancelled = || cancel.is_set();
            let suspended = || self.suspend.load(Ordering::SeqCst);
            match spec.kind {
                JobKind::Train => {
                    let control = Control {
                        cancelled: &cancelled,
                        suspended: &suspended,
                        on_step: &|epoch, rows| progress.set(epoch, rows as u64),
                        checkpoint_every: self.checkpoints.every_epochs,
                        on_checkpoint: &mut |c| {
                            self.checkpoints.save(&id, c);
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
        }));
        let suspension = match &outcome {
            Ok(Err(TrainError::Suspended(c))) => Some(Some(c)),
            Ok(Err(TrainError::Cancelled { .. })) if !cancel.is_set() => Some(None),
            _ => None,
        };
        if let Some(checkpoint) = suspension {
            // Back to QUEUED where it stands; the next process continues it.
            let resume_after_epoch = match checkpoint {
                Some(c) if self.checkpoints.save(&id, c) => c.epochs_completed(),
                _ => {
                    self.checkpoints.remove(&id);
                    0
                }
            };
            span.record("outcome", "suspended");
            tracing::info!(job = %id, resume_after_epoch, "job suspended by the shutdown");
            let _ = self.store.append(
                &id,
                Kind::StateChanged(pb::StateChanged {
                    state: pb::JobState::Queued as i32,
                    resume_after_epoch,
                    suspended: true,
                    ..Default::default()
                }),
            );
            return;
        }
        self.checkpoints.remove(&id);
        let final_event = match outcome {
            Ok(Ok(Outcome::LrRangeTest(report))) => {
                let _ = self
                    .store
                    .append(&id, Kind::LrRangeResult(lr_range_result(&report)));
                // No model: the job's answer is the curve and its suggestions.
                Kind::Finished(pb::Finished {
                    reason: pb::StopReason::Completed as i32,
                    ..Default::default()
                })
            }
            Ok(Err(e @ (TrainError::LrRangeTest(_) | TrainError::Checkpoint(_)))) => {
                failed(pb::StopReason::Error, e.to_string())
            }
            Ok(Err(TrainError::Suspended(_))) => unreachable!("handled above"),
            Ok(Ok(Outcome::Trained(trained))) => match self.publish(&job, &trained) {
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
                }),
                Err(message) => failed(pb::StopReason::Error, message),
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
        };
        span.record(
            "outcome",
            match &final_event {
                Kind::Finished(_) => "succeeded",
                Kind::Failed(f) if f.state() == pb::JobState::Cancelled => "cancelled",
                _ => "failed",
            },
        );
        tracing::info!(job = %id, event = ?final_event, "job ended");
        tensorboard.end(&final_event);
        let _ = self.store.append(&id, final_event);
    }

    /// The checkpoint a job continues from. One that cannot continue this
    /// job (another format, spec or data) is dropped; if the job had reported
    /// progress, a restart event then says it starts over.
    fn resume_point(&self, job: &QueuedJob) -> Option<Checkpoint> {
        if job.spec.kind != JobKind::Train {
            return None;
        }
        let checkpoint = self
            .checkpoints
            .load(&job.id)
            .filter(|c| c.matches(&job.spec, &job.data));
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

    /// Writes the best model to `<data_dir>/models/<job id>` and serves it.
    fn publish(&self, job: &QueuedJob, trained: &kiln_train::Trained) -> Result<(), String> {
        let artifact =
            ModelArtifact::from_trained(trained, &job.data).map_err(|e| e.to_string())?;
        artifact
            .save(&self.models_dir.join(&job.id))
            .map_err(|e| e.to_string())?;
        let model = self
            .models
            .register(
                &job.model_name,
                &job.id,
                artifact,
                job.device.clone(),
                &job.device_name,
            )
            .map_err(|e| e.to_string())?;
        record_model(&self.store, &model, &job.id);
        Ok(())
    }
}

/// Writes a registry version to the database, so a restart serves it again.
pub fn record_model(store: &JobStore, model: &kiln_serve::ServedModel, artifact: &str) {
    let Some(db) = store.db() else { return };
    let row = kiln_store::ModelRow {
        name: model.name.clone(),
        version: model.version,
        job_id: model.job_id.clone(),
        artifact: artifact.to_string(),
        meta: serde_json::to_string(&model.meta).expect("model metadata serializes"),
    };
    if let Err(e) = db.put_model(&row) {
        tracing::error!(model = %row.name, version = row.version, error = %e, "model version not persisted");
    }
}

/// At start, before anything listens: puts the registry back as it was (the
/// models of SUCCEEDED jobs and imported models, under their versions, with
/// their aliases; a version whose files fail their checksums is listed with
/// the reason and never served), then runs again the jobs the previous
/// process left QUEUED or RUNNING ([`JobStore::recover`]).
pub fn recover(kiln: &crate::Kiln) {
    restore_models(kiln);
    let checkpoints = kiln.runner.checkpoints();
    remove_stale_checkpoints(kiln, &checkpoints.dir);
    // The header only: the whole file is read and checked when the job runs.
    let resume_after = |id: &str| Checkpoint::epochs_in(&checkpoints.path(id)).unwrap_or(0);
    let jobs = kiln
        .store
        .recover(kiln.config.max_job_restarts, &resume_after);
    for job in jobs {
        match requeue(kiln, &job) {
            Ok(queued) => {
                tracing::info!(job = %job.id, "job queued again after a restart");
                kiln.runner.submit(queued);
            }
            Err(message) => {
                tracing::warn!(job = %job.id, %message, "job cannot run again after a restart");
                let _ = kiln.store.append(
                    &job.id,
                    failed(
                        pb::StopReason::Error,
                        format!("could not be run again after a restart: {message}"),
                    ),
                );
            }
        }
    }
}

/// Checkpoints of jobs that ended (or are unknown) are of no more use.
fn remove_stale_checkpoints(kiln: &crate::Kiln, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let id = name.strip_suffix(".ckpt").unwrap_or(&name);
        let unfinished = kiln
            .store
            .get(id)
            .is_ok_and(|j| matches!(j.state(), pb::JobState::Queued | pb::JobState::Running));
        if !unfinished {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn restore_models(kiln: &crate::Kiln) {
    let Some(db) = kiln.store.db() else { return };
    let models_dir = kiln.config.data_dir.join("models");
    let (rows, aliases) = match (db.models(), db.aliases()) {
        (Ok(rows), Ok(aliases)) => (rows, aliases),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot read the model registry from the database");
            return;
        }
    };
    for row in rows {
        // A model registered by a job that then did not finish (the server
        // stopped in between) goes: the job runs again and registers anew.
        let succeeded = kiln
            .store
            .get(&row.job_id)
            .is_ok_and(|j| j.state() == pb::JobState::Succeeded);
        if !row.job_id.is_empty() && !succeeded {
            let _ = db.delete_model(&row.name, row.version);
            continue;
        }
        let artifact = ModelArtifact::load(&models_dir.join(&row.artifact));
        let (device, device_name) =
            match kiln_train::device::resolve(kiln_core::spec::DeviceChoice::Auto) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "no device to serve models on");
                    return;
                }
            };
        let artifact = match artifact {
            Ok(artifact) => Ok(artifact),
            Err(e) => {
                tracing::error!(model = %row.name, version = row.version, error = %e, "model not served");
                match serde_json::from_str(&row.meta) {
                    Ok(meta) => Err((meta, e.to_string())),
                    Err(_) => continue,
                }
            }
        };
        if let Err(e) = kiln.models.restore(
            &row.name,
            row.version,
            &row.job_id,
            artifact,
            device,
            &device_name,
        ) {
            tracing::error!(model = %row.name, version = row.version, error = %e, "model not served");
        }
    }
    for (name, alias, version) in aliases {
        if let Err(e) = kiln.models.set_alias(&name, &alias, &version.to_string()) {
            tracing::warn!(model = %name, %alias, version, error = %e, "alias not restored");
        }
    }
}

/// Reads and prepares a stored job's data again, as SubmitJob did.
fn requeue(kiln: &crate::Kiln, job: &pb::Job) -> Result<QueuedJob, String> {
    let proto = job.spec.as_ref().ok_or("its spec was not stored")?;
    let spec = JobSpec::from_proto(proto).map_err(|e| e.to_string())?;
    let (device, device_name) = kiln_train::device::resolve(spec.device)?;
    let data = crate::jobs::prepare_data(kiln, &spec).map_err(|s| s.message().to_string())?;
    Ok(QueuedJob {
        id: job.id.clone(),
        model_name: job.model_name.clone(),
        spec,
        labels: proto.labels.clone(),
        data,
        device,
        device_name,
    })
}

/// What a job produced.
enum Outcome {
    Trained(Box<kiln_train::Trained>),
    LrRangeTest(LrRangeReport),
}

fn failed(reason: pb::StopReason, message: String) -> Kind {
    Kind::Failed(failed_message(reason, message))
}

fn failed_message(reason: pb::StopReason, message: String) -> pb::Failed {
    pb::Failed {
        reason: reason as i32,
        message,
        state: pb::JobState::Failed as i32,
        ..Default::default()
    }
}

/// A libtorch error as one readable line: tch's `Torch("...")` wrapper and
/// the C++ stack frames after the first line dropped.
fn libtorch_summary(message: &str) -> &str {
    let inner = message.split_once("Torch(\"").map_or(message, |(_, m)| m);
    let end = [inner.find("\\n"), inner.find('\n'), inner.find("\")")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(inner.len());
    inner[..end].trim()
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// The event to record; `None` for health, which travels inside its epoch's.
fn event_kind(event: TrainEvent) -> Option<Kind> {
    Some(match event {
        TrainEvent::Epoch(report) => Kind::Epoch(epoch_metrics(&report)),
        TrainEvent::Health(_) => return None,
        TrainEvent::LrPoint(p) => Kind::LrRangePoint(pb::LrRangePoint {
            iteration: p.iteration,
            learning_rate: p.learning_rate,
            loss: p.loss,
            smoothed_loss: p.smoothed_loss,
        }),
        TrainEvent::LrRange(r) => Kind::LrRangeResult(lr_range_result(&r)),
        TrainEvent::EarlyStopped {
            epoch,
            best_epoch,
            monitor,
            best_value,
        } => Kind::EarlyStopped(pb::EarlyStopped {
            epoch,
            best_epoch,
            monitor: monitor.name().into(),
            best_value,
        }),
    })
}

pub fn epoch_metrics(r: &EpochReport) -> pb::EpochMetrics {
    pb::EpochMetrics {
        epoch: r.epoch,
        train_loss: r.train_loss,
        val_loss: r.val_loss,
        val_accuracy: r.val_accuracy,
        val_mae: r.val_mae,
        val_rmse: r.val_rmse,
        val_r2: r.val_r2,
        learning_rate: r.learning_rate,
        epoch_seconds: r.epoch_seconds,
        samples_per_second: r.samples_per_second,
        improved: r.improved,
        momentum: r.momentum,
        gradient_health: None,
    }
}

fn lr_range_result(r: &LrRangeReport) -> pb::LrRangeResult {
    pb::LrRangeResult {
        valley: r.suggestions.valley,
        steepest: r.suggestions.steepest,
        minimum: r.suggestions.minimum,
        chosen: r.chosen,
        iterations: r.iterations,
        diverged: r.diverged,
    }
}

fn gradient_health(h: &GradientHealth) -> pb::GradientHealth {
    pb::GradientHealth {
        layers: h
            .layers
            .iter()
            .map(|l| pb::LayerHealth {
                layer: l.layer.clone(),
                grad_norm: l.grad_norm,
                weight_norm: l.weight_norm,
                update_ratio: l.update_ratio,
                dead_fraction: l.dead_fraction,
            })
            .collect(),
        vanishing: h.vanishing,
        exploding: h.exploding,
        detail: h.detail.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_errors_become_one_line() {
        let panic = "called `Result::unwrap()` on an `Err` value: Torch(\"[enforce fail at \
                     alloc_cpu.cpp:124] err == 0. DefaultCPUAllocator: can't allocate memory: \
                     you tried to allocate 16 bytes.\\nframe #0: <unknown function>\")";
        assert_eq!(
            libtorch_summary(panic),
            "[enforce fail at alloc_cpu.cpp:124] err == 0. DefaultCPUAllocator: can't \
             allocate memory: you tried to allocate 16 bytes."
        );
        assert_eq!(libtorch_summary("index out of range"), "index out of range");
    }
}
