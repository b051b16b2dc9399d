//! [`Mlp`]: the blocks and the output layer, their forward pass, and the
//! views of their parameters that health checks, exports and SWA read.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{activation, Device, Tensor};
use kiln_core::spec::{Activation, FanMode, Init, InitDistribution, InitKind, OutputActivation};

use super::activation::{activate, standard_dropout, AlphaDropout};
use super::batch_norm::BatchNorm1d;
use super::init::{initializer, linear};
use super::ModelArch;
use crate::backend::Backend;
use crate::Active;

/// The network: hidden blocks, then the linear output layer.
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
        let training = x.device().is_autodiff();
        for block in &self.blocks {
            x = block.forward(x, training);
        }
        self.output_forward(x, training)
    }

    fn output_forward(&self, x: Tensor<2>, training: bool) -> Tensor<2> {
        let out = linear_forward(&self.output, x, training);
        match self.output_activation {
            OutputActivation::Identity => out,
            OutputActivation::Tanh => activation::tanh(out),
            OutputActivation::Sigmoid => activation::sigmoid(out),
            OutputActivation::Softplus => activation::softplus(out, 1.0),
        }
    }

    /// Each linear layer's name, input side first: "hidden1", "hidden2", ...,
    /// "output".
    pub fn layer_names(&self) -> Vec<String> {
        (1..=self.blocks.len())
            .map(|i| format!("hidden{i}"))
            .chain(["output".to_string()])
            .collect()
    }

    /// Each linear layer's weight, in [`Mlp::layer_names`]' order.
    pub fn layer_weights(&self) -> Vec<&Param<Tensor<2>>> {
        self.blocks
            .iter()
            .map(|b| &b.linear.weight)
            .chain([&self.output.weight])
            .collect()
    }

    /// Whether each layer's activation is ReLU, whose units can die (output
    /// and gradient zero for every input); the output layer's is `false`.
    pub fn relu_layers(&self) -> Vec<bool> {
        self.blocks
            .iter()
            .map(|b| b.prelu.is_none() && b.activation == Activation::Relu)
            .chain([false])
            .collect()
    }

    /// Each layer's output for `x`, in [`Mlp::layer_names`]' order: every
    /// hidden block's after its activation (and dropout), then the network's.
    pub fn layer_outputs(&self, mut x: Tensor<2>) -> Vec<Tensor<2>> {
        let training = x.device().is_autodiff();
        let mut outputs = Vec::with_capacity(self.blocks.len() + 1);
        for block in &self.blocks {
            x = block.forward(x, training);
            outputs.push(x.clone());
        }
        outputs.push(self.output_forward(x, training));
        outputs
    }

    /// The first layer, input side first, whose weight or bias holds a NaN
    /// or an infinity.
    pub fn first_non_finite_layer(&self) -> Option<String> {
        let linears = self.blocks.iter().map(|b| &b.linear).chain([&self.output]);
        self.layer_names()
            .into_iter()
            .zip(linears)
            .find_map(|(name, layer)| {
                let bias_finite = layer
                    .bias
                    .as_ref()
                    .is_none_or(|b| all_finite(b.val().unsqueeze()));
                (!(all_finite(layer.weight.val()) && bias_finite)).then_some(name)
            })
    }
}

/// Whether every element of `t` is finite (one read from the device each
/// for NaN and infinity).
pub fn all_finite(t: Tensor<2>) -> bool {
    !t.clone().is_nan().any().into_scalar::<bool>() && !t.is_inf().any().into_scalar::<bool>()
}

/// A linear layer; in training, the backend's fused kernel when it has one
/// (libtorch: `addmm`).
fn linear_forward(layer: &Linear, x: Tensor<2>, training: bool) -> Tensor<2> {
    match training {
        true => Active::linear(layer, &x).unwrap_or_else(|| layer.forward(x)),
        false => layer.forward(x),
    }
}

impl Block {
    fn forward(&self, mut x: Tensor<2>, training: bool) -> Tensor<2> {
        x = linear_forward(&self.linear, x, training);
        if let Some(norm) = &self.norm {
            x = norm.forward(x);
        }
        x = match (&self.prelu, self.activation) {
            (Some(slope), _) => activation::prelu(x, slope.val()),
            (None, Activation::Relu) if training => {
                Active::relu(&x).unwrap_or_else(|| activation::relu(x))
            }
            (None, activation) => activate(activation, x),
        };
        if let Some(dropout) = &self.dropout {
            x = standard_dropout(dropout, x);
        }
        if let Some(dropout) = &self.alpha_dropout {
            x = dropout.forward(x);
        }
        x
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{assert_close, matrix, values};

    /// Linear as `addmm` and ReLU with `threshold_backward`, against burn's
    /// matmul + add and its ReLU: values and every gradient.
    #[test]
    fn libtorch_linear_and_relu_match_burn_ops() {
        let device = crate::device::cpu().autodiff();
        let layer = Linear {
            weight: Param::from_tensor(matrix(6, 4, 3, &device)),
            bias: Some(Param::from_tensor(matrix(1, 4, 4, &device).reshape([4]))),
        };
        let step = |fast: bool| {
            let x = matrix(9, 6, 5, &device).require_grad();
            let y = match fast {
                true => Active::relu(&Active::linear(&layer, &x).expect("addmm")).expect("relu"),
                false => activation::relu(layer.forward(x.clone())),
            };
            let grads = (y.clone() * matrix(9, 4, 6, &device)).sum().backward();
            let bias = layer.bias.as_ref().unwrap();
            [
                values(y),
                values(x.grad(&grads).unwrap()),
                values(layer.weight.val().grad(&grads).unwrap()),
                values(bias.val().grad(&grads).unwrap()),
            ]
        };
        let (fast, reference) = (step(true), step(false));
        for ((name, a), b) in ["output", "dx", "dweight", "dbias"]
            .iter()
            .zip(&fast)
            .zip(&reference)
        {
            assert_close(name, a, b, 1e-6);
        }
    }
}
