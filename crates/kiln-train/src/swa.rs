//! Stochastic Weight Averaging as `torch.optim.swa_utils` does it:
//! [`Swalr`] (SWALR), [`WeightAverage`] (AveragedModel with its default
//! equal running average) and [`update_bn`].

use std::f64::consts::PI;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use kiln_core::spec::SwaSpec;
use serde::{Deserialize, Serialize};

use crate::model::Mlp;

/// torch.optim.swa_utils.SWALR for one parameter group. Built when the
/// switch happens with the LR then in force (torch builds it earlier, but
/// with `anneal_epochs >= 1` its initial step leaves the LR unchanged, so this
/// is the same); [`Swalr::step`] is called after every averaged epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Swalr {
    /// torch's `param_group["lr"]`.
    lr: f64,
    swa_lr: f64,
    anneal_epochs: u32,
    anneal_cos: bool,
    /// torch's `_step_count`.
    step_count: u64,
}

impl Swalr {
    /// SWALR for `swa`, built with the optimizer's LR `lr` at the switch.
    pub fn new(lr: f64, swa: &SwaSpec) -> Self {
        Self::with(lr, swa.swa_lr, swa.anneal_epochs, swa.anneal_cos)
    }

    /// `lr`: the optimizer's learning rate when the scheduler is built.
    pub fn with(lr: f64, swa_lr: f64, anneal_epochs: u32, anneal_cos: bool) -> Self {
        let mut s = Self {
            lr,
            swa_lr,
            anneal_epochs,
            anneal_cos,
            step_count: 0,
        };
        // LRScheduler._initial_step().
        s.step();
        s
    }

    /// The LR for the next epoch.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    fn anneal(&self, t: f64) -> f64 {
        if self.anneal_cos {
            (1.0 - (PI * t).cos()) / 2.0
        } else {
            t
        }
    }

    /// SWALR.step(): `get_lr` exactly as torch computes it.
    pub fn step(&mut self) {
        self.step_count += 1;
        let mut step = self.step_count as f64 - 1.0;
        if self.anneal_epochs == 0 {
            step = step.max(1.0);
        }
        let epochs = f64::from(self.anneal_epochs.max(1));
        let prev_t = ((step - 1.0) / epochs).clamp(0.0, 1.0);
        let prev_alpha = self.anneal(prev_t);
        let prev_lr = if prev_alpha == 1.0 {
            self.swa_lr
        } else {
            (self.lr - prev_alpha * self.swa_lr) / (1.0 - prev_alpha)
        };
        let t = (step / epochs).clamp(0.0, 1.0);
        let alpha = self.anneal(t);
        self.lr = self.swa_lr * alpha + prev_lr * (1.0 - alpha);
    }
}

/// AveragedModel with the default `avg_fn`: an equal running average of
/// every trainable parameter (`avg += (p - avg) / (n + 1)`; the first
/// snapshot is copied). BatchNorm's running statistics are not averaged
/// (`use_buffers=False`); [`update_bn`] recomputes them.
#[derive(Debug, Default)]
pub struct WeightAverage {
    average: Option<Mlp>,
    n_averaged: u64,
}

impl WeightAverage {
    /// An empty average.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of snapshots averaged so far.
    pub fn n_averaged(&self) -> u64 {
        self.n_averaged
    }

    /// `update_parameters(model)`: averages `model`'s current weights in.
    /// The average lives on the plain (non-autodiff) device.
    pub fn update(&mut self, model: &Mlp) {
        let current = model.valid();
        self.average = Some(match self.average.take() {
            None => current,
            Some(average) => {
                let params = current.trainable_parameters();
                let w = 1.0 / (self.n_averaged as f64 + 1.0);
                average.map_trainable(&mut |i, avg| {
                    let p = params[i].clone();
                    avg.clone() + (p - avg).mul_scalar(w)
                })
            }
        });
        self.n_averaged += 1;
    }

    /// A running average checkpointed as `average` after `n_averaged` snapshots.
    pub fn restored(average: Mlp, n_averaged: u64) -> Self {
        Self {
            average: Some(average),
            n_averaged,
        }
    }

    /// The running average itself (for a checkpoint); None before the first update.
    pub fn average(&self) -> Option<&Mlp> {
        self.average.as_ref()
    }

    /// The averaged model (evaluation mode, BatchNorm statistics not yet
    /// recomputed); None before the first update.
    pub fn model(&self) -> Option<Mlp> {
        self.average.as_ref().map(|m| m.valid())
    }
}

/// torch.optim.swa_utils.update_bn: resets every BatchNorm's running
/// statistics (mean 0, variance 1), then runs `batches` through the model in
/// training mode with `momentum=None`, i.e. the running statistics become the
/// plain average over batches of the batch mean and the unbiased batch
/// variance. Dropout is active during the pass, as in torch (model.train()).
/// `device`: an autodiff device to train on. Returns the model in evaluation
/// mode. Without BatchNorm the model is returned unchanged.
pub fn update_bn(model: Mlp, batches: impl IntoIterator<Item = Tensor<2>>, device: &Device) -> Mlp {
    if !model.has_batch_norm() {
        return model.valid();
    }
    let ad = device.clone().autodiff();
    let mut model = model.fork(&ad).train();
    model.reset_bn_stats();
    let momenta = model.bn_momenta();
    for (k, x) in batches.into_iter().enumerate() {
        model = model.with_bn_momentum(&[1.0 / (k as f64 + 1.0)]);
        let _ = model.forward(x.to_device(&ad));
    }
    model.with_bn_momentum(&momenta).valid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swalr_starts_at_the_switch_lr_and_reaches_swa_lr() {
        for cos in [true, false] {
            let mut s = Swalr::with(0.1, 0.01, 4, cos);
            assert_eq!(s.lr(), 0.1);
            let mut lrs = vec![];
            for _ in 0..6 {
                s.step();
                lrs.push(s.lr());
            }
            assert!((lrs[3] - 0.01).abs() < 1e-15, "{lrs:?}");
            assert!(lrs[0] < 0.1 && lrs[0] > lrs[1]);
            if !cos {
                assert!((lrs[0] - (0.1 * 0.75 + 0.01 * 0.25)).abs() < 1e-15);
            }
        }
    }
}
