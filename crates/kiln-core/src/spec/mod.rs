//! The job spec as plain Rust types with every default filled in.
//!
//! `JobSpec::from_proto` is the one place where a `kiln.v1.JobSpec` is checked;
//! each error names the field path, e.g. `spec.training.batch_size: must be at least 1`.
//!
//! One file per part of the spec, each type next to its validator and tests:
//! `job.rs` (task, kind, device, model name), `data.rs`, `model.rs`,
//! `training.rs` (epochs, batch size, early stopping, SWA), `loss.rs`,
//! `optimizer.rs` (with weight decay and gradient clipping), `schedule.rs`
//! (LR schedules and the LR range test) and `metric.rs`.

mod check;
mod data;
mod job;
mod loss;
mod metric;
mod model;
mod optimizer;
mod schedule;
#[cfg(test)]
pub(crate) mod testing;
mod training;

use kiln::v1 as pb;

pub use data::{DataSource, DataSpec, MissingStrategy, MissingValues, Scaling, MAX_COLUMNS};
pub use job::{check_model_name, is_job_id, DeviceChoice, JobKind, Task, MAX_MODEL_NAME_LEN};
pub use loss::{LossKind, LossSpec};
pub use metric::Metric;
pub use model::{
    default_init_kind, Activation, BatchNormSpec, FanMode, Init, InitDistribution, InitKind,
    LayerSpec, ModelSpec, OutputActivation, MAX_HIDDEN_LAYERS, MAX_UNITS,
};
pub use optimizer::{GradClip, OptimizerKind, OptimizerSpec};
pub use schedule::{LrRangeSpec, LrScheduleKind, LrScheduleSpec, LrSuggestion, Warmup};
pub use training::{
    DecisionThreshold, EarlyStoppingSpec, SwaSpec, TrainingSpec, MAX_BATCH_SIZE, MAX_EPOCHS,
};

use crate::error::{FieldError, Result};
use check::{ensure, unknown_enum};
use data::validate_data;
use job::validate_model_name;
use model::validate_model;
use schedule::validate_lr_range_test;
use training::validate_training;

/// A validated job spec: every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The name the trained model is registered under; `None`: the job id.
    pub model_name: Option<String>,
    /// What the model predicts.
    pub task: Task,
    /// Where the rows come from and how they become numbers.
    pub data: DataSpec,
    /// The network's layers.
    pub model: ModelSpec,
    /// How the model is trained.
    pub training: TrainingSpec,
    /// Where the job runs.
    pub device: DeviceChoice,
    /// Training, or an LR range test alone.
    pub kind: JobKind,
    /// For [`JobKind::LrRangeTest`] and `training.auto_learning_rate`.
    pub lr_range_test: LrRangeSpec,
}

impl JobSpec {
    /// Validates a proto spec and fills in every default.
    pub fn from_proto(spec: &pb::JobSpec) -> Result<JobSpec> {
        let model_name = validate_model_name(&spec.model_name)?;
        let task = match pb::Task::try_from(spec.task) {
            Ok(pb::Task::Regression) => Task::Regression,
            Ok(pb::Task::BinaryClassification) => Task::Binary,
            Ok(pb::Task::MulticlassClassification) => Task::Multiclass,
            Ok(pb::Task::Unspecified) => {
                return Err(FieldError::new(
                    "spec.task",
                    "required: TASK_REGRESSION, TASK_BINARY_CLASSIFICATION or TASK_MULTICLASS_CLASSIFICATION",
                ))
            }
            Err(_) => return Err(unknown_enum("spec.task", spec.task)),
        };
        let data = spec
            .data
            .as_ref()
            .ok_or_else(|| FieldError::new("spec.data", "required"))?;
        let data = validate_data(data, task)?;
        let model = validate_model(spec.model.as_ref(), task)?;
        let training =
            validate_training(spec.training.as_ref().cloned().unwrap_or_default(), task)?;
        let kind = match pb::JobKind::try_from(spec.kind) {
            Ok(pb::JobKind::Default | pb::JobKind::Train) => JobKind::Train,
            Ok(pb::JobKind::LrRangeTest) => JobKind::LrRangeTest,
            Err(_) => return Err(unknown_enum("spec.kind", spec.kind)),
        };
        ensure(
            !(training.auto_learning_rate && kind == JobKind::LrRangeTest),
            "spec.training.optimizer.auto_learning_rate",
            "applies to training jobs, not to JOB_KIND_LR_RANGE_TEST",
        )?;
        let lr_range_test = validate_lr_range_test(spec.lr_range_test.as_ref())?;
        let device = match pb::Device::try_from(spec.device) {
            Ok(pb::Device::Auto) => DeviceChoice::Auto,
            Ok(pb::Device::Cpu) => DeviceChoice::Cpu,
            Ok(pb::Device::Cuda) => DeviceChoice::Cuda(spec.cuda_device_index as usize),
            Err(_) => return Err(unknown_enum("spec.device", spec.device)),
        };
        if device != DeviceChoice::Cuda(spec.cuda_device_index as usize)
            && spec.cuda_device_index != 0
        {
            return Err(FieldError::new(
                "spec.cuda_device_index",
                "only applies when spec.device is DEVICE_CUDA",
            ));
        }
        Ok(JobSpec {
            model_name,
            task,
            data,
            model,
            training,
            device,
            kind,
            lr_range_test,
        })
    }
}

impl JobSpec {
    /// Checks what the spec says against the data it turned out to have:
    /// `outputs` is the number of classes (classification) or targets.
    pub fn check_against_data(&self, outputs: usize) -> Result<()> {
        let weights = &self.training.loss.class_weights;
        ensure(
            weights.is_empty() || weights.len() == outputs,
            "spec.training.loss.class_weights",
            &format!(
                "has {} weights; the data has {outputs} classes",
                weights.len()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testing::{err, minimal};

    #[test]
    fn defaults_are_filled_in() {
        let spec = JobSpec::from_proto(&minimal()).unwrap();
        assert_eq!(spec.training.epochs, 100);
        assert_eq!(spec.training.batch_size, 32);
        assert_eq!(spec.training.loss.kind, LossKind::CrossEntropy);
        assert_eq!(spec.training.optimizer.learning_rate, 1e-3);
        assert_eq!(
            spec.training.optimizer.kind,
            OptimizerKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                amsgrad: false
            }
        );
        assert_eq!(spec.data.validation_fraction, 0.2);
        assert_eq!(spec.data.feature_scaling, Scaling::Standard);
        assert_eq!(spec.device, DeviceChoice::Auto);
        assert!(spec.training.early_stopping.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let mut s = minimal();
        s.task = 0;
        assert!(err(&s).starts_with("spec.task: required"));

        let mut s = minimal();
        s.data = None;
        assert_eq!(err(&s), "spec.data: required");

        let mut s = minimal();
        s.model = Some(pb::ModelSpec {
            hidden_layers: vec![
                pb::HiddenLayer {
                    units: 3,
                    ..Default::default()
                },
                pb::HiddenLayer::default(),
            ],
            ..Default::default()
        });
        assert!(err(&s).starts_with("spec.model.hidden_layers[1].units:"));

        let mut s = minimal();
        s.training = Some(pb::TrainingSpec {
            optimizer: Some(pb::Optimizer {
                kind: Some(pb::optimizer::Kind::Adam(pb::Adam {
                    beta2: Some(1.0),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            err(&s),
            "spec.training.optimizer.adam.beta2: must be in [0, 1)"
        );

        let mut s = minimal();
        s.training = Some(pb::TrainingSpec {
            early_stopping: Some(pb::EarlyStopping {
                monitor: "val_mae".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(err(&s).starts_with("spec.training.early_stopping.monitor:"));

        let mut s = minimal();
        s.data.as_mut().unwrap().validation_fraction = Some(1.0);
        assert!(err(&s).starts_with("spec.data.validation_fraction:"));

        let mut s = minimal();
        s.model_name = "bad name!".into();
        assert!(err(&s).starts_with("spec.model_name:"));

        let mut s = minimal();
        s.training = Some(pb::TrainingSpec {
            optimizer: Some(pb::Optimizer {
                kind: Some(pb::optimizer::Kind::Sgd(pb::Sgd {
                    nesterov: true,
                    ..Default::default()
                })),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(err(&s).starts_with("spec.training.optimizer.sgd.nesterov:"));

        let mut s = minimal();
        s.training = Some(pb::TrainingSpec {
            loss: Some(pb::Loss {
                kind: pb::LossKind::LossMse as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(err(&s).starts_with("spec.training.loss.kind:"));
    }
}
