//! `spec.training.loss`: the loss function and its parameters.

use kiln::v1 as pb;

use super::check::{ensure, unknown_enum};
use super::Task;
use crate::error::Result;

/// `spec.training.loss`, validated: the loss and every parameter it takes.
#[derive(Debug, Clone, PartialEq)]
pub struct LossSpec {
    /// Which loss.
    pub kind: LossKind,
    /// Huber's delta.
    pub huber_delta: f64,
    /// Cross-entropy label smoothing in [0, 1).
    pub label_smoothing: f64,
    /// Cross-entropy class weights; empty means all 1.
    pub class_weights: Vec<f64>,
    /// BCE weight of the positive class.
    pub pos_weight: f64,
    /// Weigh classes by their training counts (`CLASS_WEIGHTING_BALANCED`):
    /// [`LossSpec::balanced_for`] sets `class_weights` or `pos_weight`.
    pub balanced: bool,
}

impl LossSpec {
    /// torch.nn.HuberLoss's `delta`.
    pub const DEFAULT_HUBER_DELTA: f64 = 1.0;
    /// BCE's `pos_weight` when unset: both classes weigh the same.
    pub const DEFAULT_POS_WEIGHT: f64 = 1.0;

    /// A loss with torch's defaults for every parameter.
    pub fn plain(kind: LossKind) -> Self {
        Self {
            kind,
            huber_delta: Self::DEFAULT_HUBER_DELTA,
            label_smoothing: 0.0,
            class_weights: Vec::new(),
            pos_weight: Self::DEFAULT_POS_WEIGHT,
            balanced: false,
        }
    }

    /// The loss with balanced weights resolved from the training split's
    /// class counts: scikit-learn's `compute_class_weight("balanced")`,
    /// n / (k * count), as cross-entropy's class weights, or as BCE's
    /// `pos_weight` = w_1 / w_0 = negatives / positives. Unchanged unless
    /// `balanced`.
    pub fn balanced_for(&self, counts: &[u64]) -> LossSpec {
        let mut spec = self.clone();
        if !self.balanced {
            return spec;
        }
        let n: u64 = counts.iter().sum();
        let k = counts.len() as f64;
        let weight = |c: u64| {
            if c == 0 {
                0.0
            } else {
                n as f64 / (k * c as f64)
            }
        };
        match self.kind {
            LossKind::BinaryCrossEntropy if counts.len() == 2 && counts[1] > 0 => {
                spec.pos_weight = counts[0] as f64 / counts[1] as f64;
            }
            LossKind::CrossEntropy => {
                spec.class_weights = counts.iter().map(|&c| weight(c)).collect()
            }
            _ => {}
        }
        spec
    }
}

/// The losses, as torch.nn names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// Mean squared error (regression).
    Mse,
    /// Mean absolute error (regression).
    Mae,
    /// Huber loss (regression).
    Huber,
    /// Softmax cross-entropy (multiclass).
    CrossEntropy,
    /// Binary cross-entropy on a logit (binary).
    BinaryCrossEntropy,
}

impl LossKind {
    /// The loss when `kind` is unset: MSE, BCE or cross-entropy by task.
    pub fn default_for(task: Task) -> LossKind {
        match task {
            Task::Regression => LossKind::Mse,
            Task::Binary => LossKind::BinaryCrossEntropy,
            Task::Multiclass => LossKind::CrossEntropy,
        }
    }
}

pub(super) fn validate_loss(loss: Option<&pb::Loss>, task: Task) -> Result<LossSpec> {
    let default = pb::Loss::default();
    let loss = loss.unwrap_or(&default);
    let kind = match pb::LossKind::try_from(loss.kind) {
        Ok(pb::LossKind::LossDefault) => LossKind::default_for(task),
        Ok(pb::LossKind::LossMse) => LossKind::Mse,
        Ok(pb::LossKind::LossMae) => LossKind::Mae,
        Ok(pb::LossKind::LossHuber) => LossKind::Huber,
        Ok(pb::LossKind::LossCrossEntropy) => LossKind::CrossEntropy,
        Ok(pb::LossKind::LossBinaryCrossEntropy) => LossKind::BinaryCrossEntropy,
        Err(_) => return Err(unknown_enum("spec.training.loss.kind", loss.kind)),
    };
    let fits = match kind {
        LossKind::Mse | LossKind::Mae | LossKind::Huber => task == Task::Regression,
        LossKind::CrossEntropy => task == Task::Multiclass,
        LossKind::BinaryCrossEntropy => task == Task::Binary,
    };
    ensure(
        fits,
        "spec.training.loss.kind",
        &format!("{kind:?} does not fit task {task:?}"),
    )?;
    let huber_delta = loss.huber_delta.unwrap_or(LossSpec::DEFAULT_HUBER_DELTA);
    ensure(
        huber_delta > 0.0 && huber_delta.is_finite(),
        "spec.training.loss.huber_delta",
        "must be > 0",
    )?;
    ensure(
        loss.huber_delta.is_none() || kind == LossKind::Huber,
        "spec.training.loss.huber_delta",
        "only applies to LOSS_HUBER",
    )?;
    ensure(
        (0.0..1.0).contains(&loss.label_smoothing),
        "spec.training.loss.label_smoothing",
        "must be in [0, 1)",
    )?;
    ensure(
        loss.label_smoothing == 0.0 || kind == LossKind::CrossEntropy,
        "spec.training.loss.label_smoothing",
        "only applies to LOSS_CROSS_ENTROPY",
    )?;
    ensure(
        loss.class_weights.is_empty() || kind == LossKind::CrossEntropy,
        "spec.training.loss.class_weights",
        "only applies to LOSS_CROSS_ENTROPY",
    )?;
    for (i, w) in loss.class_weights.iter().enumerate() {
        ensure(
            w.is_finite() && *w >= 0.0,
            &format!("spec.training.loss.class_weights[{i}]"),
            "must be finite and >= 0",
        )?;
    }
    let pos_weight = loss.pos_weight.unwrap_or(LossSpec::DEFAULT_POS_WEIGHT);
    ensure(
        pos_weight.is_finite() && pos_weight > 0.0,
        "spec.training.loss.pos_weight",
        "must be > 0",
    )?;
    ensure(
        loss.pos_weight.is_none() || kind == LossKind::BinaryCrossEntropy,
        "spec.training.loss.pos_weight",
        "only applies to LOSS_BINARY_CROSS_ENTROPY",
    )?;
    let balanced = match pb::ClassWeighting::try_from(loss.class_weighting) {
        Ok(pb::ClassWeighting::Default | pb::ClassWeighting::None) => false,
        Ok(pb::ClassWeighting::Balanced) => true,
        Err(_) => {
            return Err(unknown_enum(
                "spec.training.loss.class_weighting",
                loss.class_weighting,
            ))
        }
    };
    ensure(
        !balanced || matches!(kind, LossKind::CrossEntropy | LossKind::BinaryCrossEntropy),
        "spec.training.loss.class_weighting",
        "only applies to cross-entropy losses",
    )?;
    ensure(
        !balanced || (loss.class_weights.is_empty() && loss.pos_weight.is_none()),
        "spec.training.loss.class_weighting",
        "CLASS_WEIGHTING_BALANCED sets the weights; leave class_weights and pos_weight unset",
    )?;
    Ok(LossSpec {
        kind,
        huber_delta,
        label_smoothing: loss.label_smoothing,
        class_weights: loss.class_weights.clone(),
        pos_weight,
        balanced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testing::assert_training_errors;

    /// One bad value per loss field, each refused with its path.
    #[test]
    fn loss_errors_name_the_field() {
        let cases: Vec<(pb::TrainingSpec, &str)> = vec![
            (
                pb::TrainingSpec {
                    loss: Some(pb::Loss {
                        label_smoothing: 1.0,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "spec.training.loss.label_smoothing: must be in [0, 1)",
            ),
            (
                pb::TrainingSpec {
                    loss: Some(pb::Loss {
                        pos_weight: Some(2.0),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "spec.training.loss.pos_weight: only applies to LOSS_BINARY_CROSS_ENTROPY",
            ),
            (
                pb::TrainingSpec {
                    loss: Some(pb::Loss {
                        class_weights: vec![1.0, 2.0],
                        class_weighting: pb::ClassWeighting::Balanced as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "spec.training.loss.class_weighting: CLASS_WEIGHTING_BALANCED sets the weights; leave class_weights and pos_weight unset",
            ),
        ];
        assert_training_errors(cases);
    }

    /// scikit-learn's compute_class_weight("balanced", classes, y) for counts
    /// 6, 3, 1: 10 / (3 * count).
    #[test]
    fn balanced_weights_are_sklearns() {
        let mut spec = LossSpec::plain(LossKind::CrossEntropy);
        assert_eq!(spec.balanced_for(&[6, 3, 1]), spec, "off unless asked");
        spec.balanced = true;
        let w = spec.balanced_for(&[6, 3, 1]).class_weights;
        assert_eq!(w, [10.0 / 18.0, 10.0 / 9.0, 10.0 / 3.0]);
        let mut bce = LossSpec::plain(LossKind::BinaryCrossEntropy);
        bce.balanced = true;
        assert_eq!(bce.balanced_for(&[95, 5]).pos_weight, 19.0);
    }
}
