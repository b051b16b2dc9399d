//! `spec.training.optimizer` and `spec.training.grad_clip`: torch.optim's
//! optimizers with their defaults, weight decay (the regularization), and
//! gradient clipping.

use kiln::v1 as pb;

use super::check::{beta, ensure, non_negative, positive};
use crate::error::{FieldError, Result};

/// `spec.training.optimizer`, validated: the optimizer and its learning rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerSpec {
    /// The learning rate, torch's default for the optimizer when unset.
    pub learning_rate: f64,
    /// L2 penalty (decoupled for AdamW), the regularization.
    pub weight_decay: f64,
    /// Which optimizer, with its hyper-parameters.
    pub kind: OptimizerKind,
}

/// torch.optim's optimizers, each hyper-parameter with torch's name and default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    /// torch.optim.SGD.
    Sgd {
        /// Momentum factor; 0: plain SGD.
        momentum: f64,
        /// Dampening of the momentum, in [0, 1].
        dampening: f64,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// torch.optim.Adam; `weight_decay` is coupled L2.
    Adam {
        /// Decay of the gradient's running mean.
        beta1: f64,
        /// Decay of the squared gradient's running mean.
        beta2: f64,
        /// Added to the denominator, for stability.
        eps: f64,
        /// Keep the maximum of the squared-gradient average (AMSGrad).
        amsgrad: bool,
    },
    /// torch.optim.AdamW; `weight_decay` is decoupled (`w -= lr * wd * w`).
    AdamW {
        /// Decay of the gradient's running mean.
        beta1: f64,
        /// Decay of the squared gradient's running mean.
        beta2: f64,
        /// Added to the denominator, for stability.
        eps: f64,
        /// Keep the maximum of the squared-gradient average (AMSGrad).
        amsgrad: bool,
    },
    /// torch.optim.NAdam (not the decoupled variant).
    Nadam {
        /// Decay of the gradient's running mean.
        beta1: f64,
        /// Decay of the squared gradient's running mean.
        beta2: f64,
        /// Added to the denominator, for stability.
        eps: f64,
        /// How fast the momentum schedule's factor decays.
        momentum_decay: f64,
    },
    /// torch.optim.RMSprop.
    RmsProp {
        /// Decay of the squared gradient's running mean.
        alpha: f64,
        /// Added to the denominator, for stability.
        eps: f64,
        /// Momentum factor; 0: none.
        momentum: f64,
        /// Normalize by the gradient's estimated variance instead.
        centered: bool,
    },
    /// torch.optim.Adamax.
    Adamax {
        /// Decay of the gradient's running mean.
        beta1: f64,
        /// Decay of the running infinity norm of the gradient.
        beta2: f64,
        /// Added to the denominator, for stability.
        eps: f64,
    },
    /// torch.optim.Adagrad.
    Adagrad {
        /// How the learning rate decays with each step.
        lr_decay: f64,
        /// Starting value of the squared-gradient sums.
        initial_accumulator_value: f64,
        /// Added to the denominator, for stability.
        eps: f64,
    },
}

/// torch.optim's defaults.
impl OptimizerKind {
    /// `betas[0]` of Adam, AdamW, NAdam and Adamax.
    pub const DEFAULT_BETA1: f64 = 0.9;
    /// `betas[1]` of Adam, AdamW, NAdam and Adamax.
    pub const DEFAULT_BETA2: f64 = 0.999;
    /// `eps` of every optimizer but Adagrad.
    pub const DEFAULT_EPS: f64 = 1e-8;
    /// Adagrad's `eps`.
    pub const DEFAULT_ADAGRAD_EPS: f64 = 1e-10;
    /// RMSprop's `alpha`.
    pub const DEFAULT_RMSPROP_ALPHA: f64 = 0.99;
    /// NAdam's `momentum_decay`.
    pub const DEFAULT_NADAM_MOMENTUM_DECAY: f64 = 4e-3;

    /// torch's default learning rate for this optimizer.
    pub fn default_learning_rate(self) -> f64 {
        match self {
            OptimizerKind::Sgd { .. }
            | OptimizerKind::Adam { .. }
            | OptimizerKind::AdamW { .. } => 1e-3,
            OptimizerKind::Nadam { .. } | OptimizerKind::Adamax { .. } => 2e-3,
            OptimizerKind::RmsProp { .. } | OptimizerKind::Adagrad { .. } => 1e-2,
        }
    }

    /// torch's default weight decay for this optimizer: 1e-2 for AdamW, else 0.
    pub fn default_weight_decay(self) -> f64 {
        match self {
            OptimizerKind::AdamW { .. } => 1e-2,
            _ => 0.0,
        }
    }
}

/// Adam with torch's defaults: the optimizer when none is named.
impl Default for OptimizerKind {
    fn default() -> Self {
        OptimizerKind::Adam {
            beta1: Self::DEFAULT_BETA1,
            beta2: Self::DEFAULT_BETA2,
            eps: Self::DEFAULT_EPS,
            amsgrad: false,
        }
    }
}

/// Gradient clipping between backward and the optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GradClip {
    /// torch.nn.utils.clip_grad_norm_ over all parameters (one global norm).
    Norm {
        /// The largest norm the gradients keep.
        max_norm: f64,
        /// Which p-norm; `f64::INFINITY` for the max norm.
        norm_type: f64,
    },
    /// torch.nn.utils.clip_grad_value_.
    Value {
        /// Every gradient element is clamped to [-clip_value, clip_value].
        clip_value: f64,
    },
}

impl GradClip {
    /// clip_grad_norm_'s `norm_type`: the L2 norm.
    pub const DEFAULT_NORM_TYPE: f64 = 2.0;
}

pub(super) fn validate_optimizer(opt: Option<&pb::Optimizer>) -> Result<OptimizerSpec> {
    let default = pb::Optimizer::default();
    let opt = opt.unwrap_or(&default);
    let f = |name: &str| format!("spec.training.optimizer.{name}");
    let kind = validate_optimizer_kind(opt.kind.as_ref())?;
    ensure(
        !(opt.auto_learning_rate && opt.learning_rate.is_some()),
        &f("learning_rate"),
        "must be unset when auto_learning_rate is true",
    )?;
    Ok(OptimizerSpec {
        learning_rate: positive(
            &f("learning_rate"),
            opt.learning_rate,
            kind.default_learning_rate(),
        )?,
        weight_decay: non_negative(
            &f("weight_decay"),
            opt.weight_decay.unwrap_or(kind.default_weight_decay()),
        )?,
        kind,
    })
}

/// The optimizer and its hyper-parameters, torch's defaults for those unset;
/// Adam when no optimizer is named.
fn validate_optimizer_kind(kind: Option<&pb::optimizer::Kind>) -> Result<OptimizerKind> {
    use pb::optimizer::Kind;
    use OptimizerKind as K;
    let f = |name: &str| format!("spec.training.optimizer.{name}");
    let adam = |name: &str, a: &pb::Adam| -> Result<(f64, f64, f64)> {
        Ok((
            beta(&f(&format!("{name}.beta1")), a.beta1, K::DEFAULT_BETA1)?,
            beta(&f(&format!("{name}.beta2")), a.beta2, K::DEFAULT_BETA2)?,
            positive(&f(&format!("{name}.eps")), a.eps, K::DEFAULT_EPS)?,
        ))
    };
    Ok(match kind {
        None => K::default(),
        Some(Kind::Adam(a)) => {
            let (beta1, beta2, eps) = adam("adam", a)?;
            K::Adam {
                beta1,
                beta2,
                eps,
                amsgrad: a.amsgrad,
            }
        }
        Some(Kind::Adamw(a)) => {
            let (beta1, beta2, eps) = adam("adamw", a)?;
            K::AdamW {
                beta1,
                beta2,
                eps,
                amsgrad: a.amsgrad,
            }
        }
        Some(Kind::Sgd(s)) => {
            let momentum = non_negative(&f("sgd.momentum"), s.momentum)?;
            ensure(
                (0.0..=1.0).contains(&s.dampening),
                &f("sgd.dampening"),
                "must be in [0, 1]",
            )?;
            ensure(
                !s.nesterov || (momentum > 0.0 && s.dampening == 0.0),
                &f("sgd.nesterov"),
                "needs momentum > 0 and dampening 0 (as torch.optim.SGD)",
            )?;
            K::Sgd {
                momentum,
                dampening: s.dampening,
                nesterov: s.nesterov,
            }
        }
        Some(Kind::Nadam(n)) => K::Nadam {
            beta1: beta(&f("nadam.beta1"), n.beta1, K::DEFAULT_BETA1)?,
            beta2: beta(&f("nadam.beta2"), n.beta2, K::DEFAULT_BETA2)?,
            eps: positive(&f("nadam.eps"), n.eps, K::DEFAULT_EPS)?,
            momentum_decay: non_negative(
                &f("nadam.momentum_decay"),
                n.momentum_decay.unwrap_or(K::DEFAULT_NADAM_MOMENTUM_DECAY),
            )?,
        },
        Some(Kind::Rmsprop(r)) => K::RmsProp {
            alpha: beta(&f("rmsprop.alpha"), r.alpha, K::DEFAULT_RMSPROP_ALPHA)?,
            eps: positive(&f("rmsprop.eps"), r.eps, K::DEFAULT_EPS)?,
            momentum: non_negative(&f("rmsprop.momentum"), r.momentum)?,
            centered: r.centered,
        },
        Some(Kind::Adamax(a)) => K::Adamax {
            beta1: beta(&f("adamax.beta1"), a.beta1, K::DEFAULT_BETA1)?,
            beta2: beta(&f("adamax.beta2"), a.beta2, K::DEFAULT_BETA2)?,
            eps: positive(&f("adamax.eps"), a.eps, K::DEFAULT_EPS)?,
        },
        Some(Kind::Adagrad(a)) => K::Adagrad {
            lr_decay: non_negative(&f("adagrad.lr_decay"), a.lr_decay)?,
            initial_accumulator_value: non_negative(
                &f("adagrad.initial_accumulator_value"),
                a.initial_accumulator_value,
            )?,
            eps: positive(&f("adagrad.eps"), a.eps, K::DEFAULT_ADAGRAD_EPS)?,
        },
    })
}

pub(super) fn validate_clip(clip: &pb::GradClip) -> Result<GradClip> {
    use pb::grad_clip::Kind;
    match &clip.kind {
        None => Err(FieldError::new(
            "spec.training.grad_clip",
            "set norm or value",
        )),
        Some(Kind::Norm(n)) => {
            let norm_type = n.norm_type.unwrap_or(GradClip::DEFAULT_NORM_TYPE);
            ensure(
                norm_type >= 1.0,
                "spec.training.grad_clip.norm.norm_type",
                "must be >= 1 (or inf)",
            )?;
            Ok(GradClip::Norm {
                max_norm: positive(
                    "spec.training.grad_clip.norm.max_norm",
                    Some(n.max_norm),
                    0.0,
                )?,
                norm_type,
            })
        }
        Some(Kind::Value(v)) => Ok(GradClip::Value {
            clip_value: positive(
                "spec.training.grad_clip.value.clip_value",
                Some(v.clip_value),
                0.0,
            )?,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testing::{assert_training_errors, err, minimal};
    use crate::spec::JobSpec;

    #[test]
    fn auto_learning_rate_leaves_the_rate_unset() {
        let auto = |learning_rate: Option<f64>, kind: pb::JobKind| pb::JobSpec {
            kind: kind as i32,
            training: Some(pb::TrainingSpec {
                optimizer: Some(pb::Optimizer {
                    auto_learning_rate: true,
                    learning_rate,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..minimal()
        };
        let spec = JobSpec::from_proto(&auto(None, pb::JobKind::Train)).unwrap();
        assert!(spec.training.auto_learning_rate);
        assert_eq!(
            err(&auto(Some(0.1), pb::JobKind::Train)),
            "spec.training.optimizer.learning_rate: must be unset when auto_learning_rate is true"
        );
        assert_eq!(
            err(&auto(None, pb::JobKind::LrRangeTest)),
            "spec.training.optimizer.auto_learning_rate: applies to training jobs, not to JOB_KIND_LR_RANGE_TEST"
        );
    }

    #[test]
    fn optimizer_defaults_are_torchs() {
        let lr_of = |kind: pb::optimizer::Kind| {
            let mut s = minimal();
            s.training = Some(pb::TrainingSpec {
                optimizer: Some(pb::Optimizer {
                    kind: Some(kind),
                    ..Default::default()
                }),
                ..Default::default()
            });
            let o = JobSpec::from_proto(&s).unwrap().training.optimizer;
            (o.learning_rate, o.weight_decay)
        };
        use pb::optimizer::Kind;
        assert_eq!(lr_of(Kind::Sgd(Default::default())), (1e-3, 0.0));
        assert_eq!(lr_of(Kind::Adamw(Default::default())), (1e-3, 1e-2));
        assert_eq!(lr_of(Kind::Nadam(Default::default())), (2e-3, 0.0));
        assert_eq!(lr_of(Kind::Rmsprop(Default::default())), (1e-2, 0.0));
        assert_eq!(lr_of(Kind::Adamax(Default::default())), (2e-3, 0.0));
        assert_eq!(lr_of(Kind::Adagrad(Default::default())), (1e-2, 0.0));
    }

    /// One bad value per optimizer and clipping field, each refused with its path.
    #[test]
    fn optimizer_errors_name_the_field() {
        use pb::optimizer;
        let opt = |kind: optimizer::Kind| pb::TrainingSpec {
            optimizer: Some(pb::Optimizer {
                kind: Some(kind),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cases: Vec<(pb::TrainingSpec, &str)> = vec![
            (
                opt(optimizer::Kind::Adamw(pb::Adam {
                    beta1: Some(-0.1),
                    ..Default::default()
                })),
                "spec.training.optimizer.adamw.beta1: must be in [0, 1)",
            ),
            (
                opt(optimizer::Kind::Nadam(pb::Nadam {
                    momentum_decay: Some(-1.0),
                    ..Default::default()
                })),
                "spec.training.optimizer.nadam.momentum_decay: must be >= 0",
            ),
            (
                opt(optimizer::Kind::Rmsprop(pb::RmsProp {
                    alpha: Some(1.0),
                    ..Default::default()
                })),
                "spec.training.optimizer.rmsprop.alpha: must be in [0, 1)",
            ),
            (
                opt(optimizer::Kind::Adagrad(pb::Adagrad {
                    eps: Some(0.0),
                    ..Default::default()
                })),
                "spec.training.optimizer.adagrad.eps: must be > 0",
            ),
            (
                pb::TrainingSpec {
                    grad_clip: Some(pb::GradClip {
                        kind: Some(pb::grad_clip::Kind::Norm(pb::ClipByNorm {
                            max_norm: -1.0,
                            norm_type: None,
                        })),
                    }),
                    ..Default::default()
                },
                "spec.training.grad_clip.norm.max_norm: must be > 0",
            ),
        ];
        assert_training_errors(cases);
    }
}
