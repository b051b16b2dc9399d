//! What the job is: its task, its kind (training or an LR range test), the
//! device it runs on and the name its model is registered under.

use kiln::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::error::{FieldError, Result};

/// The longest model name.
pub const MAX_MODEL_NAME_LEN: usize = 128;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Trains a model.
    Train,
    /// fastai's lr_find alone: the curve and the suggestions, no model.
    LrRangeTest,
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Task {
    /// Real-valued targets.
    Regression,
    /// Two classes (one logit).
    Binary,
    /// More than two classes (one logit per class).
    Multiclass,
}

impl Task {
    /// Binary or multiclass.
    pub fn is_classification(self) -> bool {
        !matches!(self, Task::Regression)
    }

    /// The proto value for this task.
    pub fn to_proto(self) -> pb::Task {
        match self {
            Task::Regression => pb::Task::Regression,
            Task::Binary => pb::Task::BinaryClassification,
            Task::Multiclass => pb::Task::MulticlassClassification,
        }
    }
}

/// Where a job trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA when there is one, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA device of this index.
    Cuda(usize),
}

pub(super) fn validate_model_name(name: &str) -> Result<Option<String>> {
    if name.is_empty() {
        return Ok(None);
    }
    check_model_name("spec.model_name", name)?;
    Ok(Some(name.to_string()))
}

/// A model name: 1 to 128 letters, digits, '-', '_' or '.'.
pub fn check_model_name(field: &str, name: &str) -> Result<()> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || !ok_chars || name.len() > MAX_MODEL_NAME_LEN {
        return Err(FieldError::new(
            field,
            format!("must be 1 to {MAX_MODEL_NAME_LEN} letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}
