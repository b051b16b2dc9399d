//! The job spec as plain Rust types with every default filled in.
//!
//! `JobSpec::from_proto` is the one place where a `kiln.v1.JobSpec` is checked;
//! each error names the field path, e.g. `spec.training.batch_size: must be at least 1`.

use std::collections::BTreeMap;

use kiln::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::data::MAX_COLUMNS;
use crate::error::{FieldError, Result};

pub const MAX_EPOCHS: u32 = 100_000;
pub const MAX_BATCH_SIZE: u32 = 1 << 20;
pub const MAX_UNITS: u32 = 65_536;
pub const MAX_HIDDEN_LAYERS: usize = 64;
pub const MAX_MODEL_NAME_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub model_name: Option<String>,
    pub task: Task,
    pub data: DataSpec,
    pub model: ModelSpec,
    pub training: TrainingSpec,
    pub device: DeviceChoice,
    pub kind: JobKind,
    /// For [`JobKind::LrRangeTest`] and `training.auto_learning_rate`.
    pub lr_range_test: LrRangeSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Train,
    /// fastai's lr_find alone: the curve and the suggestions, no model.
    LrRangeTest,
}

/// fastai `lr_find`'s settings (DESIGN.md): exponential from `start_lr` to
/// `end_lr` over `iterations` mini-batches, stop at 4x the minimum smoothed loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrRangeSpec {
    pub start_lr: f64,
    pub end_lr: f64,
    pub iterations: u32,
    pub stop_on_divergence: bool,
    /// The suggestion `auto_learning_rate` trains with.
    pub suggestion: LrSuggestion,
}

impl Default for LrRangeSpec {
    fn default() -> Self {
        Self {
            start_lr: 1e-7,
            end_lr: 10.0,
            iterations: 100,
            stop_on_divergence: true,
            suggestion: LrSuggestion::Valley,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrSuggestion {
    Valley,
    Steepest,
    Minimum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Task {
    Regression,
    Binary,
    Multiclass,
}

impl Task {
    pub fn is_classification(self) -> bool {
        !matches!(self, Task::Regression)
    }

    pub fn to_proto(self) -> pb::Task {
        match self {
            Task::Regression => pb::Task::Regression,
            Task::Binary => pb::Task::BinaryClassification,
            Task::Multiclass => pb::Task::MulticlassClassification,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    pub source: DataSource,
    pub target_columns: Vec<String>,
    /// Empty: every column that is not a target.
    pub feature_columns: Vec<String>,
    pub validation_fraction: f64,
    pub split_seed: u64,
    pub feature_scaling: Scaling,
    pub target_scaling: Scaling,
    /// Feature columns one-hot encoded (never scaled).
    pub categorical_columns: Vec<String>,
    /// Per-column overrides of `feature_scaling`.
    pub column_scaling: BTreeMap<String, Scaling>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    Dataset(String),
    Inline {
        columns: Vec<String>,
        rows: Vec<Vec<f64>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scaling {
    None,
    Standard,
    MinMax,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub hidden: Vec<LayerSpec>,
    pub output_activation: OutputActivation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    pub units: usize,
    pub activation: Activation,
    pub init: Init,
    pub dropout: f64,
    /// AlphaDropout (for SELU) instead of standard dropout.
    pub alpha_dropout: bool,
    pub batch_norm: Option<BatchNormSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Activation {
    Relu,
    Tanh,
    Sigmoid,
    LeakyRelu {
        negative_slope: f64,
    },
    Elu {
        alpha: f64,
    },
    Selu,
    Gelu,
    Softplus,
    Silu,
    /// torch.nn.RReLU: slope ~ U(lower, upper) in training, their mean in evaluation.
    RRelu {
        lower: f64,
        upper: f64,
    },
    /// torch.nn.PReLU with one learned slope per layer.
    PRelu {
        init: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BatchNormSpec {
    pub momentum: f64,
    pub eps: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputActivation {
    Identity,
    Tanh,
    Sigmoid,
    Softplus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Init {
    pub kind: InitKind,
    pub distribution: InitDistribution,
    pub fan: FanMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitKind {
    He,
    Lecun,
    Glorot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitDistribution {
    Uniform,
    Normal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FanMode {
    In,
    Out,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSpec {
    pub loss: LossSpec,
    pub optimizer: OptimizerSpec,
    pub lr_schedule: LrScheduleSpec,
    pub grad_clip: Option<GradClip>,
    pub epochs: u32,
    pub batch_size: u32,
    pub early_stopping: Option<EarlyStoppingSpec>,
    pub seed: u64,
    pub swa: Option<SwaSpec>,
    /// Train with the LR range test's suggestion instead of `optimizer.learning_rate`.
    pub auto_learning_rate: bool,
}

/// Stochastic Weight Averaging (torch.optim.swa_utils: AveragedModel, SWALR,
/// update_bn).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwaSpec {
    /// 1-based: weights are averaged after every epoch `e > start_epoch`;
    /// always < epochs.
    pub start_epoch: u32,
    pub swa_lr: f64,
    pub anneal_epochs: u32,
    /// Cosine annealing (true) or linear (false).
    pub anneal_cos: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LossSpec {
    pub kind: LossKind,
    /// Huber's delta.
    pub huber_delta: f64,
    /// Cross-entropy label smoothing in [0, 1).
    pub label_smoothing: f64,
    /// Cross-entropy class weights; empty means all 1.
    pub class_weights: Vec<f64>,
    /// BCE weight of the positive class.
    pub pos_weight: f64,
}

impl LossSpec {
    /// A loss with torch's defaults for every parameter.
    pub fn plain(kind: LossKind) -> Self {
        Self {
            kind,
            huber_delta: 1.0,
            label_smoothing: 0.0,
            class_weights: Vec::new(),
            pos_weight: 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    Mse,
    Mae,
    Huber,
    CrossEntropy,
    BinaryCrossEntropy,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerSpec {
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub kind: OptimizerKind,
}

/// torch.optim's optimizers, each hyper-parameter with torch's name and default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    /// torch.optim.SGD.
    Sgd {
        momentum: f64,
        dampening: f64,
        nesterov: bool,
    },
    /// torch.optim.Adam; `weight_decay` is coupled L2.
    Adam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        amsgrad: bool,
    },
    /// torch.optim.AdamW; `weight_decay` is decoupled (`w -= lr * wd * w`).
    AdamW {
        beta1: f64,
        beta2: f64,
        eps: f64,
        amsgrad: bool,
    },
    /// torch.optim.NAdam (not the decoupled variant).
    Nadam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        momentum_decay: f64,
    },
    /// torch.optim.RMSprop.
    RmsProp {
        alpha: f64,
        eps: f64,
        momentum: f64,
        centered: bool,
    },
    /// torch.optim.Adamax.
    Adamax { beta1: f64, beta2: f64, eps: f64 },
    /// torch.optim.Adagrad.
    Adagrad {
        lr_decay: f64,
        initial_accumulator_value: f64,
        eps: f64,
    },
}

/// How the learning rate moves during training (torch.optim.lr_scheduler).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrScheduleSpec {
    pub kind: LrScheduleKind,
    /// Linear warmup (torch's LinearLR, stepped per epoch): the LR is scaled
    /// from `start_factor` up to 1 over `epochs` epochs, multiplying the main
    /// schedule (as ChainedScheduler does). None: no warmup.
    pub warmup: Option<Warmup>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warmup {
    pub epochs: u32,
    pub start_factor: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrScheduleKind {
    Constant,
    /// StepLR, per epoch: lr * gamma^(epoch / step_size).
    Step {
        step_size: u32,
        gamma: f64,
    },
    /// ExponentialLR, per epoch.
    Exponential {
        gamma: f64,
    },
    /// CosineAnnealingLR, per epoch.
    Cosine {
        t_max: u32,
        eta_min: f64,
    },
    /// ReduceLROnPlateau, per epoch, on a logged metric.
    ReduceOnPlateau {
        monitor: Metric,
        /// true: "max" mode (the metric should rise); false: "min".
        mode_max: bool,
        factor: f64,
        patience: u32,
        threshold: f64,
        /// true: "rel" threshold mode; false: "abs".
        threshold_rel: bool,
        cooldown: u32,
        min_lr: f64,
        eps: f64,
    },
    /// OneCycleLR, per batch. `total_steps` is epochs x batches per epoch.
    OneCycle {
        max_lr: f64,
        pct_start: f64,
        /// true: "cos" annealing; false: "linear".
        anneal_cos: bool,
        div_factor: f64,
        final_div_factor: f64,
        three_phase: bool,
        /// Cycle SGD momentum or Adam/NAdam beta1 inversely to the LR.
        cycle_momentum: bool,
        base_momentum: f64,
        max_momentum: f64,
    },
}

/// Gradient clipping between backward and the optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GradClip {
    /// torch.nn.utils.clip_grad_norm_ over all parameters (one global norm).
    Norm { max_norm: f64, norm_type: f64 },
    /// torch.nn.utils.clip_grad_value_.
    Value { clip_value: f64 },
}

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

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStoppingSpec {
    pub monitor: Metric,
    /// true: the metric should rise ("max"); false: fall ("min").
    pub mode_max: bool,
    pub patience: u32,
    pub min_delta: f64,
    pub baseline: Option<f64>,
    /// Epochs (counted from 0, as Keras) ignored before watching starts.
    pub start_from_epoch: u32,
    pub restore_best_weights: bool,
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

fn validate_lr_range_test(test: Option<&pb::LrRangeTest>) -> Result<LrRangeSpec> {
    let default = LrRangeSpec::default();
    let Some(t) = test else {
        return Ok(default);
    };
    let f = |name: &str| format!("spec.lr_range_test.{name}");
    let start_lr = positive(&f("start_lr"), t.start_lr, default.start_lr)?;
    let end_lr = positive(&f("end_lr"), t.end_lr, default.end_lr)?;
    ensure(end_lr > start_lr, &f("end_lr"), "must be above start_lr")?;
    let iterations = t.iterations.unwrap_or(default.iterations);
    ensure(
        (6..=10_000).contains(&iterations),
        &f("iterations"),
        "must be between 6 and 10000",
    )?;
    let suggestion = match pb::LrSuggestion::try_from(t.suggestion) {
        Ok(pb::LrSuggestion::Default | pb::LrSuggestion::Valley) => LrSuggestion::Valley,
        Ok(pb::LrSuggestion::Steepest) => LrSuggestion::Steepest,
        Ok(pb::LrSuggestion::Minimum) => LrSuggestion::Minimum,
        Err(_) => return Err(unknown_enum(&f("suggestion"), t.suggestion)),
    };
    Ok(LrRangeSpec {
        start_lr,
        end_lr,
        iterations,
        stop_on_divergence: t.stop_on_divergence.unwrap_or(true),
        suggestion,
    })
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

fn unknown_enum(field: &str, value: i32) -> FieldError {
    FieldError::new(field, format!("unknown value {value}"))
}

fn validate_model_name(name: &str) -> Result<Option<String>> {
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

fn validate_data(data: &pb::DataSpec, task: Task) -> Result<DataSpec> {
    let source = match &data.source {
        None => {
            return Err(FieldError::new(
                "spec.data",
                "set either dataset_id or inline",
            ))
        }
        Some(pb::data_spec::Source::DatasetId(id)) if id.is_empty() => {
            return Err(FieldError::new("spec.data.dataset_id", "must not be empty"))
        }
        Some(pb::data_spec::Source::DatasetId(id)) => DataSource::Dataset(id.clone()),
        Some(pb::data_spec::Source::Inline(inline)) => DataSource::Inline {
            columns: inline.columns.clone(),
            rows: inline.rows.iter().map(|r| r.values.clone()).collect(),
        },
    };
    if data.target_columns.is_empty() {
        return Err(FieldError::new("spec.data.target_columns", "required"));
    }
    if task.is_classification() && data.target_columns.len() != 1 {
        return Err(FieldError::new(
            "spec.data.target_columns",
            "classification takes exactly one target column",
        ));
    }
    check_unique("spec.data.target_columns", &data.target_columns)?;
    check_unique("spec.data.feature_columns", &data.feature_columns)?;
    let targets: std::collections::HashSet<&String> = data.target_columns.iter().collect();
    if let Some(c) = data.feature_columns.iter().find(|c| targets.contains(c)) {
        return Err(FieldError::new(
            "spec.data.feature_columns",
            format!("\"{c}\" is also a target column"),
        ));
    }
    let validation_fraction = data.validation_fraction.unwrap_or(0.2);
    if !(validation_fraction > 0.0 && validation_fraction < 1.0) {
        return Err(FieldError::new(
            "spec.data.validation_fraction",
            "must be in (0, 1)",
        ));
    }
    check_unique("spec.data.categorical_columns", &data.categorical_columns)?;
    if let Some(c) = data
        .categorical_columns
        .iter()
        .find(|c| targets.contains(c))
    {
        return Err(FieldError::new(
            "spec.data.categorical_columns",
            format!("\"{c}\" is a target column; class labels need no encoding"),
        ));
    }
    let feature_scaling = scaling("spec.data.feature_scaling", data.feature_scaling)?;
    let categorical: std::collections::HashSet<&String> = data.categorical_columns.iter().collect();
    let mut column_scaling = BTreeMap::new();
    for (column, &value) in &data.column_scaling {
        let field = format!("spec.data.column_scaling[\"{column}\"]");
        if categorical.contains(column) {
            return Err(FieldError::new(
                field,
                "a categorical column is one-hot encoded, never scaled",
            ));
        }
        if targets.contains(column) {
            return Err(FieldError::new(
                field,
                "is a target column; use spec.data.target_scaling",
            ));
        }
        let kind = match value {
            0 => feature_scaling,
            v => scaling(&field, v)?,
        };
        column_scaling.insert(column.clone(), kind);
    }
    let target_scaling = scaling("spec.data.target_scaling", data.target_scaling)?;
    if task.is_classification() && data.target_scaling != 0 {
        return Err(FieldError::new(
            "spec.data.target_scaling",
            "only applies to regression",
        ));
    }
    Ok(DataSpec {
        source,
        target_columns: data.target_columns.clone(),
        feature_columns: data.feature_columns.clone(),
        validation_fraction,
        split_seed: data.split_seed,
        feature_scaling,
        target_scaling: if task.is_classification() {
            Scaling::None
        } else {
            target_scaling
        },
        categorical_columns: data.categorical_columns.clone(),
        column_scaling,
    })
}

fn check_unique(field: &str, names: &[String]) -> Result<()> {
    if names.len() > MAX_COLUMNS {
        return Err(FieldError::new(
            field,
            format!("at most {MAX_COLUMNS} columns"),
        ));
    }
    // A set: the lists come from the request, however long it is.
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                "must not be empty",
            ));
        }
        if !seen.insert(name) {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                format!("\"{name}\" is listed twice"),
            ));
        }
    }
    Ok(())
}

fn scaling(field: &str, value: i32) -> Result<Scaling> {
    match pb::Scaling::try_from(value) {
        Ok(pb::Scaling::Default | pb::Scaling::Standard) => Ok(Scaling::Standard),
        Ok(pb::Scaling::None) => Ok(Scaling::None),
        Ok(pb::Scaling::MinMax) => Ok(Scaling::MinMax),
        Err(_) => Err(unknown_enum(field, value)),
    }
}

fn validate_model(model: Option<&pb::ModelSpec>, task: Task) -> Result<ModelSpec> {
    let default = pb::ModelSpec::default();
    let model = model.unwrap_or(&default);
    if model.hidden_layers.len() > MAX_HIDDEN_LAYERS {
        return Err(FieldError::new(
            "spec.model.hidden_layers",
            format!("at most {MAX_HIDDEN_LAYERS} layers"),
        ));
    }
    let hidden = model
        .hidden_layers
        .iter()
        .enumerate()
        .map(|(i, layer)| validate_layer(&format!("spec.model.hidden_layers[{i}]"), layer))
        .collect::<Result<Vec<_>>>()?;
    let output_activation = match pb::OutputActivation::try_from(model.output_activation) {
        Ok(pb::OutputActivation::OutputDefault | pb::OutputActivation::OutputIdentity) => {
            OutputActivation::Identity
        }
        Ok(pb::OutputActivation::OutputTanh) => OutputActivation::Tanh,
        Ok(pb::OutputActivation::OutputSigmoid) => OutputActivation::Sigmoid,
        Ok(pb::OutputActivation::OutputSoftplus) => OutputActivation::Softplus,
        Err(_) => {
            return Err(unknown_enum(
                "spec.model.output_activation",
                model.output_activation,
            ))
        }
    };
    if task.is_classification() && output_activation != OutputActivation::Identity {
        return Err(FieldError::new(
            "spec.model.output_activation",
            "only applies to regression (classification outputs logits; Predict applies sigmoid or softmax)",
        ));
    }
    Ok(ModelSpec {
        hidden,
        output_activation,
    })
}

fn validate_layer(path: &str, layer: &pb::HiddenLayer) -> Result<LayerSpec> {
    let field = |name: &str| format!("{path}.{name}");
    ensure(
        (1..=MAX_UNITS).contains(&layer.units),
        &field("units"),
        &format!("must be in [1, {MAX_UNITS}]"),
    )?;
    let p = layer.activation_params.unwrap_or_default();
    let param = |name: &str| field(&format!("activation_params.{name}"));
    if let Some(v) = p.negative_slope {
        ensure(
            v.is_finite() && v >= 0.0,
            &param("negative_slope"),
            "must be finite and >= 0",
        )?;
    }
    if let Some(v) = p.alpha {
        ensure(
            v.is_finite() && v > 0.0,
            &param("alpha"),
            "must be finite and > 0",
        )?;
    }
    let activation = match pb::Activation::try_from(layer.activation) {
        Ok(pb::Activation::Default | pb::Activation::Relu) => Activation::Relu,
        Ok(pb::Activation::Tanh) => Activation::Tanh,
        Ok(pb::Activation::Sigmoid) => Activation::Sigmoid,
        Ok(pb::Activation::LeakyRelu) => Activation::LeakyRelu {
            negative_slope: p.negative_slope.unwrap_or(0.01),
        },
        Ok(pb::Activation::Elu) => Activation::Elu {
            alpha: p.alpha.unwrap_or(1.0),
        },
        Ok(pb::Activation::Selu) => Activation::Selu,
        Ok(pb::Activation::Gelu) => Activation::Gelu,
        Ok(pb::Activation::Softplus) => Activation::Softplus,
        Ok(pb::Activation::Silu) => Activation::Silu,
        Ok(pb::Activation::Rrelu) => {
            let (lower, upper) = (
                p.rrelu_lower.unwrap_or(1.0 / 8.0),
                p.rrelu_upper.unwrap_or(1.0 / 3.0),
            );
            ensure(
                lower.is_finite() && upper.is_finite() && 0.0 <= lower && lower <= upper,
                &param("rrelu_upper"),
                "needs 0 <= rrelu_lower <= rrelu_upper",
            )?;
            Activation::RRelu { lower, upper }
        }
        Ok(pb::Activation::Prelu) => {
            let init = p.prelu_init.unwrap_or(0.25);
            ensure(init.is_finite(), &param("prelu_init"), "must be finite")?;
            Activation::PRelu { init }
        }
        Err(_) => return Err(unknown_enum(&field("activation"), layer.activation)),
    };
    ensure(
        (0.0..1.0).contains(&layer.dropout),
        &field("dropout"),
        "must be in [0, 1)",
    )?;
    let alpha_dropout = match pb::DropoutKind::try_from(layer.dropout_kind) {
        Ok(pb::DropoutKind::DropoutDefault | pb::DropoutKind::DropoutStandard) => false,
        Ok(pb::DropoutKind::DropoutAlpha) => true,
        Err(_) => return Err(unknown_enum(&field("dropout_kind"), layer.dropout_kind)),
    };
    let batch_norm = if layer.batch_norm {
        let bn = layer.batch_norm_params.unwrap_or_default();
        let momentum = bn.momentum.unwrap_or(0.1);
        let eps = bn.eps.unwrap_or(1e-5);
        ensure(
            momentum > 0.0 && momentum <= 1.0,
            &field("batch_norm_params.momentum"),
            "must be in (0, 1]",
        )?;
        ensure(
            eps > 0.0 && eps.is_finite(),
            &field("batch_norm_params.eps"),
            "must be > 0",
        )?;
        Some(BatchNormSpec { momentum, eps })
    } else {
        None
    };
    let init = validate_init(
        &field("initializer"),
        layer.initializer.as_ref(),
        activation,
    )?;
    Ok(LayerSpec {
        units: layer.units as usize,
        activation,
        init,
        dropout: layer.dropout,
        alpha_dropout,
        batch_norm,
    })
}

/// `Err(field: message)` unless `ok`.
fn ensure(ok: bool, field: &str, message: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(field, message))
    }
}

/// The guide's default initializer for an activation (DESIGN.md).
pub fn default_init_kind(activation: Activation) -> InitKind {
    match activation {
        Activation::Relu
        | Activation::LeakyRelu { .. }
        | Activation::RRelu { .. }
        | Activation::PRelu { .. } => InitKind::He,
        Activation::Selu | Activation::Elu { .. } => InitKind::Lecun,
        Activation::Tanh
        | Activation::Sigmoid
        | Activation::Gelu
        | Activation::Softplus
        | Activation::Silu => InitKind::Glorot,
    }
}

fn validate_init(path: &str, init: Option<&pb::Initializer>, act: Activation) -> Result<Init> {
    let default = pb::Initializer::default();
    let init = init.unwrap_or(&default);
    let kind = match pb::InitializerKind::try_from(init.kind) {
        Ok(pb::InitializerKind::InitDefault) => default_init_kind(act),
        Ok(pb::InitializerKind::InitHe) => InitKind::He,
        Ok(pb::InitializerKind::InitLecun) => InitKind::Lecun,
        Ok(pb::InitializerKind::InitGlorot) => InitKind::Glorot,
        Err(_) => return Err(unknown_enum(&format!("{path}.kind"), init.kind)),
    };
    let distribution = match pb::InitDistribution::try_from(init.distribution) {
        Ok(pb::InitDistribution::Default) => match kind {
            InitKind::Glorot => InitDistribution::Uniform,
            InitKind::He | InitKind::Lecun => InitDistribution::Normal,
        },
        Ok(pb::InitDistribution::InitUniform) => InitDistribution::Uniform,
        Ok(pb::InitDistribution::InitNormal) => InitDistribution::Normal,
        Err(_) => {
            return Err(unknown_enum(
                &format!("{path}.distribution"),
                init.distribution,
            ))
        }
    };
    let fan = match pb::FanMode::try_from(init.fan_mode) {
        Ok(pb::FanMode::FanDefault | pb::FanMode::FanIn) => FanMode::In,
        Ok(pb::FanMode::FanOut) if kind == InitKind::Glorot => {
            return Err(FieldError::new(
                format!("{path}.fan_mode"),
                "Glorot always averages fan-in and fan-out; leave fan_mode unset",
            ))
        }
        Ok(pb::FanMode::FanOut) => FanMode::Out,
        Err(_) => return Err(unknown_enum(&format!("{path}.fan_mode"), init.fan_mode)),
    };
    Ok(Init {
        kind,
        distribution,
        fan,
    })
}

fn validate_training(t: pb::TrainingSpec, task: Task) -> Result<TrainingSpec> {
    let epochs = if t.epochs == 0 { 100 } else { t.epochs };
    ensure(
        epochs <= MAX_EPOCHS,
        "spec.training.epochs",
        &format!("at most {MAX_EPOCHS}"),
    )?;
    let batch_size = if t.batch_size == 0 { 32 } else { t.batch_size };
    ensure(
        batch_size <= MAX_BATCH_SIZE,
        "spec.training.batch_size",
        &format!("at most {MAX_BATCH_SIZE}"),
    )?;
    let loss = validate_loss(t.loss.as_ref(), task)?;
    let optimizer = validate_optimizer(t.optimizer.as_ref())?;
    let lr_schedule = validate_schedule(t.lr_schedule.as_ref(), task, epochs)?;
    if let LrScheduleKind::OneCycle {
        cycle_momentum: true,
        ..
    } = lr_schedule.kind
    {
        let cycles = matches!(
            optimizer.kind,
            OptimizerKind::Sgd { .. }
                | OptimizerKind::Adam { .. }
                | OptimizerKind::AdamW { .. }
                | OptimizerKind::Nadam { .. }
        );
        let sgd_without_momentum =
            matches!(optimizer.kind, OptimizerKind::Sgd { momentum, .. } if momentum == 0.0);
        ensure(
            cycles && !sgd_without_momentum,
            "spec.training.lr_schedule.one_cycle.cycle_momentum",
            "needs SGD with momentum, Adam, AdamW or NAdam (as torch's OneCycleLR); set it to false",
        )?;
    }
    let grad_clip = t.grad_clip.as_ref().map(validate_clip).transpose()?;
    let early_stopping = t
        .early_stopping
        .as_ref()
        .map(|es| validate_early_stopping(es, task))
        .transpose()?;
    let swa = t
        .swa
        .as_ref()
        .map(|swa| validate_swa(swa, epochs, &lr_schedule))
        .transpose()?;
    Ok(TrainingSpec {
        loss,
        optimizer,
        lr_schedule,
        grad_clip,
        epochs,
        batch_size,
        early_stopping,
        seed: t.seed,
        swa,
        auto_learning_rate: t.optimizer.as_ref().is_some_and(|o| o.auto_learning_rate),
    })
}

fn validate_swa(swa: &pb::Swa, epochs: u32, schedule: &LrScheduleSpec) -> Result<SwaSpec> {
    let f = |name: &str| format!("spec.training.swa.{name}");
    ensure(
        !matches!(schedule.kind, LrScheduleKind::OneCycle { .. }),
        "spec.training.swa",
        "cannot be combined with lr_schedule.one_cycle: both set the learning rate",
    )?;
    ensure(
        swa.start_epoch >= 1,
        &f("start_epoch"),
        "required, at least 1",
    )?;
    ensure(
        swa.start_epoch < epochs,
        &f("start_epoch"),
        &format!("must be less than spec.training.epochs ({epochs})"),
    )?;
    let swa_lr = positive(&f("swa_lr"), Some(swa.swa_lr), 0.0)?;
    let anneal_cos = match pb::Anneal::try_from(swa.anneal_strategy) {
        Ok(pb::Anneal::Default | pb::Anneal::Cos) => true,
        Ok(pb::Anneal::Linear) => false,
        Err(_) => return Err(unknown_enum(&f("anneal_strategy"), swa.anneal_strategy)),
    };
    Ok(SwaSpec {
        start_epoch: swa.start_epoch,
        swa_lr,
        anneal_epochs: if swa.anneal_epochs == 0 {
            10
        } else {
            swa.anneal_epochs
        },
        anneal_cos,
    })
}

fn validate_loss(loss: Option<&pb::Loss>, task: Task) -> Result<LossSpec> {
    let default = pb::Loss::default();
    let loss = loss.unwrap_or(&default);
    let kind = match pb::LossKind::try_from(loss.kind) {
        Ok(pb::LossKind::LossDefault) => match task {
            Task::Regression => LossKind::Mse,
            Task::Binary => LossKind::BinaryCrossEntropy,
            Task::Multiclass => LossKind::CrossEntropy,
        },
        Ok(pb::LossKind::LossMse) => LossKind::Mse,
        Ok(pb::LossKind::LossMae) => LossKind::Mae,
        Ok(pb::LossKind::LossHuber) => LossKind::Huber,
        Ok(pb::LossKind::LossCrossEntropy) => LossKind::CrossEntropy,
        Ok(pb::LossKind::LossBinaryCrossEntropy) => LossKind::BinaryCrossEntropy,
        Err(_) => return Err(unknown_enum("spec.training.loss.kind", loss.kind)),
    };
    let fits = match kind {
        LossKind::Mse | LossKind::Mae | LossKind::Huber => task == Task::Regression,
        LossKind::CrossEntropy => task == Task::Multiclass,
        LossKind::BinaryCrossEntropy => task == Task::Binary,
    };
    ensure(
        fits,
        "spec.training.loss.kind",
        &format!("{kind:?} does not fit task {task:?}"),
    )?;
    let huber_delta = loss.huber_delta.unwrap_or(1.0);
    ensure(
        huber_delta > 0.0 && huber_delta.is_finite(),
        "spec.training.loss.huber_delta",
        "must be > 0",
    )?;
    ensure(
        loss.huber_delta.is_none() || kind == LossKind::Huber,
        "spec.training.loss.huber_delta",
        "only applies to LOSS_HUBER",
    )?;
    ensure(
        (0.0..1.0).contains(&loss.label_smoothing),
        "spec.training.loss.label_smoothing",
        "must be in [0, 1)",
    )?;
    ensure(
        loss.label_smoothing == 0.0 || kind == LossKind::CrossEntropy,
        "spec.training.loss.label_smoothing",
        "only applies to LOSS_CROSS_ENTROPY",
    )?;
    ensure(
        loss.class_weights.is_empty() || kind == LossKind::CrossEntropy,
        "spec.training.loss.class_weights",
        "only applies to LOSS_CROSS_ENTROPY",
    )?;
    for (i, w) in loss.class_weights.iter().enumerate() {
        ensure(
            w.is_finite() && *w >= 0.0,
            &format!("spec.training.loss.class_weights[{i}]"),
            "must be finite and >= 0",
        )?;
    }
    let pos_weight = loss.pos_weight.unwrap_or(1.0);
    ensure(
        pos_weight.is_finite() && pos_weight > 0.0,
        "spec.training.loss.pos_weight",
        "must be > 0",
    )?;
    ensure(
        loss.pos_weight.is_none() || kind == LossKind::BinaryCrossEntropy,
        "spec.training.loss.pos_weight",
        "only applies to LOSS_BINARY_CROSS_ENTROPY",
    )?;
    Ok(LossSpec {
        kind,
        huber_delta,
        label_smoothing: loss.label_smoothing,
        class_weights: loss.class_weights.clone(),
        pos_weight,
    })
}

fn beta(field: &str, value: Option<f64>, default: f64) -> Result<f64> {
    let v = value.unwrap_or(default);
    ensure((0.0..1.0).contains(&v), field, "must be in [0, 1)")?;
    Ok(v)
}

fn positive(field: &str, value: Option<f64>, default: f64) -> Result<f64> {
    let v = value.unwrap_or(default);
    ensure(v > 0.0 && v.is_finite(), field, "must be > 0")?;
    Ok(v)
}

fn non_negative(field: &str, v: f64) -> Result<f64> {
    ensure(v >= 0.0 && v.is_finite(), field, "must be >= 0")?;
    Ok(v)
}

fn validate_optimizer(opt: Option<&pb::Optimizer>) -> Result<OptimizerSpec> {
    use pb::optimizer::Kind;
    let default = pb::Optimizer::default();
    let opt = opt.unwrap_or(&default);
    let f = |name: &str| format!("spec.training.optimizer.{name}");
    let adam = |name: &str, a: &pb::Adam| -> Result<(f64, f64, f64)> {
        Ok((
            beta(&f(&format!("{name}.beta1")), a.beta1, 0.9)?,
            beta(&f(&format!("{name}.beta2")), a.beta2, 0.999)?,
            positive(&f(&format!("{name}.eps")), a.eps, 1e-8)?,
        ))
    };
    // (kind, torch's default learning rate, torch's default weight decay)
    let (kind, default_lr, default_wd) = match &opt.kind {
        None => (
            OptimizerKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                amsgrad: false,
            },
            1e-3,
            0.0,
        ),
        Some(Kind::Adam(a)) => {
            let (beta1, beta2, eps) = adam("adam", a)?;
            (
                OptimizerKind::Adam {
                    beta1,
                    beta2,
                    eps,
                    amsgrad: a.amsgrad,
                },
                1e-3,
                0.0,
            )
        }
        Some(Kind::Adamw(a)) => {
            let (beta1, beta2, eps) = adam("adamw", a)?;
            (
                OptimizerKind::AdamW {
                    beta1,
                    beta2,
                    eps,
                    amsgrad: a.amsgrad,
                },
                1e-3,
                1e-2,
            )
        }
        Some(Kind::Sgd(s)) => {
            let momentum = non_negative(&f("sgd.momentum"), s.momentum)?;
            ensure(
                (0.0..=1.0).contains(&s.dampening),
                &f("sgd.dampening"),
                "must be in [0, 1]",
            )?;
            ensure(
                !s.nesterov || (momentum > 0.0 && s.dampening == 0.0),
                &f("sgd.nesterov"),
                "needs momentum > 0 and dampening 0 (as torch.optim.SGD)",
            )?;
            let kind = OptimizerKind::Sgd {
                momentum,
                dampening: s.dampening,
                nesterov: s.nesterov,
            };
            (kind, 1e-3, 0.0)
        }
        Some(Kind::Nadam(n)) => (
            OptimizerKind::Nadam {
                beta1: beta(&f("nadam.beta1"), n.beta1, 0.9)?,
                beta2: beta(&f("nadam.beta2"), n.beta2, 0.999)?,
                eps: positive(&f("nadam.eps"), n.eps, 1e-8)?,
                momentum_decay: non_negative(
                    &f("nadam.momentum_decay"),
                    n.momentum_decay.unwrap_or(4e-3),
                )?,
            },
            2e-3,
            0.0,
        ),
        Some(Kind::Rmsprop(r)) => (
            OptimizerKind::RmsProp {
                alpha: beta(&f("rmsprop.alpha"), r.alpha, 0.99)?,
                eps: positive(&f("rmsprop.eps"), r.eps, 1e-8)?,
                momentum: non_negative(&f("rmsprop.momentum"), r.momentum)?,
                centered: r.centered,
            },
            1e-2,
            0.0,
        ),
        Some(Kind::Adamax(a)) => (
            OptimizerKind::Adamax {
                beta1: beta(&f("adamax.beta1"), a.beta1, 0.9)?,
                beta2: beta(&f("adamax.beta2"), a.beta2, 0.999)?,
                eps: positive(&f("adamax.eps"), a.eps, 1e-8)?,
            },
            2e-3,
            0.0,
        ),
        Some(Kind::Adagrad(a)) => (
            OptimizerKind::Adagrad {
                lr_decay: non_negative(&f("adagrad.lr_decay"), a.lr_decay)?,
                initial_accumulator_value: non_negative(
                    &f("adagrad.initial_accumulator_value"),
                    a.initial_accumulator_value,
                )?,
                eps: positive(&f("adagrad.eps"), a.eps, 1e-10)?,
            },
            1e-2,
            0.0,
        ),
    };
    ensure(
        !(opt.auto_learning_rate && opt.learning_rate.is_some()),
        &f("learning_rate"),
        "must be unset when auto_learning_rate is true",
    )?;
    Ok(OptimizerSpec {
        learning_rate: positive(&f("learning_rate"), opt.learning_rate, default_lr)?,
        weight_decay: non_negative(&f("weight_decay"), opt.weight_decay.unwrap_or(default_wd))?,
        kind,
    })
}

/// A metric by name that applies to `task`, or an error listing the ones that do.
fn metric(field: &str, name: &str, task: Task) -> Result<Metric> {
    if name.is_empty() {
        return Ok(Metric::ValLoss);
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
fn mode_max(field: &str, mode: i32, monitor: Metric) -> Result<bool> {
    match pb::Mode::try_from(mode) {
        Ok(pb::Mode::Auto) => Ok(monitor.higher_is_better()),
        Ok(pb::Mode::Min) => Ok(false),
        Ok(pb::Mode::Max) => Ok(true),
        Err(_) => Err(unknown_enum(field, mode)),
    }
}

fn validate_schedule(
    schedule: Option<&pb::LrSchedule>,
    task: Task,
    epochs: u32,
) -> Result<LrScheduleSpec> {
    use pb::lr_schedule::Kind;
    let default = pb::LrSchedule::default();
    let schedule = schedule.unwrap_or(&default);
    let f = |name: &str| format!("spec.training.lr_schedule.{name}");
    let kind = match &schedule.kind {
        None | Some(Kind::Constant(_)) => LrScheduleKind::Constant,
        Some(Kind::Step(st)) => {
            ensure(
                st.step_size >= 1,
                &f("step.step_size"),
                "required, at least 1",
            )?;
            LrScheduleKind::Step {
                step_size: st.step_size,
                gamma: positive(&f("step.gamma"), st.gamma, 0.1)?,
            }
        }
        Some(Kind::Exponential(e)) => {
            ensure(
                e.gamma > 0.0 && e.gamma <= 1.0,
                &f("exponential.gamma"),
                "required, in (0, 1]",
            )?;
            LrScheduleKind::Exponential { gamma: e.gamma }
        }
        Some(Kind::Cosine(c)) => LrScheduleKind::Cosine {
            t_max: if c.t_max == 0 { epochs } else { c.t_max },
            eta_min: non_negative(&f("cosine.eta_min"), c.eta_min)?,
        },
        Some(Kind::ReduceOnPlateau(p)) => {
            let monitor = metric(&f("reduce_on_plateau.monitor"), &p.monitor, task)?;
            let factor = p.factor.unwrap_or(0.1);
            ensure(
                factor > 0.0 && factor < 1.0,
                &f("reduce_on_plateau.factor"),
                "must be in (0, 1)",
            )?;
            LrScheduleKind::ReduceOnPlateau {
                monitor,
                mode_max: mode_max(&f("reduce_on_plateau.mode"), p.mode, monitor)?,
                factor,
                patience: p.patience.unwrap_or(10),
                threshold: non_negative(
                    &f("reduce_on_plateau.threshold"),
                    p.threshold.unwrap_or(1e-4),
                )?,
                threshold_rel: match pb::ThresholdMode::try_from(p.threshold_mode) {
                    Ok(pb::ThresholdMode::ThresholdDefault | pb::ThresholdMode::ThresholdRel) => {
                        true
                    }
                    Ok(pb::ThresholdMode::ThresholdAbs) => false,
                    Err(_) => {
                        return Err(unknown_enum(
                            &f("reduce_on_plateau.threshold_mode"),
                            p.threshold_mode,
                        ))
                    }
                },
                cooldown: p.cooldown,
                min_lr: non_negative(&f("reduce_on_plateau.min_lr"), p.min_lr)?,
                eps: non_negative(&f("reduce_on_plateau.eps"), p.eps.unwrap_or(1e-8))?,
            }
        }
        Some(Kind::OneCycle(o)) => {
            let pct_start = o.pct_start.unwrap_or(0.3);
            ensure(
                pct_start > 0.0 && pct_start < 1.0,
                &f("one_cycle.pct_start"),
                "must be in (0, 1)",
            )?;
            ensure(
                !o.three_phase || pct_start <= 0.5,
                &f("one_cycle.pct_start"),
                "must be at most 0.5 with three_phase (the phases would overlap)",
            )?;
            let base_momentum = beta(&f("one_cycle.base_momentum"), o.base_momentum, 0.85)?;
            let max_momentum = beta(&f("one_cycle.max_momentum"), o.max_momentum, 0.95)?;
            ensure(
                base_momentum <= max_momentum,
                &f("one_cycle.base_momentum"),
                "must not exceed max_momentum",
            )?;
            LrScheduleKind::OneCycle {
                max_lr: positive(&f("one_cycle.max_lr"), Some(o.max_lr), 0.0)?,
                pct_start,
                anneal_cos: match pb::Anneal::try_from(o.anneal_strategy) {
                    Ok(pb::Anneal::Default | pb::Anneal::Cos) => true,
                    Ok(pb::Anneal::Linear) => false,
                    Err(_) => {
                        return Err(unknown_enum(
                            &f("one_cycle.anneal_strategy"),
                            o.anneal_strategy,
                        ))
                    }
                },
                div_factor: positive(&f("one_cycle.div_factor"), o.div_factor, 25.0)?,
                final_div_factor: positive(
                    &f("one_cycle.final_div_factor"),
                    o.final_div_factor,
                    1e4,
                )?,
                three_phase: o.three_phase,
                cycle_momentum: o.cycle_momentum.unwrap_or(true),
                base_momentum,
                max_momentum,
            }
        }
    };
    let warmup = match &schedule.warmup {
        None => None,
        Some(w) => {
            ensure(
                !matches!(kind, LrScheduleKind::OneCycle { .. }),
                &f("warmup"),
                "one_cycle has its own warm-up phase (pct_start)",
            )?;
            ensure(w.epochs >= 1, &f("warmup.epochs"), "required, at least 1")?;
            let start_factor = w.start_factor.unwrap_or(1.0 / 3.0);
            ensure(
                start_factor > 0.0 && start_factor <= 1.0,
                &f("warmup.start_factor"),
                "must be in (0, 1]",
            )?;
            Some(Warmup {
                epochs: w.epochs,
                start_factor,
            })
        }
    };
    Ok(LrScheduleSpec { kind, warmup })
}

fn validate_clip(clip: &pb::GradClip) -> Result<GradClip> {
    use pb::grad_clip::Kind;
    match &clip.kind {
        None => Err(FieldError::new(
            "spec.training.grad_clip",
            "set norm or value",
        )),
        Some(Kind::Norm(n)) => {
            let norm_type = n.norm_type.unwrap_or(2.0);
            ensure(
                norm_type >= 1.0,
                "spec.training.grad_clip.norm.norm_type",
                "must be >= 1 (or inf)",
            )?;
            Ok(GradClip::Norm {
                max_norm: positive(
                    "spec.training.grad_clip.norm.max_norm",
                    Some(n.max_norm),
                    0.0,
                )?,
                norm_type,
            })
        }
        Some(Kind::Value(v)) => Ok(GradClip::Value {
            clip_value: positive(
                "spec.training.grad_clip.value.clip_value",
                Some(v.clip_value),
                0.0,
            )?,
        }),
    }
}

fn validate_early_stopping(es: &pb::EarlyStopping, task: Task) -> Result<EarlyStoppingSpec> {
    let f = |name: &str| format!("spec.training.early_stopping.{name}");
    let monitor = metric(&f("monitor"), &es.monitor, task)?;
    if let Some(b) = es.baseline {
        ensure(b.is_finite(), &f("baseline"), "must be finite")?;
    }
    Ok(EarlyStoppingSpec {
        monitor,
        mode_max: mode_max(&f("mode"), es.mode, monitor)?,
        patience: es.patience.unwrap_or(10),
        min_delta: non_negative(&f("min_delta"), es.min_delta)?,
        baseline: es.baseline,
        start_from_epoch: es.start_from_epoch,
        restore_best_weights: es.restore_best_weights.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> pb::JobSpec {
        pb::JobSpec {
            task: pb::Task::MulticlassClassification as i32,
            data: Some(pb::DataSpec {
                source: Some(pb::data_spec::Source::DatasetId("ds-1".into())),
                target_columns: vec!["y".into()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn err(spec: &pb::JobSpec) -> String {
        JobSpec::from_proto(spec).unwrap_err().to_string()
    }

    #[test]
    fn lr_range_test_defaults_are_fastais_and_bad_settings_name_the_field() {
        let spec = JobSpec::from_proto(&minimal()).unwrap();
        assert_eq!(spec.kind, JobKind::Train);
        assert_eq!(spec.lr_range_test, LrRangeSpec::default());
        assert_eq!(
            (spec.lr_range_test.start_lr, spec.lr_range_test.end_lr),
            (1e-7, 10.0)
        );
        assert_eq!(spec.lr_range_test.iterations, 100);
        assert!(!spec.training.auto_learning_rate);

        let with = |t: pb::LrRangeTest| pb::JobSpec {
            kind: pb::JobKind::LrRangeTest as i32,
            lr_range_test: Some(t),
            ..minimal()
        };
        let ok = JobSpec::from_proto(&with(pb::LrRangeTest {
            iterations: Some(50),
            suggestion: pb::LrSuggestion::Steepest as i32,
            stop_on_divergence: Some(false),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(ok.kind, JobKind::LrRangeTest);
        assert_eq!(ok.lr_range_test.iterations, 50);
        assert_eq!(ok.lr_range_test.suggestion, LrSuggestion::Steepest);
        assert!(!ok.lr_range_test.stop_on_divergence);
        assert_eq!(
            err(&with(pb::LrRangeTest {
                start_lr: Some(1.0),
                end_lr: Some(0.5),
                ..Default::default()
            })),
            "spec.lr_range_test.end_lr: must be above start_lr"
        );
        assert_eq!(
            err(&with(pb::LrRangeTest {
                iterations: Some(5),
                ..Default::default()
            })),
            "spec.lr_range_test.iterations: must be between 6 and 10000"
        );
        assert_eq!(
            err(&pb::JobSpec {
                kind: 9,
                ..minimal()
            }),
            "spec.kind: unknown value 9"
        );
    }

    #[test]
    fn auto_learning_rate_leaves_the_rate_unset() {
        let auto = |learning_rate: Option<f64>, kind: pb::JobKind| pb::JobSpec {
            kind: kind as i32,
            training: Some(pb::TrainingSpec {
                optimizer: Some(pb::Optimizer {
                    auto_learning_rate: true,
                    learning_rate,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..minimal()
        };
        let spec = JobSpec::from_proto(&auto(None, pb::JobKind::Train)).unwrap();
        assert!(spec.training.auto_learning_rate);
        assert_eq!(
            err(&auto(Some(0.1), pb::JobKind::Train)),
            "spec.training.optimizer.learning_rate: must be unset when auto_learning_rate is true"
        );
        assert_eq!(
            err(&auto(None, pb::JobKind::LrRangeTest)),
            "spec.training.optimizer.auto_learning_rate: applies to training jobs, not to JOB_KIND_LR_RANGE_TEST"
        );
    }

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
    fn init_defaults_follow_activation() {
        let mut spec = minimal();
        let layer = |a: pb::Activation| pb::HiddenLayer {
            units: 4,
            activation: a as i32,
            ..Default::default()
        };
        spec.model = Some(pb::ModelSpec {
            hidden_layers: vec![
                layer(pb::Activation::Relu),
                layer(pb::Activation::Selu),
                layer(pb::Activation::Tanh),
            ],
            ..Default::default()
        });
        let spec = JobSpec::from_proto(&spec).unwrap();
        let kinds: Vec<_> = spec.model.hidden.iter().map(|l| l.init.kind).collect();
        assert_eq!(kinds, [InitKind::He, InitKind::Lecun, InitKind::Glorot]);
        assert_eq!(
            spec.model.hidden[0].init.distribution,
            InitDistribution::Normal
        );
        assert_eq!(
            spec.model.hidden[2].init.distribution,
            InitDistribution::Uniform
        );
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

    /// One bad value per field of the training stack, each refused with its path.
    #[test]
    fn data_preprocessing_is_validated() {
        let data = |f: &dyn Fn(&mut pb::DataSpec)| {
            let mut s = minimal();
            f(s.data.as_mut().unwrap());
            s
        };
        let s = data(&|d| {
            d.categorical_columns = vec!["color".into()];
            d.feature_scaling = pb::Scaling::MinMax as i32;
            d.column_scaling = [
                ("age".to_string(), pb::Scaling::None as i32),
                ("h".to_string(), pb::Scaling::Default as i32),
            ]
            .into();
        });
        let spec = JobSpec::from_proto(&s).unwrap().data;
        assert_eq!(spec.categorical_columns, ["color"]);
        assert_eq!(spec.column_scaling["age"], Scaling::None);
        assert_eq!(
            spec.column_scaling["h"],
            Scaling::MinMax,
            "DEFAULT means feature_scaling"
        );
        type Edit<'a> = &'a dyn Fn(&mut pb::DataSpec);
        let cases: Vec<(Edit, &str)> = vec![
            (
                &|d| d.categorical_columns = vec!["y".into()],
                "spec.data.categorical_columns: \"y\" is a target column; class labels need no encoding",
            ),
            (
                &|d| d.categorical_columns = vec!["c".into(), "c".into()],
                "spec.data.categorical_columns[1]: \"c\" is listed twice",
            ),
            (
                &|d| {
                    d.categorical_columns = vec!["c".into()];
                    d.column_scaling = [("c".to_string(), 1)].into();
                },
                "spec.data.column_scaling[\"c\"]: a categorical column is one-hot encoded, never scaled",
            ),
            (
                &|d| d.column_scaling = [("y".to_string(), 1)].into(),
                "spec.data.column_scaling[\"y\"]: is a target column; use spec.data.target_scaling",
            ),
            (
                &|d| d.column_scaling = [("a".to_string(), 9)].into(),
                "spec.data.column_scaling[\"a\"]: unknown value 9",
            ),
        ];
        for (edit, want) in cases {
            assert_eq!(err(&data(edit)), want);
        }
    }

    /// Column lists come from the request: checked with sets, and bounded.
    #[test]
    fn long_column_lists_are_checked_quickly() {
        let names = |n: usize| (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>();
        let mut s = minimal();
        let data = s.data.as_mut().unwrap();
        data.feature_columns = names(MAX_COLUMNS);
        data.feature_columns.push("c0".into());
        let started = std::time::Instant::now();
        assert!(err(&s).starts_with("spec.data.feature_columns: at most 65536 columns"));
        let data = s.data.as_mut().unwrap();
        data.feature_columns.truncate(MAX_COLUMNS);
        data.feature_columns[MAX_COLUMNS - 1] = "c7".into();
        assert_eq!(
            err(&s),
            "spec.data.feature_columns[65535]: \"c7\" is listed twice"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn training_stack_errors_name_the_field() {
        use pb::{lr_schedule, optimizer};
        let training = |t: pb::TrainingSpec| {
            let mut s = minimal();
            s.training = Some(t);
            err(&s)
        };
        let opt = |kind: optimizer::Kind| pb::TrainingSpec {
            optimizer: Some(pb::Optimizer {
                kind: Some(kind),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sched = |kind: lr_schedule::Kind| pb::TrainingSpec {
            lr_schedule: Some(pb::LrSchedule {
                kind: Some(kind),
                warmup: None,
            }),
            ..Default::default()
        };
        let cases: Vec<(pb::TrainingSpec, &str)> = vec![
            (
                opt(optimizer::Kind::Adamw(pb::Adam {
                    beta1: Some(-0.1),
                    ..Default::default()
                })),
                "spec.training.optimizer.adamw.beta1: must be in [0, 1)",
            ),
            (
                opt(optimizer::Kind::Nadam(pb::Nadam {
                    momentum_decay: Some(-1.0),
                    ..Default::default()
                })),
                "spec.training.optimizer.nadam.momentum_decay: must be >= 0",
            ),
            (
                opt(optimizer::Kind::Rmsprop(pb::RmsProp {
                    alpha: Some(1.0),
                    ..Default::default()
                })),
                "spec.training.optimizer.rmsprop.alpha: must be in [0, 1)",
            ),
            (
                opt(optimizer::Kind::Adagrad(pb::Adagrad {
                    eps: Some(0.0),
                    ..Default::default()
                })),
                "spec.training.optimizer.adagrad.eps: must be > 0",
            ),
            (
                sched(lr_schedule::Kind::Step(pb::StepLr::default())),
                "spec.training.lr_schedule.step.step_size: required, at least 1",
            ),
            (
                sched(lr_schedule::Kind::Exponential(pb::ExponentialLr {
                    gamma: 1.5,
                })),
                "spec.training.lr_schedule.exponential.gamma: required, in (0, 1]",
            ),
            (
                sched(lr_schedule::Kind::ReduceOnPlateau(pb::ReduceLrOnPlateau {
                    monitor: "val_r2".into(),
                    ..Default::default()
                })),
                "spec.training.lr_schedule.reduce_on_plateau.monitor:",
            ),
            (
                sched(lr_schedule::Kind::OneCycle(pb::OneCycleLr::default())),
                "spec.training.lr_schedule.one_cycle.max_lr: must be > 0",
            ),
            (
                pb::TrainingSpec {
                    grad_clip: Some(pb::GradClip {
                        kind: Some(pb::grad_clip::Kind::Norm(pb::ClipByNorm {
                            max_norm: -1.0,
                            norm_type: None,
                        })),
                    }),
                    ..Default::default()
                },
                "spec.training.grad_clip.norm.max_norm: must be > 0",
            ),
            (
                pb::TrainingSpec {
                    loss: Some(pb::Loss {
                        label_smoothing: 1.0,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "spec.training.loss.label_smoothing: must be in [0, 1)",
            ),
            (
                pb::TrainingSpec {
                    loss: Some(pb::Loss {
                        pos_weight: Some(2.0),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "spec.training.loss.pos_weight: only applies to LOSS_BINARY_CROSS_ENTROPY",
            ),
            (
                pb::TrainingSpec {
                    early_stopping: Some(pb::EarlyStopping {
                        min_delta: -0.1,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "spec.training.early_stopping.min_delta: must be >= 0",
            ),
        ];
        for (t, expected) in cases {
            let e = training(t);
            assert!(e.starts_with(expected), "{e} (expected {expected})");
        }
    }

    #[test]
    fn swa_is_validated_with_field_paths() {
        let swa = |swa: pb::Swa, lr_schedule: Option<pb::LrSchedule>| {
            let mut s = minimal();
            s.training = Some(pb::TrainingSpec {
                epochs: 20,
                swa: Some(swa),
                lr_schedule,
                ..Default::default()
            });
            s
        };
        let ok = pb::Swa {
            start_epoch: 5,
            swa_lr: 0.05,
            ..Default::default()
        };
        let spec = JobSpec::from_proto(&swa(ok, None)).unwrap();
        assert_eq!(
            spec.training.swa,
            Some(SwaSpec {
                start_epoch: 5,
                swa_lr: 0.05,
                anneal_epochs: 10,
                anneal_cos: true,
            })
        );
        let cases = [
            (
                pb::Swa {
                    start_epoch: 0,
                    ..ok
                },
                "spec.training.swa.start_epoch: required, at least 1",
            ),
            (
                pb::Swa {
                    start_epoch: 20,
                    ..ok
                },
                "spec.training.swa.start_epoch: must be less than spec.training.epochs (20)",
            ),
            (
                pb::Swa { swa_lr: 0.0, ..ok },
                "spec.training.swa.swa_lr: must be > 0",
            ),
            (
                pb::Swa {
                    anneal_strategy: 7,
                    ..ok
                },
                "spec.training.swa.anneal_strategy: unknown value 7",
            ),
        ];
        for (bad, expected) in cases {
            assert_eq!(err(&swa(bad, None)), expected);
        }
        let one_cycle = pb::LrSchedule {
            kind: Some(pb::lr_schedule::Kind::OneCycle(pb::OneCycleLr {
                max_lr: 0.1,
                ..Default::default()
            })),
            warmup: None,
        };
        assert!(err(&swa(ok, Some(one_cycle))).starts_with("spec.training.swa: cannot be combined"));
    }

    #[test]
    fn optimizer_defaults_are_torchs() {
        let lr_of = |kind: pb::optimizer::Kind| {
            let mut s = minimal();
            s.training = Some(pb::TrainingSpec {
                optimizer: Some(pb::Optimizer {
                    kind: Some(kind),
                    ..Default::default()
                }),
                ..Default::default()
            });
            let o = JobSpec::from_proto(&s).unwrap().training.optimizer;
            (o.learning_rate, o.weight_decay)
        };
        use pb::optimizer::Kind;
        assert_eq!(lr_of(Kind::Sgd(Default::default())), (1e-3, 0.0));
        assert_eq!(lr_of(Kind::Adamw(Default::default())), (1e-3, 1e-2));
        assert_eq!(lr_of(Kind::Nadam(Default::default())), (2e-3, 0.0));
        assert_eq!(lr_of(Kind::Rmsprop(Default::default())), (1e-2, 0.0));
        assert_eq!(lr_of(Kind::Adamax(Default::default())), (2e-3, 0.0));
        assert_eq!(lr_of(Kind::Adagrad(Default::default())), (1e-2, 0.0));
    }
}
