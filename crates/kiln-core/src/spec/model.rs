//! `spec.model`: the hidden layers (units, activation, initializer, dropout,
//! BatchNorm) and the output activation.

use kiln::v1 as pb;
use serde::{Deserialize, Serialize};

use super::check::{ensure, unknown_enum};
use super::Task;
use crate::error::{FieldError, Result};

/// The most units a hidden layer may have.
pub const MAX_UNITS: u32 = 65_536;
/// The most hidden layers a model may have.
pub const MAX_HIDDEN_LAYERS: usize = 64;

/// `spec.model`, validated: an MLP's hidden layers and output activation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The hidden layers, input side first.
    pub hidden: Vec<LayerSpec>,
    /// Applied to the output layer (regression only).
    pub output_activation: OutputActivation,
}

/// One hidden layer: Linear -> [BatchNorm] -> activation -> [dropout].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// Output width of the linear layer.
    pub units: usize,
    /// The nonlinearity after it.
    pub activation: Activation,
    /// How its weights are initialized.
    pub init: Init,
    /// Dropout probability in [0, 1); 0: none.
    pub dropout: f64,
    /// AlphaDropout (for SELU) instead of standard dropout.
    pub alpha_dropout: bool,
    /// BatchNorm's settings; `None`: no BatchNorm.
    pub batch_norm: Option<BatchNormSpec>,
}

/// A hidden layer's activation, with torch.nn's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Activation {
    /// torch.nn.ReLU.
    Relu,
    /// torch.nn.Tanh.
    Tanh,
    /// torch.nn.Sigmoid.
    Sigmoid,
    /// torch.nn.LeakyReLU.
    LeakyRelu {
        /// Slope for negative inputs.
        negative_slope: f64,
    },
    /// torch.nn.ELU.
    Elu {
        /// Scale of the negative part.
        alpha: f64,
    },
    /// torch.nn.SELU.
    Selu,
    /// torch.nn.GELU.
    Gelu,
    /// torch.nn.Softplus.
    Softplus,
    /// torch.nn.SiLU.
    Silu,
    /// torch.nn.RReLU: slope ~ U(lower, upper) in training, their mean in evaluation.
    RRelu {
        /// Lower bound of the random slope.
        lower: f64,
        /// Upper bound of the random slope.
        upper: f64,
    },
    /// torch.nn.PReLU with one learned slope per layer.
    PRelu {
        /// The slope's initial value.
        init: f64,
    },
}

/// torch.nn's defaults for the activations' parameters.
impl Activation {
    /// LeakyReLU's `negative_slope`.
    pub const DEFAULT_LEAKY_RELU_SLOPE: f64 = 0.01;
    /// ELU's `alpha`.
    pub const DEFAULT_ELU_ALPHA: f64 = 1.0;
    /// RReLU's `lower`.
    pub const DEFAULT_RRELU_LOWER: f64 = 1.0 / 8.0;
    /// RReLU's `upper`.
    pub const DEFAULT_RRELU_UPPER: f64 = 1.0 / 3.0;
    /// PReLU's `init`.
    pub const DEFAULT_PRELU_INIT: f64 = 0.25;
}

/// torch.nn.BatchNorm1d's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BatchNormSpec {
    /// Weight of the newest batch in the running statistics.
    pub momentum: f64,
    /// Added to the variance, for stability.
    pub eps: f64,
}

/// torch.nn.BatchNorm1d's defaults.
impl Default for BatchNormSpec {
    fn default() -> Self {
        Self {
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

/// The output layer's activation (regression; classification outputs logits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputActivation {
    /// None: the linear output.
    Identity,
    /// Outputs in (-1, 1).
    Tanh,
    /// Outputs in (0, 1).
    Sigmoid,
    /// Outputs above 0.
    Softplus,
}

/// How a layer's weights are initialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Init {
    /// Which scheme.
    pub kind: InitKind,
    /// Drawn from a uniform or a normal distribution.
    pub distribution: InitDistribution,
    /// Scaled by fan-in or fan-out.
    pub fan: FanMode,
}

/// The initialization schemes, by their variance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitKind {
    /// He (Kaiming): variance 2 / fan.
    He,
    /// LeCun: variance 1 / fan.
    Lecun,
    /// Glorot (Xavier): variance 2 / (fan_in + fan_out).
    Glorot,
}

/// The distribution weights are drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitDistribution {
    /// Uniform with the scheme's variance.
    Uniform,
    /// Normal with the scheme's variance.
    Normal,
}

impl InitDistribution {
    /// The distribution when unset: uniform for Glorot, normal for He and LeCun.
    pub fn default_for(kind: InitKind) -> InitDistribution {
        match kind {
            InitKind::Glorot => InitDistribution::Uniform,
            InitKind::He | InitKind::Lecun => InitDistribution::Normal,
        }
    }
}

/// Which fan the variance is scaled by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FanMode {
    /// The layer's inputs.
    In,
    /// The layer's outputs.
    Out,
}

pub(super) fn validate_model(model: Option<&pb::ModelSpec>, task: Task) -> Result<ModelSpec> {
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
    let activation = validate_activation(path, layer)?;
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
        Some(validate_batch_norm(path, layer)?)
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

/// A layer's `activation` with its `activation_params`, torch's defaults for
/// those unset.
fn validate_activation(path: &str, layer: &pb::HiddenLayer) -> Result<Activation> {
    let p = layer.activation_params.unwrap_or_default();
    let param = |name: &str| format!("{path}.activation_params.{name}");
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
    Ok(match pb::Activation::try_from(layer.activation) {
        Ok(pb::Activation::Default | pb::Activation::Relu) => Activation::Relu,
        Ok(pb::Activation::Tanh) => Activation::Tanh,
        Ok(pb::Activation::Sigmoid) => Activation::Sigmoid,
        Ok(pb::Activation::LeakyRelu) => Activation::LeakyRelu {
            negative_slope: p
                .negative_slope
                .unwrap_or(Activation::DEFAULT_LEAKY_RELU_SLOPE),
        },
        Ok(pb::Activation::Elu) => Activation::Elu {
            alpha: p.alpha.unwrap_or(Activation::DEFAULT_ELU_ALPHA),
        },
        Ok(pb::Activation::Selu) => Activation::Selu,
        Ok(pb::Activation::Gelu) => Activation::Gelu,
        Ok(pb::Activation::Softplus) => Activation::Softplus,
        Ok(pb::Activation::Silu) => Activation::Silu,
        Ok(pb::Activation::Rrelu) => {
            let (lower, upper) = (
                p.rrelu_lower.unwrap_or(Activation::DEFAULT_RRELU_LOWER),
                p.rrelu_upper.unwrap_or(Activation::DEFAULT_RRELU_UPPER),
            );
            ensure(
                lower.is_finite() && upper.is_finite() && 0.0 <= lower && lower <= upper,
                &param("rrelu_upper"),
                "needs 0 <= rrelu_lower <= rrelu_upper",
            )?;
            Activation::RRelu { lower, upper }
        }
        Ok(pb::Activation::Prelu) => {
            let init = p.prelu_init.unwrap_or(Activation::DEFAULT_PRELU_INIT);
            ensure(init.is_finite(), &param("prelu_init"), "must be finite")?;
            Activation::PRelu { init }
        }
        Err(_) => {
            return Err(unknown_enum(
                &format!("{path}.activation"),
                layer.activation,
            ))
        }
    })
}

/// A layer's `batch_norm_params`, BatchNorm1d's defaults for those unset.
fn validate_batch_norm(path: &str, layer: &pb::HiddenLayer) -> Result<BatchNormSpec> {
    let default = BatchNormSpec::default();
    let bn = layer.batch_norm_params.unwrap_or_default();
    let momentum = bn.momentum.unwrap_or(default.momentum);
    let eps = bn.eps.unwrap_or(default.eps);
    ensure(
        momentum > 0.0 && momentum <= 1.0,
        &format!("{path}.batch_norm_params.momentum"),
        "must be in (0, 1]",
    )?;
    ensure(
        eps > 0.0 && eps.is_finite(),
        &format!("{path}.batch_norm_params.eps"),
        "must be > 0",
    )?;
    Ok(BatchNormSpec { momentum, eps })
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
        Ok(pb::InitDistribution::Default) => InitDistribution::default_for(kind),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testing::minimal;
    use crate::spec::JobSpec;

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

    /// Parameters left unset get torch.nn's values.
    #[test]
    fn activation_and_batch_norm_defaults_are_torchs() {
        let layer = |a: pb::Activation| pb::HiddenLayer {
            units: 4,
            activation: a as i32,
            batch_norm: true,
            ..Default::default()
        };
        let mut spec = minimal();
        spec.model = Some(pb::ModelSpec {
            hidden_layers: vec![
                layer(pb::Activation::LeakyRelu),
                layer(pb::Activation::Elu),
                layer(pb::Activation::Rrelu),
                layer(pb::Activation::Prelu),
            ],
            ..Default::default()
        });
        let hidden = JobSpec::from_proto(&spec).unwrap().model.hidden;
        let activations: Vec<_> = hidden.iter().map(|l| l.activation).collect();
        assert_eq!(
            activations,
            [
                Activation::LeakyRelu {
                    negative_slope: 0.01
                },
                Activation::Elu { alpha: 1.0 },
                Activation::RRelu {
                    lower: 1.0 / 8.0,
                    upper: 1.0 / 3.0
                },
                Activation::PRelu { init: 0.25 },
            ]
        );
        assert_eq!(
            hidden[0].batch_norm,
            Some(BatchNormSpec {
                momentum: 0.1,
                eps: 1e-5
            })
        );
    }
}
