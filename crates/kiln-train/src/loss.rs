//! Training objectives, with torch.nn's definitions and mean reduction.

use burn::tensor::{activation, Int, Tensor};
use kiln_core::spec::LossKind;

/// Targets on the training device: values `[n, outputs]` or class indices `[n]`.
#[derive(Debug, Clone)]
pub enum TargetTensor {
    Values(Tensor<2>),
    Classes(Tensor<1, Int>),
}

impl TargetTensor {
    pub fn select(&self, idx: Tensor<1, Int>) -> Self {
        match self {
            TargetTensor::Values(t) => TargetTensor::Values(t.clone().select(0, idx)),
            TargetTensor::Classes(t) => TargetTensor::Classes(t.clone().select(0, idx)),
        }
    }

    pub fn slice_rows(&self, start: usize, end: usize) -> Self {
        match self {
            TargetTensor::Values(t) => TargetTensor::Values(t.clone().slice(start..end)),
            TargetTensor::Classes(t) => TargetTensor::Classes(t.clone().slice(start..end)),
        }
    }
}

/// Mean loss over the rows, as a one-element tensor (kept on the device).
pub fn loss(kind: LossKind, output: Tensor<2>, target: &TargetTensor) -> Tensor<1> {
    match (kind, target) {
        // torch.nn.MSELoss: mean over every element.
        (LossKind::Mse, TargetTensor::Values(y)) => (output - y.clone()).square().mean(),
        // torch.nn.CrossEntropyLoss on logits: -log_softmax[y], averaged.
        (LossKind::CrossEntropy, TargetTensor::Classes(y)) => {
            let log_p = activation::log_softmax(output, 1);
            let picked = log_p.gather(1, y.clone().unsqueeze_dim(1));
            picked.mean().neg()
        }
        // torch.nn.BCEWithLogitsLoss: softplus(z) - y z, stable for large |z|.
        (LossKind::BinaryCrossEntropy, TargetTensor::Classes(y)) => {
            let y = y.clone().float().unsqueeze_dim::<2>(1);
            (activation::softplus(output.clone(), 1.0) - output * y).mean()
        }
        (kind, _) => unreachable!("the spec validator pairs {kind:?} with its task's targets"),
    }
}
