//! Training-time layers on libtorch's own kernels, each one autodiff
//! operation whose backward is the one torch's autograd runs: the linear map
//! as `addmm` (burn: a matmul, then a broadcast add of the bias), ReLU with
//! `threshold_backward` (burn: a comparison and a masked fill), BatchNorm1d
//! (below), and dropout's noise on the CPU. Fewer libtorch calls per step,
//! fewer passes over the activations, and torch's kernels. Inputs that are
//! not on the LibTorch autodiff backend take burn's operations.
//!
//! BatchNorm1d: burn-tch has no batch-norm kernel. burn composes the
//! training forward of about a dozen tensor operations (two of them copies
//! of a transposed input), its backward of about twenty, and kiln's
//! running-statistics update took several more. libtorch's
//! `native_batch_norm` is what torch.nn.BatchNorm1d runs: one kernel that
//! normalizes with the batch statistics and updates the running mean and the
//! (unbiased) running variance. The backward is the closed form torch's
//! kernel evaluates, written as a few libtorch operations (the C API has no
//! `native_batch_norm_backward`). A batch of one row, for which the unbiased
//! variance is undefined, takes the burn-op path (`crate::model::BatchNorm1d`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::libtorch::TchTensor;
use burn::backend::{Autodiff, BackendTypes, LibTorch};
use burn::nn::Linear;
use burn::tensor::Tensor;

use crate::backend::BatchNormLayer;

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
    let seed =
        tch::Tensor::randint(i64::MAX, [1], (tch::Kind::Int64, tch::Device::Cpu)).int64_value(&[0]);
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

pub(super) fn batch_norm_train(bn: &BatchNormLayer<'_>, x: &Tensor<2>) -> Option<Tensor<2>> {
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
    let statistic = |t| Tensor::<1>::from_primitive::<AdTorch>(AdTensor::new(TchTensor::new(t)));
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
