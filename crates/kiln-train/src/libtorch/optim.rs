//! The optimizers' hot path on libtorch itself.
//!
//! Written on burn's tensor API, one Adam step is about a dozen out-of-place
//! operations per parameter, each allocating its result and each going
//! through burn's dispatch. libtorch has the in-place kernels that
//! torch.optim's single-tensor path calls (`lerp_`, `mul_`, `addcmul_`,
//! `addcdiv_`); called here directly on the tensors behind burn's, an Adam
//! step is the same kernels in the same order as torch's, so it is both
//! cheaper and closer to torch (the kernels' own fused multiply-adds
//! included). Tensors that are not plain LibTorch tensors (another backend,
//! an optimizer state restored onto an autodiff device) take the burn-op path.

use burn::backend::libtorch::TchTensor;
use burn::backend::LibTorch;
use burn::tensor::Tensor;

use crate::backend::{AdamMoments, AdamOutcome, AdamSettings};

/// [`adam`] on burn tensors when every one of them is a plain LibTorch
/// tensor; otherwise the inputs come back untouched.
pub(super) fn adam_step<const D: usize>(
    settings: &AdamSettings,
    param: Tensor<D>,
    grad: Tensor<D>,
    state: Option<AdamMoments<D>>,
) -> AdamOutcome<D> {
    let on_libtorch = is_libtorch(&param)
        && is_libtorch(&grad)
        && state.as_ref().is_none_or(|s| {
            is_libtorch(&s.exp_avg)
                && is_libtorch(&s.exp_avg_sq)
                && s.max_exp_avg_sq.as_ref().is_none_or(is_libtorch)
        });
    if !on_libtorch {
        return AdamOutcome::Declined(param, grad, state);
    }
    let state = state.map(|s| {
        (
            s.step,
            into_tch(s.exp_avg),
            into_tch(s.exp_avg_sq),
            s.max_exp_avg_sq.map(into_tch),
        )
    });
    let (param, (step, exp_avg, exp_avg_sq, max_exp_avg_sq)) = adam(
        settings.lr,
        settings.beta1,
        settings.beta2,
        settings.eps,
        settings.amsgrad,
        settings.weight_decay,
        settings.decoupled,
        into_tch(param),
        into_tch(grad),
        state,
    );
    AdamOutcome::Stepped(
        from_tch(param),
        AdamMoments {
            step,
            exp_avg: from_tch(exp_avg),
            exp_avg_sq: from_tch(exp_avg_sq),
            max_exp_avg_sq: max_exp_avg_sq.map(from_tch),
        },
    )
}

/// Whether `t` is a plain (non-autodiff) LibTorch tensor.
fn is_libtorch<const D: usize>(t: &Tensor<D>) -> bool {
    t.clone().try_into_primitive::<LibTorch>().is_ok()
}

/// The libtorch tensor behind `t`. Check [`is_libtorch`] first.
fn into_tch<const D: usize>(t: Tensor<D>) -> TchTensor {
    t.try_into_primitive::<LibTorch>()
        .expect("a plain LibTorch tensor")
}

fn from_tch<const D: usize>(t: tch::Tensor) -> Tensor<D> {
    Tensor::from_primitive::<LibTorch>(TchTensor::new(t))
}

/// A tensor this step may update in place: `t`'s own buffer when no other
/// burn tensor shares it (burn-tch's rule for its own in-place operations),
/// else a copy. Parameters are shared, for example, with the best epoch's
/// snapshot, which must not change.
fn writable(t: TchTensor) -> tch::Tensor {
    if t.can_mut() {
        t.tensor
    } else {
        t.tensor.copy()
    }
}

/// One torch.optim.Adam / AdamW step (`_single_tensor_adam`) in place.
/// `state` is (step, exp_avg, exp_avg_sq, max_exp_avg_sq); a first step
/// starts from zeros. Returns the new parameter and state.
#[allow(clippy::too_many_arguments)]
fn adam(
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    amsgrad: bool,
    weight_decay: f64,
    decoupled: bool,
    param: TchTensor,
    grad: TchTensor,
    state: Option<(u64, TchTensor, TchTensor, Option<TchTensor>)>,
) -> (
    tch::Tensor,
    (u64, tch::Tensor, tch::Tensor, Option<tch::Tensor>),
) {
    let grad = grad.tensor;
    let (step, mut exp_avg, mut exp_avg_sq, max_exp_avg_sq) = match state {
        Some((step, m, v, max)) => (step, writable(m), writable(v), max.map(writable)),
        None => (0, grad.zeros_like(), grad.zeros_like(), None),
    };
    let step = step + 1;
    let mut param = writable(param);
    if !amsgrad && cpu::usable(&[&param, &grad, &exp_avg, &exp_avg_sq]) {
        let t = step as f64;
        let consts = cpu::AdamConsts {
            lerp_weight: 1.0 - beta1,
            beta2,
            one_minus_beta2: 1.0 - beta2,
            weight_decay: (!decoupled && weight_decay != 0.0).then_some(weight_decay),
            decay_factor: (decoupled && weight_decay != 0.0).then_some(1.0 - lr * weight_decay),
            bias_correction2_sqrt: (1.0 - beta2.powf(t)).sqrt(),
            eps,
            neg_step_size: -(lr / (1.0 - beta1.powf(t))),
        };
        cpu::adam(&mut param, &grad, &mut exp_avg, &mut exp_avg_sq, &consts);
        return (param, (step, exp_avg, exp_avg_sq, None));
    }
    let grad = if weight_decay == 0.0 {
        grad
    } else if decoupled {
        // param.mul_(1 - lr * weight_decay)
        let _ = param.f_mul_scalar_(1.0 - lr * weight_decay).expect("mul_");
        grad
    } else {
        // grad = grad.add(param, alpha=weight_decay), without the fused
        // multiply-add (libtorch's C API has no alpha), as the burn path.
        &grad + &param * weight_decay
    };
    // exp_avg.lerp_(grad, 1 - beta1)
    let _ = exp_avg.f_lerp_(&grad, 1.0 - beta1).expect("lerp_");
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2): the
    // kernel computes self + (value * t1) * t2; (value * t1) is formed first
    // here (the C API's addcmul_ has value 1), which rounds the same.
    let _ = exp_avg_sq.f_mul_scalar_(beta2).expect("mul_");
    let _ = exp_avg_sq
        .f_addcmul_(&(&grad * (1.0 - beta2)), &grad)
        .expect("addcmul_");

    let t = step as f64;
    let bias_correction1 = 1.0 - beta1.powf(t);
    let bias_correction2 = 1.0 - beta2.powf(t);
    let step_size = lr / bias_correction1;
    let bias_correction2_sqrt = bias_correction2.sqrt();
    let (second, max_exp_avg_sq) = if amsgrad {
        // torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
        // (the max starts at zeros, and exp_avg_sq >= 0)
        let max = match max_exp_avg_sq {
            Some(max) => {
                let _ = max.f_maximum_out(&max, &exp_avg_sq).expect("maximum");
                max
            }
            None => exp_avg_sq.copy(),
        };
        (max.shallow_clone(), Some(max))
    } else {
        (exp_avg_sq.shallow_clone(), None)
    };
    // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    let mut denom = second.sqrt();
    let _ = denom.f_div_scalar_(bias_correction2_sqrt).expect("div_");
    let _ = denom.f_add_scalar_(eps).expect("add_");
    // param.addcdiv_(exp_avg, denom, value=-step_size): the kernel computes
    // self + (value * t1) / t2, formed the same way as addcmul_ above.
    let _ = param
        .f_addcdiv_(&(&exp_avg * -step_size), &denom)
        .expect("addcdiv_");
    (param, (step, exp_avg, exp_avg_sq, max_exp_avg_sq))
}

/// Adam's elementwise work on CPU float32 buffers, fused: one pass updates
/// both moments, libtorch takes the square root (its vectorized sqrt is not
/// always the correctly rounded one, and torch's result is the reference),
/// and a second pass forms the denominator and updates the parameter. Per
/// element it is the arithmetic of torch's kernels in their order, fused
/// multiply-adds where they have them (`lerp_`, `addcmul_`, `add(alpha=)`),
/// so the result is bit for bit torch.optim.Adam's single-tensor step, in
/// three passes over memory instead of its seven kernels. The two passes run
/// on the calling thread: splitting them over extra threads measured 10-15%
/// slower on the wide benchmark, because those threads compete for the cores
/// with libtorch's OpenMP workers, which spin between kernels.
mod cpu {
    pub(super) struct AdamConsts {
        pub lerp_weight: f64,
        pub beta2: f64,
        pub one_minus_beta2: f64,
        /// Coupled L2: `grad = grad.add(param, alpha=weight_decay)`.
        pub weight_decay: Option<f64>,
        /// AdamW: `param.mul_(1 - lr * weight_decay)`.
        pub decay_factor: Option<f64>,
        pub bias_correction2_sqrt: f64,
        pub eps: f64,
        pub neg_step_size: f64,
    }

    /// Contiguous float32 CPU tensors of one size, on a CPU with AVX2 and FMA.
    pub(super) fn usable(tensors: &[&tch::Tensor]) -> bool {
        let n = tensors[0].numel();
        simd_available()
            && tensors.iter().all(|t| {
                t.device() == tch::Device::Cpu
                    && t.kind() == tch::Kind::Float
                    && t.is_contiguous()
                    && t.numel() == n
            })
    }

    #[cfg(target_arch = "x86_64")]
    fn simd_available() -> bool {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn simd_available() -> bool {
        false
    }

    /// # Safety
    /// `t` is a contiguous float32 CPU tensor of `n > 0` elements, and no
    /// other slice of its buffer is alive while this one is.
    #[allow(clippy::mut_from_ref)]
    unsafe fn values(t: &tch::Tensor, n: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n)
    }

    /// Updates `param`, `exp_avg` and `exp_avg_sq` in place (see the module
    /// doc). The caller has checked them with [`usable`] and owns them alone.
    pub(super) fn adam(
        param: &mut tch::Tensor,
        grad: &tch::Tensor,
        exp_avg: &mut tch::Tensor,
        exp_avg_sq: &mut tch::Tensor,
        c: &AdamConsts,
    ) {
        let n = param.numel();
        if n == 0 {
            return;
        }
        // SAFETY: four distinct contiguous float32 buffers of n elements
        // (exp_avg and exp_avg_sq are the optimizer's own, param is unshared:
        // see `writable`; grad is only read), nothing else touches them
        // meanwhile, and each slice dies before the next pass.
        unsafe {
            moments(
                values(param, n),
                values(grad, n),
                values(exp_avg, n),
                values(exp_avg_sq, n),
                c,
            )
        };
        // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        let sqrt = exp_avg_sq.sqrt();
        // SAFETY: as above; `sqrt` is a new contiguous buffer of n elements.
        unsafe { update(values(param, n), values(exp_avg, n), values(&sqrt, n), c) };
    }

    /// AdamW's decay, the coupled L2 term, `exp_avg.lerp_(grad, 1 - beta1)`
    /// and `exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)`.
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    fn moments(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &AdamConsts) {
        // Scalars meet float32 tensors as float32, as in torch's kernels.
        let w = c.lerp_weight as f32;
        let small = w.abs() < 0.5;
        let coeff = if small { w } else { w - 1.0 };
        let beta2 = c.beta2 as f32;
        let one_minus_beta2 = c.one_minus_beta2 as f32;
        if let Some(factor) = c.decay_factor {
            let factor = factor as f32;
            p.iter_mut().for_each(|p| *p *= factor);
        }
        let wd = c.weight_decay.map(|wd| wd as f32);
        for i in 0..p.len() {
            // grad.add(param, alpha=weight_decay): a fused multiply-add
            let g = match wd {
                Some(wd) => p[i].mul_add(wd, g[i]),
                None => g[i],
            };
            // lerp: coeff * (end - start) + (start if w < 0.5 else end), fused
            let base = if small { m[i] } else { g };
            m[i] = coeff.mul_add(g - m[i], base);
            // (value * t1) * t2 + self, fused
            v[i] = (one_minus_beta2 * g).mul_add(g, v[i] * beta2);
        }
    }

    /// `param.addcdiv_(exp_avg, denom, value=-step_size)` with
    /// `denom = sqrt / bias_correction2_sqrt + eps`.
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
    fn update(p: &mut [f32], m: &[f32], sqrt: &[f32], c: &AdamConsts) {
        let bc2 = c.bias_correction2_sqrt as f32;
        let eps = c.eps as f32;
        let value = c.neg_step_size as f32;
        for i in 0..p.len() {
            let denom = sqrt[i] / bc2 + eps;
            p[i] += value * m[i] / denom;
        }
    }
}
