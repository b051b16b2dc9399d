//! The metrics an epoch reports, by the names users write in `monitor`.

use kiln::v1 as pb;
use serde::{Deserialize, Serialize};

use super::check::unknown_enum;
use super::Task;
use crate::error::{FieldError, Result};

/// A metric an epoch reports, by the name users write in `monitor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metric {
    TrainLoss,
    ValLoss,
    ValAccuracy,
    ValMae,
    ValRmse,
    ValR2,
}

impl Metric {
    /// What early stopping and ReduceLROnPlateau watch when `monitor` is unset.
    pub const DEFAULT_MONITOR: Metric = Metric::ValLoss;

    pub const ALL: [Metric; 6] = [
        Metric::TrainLoss,
        Metric::ValLoss,
        Metric::ValAccuracy,
        Metric::ValMae,
        Metric::ValRmse,
        Metric::ValR2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::TrainLoss => "train_loss",
            Metric::ValLoss => "val_loss",
            Metric::ValAccuracy => "val_accuracy",
            Metric::ValMae => "val_mae",
            Metric::ValRmse => "val_rmse",
            Metric::ValR2 => "val_r2",
        }
    }

    /// Whether larger is better (Keras' `mode="auto"`).
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::ValAccuracy | Metric::ValR2)
    }

    pub fn applies_to(self, task: Task) -> bool {
        match self {
            Metric::TrainLoss | Metric::ValLoss => true,
            Metric::ValAccuracy => task.is_classification(),
            Metric::ValMae | Metric::ValRmse | Metric::ValR2 => !task.is_classification(),
        }
    }
}

/// A metric by name that applies to `task`, or an error listing the ones that do.
pub(super) fn metric(field: &str, name: &str, task: Task) -> Result<Metric> {
    if name.is_empty() {
        return Ok(Metric::DEFAULT_MONITOR);
    }
    match Metric::ALL.iter().copied().find(|m| m.name() == name) {
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

/// Keras' and torch's "auto": accuracy and R² go up, the rest go down.
pub(super) fn mode_max(field: &str, mode: i32, monitor: Metric) -> Result<bool> {
    match pb::Mode::try_from(mode) {
        Ok(pb::Mode::Auto) => Ok(monitor.higher_is_better()),
        Ok(pb::Mode::Min) => Ok(false),
        Ok(pb::Mode::Max) => Ok(true),
        Err(_) => Err(unknown_enum(field, mode)),
    }
}
