//! The per-tensor update rules, each a transcription of torch 2.9's
//! `_single_tensor_<name>` (torch/optim/<name>.py). Scalars are computed in
//! f64 as Python does and meet the f32 tensors at the same places; the
//! comments quote the torch line each step mirrors.

use burn::optim::{LearningRate, Optimizer, RecordState, StateSink, StateSource};
use burn::tensor::{Device, Tensor};

use super::MomentumOverride;
use crate::backend::{AdamMoments, AdamOutcome, AdamSettings, Backend};
use crate::Active;

/// Implements burn's [`RecordState`] (the optimizer record) for a state
/// struct: its tensors, optional tensors and scalars by field name.
/// (burn's derive only works inside burn-optim.)
macro_rules! record_state {
    ($name:ident { tensors: [$($t:ident),*], optional: [$($o:ident),*], scalars: [$($s:ident: $sty:ty),*] }) => {
        impl<const D: usize> RecordState for $name<D> {
            fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
                $(out.push_tensor(prefix, stringify!($t), self.$t.clone().into_data());)*
                $(if let Some(t) = &self.$o {
                    out.push_tensor(prefix, stringify!($o), t.clone().into_data());
                })*
                $(out.push_scalar(prefix, stringify!($s), self.$s.into());)*
            }

            fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
                Some(Self {
                    $($t: Tensor::from_data(src.take_tensor(prefix, stringify!($t))?, device),)*
                    $($o: src
                        .take_tensor(prefix, stringify!($o))
                        .map(|data| Tensor::from_data(data, device)),)*
                    $($s: <$sty>::try_from(src.take_scalar(prefix, stringify!($s))?).ok()?,)*
                })
            }
        }
    };
}

/// `grad.add(param, alpha=weight_decay)`: coupled L2.
fn l2<const D: usize>(grad: Tensor<D>, param: &Tensor<D>, weight_decay: f64) -> Tensor<D> {
    if weight_decay == 0.0 {
        grad
    } else {
        grad + param.clone().mul_scalar(weight_decay)
    }
}

/// `start.lerp_(end, weight)` in ATen's two forms: `start + w * (end - start)`
/// for |w| < 0.5, else `end - (end - start) * (1 - w)`, with `w` an f32 as
/// in the kernel.
fn lerp<const D: usize>(start: Tensor<D>, end: Tensor<D>, weight: f64) -> Tensor<D> {
    let w = weight as f32;
    if w.abs() < 0.5 {
        start.clone() + (end - start).mul_scalar(w as f64)
    } else {
        end.clone() - (end - start).mul_scalar((1.0f32 - w) as f64)
    }
}

/// `avg.mul_(beta).addcmul_(grad, grad, value=1 - beta)`.
fn ema_square<const D: usize>(avg: Tensor<D>, grad: &Tensor<D>, beta: f64) -> Tensor<D> {
    avg.mul_scalar(beta) + grad.clone().mul_scalar(1.0 - beta).mul(grad.clone())
}

/// `param.addcdiv_(t1, t2, value=value)`, which ATen evaluates as
/// `param + (value * t1) / t2`.
fn addcdiv<const D: usize>(
    param: Tensor<D>,
    t1: Tensor<D>,
    t2: Tensor<D>,
    value: f64,
) -> Tensor<D> {
    param + t1.mul_scalar(value).div(t2)
}

fn device_of<const D: usize>(t: Tensor<D>, device: &Device) -> Tensor<D> {
    t.to_device(device)
}

// ---------------------------------------------------------------- SGD

/// torch.optim.SGD.
#[derive(Clone)]
pub(super) struct Sgd {
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub overrides: MomentumOverride,
}

#[derive(Clone)]
pub(super) struct SgdState<const D: usize> {
    /// torch's `momentum_buffer`, created by the first step with momentum.
    momentum_buffer: Option<Tensor<D>>,
}

record_state!(SgdState {
    tensors: [],
    optional: [momentum_buffer],
    scalars: []
});

impl Optimizer for Sgd {
    type State<const D: usize> = SgdState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        param: Tensor<D>,
        grad: Tensor<D>,
        state: Option<SgdState<D>>,
    ) -> (Tensor<D>, Option<SgdState<D>>) {
        let momentum = self.overrides.or(self.momentum);
        let mut buffer = state.and_then(|s| s.momentum_buffer);
        let mut grad = l2(grad, &param, self.weight_decay);
        if momentum != 0.0 {
            let buf = match buffer.take() {
                // buf = grad.detach().clone()
                None => grad.clone(),
                // buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                Some(buf) if self.dampening == 0.0 => buf.mul_scalar(momentum) + grad.clone(),
                Some(buf) => {
                    buf.mul_scalar(momentum) + grad.clone().mul_scalar(1.0 - self.dampening)
                }
            };
            grad = if self.nesterov {
                // grad = grad.add(buf, alpha=momentum)
                grad + buf.clone().mul_scalar(momentum)
            } else {
                buf.clone()
            };
            buffer = Some(buf);
        }
        // param.add_(grad, alpha=-lr)
        let param = param + grad.mul_scalar(-lr);
        (
            param,
            Some(SgdState {
                momentum_buffer: buffer,
            }),
        )
    }

    fn to_device<const D: usize>(state: SgdState<D>, device: &Device) -> SgdState<D> {
        SgdState {
            momentum_buffer: state.momentum_buffer.map(|t| device_of(t, device)),
        }
    }
}

// ---------------------------------------------------------------- Adam / AdamW

/// torch.optim.Adam, and AdamW (`decoupled`: the weight decay shrinks the
/// parameter instead of joining the gradient).
#[derive(Clone)]
pub(super) struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub amsgrad: bool,
    pub weight_decay: f64,
    pub decoupled: bool,
    pub overrides: MomentumOverride,
}

#[derive(Clone)]
pub(super) struct AdamState<const D: usize> {
    step: u64,
    exp_avg: Tensor<D>,
    exp_avg_sq: Tensor<D>,
    max_exp_avg_sq: Option<Tensor<D>>,
}

record_state!(AdamState {
    tensors: [exp_avg, exp_avg_sq],
    optional: [max_exp_avg_sq],
    scalars: [step: u64]
});

/// The same state as the backend seam spells it (field for field).
impl<const D: usize> AdamState<D> {
    fn into_moments(self) -> AdamMoments<D> {
        AdamMoments {
            step: self.step,
            exp_avg: self.exp_avg,
            exp_avg_sq: self.exp_avg_sq,
            max_exp_avg_sq: self.max_exp_avg_sq,
        }
    }

    fn from_moments(m: AdamMoments<D>) -> Self {
        Self {
            step: m.step,
            exp_avg: m.exp_avg,
            exp_avg_sq: m.exp_avg_sq,
            max_exp_avg_sq: m.max_exp_avg_sq,
        }
    }
}

impl Optimizer for Adam {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        mut param: Tensor<D>,
        mut grad: Tensor<D>,
        state: Option<AdamState<D>>,
    ) -> (Tensor<D>, Option<AdamState<D>>) {
        let beta1 = self.overrides.or(self.beta1);
        let beta2 = self.beta2;
        let settings = AdamSettings {
            lr,
            beta1,
            beta2,
            eps: self.eps,
            amsgrad: self.amsgrad,
            weight_decay: self.weight_decay,
            decoupled: self.decoupled,
        };
        let moments = state.map(AdamState::into_moments);
        let state = match Active::adam_step(&settings, param, grad, moments) {
            AdamOutcome::Stepped(param, moments) => {
                return (param, Some(AdamState::from_moments(moments)))
            }
            AdamOutcome::Declined(p, g, moments) => {
                (param, grad) = (p, g);
                moments.map(AdamState::from_moments)
            }
        };
        let AdamState {
            step,
            exp_avg,
            exp_avg_sq,
            max_exp_avg_sq,
        } = state.unwrap_or_else(|| AdamState {
            step: 0,
            exp_avg: grad.zeros_like(),
            exp_avg_sq: grad.zeros_like(),
            max_exp_avg_sq: None,
        });
        let step = step + 1;
        if self.weight_decay != 0.0 {
            if self.decoupled {
                // param.mul_(1 - lr * weight_decay)
                param = param.mul_scalar(1.0 - lr * self.weight_decay);
            } else {
                grad = l2(grad, &param, self.weight_decay);
            }
        }
        // exp_avg.lerp_(grad, 1 - beta1)
        let exp_avg = lerp(exp_avg, grad.clone(), 1.0 - beta1);
        // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        let exp_avg_sq = ema_square(exp_avg_sq, &grad, beta2);

        let t = step as f64;
        let bias_correction1 = 1.0 - beta1.powf(t);
        let bias_correction2 = 1.0 - beta2.powf(t);
        let step_size = lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.sqrt();

        let (second, max_exp_avg_sq) = if self.amsgrad {
            // torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
            // (the max starts at zeros, and exp_avg_sq >= 0)
            let max = match max_exp_avg_sq {
                Some(max) => max.max_pair(exp_avg_sq.clone()),
                None => exp_avg_sq.clone(),
            };
            (max.clone(), Some(max))
        } else {
            (exp_avg_sq.clone(), None)
        };
        // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        let denom = second
            .sqrt()
            .div_scalar(bias_correction2_sqrt)
            .add_scalar(self.eps);
        // param.addcdiv_(exp_avg, denom, value=-step_size)
        let param = addcdiv(param, exp_avg.clone(), denom, -step_size);
        (
            param,
            Some(AdamState {
                step,
                exp_avg,
                exp_avg_sq,
                max_exp_avg_sq,
            }),
        )
    }

    fn to_device<const D: usize>(state: AdamState<D>, device: &Device) -> AdamState<D> {
        AdamState {
            step: state.step,
            exp_avg: device_of(state.exp_avg, device),
            exp_avg_sq: device_of(state.exp_avg_sq, device),
            max_exp_avg_sq: state.max_exp_avg_sq.map(|t| device_of(t, device)),
        }
    }
}

// ---------------------------------------------------------------- NAdam

/// torch.optim.NAdam (coupled weight decay, the default).
#[derive(Clone)]
pub(super) struct Nadam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub momentum_decay: f64,
    pub weight_decay: f64,
    pub overrides: MomentumOverride,
}

#[derive(Clone)]
pub(super) struct NadamState<const D: usize> {
    step: u64,
    /// torch keeps it as a float32 tensor, so it is multiplied in f32.
    mu_product: f32,
    exp_avg: Tensor<D>,
    exp_avg_sq: Tensor<D>,
}

record_state!(NadamState {
    tensors: [exp_avg, exp_avg_sq],
    optional: [],
    scalars: [step: u64, mu_product: f32]
});

impl Optimizer for Nadam {
    type State<const D: usize> = NadamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        param: Tensor<D>,
        grad: Tensor<D>,
        state: Option<NadamState<D>>,
    ) -> (Tensor<D>, Option<NadamState<D>>) {
        let beta1 = self.overrides.or(self.beta1);
        let beta2 = self.beta2;
        let NadamState {
            step,
            mu_product,
            exp_avg,
            exp_avg_sq,
        } = state.unwrap_or_else(|| NadamState {
            step: 0,
            mu_product: 1.0,
            exp_avg: grad.zeros_like(),
            exp_avg_sq: grad.zeros_like(),
        });
        let step = step + 1;
        let t = step as f64;
        let bias_correction2 = 1.0 - beta2.powf(t);
        let grad = l2(grad, &param, self.weight_decay);

        // mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
        let mu = beta1 * (1.0 - 0.5 * 0.96f64.powf(t * self.momentum_decay));
        let mu_next = beta1 * (1.0 - 0.5 * 0.96f64.powf((t + 1.0) * self.momentum_decay));
        // mu_product *= mu (a float32 tensor times a Python float)
        let mu_product = mu_product * mu as f32;

        let exp_avg = lerp(exp_avg, grad.clone(), 1.0 - beta1);
        let exp_avg_sq = ema_square(exp_avg_sq, &grad, beta2);
        // denom = exp_avg_sq.div(bias_correction2).sqrt(); denom.add_(eps)
        let denom = exp_avg_sq
            .clone()
            .div_scalar(bias_correction2)
            .sqrt()
            .add_scalar(self.eps);

        let mu_product_f64 = mu_product as f64;
        let mu_product_next = mu_product_f64 * mu_next;
        // param.addcdiv_(grad, denom, value=(-lr * (1.0 - mu) / (1.0 - mu_product)))
        let param = addcdiv(
            param,
            grad,
            denom.clone(),
            -lr * (1.0 - mu) / (1.0 - mu_product_f64),
        );
        // param.addcdiv_(exp_avg, denom, value=(-lr * mu_next) / (1.0 - mu_product_next))
        let param = addcdiv(
            param,
            exp_avg.clone(),
            denom,
            (-lr * mu_next) / (1.0 - mu_product_next),
        );
        (
            param,
            Some(NadamState {
                step,
                mu_product,
                exp_avg,
                exp_avg_sq,
            }),
        )
    }

    fn to_device<const D: usize>(state: NadamState<D>, device: &Device) -> NadamState<D> {
        NadamState {
            exp_avg: device_of(state.exp_avg, device),
            exp_avg_sq: device_of(state.exp_avg_sq, device),
            ..state
        }
    }
}

// ---------------------------------------------------------------- RMSprop

/// torch.optim.RMSprop.
#[derive(Clone)]
pub(super) struct RmsProp {
    pub alpha: f64,
    pub eps: f64,
    pub momentum: f64,
    pub centered: bool,
    pub weight_decay: f64,
}

#[derive(Clone)]
pub(super) struct RmsPropState<const D: usize> {
    step: u64,
    square_avg: Tensor<D>,
    /// Centered only.
    grad_avg: Option<Tensor<D>>,
    /// With momentum > 0 only.
    momentum_buffer: Option<Tensor<D>>,
}

record_state!(RmsPropState {
    tensors: [square_avg],
    optional: [grad_avg, momentum_buffer],
    scalars: [step: u64]
});

impl Optimizer for RmsProp {
    type State<const D: usize> = RmsPropState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        param: Tensor<D>,
        grad: Tensor<D>,
        state: Option<RmsPropState<D>>,
    ) -> (Tensor<D>, Option<RmsPropState<D>>) {
        let alpha = self.alpha;
        let RmsPropState {
            step,
            square_avg,
            grad_avg,
            momentum_buffer,
        } = state.unwrap_or_else(|| RmsPropState {
            step: 0,
            square_avg: grad.zeros_like(),
            grad_avg: self.centered.then(|| grad.zeros_like()),
            momentum_buffer: (self.momentum > 0.0).then(|| grad.zeros_like()),
        });
        let grad = l2(grad, &param, self.weight_decay);
        // square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        let square_avg = ema_square(square_avg, &grad, alpha);
        let (avg, grad_avg) = if self.centered {
            // grad_avg.lerp_(grad, 1 - alpha)
            let grad_avg = lerp(
                grad_avg.unwrap_or_else(|| grad.zeros_like()),
                grad.clone(),
                1.0 - alpha,
            );
            // avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
            let avg = (square_avg.clone() - grad_avg.clone().mul(grad_avg.clone())).sqrt();
            (avg, Some(grad_avg))
        } else {
            (square_avg.clone().sqrt(), None)
        };
        // avg = avg.add_(eps)
        let avg = avg.add_scalar(self.eps);
        let (param, momentum_buffer) = if self.momentum > 0.0 {
            // buf.mul_(momentum).addcdiv_(grad, avg)
            let buf = addcdiv(
                momentum_buffer
                    .unwrap_or_else(|| grad.zeros_like())
                    .mul_scalar(self.momentum),
                grad,
                avg,
                1.0,
            );
            // param.add_(buf, alpha=-lr)
            (param + buf.clone().mul_scalar(-lr), Some(buf))
        } else {
            // param.addcdiv_(grad, avg, value=-lr)
            (addcdiv(param, grad, avg, -lr), None)
        };
        (
            param,
            Some(RmsPropState {
                step: step + 1,
                square_avg,
                grad_avg,
                momentum_buffer,
            }),
        )
    }

    fn to_device<const D: usize>(state: RmsPropState<D>, device: &Device) -> RmsPropState<D> {
        RmsPropState {
            step: state.step,
            square_avg: device_of(state.square_avg, device),
            grad_avg: state.grad_avg.map(|t| device_of(t, device)),
            momentum_buffer: state.momentum_buffer.map(|t| device_of(t, device)),
        }
    }
}

// ---------------------------------------------------------------- Adamax

/// torch.optim.Adamax.
#[derive(Clone)]
pub(super) struct Adamax {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

#[derive(Clone)]
pub(super) struct AdamaxState<const D: usize> {
    step: u64,
    exp_avg: Tensor<D>,
    exp_inf: Tensor<D>,
}

record_state!(AdamaxState {
    tensors: [exp_avg, exp_inf],
    optional: [],
    scalars: [step: u64]
});

impl Optimizer for Adamax {
    type State<const D: usize> = AdamaxState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        param: Tensor<D>,
        grad: Tensor<D>,
        state: Option<AdamaxState<D>>,
    ) -> (Tensor<D>, Option<AdamaxState<D>>) {
        let AdamaxState {
            step,
            exp_avg,
            exp_inf,
        } = state.unwrap_or_else(|| AdamaxState {
            step: 0,
            exp_avg: grad.zeros_like(),
            exp_inf: grad.zeros_like(),
        });
        let step = step + 1;
        let grad = l2(grad, &param, self.weight_decay);
        // exp_avg.lerp_(grad, 1 - beta1)
        let exp_avg = lerp(exp_avg, grad.clone(), 1.0 - self.beta1);
        // torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf)
        let exp_inf = exp_inf
            .mul_scalar(self.beta2)
            .max_pair(grad.abs().add_scalar(self.eps));
        // clr = lr / (1 - beta1 ** step); param.addcdiv_(exp_avg, exp_inf, value=-clr)
        let clr = lr / (1.0 - self.beta1.powf(step as f64));
        let param = addcdiv(param, exp_avg.clone(), exp_inf.clone(), -clr);
        (
            param,
            Some(AdamaxState {
                step,
                exp_avg,
                exp_inf,
            }),
        )
    }

    fn to_device<const D: usize>(state: AdamaxState<D>, device: &Device) -> AdamaxState<D> {
        AdamaxState {
            step: state.step,
            exp_avg: device_of(state.exp_avg, device),
            exp_inf: device_of(state.exp_inf, device),
        }
    }
}

// ---------------------------------------------------------------- Adagrad

/// torch.optim.Adagrad.
#[derive(Clone)]
pub(super) struct Adagrad {
    pub lr_decay: f64,
    pub initial_accumulator_value: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

#[derive(Clone)]
pub(super) struct AdagradState<const D: usize> {
    step: u64,
    sum: Tensor<D>,
}

record_state!(AdagradState {
    tensors: [sum],
    optional: [],
    scalars: [step: u64]
});

impl Optimizer for Adagrad {
    type State<const D: usize> = AdagradState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        param: Tensor<D>,
        grad: Tensor<D>,
        state: Option<AdagradState<D>>,
    ) -> (Tensor<D>, Option<AdagradState<D>>) {
        let AdagradState { step, sum } = state.unwrap_or_else(|| AdagradState {
            step: 0,
            // state["sum"] = torch.full_like(p, initial_accumulator_value)
            sum: grad.full_like(self.initial_accumulator_value),
        });
        let step = step + 1;
        let grad = l2(grad, &param, self.weight_decay);
        // clr = lr / (1 + (step - 1) * lr_decay)
        let clr = lr / (1.0 + (step - 1) as f64 * self.lr_decay);
        // state_sum.addcmul_(grad, grad, value=1)
        let sum = sum + grad.clone().mul(grad.clone());
        // std = state_sum.sqrt().add_(eps)
        let std = sum.clone().sqrt().add_scalar(self.eps);
        // param.addcdiv_(grad, std, value=-clr)
        let param = addcdiv(param, grad, std, -clr);
        (param, Some(AdagradState { step, sum }))
    }

    fn to_device<const D: usize>(state: AdagradState<D>, device: &Device) -> AdagradState<D> {
        AdagradState {
            step: state.step,
            sum: device_of(state.sum, device),
        }
    }
}
