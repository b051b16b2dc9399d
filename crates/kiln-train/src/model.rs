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

/// A linear layer; in training on LibTorch, as one `addmm` operation.
fn linear_forward(layer: &Linear, x: Tensor<2>, training: bool) -> Tensor<2> {
    match training {
        true => libtorch_ops::linear(layer, &x).unwrap_or_else(|| layer.forward(x)),
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
                libtorch_ops::relu(&x).unwrap_or_else(|| activation::relu(x))
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

/// burn's `Dropout::forward` (active when its training flag is on and the
/// input is on an autodiff device), computed as ATen's `_dropout_impl` does:
/// the keep mask is scaled by 1 / (1 - p) first, then multiplies the input.
/// burn's own forward multiplies by the mask and then by the scale, one more
/// pass over the activations forward and one more backward. On the CPU the
/// noise is drawn by [`libtorch_ops::dropout_noise`].
fn standard_dropout<const D: usize>(dropout: &Dropout, x: Tensor<D>) -> Tensor<D> {
    if !dropout.training.is_enabled() || !x.device().is_autodiff() || dropout.prob == 0.0 {
        return x;
    }
    let keep = 1.0 - dropout.prob;
    // noise = empty_like(input).bernoulli_(1 - p); noise.div_(1 - p); input * noise
    let noise = libtorch_ops::dropout_noise(&x, keep).unwrap_or_else(|| {
        x.random_like(Distribution::Bernoulli(keep))
            .div_scalar(keep)
    });
    x * noise
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
        match libtorch_ops::batch_norm_train(self, &x) {
            Some(out) => out,
            None => self.train_composite(x),
        }
    }

    /// Training forward from burn's tensor operations: the path for batches
    /// of one row and for backends other than LibTorch.
    fn train_composite(&self, x: Tensor<2>) -> Tensor<2> {
        let device = x.device();
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

/// Training-time layers on libtorch's own kernels, each one autodiff
/// operation whose backward is the one torch's autograd runs: the linear map
/// as `addmm` (burn: a matmul, then a broadcast add of the bias), ReLU with
/// `threshold_backward` (burn: a comparison and a masked fill), BatchNorm1d
/// (below), and dropout's noise on the CPU. Fewer libtorch calls per step,
/// fewer passes over the activations, and torch's kernels. Inputs that are
/// not on the LibTorch autodiff backend take burn's operations.
///
/// BatchNorm1d: burn-tch has no batch-norm kernel. burn composes the
/// training forward of about a dozen tensor operations (two of them copies
/// of a transposed input), its backward of about twenty, and kiln's
/// running-statistics update took several more. libtorch's
/// `native_batch_norm` is what torch.nn.BatchNorm1d runs: one kernel that
/// normalizes with the batch statistics and updates the running mean and the
/// (unbiased) running variance. The backward is the closed form torch's
/// kernel evaluates, written as a few libtorch operations (the C API has no
/// `native_batch_norm_backward`). A batch of one row, for which the unbiased
/// variance is undefined, takes the burn-op path in [`BatchNorm1d::forward`].
#[allow(deprecated)] // burn-tch is deprecated in 0.22 (removed in 0.23) but is our backend.
mod libtorch_ops {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::libtorch::TchTensor;
    use burn::backend::{Autodiff, BackendTypes, LibTorch};
    use burn::tensor::Tensor;

    use burn::nn::Linear;

    use super::BatchNorm1d;

    type AdTorch = Autodiff<LibTorch, NoCheckpointing>;
    type AdTensor = <AdTorch as BackendTypes>::FloatTensorPrimitive;

    fn on_ad_torch<const D: usize>(t: Tensor<D>) -> Option<AdTensor> {
        t.try_into_primitive::<AdTorch>().ok()
    }

    /// `x @ weight + bias` as torch.nn.Linear's `addmm`.
    pub(super) fn linear(layer: &Linear, x: &Tensor<2>) -> Option<Tensor<2>> {
        let bias = on_ad_torch(layer.bias.as_ref()?.val())?;
        let x = on_ad_torch(x.clone())?;
        let weight = on_ad_torch(layer.weight.val())?;
        let output = bias
            .primitive()
            .tensor
            .f_addmm(&x.primitive().tensor, &weight.primitive().tensor)
            .ok()?;
        let output = TchTensor::new(output);
        let output = match AddMm
            .prepare::<NoCheckpointing>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((x.primitive().clone(), weight.primitive().clone()), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(output),
        };
        Some(Tensor::from_primitive::<AdTorch>(output))
    }

    #[derive(Debug)]
    struct AddMm;

    impl Backward<LibTorch, 3> for AddMm {
        /// The input and the weight (`[in, out]`).
        type State = (TchTensor, TchTensor);

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node_x, node_weight, node_bias] = ops.parents;
            let grad = grads.consume::<LibTorch>(&ops.node).tensor;
            let (x, weight) = ops.state;
            if let Some(node) = node_x {
                let dx = grad.mm(&weight.tensor.tr());
                grads.register::<LibTorch>(node.id, TchTensor::new(dx));
            }
            if let Some(node) = node_weight {
                let dw = x.tensor.tr().mm(&grad);
                grads.register::<LibTorch>(node.id, TchTensor::new(dw));
            }
            if let Some(node) = node_bias {
                let db = grad.sum_dim_intlist(0, false, None);
                grads.register::<LibTorch>(node.id, TchTensor::new(db));
            }
        }
    }

    /// Dropout's scaled keep mask (`bernoulli_(keep)` then `div_(keep)`) for
    /// a float32 CPU input, drawn in one pass by a xoshiro256++ stream
    /// (`SmallRng`) instead of libtorch's CPU `bernoulli_`, which draws a
    /// 64-bit number per element and was the largest cost after the matrix
    /// products in the wide benchmark. Each mask's stream is seeded from
    /// libtorch's generator, so `device.seed(seed)` still fixes every mask.
    /// An element is kept when a 32-bit uniform draw is below
    /// `keep * 2^32`; kept elements hold `1 / keep` as torch's do.
    pub(super) fn dropout_noise<const D: usize>(x: &Tensor<D>, keep: f64) -> Option<Tensor<D>> {
        use rand::{rngs::SmallRng, RngCore, SeedableRng};

        let x = on_ad_torch(x.clone())?;
        let input = &x.primitive().tensor;
        if input.device() != tch::Device::Cpu || input.kind() != tch::Kind::Float {
            return None;
        }
        let noise = tch::Tensor::empty(input.size(), (tch::Kind::Float, tch::Device::Cpu));
        let n = noise.numel();
        if n == 0 {
            return None;
        }
        let seed = tch::Tensor::randint(i64::MAX, [1], (tch::Kind::Int64, tch::Device::Cpu))
            .int64_value(&[0]);
        let mut rng = SmallRng::seed_from_u64(seed as u64);
        let threshold = (keep * 4_294_967_296.0) as u64;
        // noise.div_(keep): 1 / keep in float32, as the kernel computes it.
        let scale = 1.0f32 / keep as f32;
        // SAFETY: `noise` is a new contiguous float32 CPU tensor of n elements
        // that nothing else refers to yet.
        let values = unsafe { std::slice::from_raw_parts_mut(noise.data_ptr() as *mut f32, n) };
        for pair in values.chunks_mut(2) {
            let r = rng.next_u64();
            for (v, bits) in pair.iter_mut().zip([r & 0xffff_ffff, r >> 32]) {
                *v = if bits < threshold { scale } else { 0.0 };
            }
        }
        Some(Tensor::from_primitive::<AdTorch>(AdTensor::new(
            TchTensor::new(noise),
        )))
    }

    /// ReLU; its backward is `threshold_backward(grad, result, 0)`.
    pub(super) fn relu(x: &Tensor<2>) -> Option<Tensor<2>> {
        let x = on_ad_torch(x.clone())?;
        let output = TchTensor::new(x.primitive().tensor.f_relu().ok()?);
        let output = match Relu
            .prepare::<NoCheckpointing>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(output.clone(), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        };
        Some(Tensor::from_primitive::<AdTorch>(output))
    }

    #[derive(Debug)]
    struct Relu;

    impl Backward<LibTorch, 1> for Relu {
        /// The output.
        type State = TchTensor;

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node] = ops.parents;
            let grad = grads.consume::<LibTorch>(&ops.node).tensor;
            if let Some(node) = node {
                let dx = ops.state.tensor.threshold_backward(&grad, 0.0);
                grads.register::<LibTorch>(node.id, TchTensor::new(dx));
            }
        }
    }

    pub(super) fn batch_norm_train(bn: &BatchNorm1d, x: &Tensor<2>) -> Option<Tensor<2>> {
        if x.dims()[0] < 2 {
            return None;
        }
        let x = on_ad_torch(x.clone())?;
        let gamma = on_ad_torch(bn.gamma.val())?;
        let beta = on_ad_torch(bn.beta.val())?;
        let mean = on_ad_torch(bn.running_mean.value_sync())?;
        let var = on_ad_torch(bn.running_var.value_sync())?;
        // libtorch updates the running statistics in place: give it copies,
        // since the current ones may be shared (valid() snapshots share them).
        let running_mean = mean.primitive().tensor.copy();
        let running_var = var.primitive().tensor.copy();
        let (output, save_mean, save_invstd) = x
            .primitive()
            .tensor
            .f_native_batch_norm(
                Some(&gamma.primitive().tensor),
                Some(&beta.primitive().tensor),
                Some(&running_mean),
                Some(&running_var),
                true,
                bn.momentum,
                bn.eps,
            )
            .ok()?;
        let statistic =
            |t| Tensor::<1>::from_primitive::<AdTorch>(AdTensor::new(TchTensor::new(t)));
        bn.running_mean.update(statistic(running_mean));
        bn.running_var.update(statistic(running_var));

        let output = TchTensor::new(output);
        let output = match NativeBatchNorm
            .prepare::<NoCheckpointing>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                (
                    x.primitive().clone(),
                    gamma.primitive().clone(),
                    TchTensor::new(save_mean),
                    TchTensor::new(save_invstd),
                ),
                output,
            ),
            OpsKind::UnTracked(prep) => prep.finish(output),
        };
        Some(Tensor::from_primitive::<AdTorch>(output))
    }

    #[derive(Debug)]
    struct NativeBatchNorm;

    impl Backward<LibTorch, 3> for NativeBatchNorm {
        /// The input, gamma, and the batch mean and 1/sqrt(var + eps) that
        /// the forward kernel saved.
        type State = (TchTensor, TchTensor, TchTensor, TchTensor);

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node_x, node_gamma, node_beta] = ops.parents;
            let dy = grads.consume::<LibTorch>(&ops.node).tensor;
            let (x, gamma, mean, invstd) = ops.state;
            let (x, gamma, mean, invstd) = (x.tensor, gamma.tensor, mean.tensor, invstd.tensor);
            let n = x.size()[0] as f64;
            // xhat = (x - mean) * invstd; dbeta = sum(dy); dgamma = sum(dy * xhat)
            let xhat = (&x - &mean) * &invstd;
            let dbeta = dy.sum_dim_intlist(0, false, None);
            let dgamma = (&dy * &xhat).sum_dim_intlist(0, false, None);
            if let Some(node) = node_x {
                // dx = gamma * invstd * (dy - dbeta / n - xhat * dgamma / n)
                let mut dx = &dy - &dbeta / n;
                let _ = dx.f_addcmul_(&xhat, &(&dgamma / -n)).expect("addcmul_");
                let _ = dx.f_mul_(&(&gamma * &invstd)).expect("mul_");
                grads.register::<LibTorch>(node.id, TchTensor::new(dx));
            }
            if let Some(node) = node_gamma {
                grads.register::<LibTorch>(node.id, TchTensor::new(dgamma));
            }
            if let Some(node) = node_beta {
                grads.register::<LibTorch>(node.id, TchTensor::new(dbeta));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().expect("f32 tensor")
    }

    fn matrix(rows: usize, cols: usize, salt: usize, device: &Device) -> Tensor<2> {
        let data = (0..rows * cols)
            .map(|i| ((i * 37 + salt * 11) % 29) as f32 / 7.0 - 2.0 + (i % cols) as f32 * 0.3)
            .collect();
        Tensor::from_data(TensorData::new(data, [rows, cols]), device)
    }

    fn assert_close(what: &str, fast: &[f32], reference: &[f32], tol: f32) {
        assert_eq!(fast.len(), reference.len(), "{what}: length");
        for (i, (a, b)) in fast.iter().zip(reference).enumerate() {
            assert!(
                (a - b).abs() <= tol * (1.0 + b.abs()),
                "{what}[{i}]: libtorch path {a}, burn ops {b}"
            );
        }
    }

    /// BatchNorm1d's libtorch kernel path against burn's composed operations:
    /// output, the gradients of input, gamma and beta under a weighted sum,
    /// and the running statistics after the step.
    #[test]
    fn libtorch_batch_norm_matches_burn_ops() {
        let device = crate::device::cpu().autodiff();
        let (rows, features) = (12, 5);
        let step = |fast: bool| {
            let bn = BatchNorm1d::new(features, 0.1, 1e-5, &device);
            let x = matrix(rows, features, 1, &device).require_grad();
            let y = match fast {
                true => libtorch_ops::batch_norm_train(&bn, &x).expect("libtorch path"),
                false => bn.train_composite(x.clone()),
            };
            let grads = (y.clone() * matrix(rows, features, 2, &device))
                .sum()
                .backward();
            [
                values(y),
                values(x.grad(&grads).unwrap()),
                values(bn.gamma.val().grad(&grads).unwrap()),
                values(bn.beta.val().grad(&grads).unwrap()),
                values(bn.running_mean.value()),
                values(bn.running_var.value()),
            ]
        };
        let (fast, reference) = (step(true), step(false));
        let names = [
            "output",
            "dx",
            "dgamma",
            "dbeta",
            "running mean",
            "running var",
        ];
        for ((name, a), b) in names.iter().zip(&fast).zip(&reference) {
            assert_close(name, a, b, 1e-5);
        }
    }

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
                true => libtorch_ops::relu(&libtorch_ops::linear(&layer, &x).expect("addmm"))
                    .expect("relu"),
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

    /// Dropout's CPU noise: each element is 0 or 1/keep (float32, as torch
    /// computes it), about `keep` of them are kept, and the device seed fixes
    /// the mask.
    #[test]
    fn dropout_noise_keeps_its_share_and_follows_the_seed() {
        let device = crate::device::cpu().autodiff();
        let x = Tensor::<2>::ones([200, 500], &device);
        let keep = 0.7;
        let draw = |seed| {
            device.seed(seed);
            values(libtorch_ops::dropout_noise(&x, keep).expect("CPU float32 path"))
        };
        let (a, b, c) = (draw(3), draw(3), draw(4));
        assert_eq!(a, b, "the same seed gives the same mask");
        assert_ne!(a, c, "another seed gives another mask");
        let scale = 1.0f32 / keep as f32;
        assert!(a.iter().all(|&v| v == 0.0 || v == scale));
        let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / a.len() as f64;
        // 100 000 draws: the standard deviation of the share is 0.0015.
        assert!((kept - keep).abs() < 0.006, "kept {kept}, expected {keep}");
    }
}
