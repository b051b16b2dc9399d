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

/// A model name: 1 to 128 letters, digits, '-', '_' or '.'; not `.` or
/// `..`, and not of the form of a job id (`job-` and hex digits), which
/// Predict and the registry calls take in place of a name and which must
/// always mean that job.
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
    if name == "." || name == ".." {
        return Err(FieldError::new(field, "must not be \".\" or \"..\""));
    }
    if is_job_id(name) {
        return Err(FieldError::new(
            field,
            format!("\"{name}\" has the form of a job id (job- and hex digits); job ids name their own models"),
        ));
    }
    Ok(())
}

/// Whether `s` has the form of a job id as the server makes them: `job-`
/// followed by hex digits.
pub fn is_job_id(s: &str) -> bool {
    s.strip_prefix("job-")
        .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_cannot_be_job_ids_or_dots() {
        for bad in ["job-0123456789ab", "job-A1", ".", "..", "", "a/b"] {
            assert!(check_model_name("f", bad).is_err(), "{bad:?}");
        }
        let long = "m".repeat(MAX_MODEL_NAME_LEN + 1);
        assert!(check_model_name("f", &long).is_err());
        for good in ["job-", "job-xyz", "jobs-12", "my.model", "...", "job-12-a"] {
            assert!(check_model_name("f", good).is_ok(), "{good:?}");
        }
        assert!(is_job_id("job-0123456789ab"));
        assert!(!is_job_id("job-12-a"));
    }
}
