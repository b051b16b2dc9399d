//! Optimizers from the spec, configured to match torch.optim exactly.
//!
//! burn's SGD momentum (first step: buffer = gradient; then
//! `b = momentum * b + (1 - dampening) * g`; Nesterov `g + momentum * b`), its
//! Adam (bias-corrected, eps added to sqrt(v_hat)) and its coupled L2 decay
//! (`g + wd * w`) are torch's formulas; only the defaults differ (burn's
//! dampening 0.1 and Adam eps 1e-5), so every value is set explicitly here.

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, ModuleOptimizer, SgdConfig};
use kiln_core::spec::{OptimizerKind, OptimizerSpec};

pub fn build(spec: &OptimizerSpec) -> ModuleOptimizer {
    let decay = (spec.weight_decay > 0.0).then(|| WeightDecayConfig::new(spec.weight_decay as f32));
    match spec.kind {
        OptimizerKind::Sgd {
            momentum,
            dampening,
            nesterov,
        } => SgdConfig::new()
            .with_weight_decay(decay)
            .with_momentum((momentum > 0.0).then_some(MomentumConfig {
                momentum,
                dampening,
                nesterov,
            }))
            .init(),
        OptimizerKind::Adam {
            beta1,
            beta2,
            eps,
            amsgrad,
        } => AdamConfig::new()
            .with_amsgrad(amsgrad)
            .with_beta_1(beta1 as f32)
            .with_beta_2(beta2 as f32)
            .with_epsilon(eps as f32)
            .with_weight_decay(decay)
            .init(),
        other => unimplemented!("optimizer {other:?}"),
    }
}
