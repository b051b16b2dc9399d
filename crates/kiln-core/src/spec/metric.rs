//! The metrics an epoch reports, by the names users write in `monitor`.
//!
//! The one table of metric names: the store's `order_by`, the client's
//! tables and the validators here all read names and values through [`Metric`].

use kiln::v1 as pb;
use serde::{Deserialize, Serialize};

use super::check::unknown_enum;
use super::Task;
use crate::error::{FieldError, Result};

/// A metric an epoch reports, by the name users write in `monitor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metric {
    /// Mean training loss over the epoch's batches.
    TrainLoss,
    /// Loss on the validation rows.
    ValLoss,
    /// Fraction of validation rows classified right (classification).
    ValAccuracy,
    /// Cross-entropy of the validation rows' true-class probabilities, as
    /// scikit-learn's `log_loss` (classification).
    ValLogLoss,
    /// Area under the ROC curve; macro one-vs-rest beyond two classes
    /// (classification).
    ValRocAuc,
    /// Average precision, the area under the precision-recall curve; macro
    /// one-vs-rest beyond two classes (classification).
    ValPrAuc,
    /// F1 of class 1, or macro F1 beyond two classes (classification).
    ValF1,
    /// Mean recall over the classes (classification).
    ValBalancedAccuracy,
    /// Mean absolute error on the validation rows (regression).
    ValMae,
    /// Root mean squared error on the validation rows (regression).
    ValRmse,
    /// R² on the validation rows, averaged over targets (regression).
    ValR2,
}

impl Metric {
    /// What early stopping and ReduceLROnPlateau watch when `monitor` is unset.
    pub const DEFAULT_MONITOR: Metric = Metric::ValLoss;

    /// Every metric, in the order tables list them.
    pub const ALL: [Metric; 11] = [
        Metric::TrainLoss,
        Metric::ValLoss,
        Metric::ValAccuracy,
        Metric::ValLogLoss,
        Metric::ValRocAuc,
        Metric::ValPrAuc,
        Metric::ValF1,
        Metric::ValBalancedAccuracy,
        Metric::ValMae,
        Metric::ValRmse,
        Metric::ValR2,
    ];

    /// The name users write (`monitor`, `order_by`) and tables show.
    pub const fn name(self) -> &'static str {
        match self {
            Metric::TrainLoss => "train_loss",
            Metric::ValLoss => "val_loss",
            Metric::ValAccuracy => "val_accuracy",
            Metric::ValLogLoss => "val_log_loss",
            Metric::ValRocAuc => "val_roc_auc",
            Metric::ValPrAuc => "val_pr_auc",
            Metric::ValF1 => "val_f1",
            Metric::ValBalancedAccuracy => "val_balanced_accuracy",
            Metric::ValMae => "val_mae",
            Metric::ValRmse => "val_rmse",
            Metric::ValR2 => "val_r2",
        }
    }

    /// The metric called `name`, if any.
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// This metric's value in an epoch's report; `None` where the epoch has
    /// none (the classification metrics for regression, MAE, RMSE and R² for
    /// classification, an AUC when a class has no validation rows).
    pub fn value(self, epoch: &pb::EpochMetrics) -> Option<f64> {
        match self {
            Metric::TrainLoss => Some(epoch.train_loss),
            Metric::ValLoss => Some(epoch.val_loss),
            Metric::ValAccuracy => epoch.val_accuracy,
            Metric::ValLogLoss => epoch.val_log_loss,
            Metric::ValRocAuc => epoch.val_roc_auc,
            Metric::ValPrAuc => epoch.val_pr_auc,
            Metric::ValF1 => epoch.val_f1,
            Metric::ValBalancedAccuracy => epoch.val_balanced_accuracy,
            Metric::ValMae => epoch.val_mae,
            Metric::ValRmse => epoch.val_rmse,
            Metric::ValR2 => epoch.val_r2,
        }
    }

    /// Whether this is one of the two losses, which every epoch reports.
    pub fn is_loss(self) -> bool {
        matches!(self, Metric::TrainLoss | Metric::ValLoss)
    }

    /// Whether larger is better (Keras' `mode="auto"`): scores are, losses
    /// and errors are not.
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::ValAccuracy
                | Metric::ValRocAuc
                | Metric::ValPrAuc
                | Metric::ValF1
                | Metric::ValBalancedAccuracy
                | Metric::ValR2
        )
    }

    /// Whether an epoch of a `task` job reports this metric.
    pub fn applies_to(self, task: Task) -> bool {
        match self {
            Metric::TrainLoss | Metric::ValLoss => true,
            Metric::ValAccuracy
            | Metric::ValLogLoss
            | Metric::ValRocAuc
            | Metric::ValPrAuc
            | Metric::ValF1
            | Metric::ValBalancedAccuracy => task.is_classification(),
            Metric::ValMae | Metric::ValRmse | Metric::ValR2 => !task.is_classification(),
        }
    }
}

/// A metric by name that applies to `task`, or an error listing the ones that do.
pub(super) fn metric(field: &str, name: &str, task: Task) -> Result<Metric> {
    if name.is_empty() {
        return Ok(Metric::DEFAULT_MONITOR);
    }
    match Metric::from_name(name) {
        Some(m) if m.applies_to(task) => Ok(m),
        _ => {
            let names: Vec<_> = Metric::ALL
                .iter()
                .filter(|m| m.applies_to(task))
                .map(|m| m.name())
                .collect();
            Err(FieldError::new(
                field,
                format!(
                    "\"{name}\" is not a metric of this task; one of {}",
                    names.join(", ")
                ),
            ))
        }
    }
}

/// Keras' and torch's "auto": accuracy, the AUCs, F1 and R² go up, losses
/// and errors go down.
pub(super) fn mode_max(field: &str, mode: i32, monitor: Metric) -> Result<bool> {
    match pb::Mode::try_from(mode) {
        Ok(pb::Mode::Auto) => Ok(monitor.higher_is_better()),
        Ok(pb::Mode::Min) => Ok(false),
        Ok(pb::Mode::Max) => Ok(true),
        Err(_) => Err(unknown_enum(field, mode)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_values_come_from_their_fields() {
        for m in Metric::ALL {
            assert_eq!(Metric::from_name(m.name()), Some(m));
        }
        assert_eq!(Metric::from_name("learning_rate"), None);
        let not_losses: Vec<_> = Metric::ALL
            .into_iter()
            .filter(|m| !m.is_loss())
            .map(Metric::name)
            .collect();
        assert_eq!(
            not_losses,
            [
                "val_accuracy",
                "val_log_loss",
                "val_roc_auc",
                "val_pr_auc",
                "val_f1",
                "val_balanced_accuracy",
                "val_mae",
                "val_rmse",
                "val_r2"
            ]
        );
        assert_eq!(Metric::from_name(""), None);
        let epoch = pb::EpochMetrics {
            train_loss: 1.0,
            val_loss: 2.0,
            val_mae: Some(3.0),
            val_rmse: Some(4.0),
            val_r2: Some(5.0),
            val_log_loss: Some(6.0),
            val_roc_auc: Some(7.0),
            val_pr_auc: Some(8.0),
            val_f1: Some(9.0),
            val_balanced_accuracy: Some(10.0),
            ..Default::default()
        };
        let values: Vec<_> = Metric::ALL.iter().map(|m| m.value(&epoch)).collect();
        assert_eq!(
            values,
            [
                Some(1.0),
                Some(2.0),
                None,
                Some(6.0),
                Some(7.0),
                Some(8.0),
                Some(9.0),
                Some(10.0),
                Some(3.0),
                Some(4.0),
                Some(5.0)
            ]
        );
    }
}
