//! How a run ends: the trained model, or why there is none.

use kiln_core::metrics::ConfusionMatrix;

use crate::checkpoint::Checkpoint;
use crate::model::{Mlp, ModelArch};
use crate::report::EpochReport;

/// Why a run that produced a model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Every epoch of the budget ran.
    Completed,
    /// Early stopping ended it.
    EarlyStopped,
}

/// A finished training run: the best epoch's model, not the last one's.
#[derive(Debug)]
pub struct Trained {
    /// Why the run stopped.
    pub reason: StopReason,
    /// The model to serve (evaluation mode).
    pub model: Mlp,
    /// Its shape.
    pub arch: ModelArch,
    /// The report of the epoch whose weights `model` holds (or the last).
    pub best: EpochReport,
    /// Epochs run, those before a resumed checkpoint included.
    pub epochs_completed: u32,
    /// Training time, summed over resumed runs.
    pub train_seconds: f64,
    /// With SWA (and at least one epoch averaged): the averaged model's
    /// validation metrics after update_bn; `epoch` is the last epoch,
    /// `train_loss` and `learning_rate` the last epoch's.
    pub swa: Option<EpochReport>,
    /// `model` is the SWA model: it beat the best epoch's by the monitor.
    pub served_swa: bool,
    /// Classification: how `model` decides on the validation split.
    pub decisions: Option<ServedDecisions>,
}

/// Why a run produced no model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    /// Cancelled on request, at a batch boundary or between phases.
    #[error("cancelled after {epochs_completed} epochs")]
    Cancelled {
        /// Epochs finished before the cancellation.
        epochs_completed: u32,
    },
    /// The LR range test found no learning rate to suggest.
    #[error("LR range test: {0}")]
    LrRangeTest(String),
    /// Stopped on request at a batch boundary; the checkpoint continues it.
    #[error("suspended after {} epochs", .0.epochs_completed())]
    Suspended(Box<Checkpoint>),
    /// The checkpoint to resume from cannot be used.
    #[error("cannot resume: {0}")]
    Checkpoint(String),
    /// An epoch's training loss is NaN or infinite.
    #[error("training diverged at epoch {epoch}: the training loss is {loss}{}", located(.layer))]
    Diverged {
        /// The epoch whose loss is not finite.
        epoch: u32,
        /// That loss.
        loss: f64,
        /// The first layer, input side first, that went non-finite: its
        /// weights, or else its output on a training batch.
        layer: Option<NonFinite>,
    },
}

/// Where a diverged network first holds a NaN or an infinity.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFinite {
    /// "hidden1", ..., "output".
    pub layer: String,
    /// Its weights or bias (true), or only its output (false).
    pub in_weights: bool,
}

fn located(layer: &Option<NonFinite>) -> String {
    match layer {
        Some(NonFinite {
            layer,
            in_weights: true,
        }) => format!("; {layer} is the first layer with non-finite weights"),
        Some(NonFinite {
            layer,
            in_weights: false,
        }) => format!("; {layer} is the first layer with a non-finite output"),
        None => String::new(),
    }
}

/// How the served classifier decides on the validation split.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedDecisions {
    /// Its confusion matrix, at `threshold` when there is one.
    pub confusion: ConfusionMatrix,
    /// Binary: the decision threshold on P(class 1) it serves with.
    pub threshold: Option<f64>,
}
