//! The network a spec describes: blocks of Linear -> [BatchNorm] -> activation
//! -> [dropout], then a linear output layer.
//!
//! Training behaviour (batch statistics, dropout) follows the device: a module
//! on an autodiff device trains, the same module after `valid()` evaluates.

use burn::module::{Module, Param, RunningState};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear};
use burn::tensor::{activation, Device, Distribution, Tensor};
use kiln_core::spec::{
    Activation, FanMode, Init, InitDistribution, InitKind, LayerSpec, OutputActivation, Task,
};
use serde::{Deserialize, Serialize};

/// Everything needed to rebuild the network's shape (weights are stored apart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelArch {
    pub task: Task,
    pub inputs: usize,
    pub hidden: Vec<LayerSpec>,
    /// Output units: targets for regression, 1 for binary, classes for multi-class.
    pub outputs: usize,
    pub output_activation: OutputActivation,
}

impl ModelArch {
    /// Output units for a task with `outputs` targets or classes.
    pub fn output_units(task: Task, outputs: usize) -> usize {
        match task {
            Task::Binary => 1,
            Task::Regression | Task::Multiclass => outputs,
        }
    }
}

#[derive(Module, Debug)]
pub struct Mlp {
    blocks: Vec<Block>,
    output: Linear,
    #[module(skip)]
    output_activation: OutputActivation,
}

#[derive(Module, Debug)]
struct Block {
    linear: Linear,
    norm: Option<BatchNorm1d>,
    dropout: Option<Dropout>,
    alpha_dropout: Option<AlphaDropout>,
    /// PReLU's learned slope.
    prelu: Option<Param<Tensor<1>>>,
    #[module(skip)]
    activation: Activation,
}

impl Mlp {
    /// A freshly initialized network on `device` (seed the device first for
    /// reproducible weights).
    pub fn new(arch: &ModelArch, device: &Device) -> Self {
        let mut width = arch.inputs;
        let blocks = arch
            .hidden
            .iter()
            .map(|layer| {
                let block = Block {
                    linear: linear(width, layer.units, &initializer(layer.init), device),
                    norm: layer
                        .batch_norm
                        .map(|bn| BatchNorm1d::new(layer.units, bn.momentum, bn.eps, device)),
                    dropout: (layer.dropout > 0.0 && !layer.alpha_dropout)
                        .then(|| DropoutConfig::new(layer.dropout).init()),
                    alpha_dropout: (layer.dropout > 0.0 && layer.alpha_dropout)
                        .then(|| AlphaDropout::new(layer.dropout)),
                    prelu: match layer.activation {
                        Activation::PRelu { init } => {
                            Some(Param::from_tensor(Tensor::full([1], init, device)))
                        }
                        _ => None,
                    },
                    activation: layer.activation,
                };
                width = layer.units;
                block
            })
            .collect();
        // The output layer uses Glorot uniform (Keras' default for Dense).
        let glorot = Init {
            kind: InitKind::Glorot,
            distribution: InitDistribution::Uniform,
            fan: FanMode::In,
        };
        Self {
            blocks,
            output: linear(width, arch.outputs, &initializer(glorot), device),
            output_activation: arch.output_activation,
        }
    }

    /// Logits for classification; for regression, the values (in scaled
    /// target units) after the output activation, since the loss is taken on them.
    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        for block in &self.blocks {
            x = block.linear.forward(x);
            if let Some(norm) = &block.norm {
                x = norm.forward(x);
            }
            x = match &block.prelu {
                Some(slope) => activation::prelu(x, slope.val()),
                None => activate(block.activation, x),
            };
            if let Some(dropout) = &block.dropout {
                x = dropout.forward(x);
            }
            if let Some(dropout) = &block.alpha_dropout {
                x = dropout.forward(x);
            }
        }
        let out = self.output.forward(x);
        match self.output_activation {
            OutputActivation::Identity => out,
            OutputActivation::Tanh => activation::tanh(out),
            OutputActivation::Sigmoid => activation::sigmoid(out),
            OutputActivation::Softplus => activation::softplus(out, 1.0),
        }
    }
}

impl Mlp {
    /// Each linear layer's weight (`[in, out]`, row-major) and bias, input
    /// side first, the output layer last.
    pub fn linear_parameters(&self) -> Vec<(Vec<f32>, Vec<f32>)> {
        let read = |t: Tensor<2>| t.into_data().try_into_vec::<f32>().expect("f32 weights");
        self.blocks
            .iter()
            .map(|b| &b.linear)
            .chain([&self.output])
            .map(|l| {
                let bias = l.bias.as_ref().map(|b| b.val().unsqueeze::<2>()).map(read);
                (read(l.weight.val()), bias.unwrap_or_default())
            })
            .collect()
    }
}

/// Helpers for SWA (crate::swa): the trainable parameters in a fixed order,
/// and BatchNorm's running statistics and momentum.
impl Mlp {
    /// Every trainable parameter (not BatchNorm's running statistics),
    /// flattened, in a fixed order: per block the linear weight and bias,
    /// BatchNorm's gamma and beta, PReLU's slope; then the output layer.
    pub fn trainable_parameters(&self) -> Vec<Tensor<1>> {
        let mut out = Vec::new();
        let _ = self.clone().map_trainable(&mut |_, t| {
            out.push(t.clone());
            t
        });
        out
    }

    /// Replaces trainable parameter `i` (flattened, in the order of
    /// [`Mlp::trainable_parameters`]) with `f(i, value)`. Parameter ids stay.
    pub(crate) fn map_trainable(
        mut self,
        f: &mut dyn FnMut(usize, Tensor<1>) -> Tensor<1>,
    ) -> Self {
        let mut i = 0;
        for block in self.blocks.iter_mut() {
            map_linear(&mut block.linear, &mut i, f);
            if let Some(norm) = block.norm.as_mut() {
                norm.gamma = map_param(norm.gamma.clone(), &mut i, f);
                norm.beta = map_param(norm.beta.clone(), &mut i, f);
            }
            if let Some(slope) = block.prelu.take() {
                block.prelu = Some(map_param(slope, &mut i, f));
            }
        }
        map_linear(&mut self.output, &mut i, f);
        self
    }

    pub(crate) fn has_batch_norm(&self) -> bool {
        self.blocks.iter().any(|b| b.norm.is_some())
    }

    /// torch's `reset_running_stats`: running mean 0, running variance 1.
    pub(crate) fn reset_bn_stats(&self) {
        for norm in self.blocks.iter().filter_map(|b| b.norm.as_ref()) {
            let mean = norm.running_mean.value();
            norm.running_mean.update(mean.zeros_like());
            let var = norm.running_var.value();
            norm.running_var.update(var.ones_like());
        }
    }

    /// Each BatchNorm's momentum, input side first.
    pub(crate) fn bn_momenta(&self) -> Vec<f64> {
        self.blocks
            .iter()
            .filter_map(|b| b.norm.as_ref().map(|n| n.momentum))
            .collect()
    }

    /// Sets the BatchNorms' momenta: one value for all, or one per BatchNorm.
    pub(crate) fn with_bn_momentum(mut self, momenta: &[f64]) -> Self {
        let norms = self.blocks.iter_mut().filter_map(|b| b.norm.as_mut());
        for (i, norm) in norms.enumerate() {
            norm.momentum = if momenta.len() == 1 {
                momenta[0]
            } else {
                momenta[i]
            };
        }
        self
    }
}

fn map_param<const D: usize>(
    p: Param<Tensor<D>>,
    i: &mut usize,
    f: &mut dyn FnMut(usize, Tensor<1>) -> Tensor<1>,
) -> Param<Tensor<D>> {
    let index = *i;
    *i += 1;
    p.map(|t| {
        let dims = t.dims();
        let n = t.shape().num_elements();
        f(index, t.reshape([n])).reshape(dims)
    })
}

fn map_linear(l: &mut Linear, i: &mut usize, f: &mut dyn FnMut(usize, Tensor<1>) -> Tensor<1>) {
    l.weight = map_param(l.weight.clone(), i, f);
    if let Some(bias) = l.bias.take() {
        l.bias = Some(map_param(bias, i, f));
    }
}

pub fn activate<const D: usize>(act: Activation, x: Tensor<D>) -> Tensor<D> {
    match act {
        Activation::Relu => activation::relu(x),
        Activation::Tanh => activation::tanh(x),
        Activation::Sigmoid => activation::sigmoid(x),
        Activation::LeakyRelu { negative_slope } => activation::leaky_relu(x, negative_slope),
        Activation::Elu { alpha } => activation::elu(x, alpha),
        Activation::Selu => activation::selu(x),
        Activation::Gelu => activation::gelu(x),
        Activation::Softplus => activation::softplus(x, 1.0),
        Activation::Silu => activation::silu(x),
        Activation::RRelu { lower, upper } => rrelu(x, lower, upper),
        // A fixed slope; the Mlp applies its learned one.
        Activation::PRelu { init } => activation::leaky_relu(x, init),
    }
}

/// torch.nn.RReLU: in training each negative element gets its own slope drawn
/// from U(lower, upper); in evaluation the slope is their mean.
fn rrelu<const D: usize>(x: Tensor<D>, lower: f64, upper: f64) -> Tensor<D> {
    if !x.device().is_autodiff() {
        return activation::leaky_relu(x, (lower + upper) / 2.0);
    }
    let slope = x.random_like(Distribution::Uniform(lower, upper));
    let negative = x.clone().lower_elem(0.0);
    x.clone().mask_where(negative, x * slope)
}

/// torch.nn.AlphaDropout: dropped units are set to SELU's negative saturation
/// and an affine map restores zero mean and unit variance (ATen's
/// `_dropout_impl` with alpha_dropout). Active only in training.
#[derive(Module, Debug)]
pub struct AlphaDropout {
    prob: f64,
}

impl AlphaDropout {
    pub fn new(prob: f64) -> Self {
        Self { prob }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if !x.device().is_autodiff() || self.prob == 0.0 {
            return x;
        }
        const ALPHA: f64 = 1.758_099_340_847_376_6;
        let p = self.prob;
        let a = 1.0 / ((ALPHA * ALPHA * p + 1.0) * (1.0 - p)).sqrt();
        let keep = x.random_like(Distribution::Bernoulli(1.0 - p));
        let b = keep
            .clone()
            .sub_scalar(1.0)
            .mul_scalar(ALPHA * a)
            .add_scalar(ALPHA * a * p);
        x * keep.mul_scalar(a) + b
    }
}

/// torch.nn.init semantics: He = Kaiming with gain sqrt(2), LeCun = Kaiming
/// with gain 1, Glorot = Xavier with gain 1. burn's formulas match torch's
/// (bound = gain * sqrt(3 / fan), std = gain / sqrt(fan)).
pub fn initializer(init: Init) -> Initializer {
    let fan_out_only = init.fan == FanMode::Out;
    let gain = match init.kind {
        InitKind::He => 2f64.sqrt(),
        InitKind::Lecun | InitKind::Glorot => 1.0,
    };
    match (init.kind, init.distribution) {
        (InitKind::Glorot, InitDistribution::Uniform) => Initializer::XavierUniform { gain },
        (InitKind::Glorot, InitDistribution::Normal) => Initializer::XavierNormal { gain },
        (_, InitDistribution::Uniform) => Initializer::KaimingUniform { gain, fan_out_only },
        (_, InitDistribution::Normal) => Initializer::KaimingNormal { gain, fan_out_only },
    }
}

/// A Linear layer with the given weight initializer and a zero bias (burn's
/// LinearConfig would draw the bias from the weight initializer).
fn linear(d_in: usize, d_out: usize, init: &Initializer, device: &Device) -> Linear {
    Linear {
        // burn stores the weight as [d_in, d_out]: fan_in is d_in.
        weight: init.init_with([d_in, d_out], Some(d_in), Some(d_out), device),
        bias: Some(Initializer::Zeros.init([d_out], device)),
    }
}

/// BatchNorm over `[batch, features]` with torch.nn.BatchNorm1d's semantics:
/// batch statistics (biased variance) normalize in training, and the running
/// variance is updated with the unbiased batch variance, as torch does (burn's
/// own BatchNorm updates it with the biased one).
#[derive(Module, Debug)]
pub struct BatchNorm1d {
    gamma: Param<Tensor<1>>,
    beta: Param<Tensor<1>>,
    running_mean: RunningState<Tensor<1>>,
    running_var: RunningState<Tensor<1>>,
    momentum: f64,
    eps: f64,
}

impl BatchNorm1d {
    pub fn new(features: usize, momentum: f64, eps: f64, device: &Device) -> Self {
        Self {
            gamma: Initializer::Ones.init([features], device),
            beta: Initializer::Zeros.init([features], device),
            running_mean: RunningState::new(Tensor::zeros([features], device)),
            running_var: RunningState::new(Tensor::ones([features], device)),
            momentum,
            eps,
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let device = x.device();
        if !device.is_autodiff() {
            return burn::tensor::module::batch_norm(
                x,
                self.gamma.val(),
                self.beta.val(),
                self.running_mean.value().to_device(&device),
                self.running_var.value().to_device(&device),
                self.eps,
            );
        }
        let n = x.dims()[0] as f64;
        let out =
            burn::tensor::module::batch_norm_train(x, self.gamma.val(), self.beta.val(), self.eps);
        let unbiased = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
        let m = self.momentum;
        let mean = self.running_mean.value_sync().to_device(&device);
        let var = self.running_var.value_sync().to_device(&device);
        self.running_mean
            .update((mean.mul_scalar(1.0 - m) + out.mean.detach().mul_scalar(m)).detach());
        self.running_var.update(
            (var.mul_scalar(1.0 - m) + out.variance.detach().mul_scalar(m * unbiased)).detach(),
        );
        out.output
    }
}
