//! Training objectives with torch.nn's definitions and mean reduction.

use burn::tensor::{activation, Device, Int, Tensor, TensorData};
use kiln_core::spec::{LossKind, LossSpec};

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

/// A loss bound to a device (class weights live there).
#[derive(Debug, Clone)]
pub struct Loss {
    spec: LossSpec,
    class_weights: Option<Tensor<1>>,
}

impl Loss {
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
                        libtorch_ce::cross_entropy(&output, y, self.class_weights.as_ref())
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

/// Cross-entropy without label smoothing on libtorch's kernels, as one
/// autodiff operation on the training device: `log_softmax` then `nll_loss`
/// forward (what torch.nn.CrossEntropyLoss runs), `nll_loss_backward` then
/// `_log_softmax_backward_data` backward. burn composes it of about five
/// operations forward and more backward. Other devices and label smoothing
/// take [`Loss::cross_entropy`].
#[allow(deprecated)] // burn-tch is deprecated in 0.22 (removed in 0.23) but is our backend.
mod libtorch_ce {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::libtorch::TchTensor;
    use burn::backend::{Autodiff, BackendTypes, LibTorch};
    use burn::tensor::{Int, Tensor};

    type AdTorch = Autodiff<LibTorch, NoCheckpointing>;
    type AdTensor = <AdTorch as BackendTypes>::FloatTensorPrimitive;

    /// Ignores no class: every class index is >= 0.
    const IGNORE_INDEX: i64 = -100;

    pub(super) fn cross_entropy(
        logits: &Tensor<2>,
        targets: &Tensor<1, Int>,
        class_weights: Option<&Tensor<1>>,
    ) -> Option<Tensor<1>> {
        let logits: AdTensor = logits.clone().try_into_primitive::<AdTorch>().ok()?;
        let targets: TchTensor = targets.clone().try_into_primitive::<AdTorch>().ok()?;
        let weights: Option<TchTensor> = match class_weights {
            Some(w) => Some(
                w.clone()
                    .try_into_primitive::<AdTorch>()
                    .ok()?
                    .into_primitive(),
            ),
            None => None,
        };
        let weight = weights.as_ref().map(|w| &w.tensor);
        let log_probs = logits.primitive().tensor.f_log_softmax(1, None).ok()?;
        let loss = log_probs
            .f_nll_loss(&targets.tensor, weight, tch::Reduction::Mean, IGNORE_INDEX)
            .ok()?;
        // Loss::forward returns shape [1]; nll_loss a 0-dim tensor.
        let loss = TchTensor::new(loss.reshape([1]));
        let output = match CrossEntropy
            .prepare::<NoCheckpointing>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((TchTensor::new(log_probs), targets, weights), loss)
            }
            OpsKind::UnTracked(prep) => prep.finish(loss),
        };
        Some(Tensor::from_primitive::<AdTorch>(output))
    }

    #[derive(Debug)]
    struct CrossEntropy;

    impl Backward<LibTorch, 1> for CrossEntropy {
        /// The log-probabilities, the targets and the class weights.
        type State = (TchTensor, TchTensor, Option<TchTensor>);

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node] = ops.parents;
            let grad = grads.consume::<LibTorch>(&ops.node).tensor;
            let Some(node) = node else { return };
            let (log_probs, targets, weights) = ops.state;
            let (log_probs, targets) = (log_probs.tensor, targets.tensor);
            let weight = weights.as_ref().map(|w| &w.tensor);
            // The mean's denominator: the rows, or their classes' summed weights.
            let total_weight = match weight {
                Some(w) => w.index_select(0, &targets).sum(tch::Kind::Float),
                None => tch::Tensor::full(
                    [] as [i64; 0],
                    log_probs.size()[0] as f64,
                    (log_probs.kind(), log_probs.device()),
                ),
            };
            let grad_log_probs = log_probs.nll_loss_backward(
                &grad.reshape([] as [i64; 0]),
                &targets,
                weight,
                tch::Reduction::Mean,
                IGNORE_INDEX,
                &total_weight,
            );
            let grad_logits = tch::Tensor::internal_log_softmax_backward_data(
                &grad_log_probs,
                &log_probs,
                1,
                log_probs.kind(),
            );
            grads.register::<LibTorch>(node.id, TchTensor::new(grad_logits));
        }
    }
}
