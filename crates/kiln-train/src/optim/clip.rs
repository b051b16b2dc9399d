//! Gradient clipping between backward and the optimizer step, as
//! torch.nn.utils does it: `clip_grad_norm_` scales every gradient by one
//! factor from the global norm over all parameters (burn's own clipping works
//! per tensor), `clip_grad_value_` clamps each element.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use kiln_core::spec::GradClip;

/// Clips `grads` (the gradients of `model`'s parameters) in place.
///
/// `Norm`: torch.nn.utils.clip_grad_norm_. The total norm is the p-norm of
/// the per-parameter p-norms (p = `norm_type`, >= 1 or infinity), and every
/// gradient is multiplied by `min(max_norm / (total_norm + 1e-6), 1)`,
/// evaluated in f32 as torch does on its f32 norm tensor. Returns the total
/// norm before clipping (0 when there are no gradients); a NaN or infinite
/// norm scales the gradients to NaN or 0, as in torch (whose
/// `error_if_nonfinite` defaults to false).
///
/// `Value`: torch.nn.utils.clip_grad_value_, each element clamped to
/// `[-clip_value, clip_value]`. Returns None.
pub fn clip_gradients<M: Module>(
    model: &M,
    grads: &mut GradientsParams,
    clip: &GradClip,
) -> Option<f64> {
    match *clip {
        GradClip::Value { clip_value } => {
            model.visit(&mut Transform {
                grads,
                op: Op::Clamp(clip_value),
            });
            None
        }
        GradClip::Norm {
            max_norm,
            norm_type,
        } => {
            let mut norms = Norms {
                grads,
                norm_type,
                norms: Vec::new(),
            };
            model.visit(&mut norms);
            if norms.norms.is_empty() {
                return Some(0.0);
            }
            let total = p_norm(Tensor::cat(norms.norms, 0), norm_type).into_scalar::<f32>();
            // clip_coef = max_norm / (total_norm + 1e-6): Tensor.__rtruediv__
            // is `reciprocal() * max_norm`, all in f32.
            let coef = (1.0f32 / (total + 1e-6f32)) * max_norm as f32;
            // torch.clamp(clip_coef, max=1.0) (NaN stays NaN)
            let coef = if coef > 1.0 { 1.0 } else { coef };
            // Multiplying by exactly 1 changes nothing: skip it.
            if coef != 1.0 {
                model.visit(&mut Transform {
                    grads,
                    op: Op::Scale(coef as f64),
                });
            }
            Some(total as f64)
        }
    }
}

/// `torch.linalg.vector_norm(t, p)` for p >= 1 or infinity.
fn p_norm(t: Tensor<1>, p: f64) -> Tensor<1> {
    if p.is_infinite() {
        t.abs().max()
    } else if p == 1.0 {
        t.abs().sum()
    } else if p == 2.0 {
        t.square().sum().sqrt()
    } else {
        t.abs().powf_scalar(p).sum().powf_scalar(1.0 / p)
    }
}

/// Collects each parameter gradient's norm.
struct Norms<'a> {
    grads: &'a GradientsParams,
    norm_type: f64,
    norms: Vec<Tensor<1>>,
}

impl ModuleVisitor for Norms<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            let flat: Tensor<1> = grad.flatten(0, D - 1);
            self.norms.push(p_norm(flat, self.norm_type));
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Clamp(f64),
    Scale(f64),
}

/// Rewrites each parameter's gradient.
struct Transform<'a> {
    grads: &'a mut GradientsParams,
    op: Op,
}

impl ModuleVisitor for Transform<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            let grad = match self.op {
                // grad.clamp_(min=-clip_value, max=clip_value)
                Op::Clamp(v) => grad.clamp(-v, v),
                // grad.mul_(clip_coef_clamped)
                Op::Scale(c) => grad.mul_scalar(c),
            };
            self.grads.register(param.id, grad);
        }
    }
}
