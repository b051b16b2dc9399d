//! The job spec as plain Rust types with every default filled in.
//!
//! `JobSpec::from_proto` is the one place where a `kiln.v1.JobSpec` is checked;
//! each error names the field path, e.g. `spec.training.batch_size: must be at least 1`.

use kiln::v1 as pb;
use serde::{Deserialize, Serialize};

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
    pub batch_norm: Option<BatchNormSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Activation {
    Relu,
    Tanh,
    Sigmoid,
    LeakyRelu { negative_slope: f64 },
    Elu { alpha: f64 },
    Selu,
    Gelu,
    Softplus,
    Silu,
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
    pub loss: LossKind,
    pub optimizer: OptimizerSpec,
    pub epochs: u32,
    pub batch_size: u32,
    pub early_stopping: Option<EarlyStoppingSpec>,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    Mse,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    pub patience: u32,
    pub min_delta: f64,
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
        })
    }
}

fn unknown_enum(field: &str, value: i32) -> FieldError {
    FieldError::new(field, format!("unknown value {value}"))
}

fn validate_model_name(name: &str) -> Result<Option<String>> {
    if name.is_empty() {
        return Ok(None);
    }
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok_chars || name.len() > MAX_MODEL_NAME_LEN {
        return Err(FieldError::new(
            "spec.model_name",
            format!("must be 1 to {MAX_MODEL_NAME_LEN} letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(Some(name.to_string()))
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
    if let Some(c) = data
        .feature_columns
        .iter()
        .find(|c| data.target_columns.contains(c))
    {
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
    let feature_scaling = scaling("spec.data.feature_scaling", data.feature_scaling)?;
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
    })
}

fn check_unique(field: &str, names: &[String]) -> Result<()> {
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                "must not be empty",
            ));
        }
        if names[..i].contains(name) {
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
    if layer.units == 0 || layer.units > MAX_UNITS {
        return Err(FieldError::new(
            format!("{path}.units"),
            format!("must be in [1, {MAX_UNITS}]"),
        ));
    }
    let params = layer.activation_params.unwrap_or_default();
    let activation = match pb::Activation::try_from(layer.activation) {
        Ok(pb::Activation::Default | pb::Activation::Relu) => Activation::Relu,
        Ok(pb::Activation::Tanh) => Activation::Tanh,
        Ok(pb::Activation::Sigmoid) => Activation::Sigmoid,
        Ok(pb::Activation::LeakyRelu) => Activation::LeakyRelu {
            negative_slope: params.negative_slope.unwrap_or(0.01),
        },
        Ok(pb::Activation::Elu) => Activation::Elu {
            alpha: params.alpha.unwrap_or(1.0),
        },
        Ok(pb::Activation::Selu) => Activation::Selu,
        Ok(pb::Activation::Gelu) => Activation::Gelu,
        Ok(pb::Activation::Softplus) => Activation::Softplus,
        Ok(pb::Activation::Silu) => Activation::Silu,
        Err(_) => {
            return Err(unknown_enum(
                &format!("{path}.activation"),
                layer.activation,
            ))
        }
    };
    let slope_ok = params
        .negative_slope
        .is_none_or(|s| s.is_finite() && s >= 0.0);
    if !slope_ok {
        return Err(FieldError::new(
            format!("{path}.activation_params.negative_slope"),
            "must be finite and >= 0",
        ));
    }
    if !params.alpha.is_none_or(|a| a.is_finite() && a > 0.0) {
        return Err(FieldError::new(
            format!("{path}.activation_params.alpha"),
            "must be finite and > 0",
        ));
    }
    if !(0.0..1.0).contains(&layer.dropout) {
        return Err(FieldError::new(
            format!("{path}.dropout"),
            "must be in [0, 1)",
        ));
    }
    let batch_norm = if layer.batch_norm {
        let p = layer.batch_norm_params.unwrap_or_default();
        let momentum = p.momentum.unwrap_or(0.1);
        let eps = p.eps.unwrap_or(1e-5);
        if !(momentum > 0.0 && momentum <= 1.0) {
            return Err(FieldError::new(
                format!("{path}.batch_norm_params.momentum"),
                "must be in (0, 1]",
            ));
        }
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(FieldError::new(
                format!("{path}.batch_norm_params.eps"),
                "must be > 0",
            ));
        }
        Some(BatchNormSpec { momentum, eps })
    } else {
        None
    };
    let init = validate_init(
        &format!("{path}.initializer"),
        layer.initializer.as_ref(),
        activation,
    )?;
    Ok(LayerSpec {
        units: layer.units as usize,
        activation,
        init,
        dropout: layer.dropout,
        batch_norm,
    })
}

/// The guide's default initializer for an activation (DESIGN.md).
pub fn default_init_kind(activation: Activation) -> InitKind {
    match activation {
        Activation::Relu | Activation::LeakyRelu { .. } => InitKind::He,
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
    if epochs > MAX_EPOCHS {
        return Err(FieldError::new(
            "spec.training.epochs",
            format!("at most {MAX_EPOCHS}"),
        ));
    }
    let batch_size = if t.batch_size == 0 { 32 } else { t.batch_size };
    if batch_size > MAX_BATCH_SIZE {
        return Err(FieldError::new(
            "spec.training.batch_size",
            format!("at most {MAX_BATCH_SIZE}"),
        ));
    }
    let loss = validate_loss(t.loss.as_ref(), task)?;
    let optimizer = validate_optimizer(t.optimizer.as_ref())?;
    // The only schedule so far is the constant one: an unset or empty
    // lr_schedule, or `constant`, all mean the optimizer's learning rate.
    let early_stopping = t
        .early_stopping
        .as_ref()
        .map(|es| validate_early_stopping(es, task))
        .transpose()?;
    Ok(TrainingSpec {
        loss,
        optimizer,
        epochs,
        batch_size,
        early_stopping,
        seed: t.seed,
    })
}

fn validate_loss(loss: Option<&pb::Loss>, task: Task) -> Result<LossKind> {
    let kind = loss.map_or(0, |l| l.kind);
    let chosen = match pb::LossKind::try_from(kind) {
        Ok(pb::LossKind::LossDefault) => match task {
            Task::Regression => LossKind::Mse,
            Task::Binary => LossKind::BinaryCrossEntropy,
            Task::Multiclass => LossKind::CrossEntropy,
        },
        Ok(pb::LossKind::LossMse) => LossKind::Mse,
        Ok(pb::LossKind::LossCrossEntropy) => LossKind::CrossEntropy,
        Ok(pb::LossKind::LossBinaryCrossEntropy) => LossKind::BinaryCrossEntropy,
        Err(_) => return Err(unknown_enum("spec.training.loss.kind", kind)),
    };
    let fits = match chosen {
        LossKind::Mse => task == Task::Regression,
        LossKind::CrossEntropy => task == Task::Multiclass,
        LossKind::BinaryCrossEntropy => task == Task::Binary,
    };
    if !fits {
        return Err(FieldError::new(
            "spec.training.loss.kind",
            format!("{chosen:?} does not fit task {task:?}"),
        ));
    }
    Ok(chosen)
}

fn validate_optimizer(opt: Option<&pb::Optimizer>) -> Result<OptimizerSpec> {
    let default = pb::Optimizer::default();
    let opt = opt.unwrap_or(&default);
    let kind = match &opt.kind {
        None => OptimizerKind::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            amsgrad: false,
        },
        Some(pb::optimizer::Kind::Adam(a)) => {
            let beta1 = a.beta1.unwrap_or(0.9);
            let beta2 = a.beta2.unwrap_or(0.999);
            let eps = a.eps.unwrap_or(1e-8);
            for (name, beta) in [("beta1", beta1), ("beta2", beta2)] {
                if !(0.0..1.0).contains(&beta) {
                    return Err(FieldError::new(
                        format!("spec.training.optimizer.adam.{name}"),
                        "must be in [0, 1)",
                    ));
                }
            }
            if !(eps > 0.0 && eps.is_finite()) {
                return Err(FieldError::new(
                    "spec.training.optimizer.adam.eps",
                    "must be > 0",
                ));
            }
            OptimizerKind::Adam {
                beta1,
                beta2,
                eps,
                amsgrad: a.amsgrad,
            }
        }
        Some(pb::optimizer::Kind::Sgd(s)) => {
            if !(s.momentum >= 0.0 && s.momentum.is_finite()) {
                return Err(FieldError::new(
                    "spec.training.optimizer.sgd.momentum",
                    "must be >= 0",
                ));
            }
            if !(0.0..=1.0).contains(&s.dampening) {
                return Err(FieldError::new(
                    "spec.training.optimizer.sgd.dampening",
                    "must be in [0, 1]",
                ));
            }
            if s.nesterov && (s.momentum <= 0.0 || s.dampening != 0.0) {
                return Err(FieldError::new(
                    "spec.training.optimizer.sgd.nesterov",
                    "needs momentum > 0 and dampening 0 (as torch.optim.SGD)",
                ));
            }
            OptimizerKind::Sgd {
                momentum: s.momentum,
                dampening: s.dampening,
                nesterov: s.nesterov,
            }
        }
    };
    let default_lr = match kind {
        OptimizerKind::Sgd { .. } => 1e-2,
        _ => 1e-3,
    };
    let learning_rate = opt.learning_rate.unwrap_or(default_lr);
    if !(learning_rate > 0.0 && learning_rate.is_finite()) {
        return Err(FieldError::new(
            "spec.training.optimizer.learning_rate",
            "must be > 0",
        ));
    }
    if !(opt.weight_decay >= 0.0 && opt.weight_decay.is_finite()) {
        return Err(FieldError::new(
            "spec.training.optimizer.weight_decay",
            "must be >= 0",
        ));
    }
    Ok(OptimizerSpec {
        learning_rate,
        weight_decay: opt.weight_decay,
        kind,
    })
}

fn validate_early_stopping(es: &pb::EarlyStopping, task: Task) -> Result<EarlyStoppingSpec> {
    let monitor = if es.monitor.is_empty() {
        Metric::ValLoss
    } else {
        let known = Metric::ALL.iter().copied().find(|m| m.name() == es.monitor);
        match known {
            Some(m) if m.applies_to(task) => m,
            _ => {
                let names: Vec<_> = Metric::ALL
                    .iter()
                    .filter(|m| m.applies_to(task))
                    .map(|m| m.name())
                    .collect();
                return Err(FieldError::new(
                    "spec.training.early_stopping.monitor",
                    format!(
                        "\"{}\" is not a metric of this task; one of {}",
                        es.monitor,
                        names.join(", ")
                    ),
                ));
            }
        }
    };
    if !(es.min_delta >= 0.0 && es.min_delta.is_finite()) {
        return Err(FieldError::new(
            "spec.training.early_stopping.min_delta",
            "must be >= 0",
        ));
    }
    Ok(EarlyStoppingSpec {
        monitor,
        patience: es.patience.unwrap_or(10),
        min_delta: es.min_delta,
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
    fn defaults_are_filled_in() {
        let spec = JobSpec::from_proto(&minimal()).unwrap();
        assert_eq!(spec.training.epochs, 100);
        assert_eq!(spec.training.batch_size, 32);
        assert_eq!(spec.training.loss, LossKind::CrossEntropy);
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
            }),
            ..Default::default()
        });
        assert!(err(&s).starts_with("spec.training.loss.kind:"));
    }
}
