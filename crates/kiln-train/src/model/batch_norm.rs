//! BatchNorm1d with torch's semantics.

use burn::module::{Module, Param, RunningState};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

use crate::backend::{Backend, BatchNormLayer};
use crate::Active;

/// BatchNorm over `[batch, features]` with torch.nn.BatchNorm1d's semantics:
/// batch statistics (biased variance) normalize in training, and the running
/// variance is updated with the unbiased batch variance, as torch does (burn's
/// own BatchNorm updates it with the biased one).
#[derive(Module, Debug)]
pub struct BatchNorm1d {
    pub(super) gamma: Param<Tensor<1>>,
    pub(super) beta: Param<Tensor<1>>,
    pub(super) running_mean: RunningState<Tensor<1>>,
    pub(super) running_var: RunningState<Tensor<1>>,
    pub(super) momentum: f64,
    pub(super) eps: f64,
}

impl BatchNorm1d {
    /// Gamma 1, beta 0, running mean 0 and running variance 1 over `features`.
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

    /// Batch statistics on an autodiff device (updating the running ones),
    /// the running statistics elsewhere.
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
        match Active::batch_norm_train(&self.layer(), &x) {
            Some(out) => out,
            None => self.train_composite(x),
        }
    }

    /// The layer as the backend's training kernel sees it.
    fn layer(&self) -> BatchNormLayer<'_> {
        BatchNormLayer {
            gamma: &self.gamma,
            beta: &self.beta,
            running_mean: &self.running_mean,
            running_var: &self.running_var,
            momentum: self.momentum,
            eps: self.eps,
        }
    }

    /// Training forward from burn's tensor operations: the path for batches
    /// of one row and for backends without a batch-norm kernel.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_util::{assert_close, matrix, values};

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
                true => Active::batch_norm_train(&bn.layer(), &x).expect("libtorch path"),
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
}
