//! What a run reports as it goes: the epochs' metrics, the LR range test's
//! points and suggestions, and the events that carry them. Plain data that
//! the training loop, the LR range test and checkpoints share.

use kiln_core::spec::{LrSuggestion, Metric};
use serde::{Deserialize, Serialize};

use crate::health::GradientHealth;

/// Metrics of one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: u32,
    /// Mean training loss over the epoch's rows.
    pub train_loss: f64,
    /// Mean validation loss.
    pub val_loss: f64,
    /// Classification: the share of validation rows predicted right.
    pub val_accuracy: Option<f64>,
    /// Classification: scikit-learn's log loss of the validation
    /// probabilities (see `kiln_core::metrics`).
    pub val_log_loss: Option<f64>,
    /// Classification: ROC AUC (macro one-vs-rest beyond two classes);
    /// `None` when a class has no validation rows.
    pub val_roc_auc: Option<f64>,
    /// Classification: average precision (macro one-vs-rest beyond two
    /// classes); `None` when a class has no validation rows.
    pub val_pr_auc: Option<f64>,
    /// Classification: F1 of class 1, or macro F1 beyond two classes.
    pub val_f1: Option<f64>,
    /// Classification: mean recall over the classes present.
    pub val_balanced_accuracy: Option<f64>,
    /// Regression, in the target's units: mean absolute error.
    pub val_mae: Option<f64>,
    /// Regression, in the target's units: root mean squared error.
    pub val_rmse: Option<f64>,
    /// Regression: R², averaged over the target columns.
    pub val_r2: Option<f64>,
    /// The learning rate of the epoch's last step.
    pub learning_rate: f64,
    /// Momentum or beta1 when a 1cycle schedule cycles it.
    pub momentum: Option<f64>,
    /// Wall time of the epoch, validation included.
    pub epoch_seconds: f64,
    /// Training rows per second of `epoch_seconds`.
    pub samples_per_second: f64,
    /// The best epoch so far by the monitor: its weights are kept.
    pub improved: bool,
}

impl EpochReport {
    /// The value of `metric` this epoch; `None` when the task has no such metric.
    pub fn metric(&self, metric: Metric) -> Option<f64> {
        match metric {
            Metric::TrainLoss => Some(self.train_loss),
            Metric::ValLoss => Some(self.val_loss),
            Metric::ValAccuracy => self.val_accuracy,
            Metric::ValLogLoss => self.val_log_loss,
            Metric::ValRocAuc => self.val_roc_auc,
            Metric::ValPrAuc => self.val_pr_auc,
            Metric::ValF1 => self.val_f1,
            Metric::ValBalancedAccuracy => self.val_balanced_accuracy,
            Metric::ValMae => self.val_mae,
            Metric::ValRmse => self.val_rmse,
            Metric::ValR2 => self.val_r2,
        }
    }
}

/// What a run tells its caller as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// The epoch's gradient health; sent just before its `Epoch` event.
    Health(GradientHealth),
    /// One iteration of the LR range test.
    LrPoint(LrPoint),
    /// The LR range test's suggestions; with `auto_learning_rate`, before
    /// training starts at the chosen one.
    LrRange(LrRangeReport),
    /// An epoch finished.
    Epoch(EpochReport),
    /// Early stopping ended the run after `epoch`.
    EarlyStopped {
        /// The last epoch run.
        epoch: u32,
        /// The epoch with the best monitored value.
        best_epoch: u32,
        /// The metric watched.
        monitor: Metric,
        /// Its best value.
        best_value: f64,
    },
}

/// One iteration of the LR range test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrPoint {
    /// 0-based.
    pub iteration: u32,
    /// The learning rate the iteration's batch trained at.
    pub learning_rate: f64,
    /// The batch's loss.
    pub loss: f64,
    /// The debiased exponential moving average of the losses so far.
    pub smoothed_loss: f64,
}

/// fastai's three suggestion functions' learning rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSuggestions {
    /// fastai's `valley`.
    pub valley: f64,
    /// fastai's `steep`: where the loss falls fastest.
    pub steepest: f64,
    /// The learning rate at the minimum smoothed loss, divided by 10.
    pub minimum: f64,
}

impl LrSuggestions {
    /// The learning rate `which` suggests.
    pub fn pick(&self, which: LrSuggestion) -> f64 {
        match which {
            LrSuggestion::Valley => self.valley,
            LrSuggestion::Steepest => self.steepest,
            LrSuggestion::Minimum => self.minimum,
        }
    }
}

/// The outcome of an LR range test.
#[derive(Debug, Clone, PartialEq)]
pub struct LrRangeReport {
    /// The suggested learning rates.
    pub suggestions: LrSuggestions,
    /// Iterations run.
    pub iterations: u32,
    /// Stopped by the 4x rule or by a non-finite loss.
    pub diverged: bool,
    /// With `auto_learning_rate`: the learning rate training then used.
    pub chosen: Option<f64>,
}
