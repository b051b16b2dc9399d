//! Activations and dropout with torch.nn's semantics.

use burn::module::Module;
use burn::nn::Dropout;
use burn::tensor::{activation, Distribution, Tensor};
use kiln_core::spec::Activation;

use crate::backend::Backend;
use crate::Active;

/// `act` applied elementwise; RReLU draws its slopes in training.
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
/// noise is drawn by the backend's kernel when it has one.
pub(super) fn standard_dropout<const D: usize>(dropout: &Dropout, x: Tensor<D>) -> Tensor<D> {
    if !dropout.training.is_enabled() || !x.device().is_autodiff() || dropout.prob == 0.0 {
        return x;
    }
    let keep = 1.0 - dropout.prob;
    // noise = empty_like(input).bernoulli_(1 - p); noise.div_(1 - p); input * noise
    let noise = Active::dropout_noise(&x, keep).unwrap_or_else(|| {
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
    /// Drops each unit with probability `prob`.
    pub fn new(prob: f64) -> Self {
        Self { prob }
    }

    /// Applies the dropout on an autodiff device; elsewhere `x` is returned.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::values;

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
            values(Active::dropout_noise(&x, keep).expect("CPU float32 path"))
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
