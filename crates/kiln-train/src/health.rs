//! Gradient health, once per epoch ("Why are your gradients vanishing?"):
//! for every linear layer, the L2 norms of its weight's gradient and of the
//! weight, the update-to-weight ratio of one optimizer step, and for ReLU
//! layers the fraction of dead units; vanishing and exploding gradients are
//! flagged against the thresholds below.
//!
//! The measurements come from the epoch's first optimizer step (its
//! gradients, after clipping, and the change that step made to the weights)
//! and stay on the device until the epoch's end, where they are read in one
//! go: no host synchronisation inside the epoch. Dead units are counted on
//! up to [`DEAD_UNIT_ROWS`] validation rows with the evaluation-mode model.

use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::model::Mlp;

/// A hidden layer whose weight gradient's norm is below this fraction of
/// the output layer's has a vanishing gradient.
pub const VANISHING_RATIO: f64 = 1e-3;
/// A hidden layer whose weight gradient's norm is above this multiple of
/// the output layer's has an exploding gradient (as does any non-finite one).
pub const EXPLODING_RATIO: f64 = 1e3;
/// Validation rows the dead-unit count looks at.
pub const DEAD_UNIT_ROWS: usize = 1024;

/// One linear layer's gradient health in the measured step.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerHealth {
    /// "hidden1", ..., "output".
    pub layer: String,
    /// L2 norm of the weight's gradient in the measured step.
    pub grad_norm: f64,
    /// L2 norm of the weight before that step.
    pub weight_norm: f64,
    /// ‖ΔW‖ / ‖W‖ of that step: how far one update moves the weights.
    pub update_ratio: f64,
    /// ReLU layers: the fraction of units that output 0 for every measured
    /// validation row (dead: no gradient flows through them).
    pub dead_fraction: Option<f64>,
}

/// The gradient health of one epoch, all layers, judged.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientHealth {
    /// The epoch measured.
    pub epoch: u32,
    /// Each linear layer, input side first.
    pub layers: Vec<LayerHealth>,
    /// Some hidden layer's gradient vanishes.
    pub vanishing: bool,
    /// Some layer's gradient explodes or is not finite.
    pub exploding: bool,
    /// Which layers were flagged, with their ratios; empty when healthy.
    pub detail: String,
}

/// One optimizer step's measurements, on the device: take it with
/// [`StepProbe::before_step`] and the step's gradients, then call
/// [`StepProbe::after_step`] with the updated model.
pub struct StepProbe {
    before: Vec<Tensor<2>>,
    grad_norms: Vec<Tensor<1>>,
    measured: Option<(Vec<Tensor<1>>, Vec<Tensor<1>>)>,
}

fn l2(t: Tensor<2>) -> Tensor<1> {
    t.powi_scalar(2).sum().sqrt()
}

impl StepProbe {
    /// Measures the gradients and the weights before the optimizer step.
    pub fn before_step(model: &Mlp, grads: &GradientsParams) -> Self {
        let weights = model.layer_weights();
        let grad_norms = weights
            .iter()
            .map(|w| match grads.get::<2>(w.id) {
                Some(g) => l2(g),
                None => Tensor::zeros([1], &w.val().device().without_autodiff()),
            })
            .collect();
        let before = weights.iter().map(|w| w.val().detach()).collect();
        Self {
            before,
            grad_norms,
            measured: None,
        }
    }

    /// Measures the change the step made to the weights.
    pub fn after_step(&mut self, model: &Mlp) {
        let (weight_norms, update_norms) = model
            .layer_weights()
            .iter()
            .zip(&self.before)
            .map(|(after, before)| {
                let delta = after.val().detach() - before.clone();
                (l2(before.clone()), l2(delta))
            })
            .unzip();
        self.measured = Some((weight_norms, update_norms));
    }

    /// The measured norms, read to the host: a checkpoint taken in the
    /// middle of an epoch carries them to the resumed run's `finish`.
    pub fn values(&self) -> ProbeValues {
        let read = |ts: &[Tensor<1>]| -> Vec<f32> {
            if ts.is_empty() {
                return Vec::new();
            }
            Tensor::cat(ts.to_vec(), 0)
                .into_data()
                .try_into_vec::<f32>()
                .expect("f32 norms")
        };
        let (weight_norms, update_norms) = self.measured.as_ref().expect("after_step was called");
        ProbeValues {
            grad_norms: read(&self.grad_norms),
            weight_norms: read(weight_norms),
            update_norms: read(update_norms),
        }
    }

    /// A finished probe holding `values`, on `device`.
    pub fn from_values(values: &ProbeValues, device: &Device) -> Self {
        let tensors = |v: &[f32]| -> Vec<Tensor<1>> {
            v.iter()
                .map(|&x| Tensor::from_data(TensorData::new(vec![x], [1]), device))
                .collect()
        };
        Self {
            before: Vec::new(),
            grad_norms: tensors(&values.grad_norms),
            measured: Some((tensors(&values.weight_norms), tensors(&values.update_norms))),
        }
    }

    /// Reads the measurements (one transfer each for the gradient and the
    /// weight norms) and judges them. `outputs` are the evaluation-mode
    /// model's [`Mlp::layer_outputs`] on validation rows.
    pub fn finish(self, epoch: u32, model: &Mlp, outputs: &[Tensor<2>]) -> GradientHealth {
        let read = |ts: Vec<Tensor<1>>| -> Vec<f64> {
            Tensor::cat(ts, 0)
                .into_data()
                .convert::<f64>()
                .try_into_vec::<f64>()
                .expect("f64 norms")
        };
        let grad_norms = read(self.grad_norms);
        let (weight_norms, update_norms) = self.measured.expect("after_step was called");
        let n = weight_norms.len();
        let weights_and_updates = read(weight_norms.into_iter().chain(update_norms).collect());
        let (weight_norms, update_norms) = weights_and_updates.split_at(n);
        let dead = model
            .relu_layers()
            .iter()
            .zip(outputs)
            .map(|(&relu, out)| relu.then(|| dead_fraction(out.clone())))
            .collect::<Vec<_>>();
        let layers = model
            .layer_names()
            .into_iter()
            .enumerate()
            .map(|(i, layer)| LayerHealth {
                layer,
                grad_norm: grad_norms[i],
                weight_norm: weight_norms[i],
                update_ratio: update_norms[i] / weight_norms[i],
                dead_fraction: dead.get(i).copied().flatten(),
            })
            .collect();
        judge(epoch, layers)
    }
}

/// A [`StepProbe`]'s norms as numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeValues {
    grad_norms: Vec<f32>,
    weight_norms: Vec<f32>,
    update_norms: Vec<f32>,
}

/// The fraction of columns (units) of `out` that are at most 0 in every row.
fn dead_fraction(out: Tensor<2>) -> f64 {
    out.max_dim(0)
        .lower_equal_elem(0.0)
        .float()
        .mean()
        .into_scalar::<f64>()
}

/// Flags each hidden layer's gradient norm against the output layer's.
pub fn judge(epoch: u32, layers: Vec<LayerHealth>) -> GradientHealth {
    let reference = layers.last().map_or(0.0, |l| l.grad_norm);
    let mut flagged = Vec::new();
    let (mut vanishing, mut exploding) = (false, false);
    for layer in &layers[..layers.len().saturating_sub(1)] {
        if !layer.grad_norm.is_finite() {
            exploding = true;
            flagged.push(format!(
                "{}: gradient norm {}",
                layer.layer, layer.grad_norm
            ));
            continue;
        }
        let ratio = layer.grad_norm / reference;
        if ratio < VANISHING_RATIO || (reference == 0.0 && layer.grad_norm == 0.0) {
            vanishing = true;
            flagged.push(format!(
                "{}: gradient norm {:.3e} is {ratio:.1e} x the output layer's (vanishing below {VANISHING_RATIO:e})",
                layer.layer, layer.grad_norm
            ));
        } else if ratio > EXPLODING_RATIO {
            exploding = true;
            flagged.push(format!(
                "{}: gradient norm {:.3e} is {ratio:.1e} x the output layer's (exploding above {EXPLODING_RATIO:e})",
                layer.layer, layer.grad_norm
            ));
        }
    }
    if !reference.is_finite() {
        exploding = true;
        flagged.push(format!("output: gradient norm {reference}"));
    }
    GradientHealth {
        epoch,
        layers,
        vanishing,
        exploding,
        detail: flagged.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, grad_norm: f64) -> LayerHealth {
        LayerHealth {
            layer: name.into(),
            grad_norm,
            weight_norm: 1.0,
            update_ratio: 0.0,
            dead_fraction: None,
        }
    }

    #[test]
    fn flags_follow_the_thresholds() {
        let healthy = judge(1, vec![layer("hidden1", 0.5), layer("output", 1.0)]);
        assert!(!healthy.vanishing && !healthy.exploding && healthy.detail.is_empty());
        let vanishing = judge(
            1,
            vec![
                layer("hidden1", 1e-4),
                layer("hidden2", 0.5),
                layer("output", 1.0),
            ],
        );
        assert!(vanishing.vanishing && !vanishing.exploding);
        assert!(
            vanishing.detail.starts_with("hidden1:"),
            "{}",
            vanishing.detail
        );
        let exploding = judge(1, vec![layer("hidden1", 2e3), layer("output", 1.0)]);
        assert!(exploding.exploding && !exploding.vanishing);
        let nan = judge(1, vec![layer("hidden1", f64::NAN), layer("output", 1.0)]);
        assert!(nan.exploding);
        // Just inside the thresholds.
        let edge = judge(
            1,
            vec![
                layer("a", 1.01e-3),
                layer("b", 0.99e3),
                layer("output", 1.0),
            ],
        );
        assert!(!edge.vanishing && !edge.exploding);
    }

    #[test]
    fn dead_units_are_those_never_positive() {
        let device = crate::device::cpu();
        let out = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(vec![0.0f32, 1.0, 0.0, -1.0, 0.0, 0.0, 2.0, 0.0], [2, 4]),
            &device,
        );
        // Columns 0 and 3 are 0 in both rows; 1 and 2 are positive once.
        assert_eq!(dead_fraction(out), 0.5);
    }
}
