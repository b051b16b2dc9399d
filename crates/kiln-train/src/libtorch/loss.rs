//! Cross-entropy without label smoothing on libtorch's kernels, as one
//! autodiff operation on the training device: `log_softmax` then `nll_loss`
//! forward (what torch.nn.CrossEntropyLoss runs), `nll_loss_backward` then
//! `_log_softmax_backward_data` backward. burn composes it of about five
//! operations forward and more backward. Other devices and label smoothing
//! take burn's operations (`crate::loss::Loss`).

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
        OpsKind::Tracked(prep) => prep.finish((TchTensor::new(log_probs), targets, weights), loss),
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
