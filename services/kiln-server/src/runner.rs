//! Runs queued jobs: one trainer thread per device, so one job trains per
//! device at a time and the rest wait QUEUED, in submission order. A finished
//! job's best model is written to the data directory and registered for
//! Predict before its final event is published.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};

use kiln::v1 as pb;
use kiln_core::prepare::Prepared;
use kiln_core::spec::JobSpec;
use kiln_serve::ModelRegistry;
use kiln_store::jobs::cancelled_event;
use kiln_store::JobStore;
use kiln_train::{
    Device, EpochReport, GradientHealth, ModelArtifact, StopReason, TrainError, TrainEvent,
};
use pb::job_event::Kind;

/// A validated job waiting for its device.
pub struct QueuedJob {
    pub id: String,
    pub model_name: String,
    pub spec: JobSpec,
    pub data: Prepared,
    pub device: Device,
    pub device_name: String,
}

pub struct Runner {
    queues: Mutex<HashMap<String, mpsc::Sender<QueuedJob>>>,
    context: Arc<Context>,
}

struct Context {
    store: Arc<JobStore>,
    models: Arc<ModelRegistry>,
    models_dir: PathBuf,
}

impl Runner {
    pub fn new(store: Arc<JobStore>, models: Arc<ModelRegistry>, models_dir: PathBuf) -> Self {
        Self {
            queues: Mutex::default(),
            context: Arc::new(Context {
                store,
                models,
                models_dir,
            }),
        }
    }

    /// Queues a job on its device's trainer thread (started on first use).
    pub fn submit(&self, job: QueuedJob) {
        let mut queues = self.queues.lock().unwrap();
        let queue = queues.entry(job.device_name.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel::<QueuedJob>();
            let context = self.context.clone();
            std::thread::Builder::new()
                .name(format!("train-{}", job.device_name))
                .spawn(move || {
                    for job in rx {
                        context.run(job);
                    }
                })
                .expect("spawn trainer thread");
            tx
        });
        queue
            .send(job)
            .expect("trainer threads live as long as the runner");
    }
}

impl Context {
    fn run(&self, job: QueuedJob) {
        let id = job.id.clone();
        let Ok(cancel) = self.store.cancel_flag(&id) else {
            return;
        };
        if cancel.is_set() {
            return; // cancelled while queued: already recorded
        }
        let running = self.store.append(
            &id,
            Kind::StateChanged(pb::StateChanged {
                state: pb::JobState::Running as i32,
                device: job.device_name.clone(),
            }),
        );
        // A cancel can land between the check above and this append.
        if !running.is_ok_and(|j| j.state() == pb::JobState::Running) {
            return;
        }
        tracing::info!(job = %id, device = %job.device_name, "training started");
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            // An epoch's gradient health arrives just before it and travels in its event.
            let mut health = None;
            kiln_train::train(
                &job.spec,
                &job.data,
                &job.device,
                &|| cancel.is_set(),
                &mut |event| match event {
                    TrainEvent::Health(h) => health = Some(h),
                    TrainEvent::Epoch(report) => {
                        let mut metrics = epoch_metrics(&report);
                        metrics.gradient_health = health.take().map(|h| gradient_health(&h));
                        let _ = self.store.append(&id, Kind::Epoch(metrics));
                    }
                    event => {
                        if let Some(kind) = event_kind(event) {
                            let _ = self.store.append(&id, kind);
                        }
                    }
                },
            )
        }));
        let final_event = match outcome {
            Ok(Ok(trained)) => match self.publish(&job, &trained) {
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
                let reason = if message.to_lowercase().contains("out of memory") {
                    pb::StopReason::OutOfMemory
                } else {
                    pb::StopReason::Error
                };
                failed(reason, format!("training failed: {message}"))
            }
        };
        tracing::info!(job = %id, event = ?final_event, "job ended");
        let _ = self.store.append(&id, final_event);
    }

    /// Writes the best model to `<data_dir>/models/<job id>` and serves it.
    fn publish(&self, job: &QueuedJob, trained: &kiln_train::Trained) -> Result<(), String> {
        let artifact =
            ModelArtifact::from_trained(trained, &job.data).map_err(|e| e.to_string())?;
        artifact
            .save(&self.models_dir.join(&job.id))
            .map_err(|e| e.to_string())?;
        self.models
            .register(
                &job.model_name,
                &job.id,
                artifact,
                job.device.clone(),
                &job.device_name,
            )
            .map_err(|e| e.to_string())?;
        Ok(())
    }
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
