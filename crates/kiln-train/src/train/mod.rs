//! The training loop: shuffled mini-batches on the device, one report per
//! epoch, the best epoch's weights kept, early stopping, cancellation within
//! one batch.
//!
//! [`train_with`] settles the learning rate (the LR range test under
//! "auto") and hands over to the loop in `run.rs`; `evaluate.rs` holds the
//! validation metrics.

mod evaluate;
mod run;

use burn::tensor::Device;
use kiln_core::prepare::Prepared;
use kiln_core::spec::JobSpec;

use crate::checkpoint::{self, Checkpoint};
use crate::lr_find::lr_range_test;

pub use crate::outcome::{NonFinite, StopReason, TrainError, Trained};
pub use crate::report::{EpochReport, TrainEvent};
pub use evaluate::{argmax, logit_metrics, probabilities, regression_metrics, RegressionMetrics};

/// How a run is driven from outside: cancellation, suspension, checkpoints.
pub struct Control<'a> {
    /// Polled before every batch and between the phases of an epoch (after
    /// set-up, after training, after validation, before the final
    /// evaluation): stop and drop the run.
    pub cancelled: &'a dyn Fn() -> bool,
    /// Polled before every batch: stop, handing back a checkpoint of that
    /// exact point ([`TrainError::Suspended`]).
    pub suspended: &'a dyn Fn() -> bool,
    /// Called after every optimizer step with the epoch (1-based) and the
    /// training rows of it done so far.
    pub on_step: &'a dyn Fn(u32, usize),
    /// After every this many epochs (0: never), `on_checkpoint` receives a
    /// checkpoint; it is called after that epoch's event was emitted.
    pub checkpoint_every: u32,
    /// Receives the periodic checkpoints (see `checkpoint_every`).
    pub on_checkpoint: &'a mut dyn FnMut(&Checkpoint),
    /// Continue from this checkpoint instead of from fresh weights.
    pub resume: Option<Checkpoint>,
}

/// Trains `spec`'s network on `data`. `cancelled` is polled before every
/// batch; `emit` receives each event as it happens.
pub fn train(
    spec: &JobSpec,
    data: &Prepared,
    device: &Device,
    cancelled: &dyn Fn() -> bool,
    emit: &mut dyn FnMut(TrainEvent),
) -> Result<Trained, TrainError> {
    let control = Control {
        cancelled,
        suspended: &|| false,
        on_step: &|_, _| {},
        checkpoint_every: 0,
        on_checkpoint: &mut |_| {},
        resume: None,
    };
    train_with(spec, data, device, control, emit)
}

/// [`train`] with checkpoints, suspension and resumption. A resumed run
/// continues bit for bit as the uninterrupted run would have (on the same
/// device and thread count): it emits the events from where the checkpoint
/// was taken on.
pub fn train_with(
    spec: &JobSpec,
    data: &Prepared,
    device: &Device,
    control: Control,
    emit: &mut dyn FnMut(TrainEvent),
) -> Result<Trained, TrainError> {
    let fingerprint = checkpoint::fingerprint(spec, data);
    if control
        .resume
        .as_ref()
        .is_some_and(|c| c.progress.fingerprint != fingerprint)
    {
        return Err(TrainError::Checkpoint(
            "the checkpoint was taken with another spec or other data".into(),
        ));
    }
    if !spec.training.auto_learning_rate {
        return run::run(spec, fingerprint, data, device, control, emit);
    }
    // Learning rate "auto": the range test on its own copy of the network,
    // then training from the same seed at its suggestion. A resumed run
    // keeps the rate chosen before its checkpoint.
    let chosen = match &control.resume {
        Some(c) => c.progress.learning_rate,
        None => {
            let mut report = lr_range_test(spec, data, device, control.cancelled, emit)?;
            let chosen = report.suggestions.pick(spec.lr_range_test.suggestion);
            report.chosen = Some(chosen);
            emit(TrainEvent::LrRange(report));
            chosen
        }
    };
    let mut spec = spec.clone();
    spec.training.auto_learning_rate = false;
    spec.training.optimizer.learning_rate = chosen;
    run::run(&spec, fingerprint, data, device, control, emit)
}
