//! The seam between kiln's training code and the tensor backend.
//!
//! Everything else in this crate is written on burn's backend-neutral
//! tensor API. What depends on the backend goes through [`Backend`]: the
//! devices, and the fast paths, each of which either computes its result on
//! the backend's own kernels (`Some`) or declines (`None`, or the inputs
//! handed back), in which case the caller takes burn's composed operations,
//! which give the same values up to rounding. The fast paths are
//! optimizations; the devices are required.
//!
//! Moving to another backend means a new folder next to `src/libtorch/` with
//! a type implementing [`Backend`] (the devices at least; every fast path
//! may keep its default, which declines), and changing `Active` in lib.rs.

use burn::module::{Param, RunningState};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor};

/// What a backend provides: its devices, and optional faster kernels for
/// the training hot path. Every fast path must leave the global random
/// generator's stream as its documented draws say, since a resumed run and
/// the parity tests replay it.
pub(crate) trait Backend {
    /// The host (CPU) device.
    fn cpu() -> Device;

    /// CUDA device `index`; the caller has checked it exists.
    fn cuda(index: usize) -> Device;

    /// How many CUDA devices the backend sees (0 without CUDA).
    fn cuda_device_count() -> usize;

    /// Caps the backend's intra-op threads for the whole process.
    fn set_threads(threads: usize);

    /// Whether an error message of the backend reports running out of memory.
    fn is_out_of_memory(message: &str) -> bool;

    /// `x @ weight + bias` of a linear layer with a bias, in training.
    fn linear(_layer: &Linear, _x: &Tensor<2>) -> Option<Tensor<2>> {
        None
    }

    /// ReLU in training.
    fn relu(_x: &Tensor<2>) -> Option<Tensor<2>> {
        None
    }

    /// Dropout's scaled keep mask for `x` (each element `1 / keep` with
    /// probability `keep`, else 0), drawn from the backend's generator so
    /// that seeding the device fixes it.
    fn dropout_noise<const D: usize>(_x: &Tensor<D>, _keep: f64) -> Option<Tensor<D>> {
        None
    }

    /// torch.nn.BatchNorm1d's training forward: normalizes `x` with the
    /// batch statistics and updates the layer's running statistics (the
    /// variance with the unbiased batch variance).
    fn batch_norm_train(_layer: &BatchNormLayer<'_>, _x: &Tensor<2>) -> Option<Tensor<2>> {
        None
    }

    /// torch.nn.CrossEntropyLoss without label smoothing, mean reduction,
    /// as a tensor of shape `[1]`.
    fn cross_entropy(
        _logits: &Tensor<2>,
        _targets: &Tensor<1, Int>,
        _class_weights: Option<&Tensor<1>>,
    ) -> Option<Tensor<1>> {
        None
    }

    /// One torch.optim.Adam / AdamW single-tensor step; a declined step
    /// hands the inputs back for the burn-op path.
    fn adam_step<const D: usize>(
        _settings: &AdamSettings,
        param: Tensor<D>,
        grad: Tensor<D>,
        state: Option<AdamMoments<D>>,
    ) -> AdamOutcome<D> {
        AdamOutcome::Declined(param, grad, state)
    }
}

/// A BatchNorm1d layer's parameters and running statistics, as a backend's
/// training kernel reads and updates them.
pub(crate) struct BatchNormLayer<'a> {
    pub gamma: &'a Param<Tensor<1>>,
    pub beta: &'a Param<Tensor<1>>,
    pub running_mean: &'a RunningState<Tensor<1>>,
    pub running_var: &'a RunningState<Tensor<1>>,
    pub momentum: f64,
    pub eps: f64,
}

/// The hyperparameters of one Adam step (beta1 after any momentum override).
pub(crate) struct AdamSettings {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub amsgrad: bool,
    pub weight_decay: f64,
    /// AdamW: the decay shrinks the parameter instead of joining the gradient.
    pub decoupled: bool,
}

/// Adam's per-parameter state: the step count and the moments.
pub(crate) struct AdamMoments<const D: usize> {
    pub step: u64,
    pub exp_avg: Tensor<D>,
    pub exp_avg_sq: Tensor<D>,
    pub max_exp_avg_sq: Option<Tensor<D>>,
}

/// What [`Backend::adam_step`] did.
pub(crate) enum AdamOutcome<const D: usize> {
    /// The step ran: the new parameter and state.
    Stepped(Tensor<D>, AdamMoments<D>),
    /// Not for this backend: the parameter, gradient and state, untouched.
    Declined(Tensor<D>, Tensor<D>, Option<AdamMoments<D>>),
}
