//! kiln on libtorch (burn-tch and tch): the only place that names them.
//!
//! [`TorchBackend`] implements the crate's [`Backend`] seam: libtorch's
//! devices, and fast paths that run torch's own kernels behind burn's
//! tensors. Each fast path is one autodiff operation whose backward is the
//! one torch's autograd runs (or, for Adam, torch.optim's in-place kernels),
//! so it is both cheaper than burn's composed operations and closer to the
//! PyTorch reference: fewer libtorch calls per step, fewer passes over the
//! activations, and torch's rounding. Inputs that are not on the LibTorch
//! (autodiff) backend are declined and take burn's operations.

// burn-tch is deprecated in burn 0.22 (removed in 0.23) but is our backend;
// this folder is what a move to another backend replaces.
#![allow(deprecated)]

mod activations;
mod device;
mod loss;
mod optim;

use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor};

use crate::backend::{AdamMoments, AdamOutcome, AdamSettings, Backend, BatchNormLayer};

/// libtorch through burn-tch.
pub(crate) struct TorchBackend;

impl Backend for TorchBackend {
    fn cpu() -> Device {
        device::cpu()
    }

    fn cuda(index: usize) -> Device {
        device::cuda(index)
    }

    fn cuda_device_count() -> usize {
        device::cuda_device_count()
    }

    fn set_threads(threads: usize) {
        device::set_threads(threads)
    }

    fn is_out_of_memory(message: &str) -> bool {
        device::is_out_of_memory(message)
    }

    fn linear(layer: &Linear, x: &Tensor<2>) -> Option<Tensor<2>> {
        activations::linear(layer, x)
    }

    fn relu(x: &Tensor<2>) -> Option<Tensor<2>> {
        activations::relu(x)
    }

    fn dropout_noise<const D: usize>(x: &Tensor<D>, keep: f64) -> Option<Tensor<D>> {
        activations::dropout_noise(x, keep)
    }

    fn batch_norm_train(layer: &BatchNormLayer<'_>, x: &Tensor<2>) -> Option<Tensor<2>> {
        activations::batch_norm_train(layer, x)
    }

    fn cross_entropy(
        logits: &Tensor<2>,
        targets: &Tensor<1, Int>,
        class_weights: Option<&Tensor<1>>,
    ) -> Option<Tensor<1>> {
        loss::cross_entropy(logits, targets, class_weights)
    }

    fn adam_step<const D: usize>(
        settings: &AdamSettings,
        param: Tensor<D>,
        grad: Tensor<D>,
        state: Option<AdamMoments<D>>,
    ) -> AdamOutcome<D> {
        optim::adam_step(settings, param, grad, state)
    }
}
