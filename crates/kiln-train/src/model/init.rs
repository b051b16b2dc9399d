//! Weight initialization with torch.nn.init's semantics.

use burn::nn::{Initializer, Linear};
use burn::tensor::Device;
use kiln_core::spec::{FanMode, Init, InitDistribution, InitKind};

/// torch.nn.init semantics: He = Kaiming with gain sqrt(2), LeCun = Kaiming
/// with gain 1, Glorot = Xavier with gain 1. burn's formulas match torch's
/// (bound = gain * sqrt(3 / fan), std = gain / sqrt(fan)).
pub fn initializer(init: Init) -> Initializer {
    let fan_out_only = init.fan == FanMode::Out;
    let gain = match init.kind {
        InitKind::He => 2f64.sqrt(),
        InitKind::Lecun | InitKind::Glorot => 1.0,
    };
    match (init.kind, init.distribution) {
        (InitKind::Glorot, InitDistribution::Uniform) => Initializer::XavierUniform { gain },
        (InitKind::Glorot, InitDistribution::Normal) => Initializer::XavierNormal { gain },
        (_, InitDistribution::Uniform) => Initializer::KaimingUniform { gain, fan_out_only },
        (_, InitDistribution::Normal) => Initializer::KaimingNormal { gain, fan_out_only },
    }
}

/// A Linear layer with the given weight initializer and a zero bias (burn's
/// LinearConfig would draw the bias from the weight initializer).
pub(super) fn linear(d_in: usize, d_out: usize, init: &Initializer, device: &Device) -> Linear {
    Linear {
        // burn stores the weight as [d_in, d_out]: fan_in is d_in.
        weight: init.init_with([d_in, d_out], Some(d_in), Some(d_out), device),
        bias: Some(Initializer::Zeros.init([d_out], device)),
    }
}
