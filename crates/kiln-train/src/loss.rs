//! Training objectives with torch.nn's definitions and mean reduction.

use burn::tensor::{activation, Device, Int, Tensor, TensorData};
use kiln_core::spec::{LossKind, LossSpec};

use crate::backend::Backend;
use crate::Active;

/// Targets on the training device: values `[n, outputs]` or class indices `[n]`.
#[derive(Debug, Clone)]
pub enum TargetTensor {
    /// Regression targets, `[n, outputs]`.
    Values(Tensor<2>),
    /// Class indices, `[n]`.
    Classes(Tensor<1, Int>),
}

impl TargetTensor {
    /// The rows at `idx`.
    pub fn select(&self, idx: Tensor<1, Int>) -> Self {
        match self {
            TargetTensor::Values(t) => TargetTensor::Values(t.clone().select(0, idx)),
            TargetTensor::Classes(t) => TargetTensor::Classes(t.clone().select(0, idx)),
        }
    }

    /// Rows `start..end`.
    pub fn slice_rows(&self, start: usize, end: usize) -> Self {
        match self {
            TargetTensor::Values(t) => TargetTensor::Values(t.clone().slice(start..end)),
            TargetTensor::Classes(t) => TargetTensor::Classes(t.clone().slice(start..end)),
        }
    }
}

/// A loss bound to a device (class weights live there).
#[derive(Debug, Clone)]
pub struct Loss {
    spec: LossSpec,
    class_weights: Option<Tensor<1>>,
}

impl Loss {
    /// The loss `spec` describes, its class weights on `device`.
    pub fn new(spec: &LossSpec, device: &Device) -> Self {
        let class_weights = (!spec.class_weights.is_empty()).then(|| {
            let w: Vec<f32> = spec.class_weights.iter().map(|&v| v as f32).collect();
            let n = w.len();
            Tensor::from_data(TensorData::new(w, [n]), device)
        });
        Self {
            spec: spec.clone(),
            class_weights,
        }
    }

    /// Mean loss over the batch as a one-element tensor (kept on the device).
    pub fn forward(&self, output: Tensor<2>, target: &TargetTensor) -> Tensor<1> {
        let spec = &self.spec;
        match (spec.kind, target) {
            // torch.nn.MSELoss / L1Loss / HuberLoss: mean over every element.
            (LossKind::Mse, TargetTensor::Values(y)) => (output - y.clone()).square().mean(),
            (LossKind::Mae, TargetTensor::Values(y)) => (output - y.clone()).abs().mean(),
            (LossKind::Huber, TargetTensor::Values(y)) => {
                let delta = spec.huber_delta;
                let abs = (output - y.clone()).abs();
                let quadratic = abs.clone().square().mul_scalar(0.5);
                let linear = abs.clone().sub_scalar(0.5 * delta).mul_scalar(delta);
                quadratic
                    .mask_where(abs.greater_equal_elem(delta), linear)
                    .mean()
            }
            (LossKind::CrossEntropy, TargetTensor::Classes(y)) => {
                if spec.label_smoothing == 0.0 {
                    if let Some(loss) =
                        Active::cross_entropy(&output, y, self.class_weights.as_ref())
                    {
                        return loss;
                    }
                }
                self.cross_entropy(output, y)
            }
            // torch.nn.BCEWithLogitsLoss with pos_weight p:
            // (1 - y) z + (1 + (p - 1) y) softplus(-z); p = 1 is softplus(z) - y z.
            (LossKind::BinaryCrossEntropy, TargetTensor::Classes(y)) => {
                let y = y.clone().float().unsqueeze_dim::<2>(1);
                let weight = y.clone().mul_scalar(spec.pos_weight - 1.0).add_scalar(1.0);
                let negative = y.neg().add_scalar(1.0) * output.clone();
                (negative + weight * activation::softplus(output.neg(), 1.0)).mean()
            }
            (kind, _) => unreachable!("the spec validator pairs {kind:?} with its task's targets"),
        }
    }

    /// torch.nn.CrossEntropyLoss with class weights and label smoothing: the
    /// weighted NLL normalized by the summed weights of the targets, mixed
    /// with the (weighted) uniform term as ATen's
    /// `cross_entropy_loss_label_smoothing` does.
    fn cross_entropy(&self, logits: Tensor<2>, y: &Tensor<1, Int>) -> Tensor<1> {
        let classes = logits.dims()[1];
        let log_p = activation::log_softmax(logits, 1);
        let picked = log_p
            .clone()
            .gather(1, y.clone().unsqueeze_dim(1))
            .squeeze_dim::<1>(1);
        let (nll, smooth) = match &self.class_weights {
            None => (picked.mean().neg(), log_p.sum_dim(1).mean().neg()),
            Some(w) => {
                let w_target = w.clone().select(0, y.clone());
                let norm = w_target.clone().sum();
                let nll = (picked * w_target).sum().neg() / norm.clone();
                let smooth = (log_p * w.clone().unsqueeze_dim::<2>(0)).sum().neg() / norm;
                (nll, smooth)
            }
        };
        let eps = self.spec.label_smoothing;
        if eps == 0.0 {
            return nll;
        }
        nll.mul_scalar(1.0 - eps) + smooth.mul_scalar(eps / classes as f64)
    }
}
