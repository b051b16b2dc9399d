//! What a training job will hold in memory, estimated from its spec and the
//! shape of its data before anything is allocated, so that admission can
//! refuse a job that would exhaust the machine instead of letting it try.
//!
//! Everything is f32 (4 bytes), counted with saturating arithmetic (a
//! hostile spec can ask for more than `u64` bytes):
//! - the weights, their gradients, and the optimizer's state per weight
//!   (Adam's two moments, SGD's momentum, ...);
//! - the copies training keeps: the best epoch's weights (as a module and
//!   as a record), the served model's serialized weights, SWA's average;
//! - one training batch's activations: every hidden layer's linear output,
//!   BatchNorm output, activation and dropout mask, kept by autograd for the
//!   backward pass and matched by their gradients there (x2);
//! - one validation chunk's activations (no gradients);
//! - both splits of the data, twice: the host rows the tensors are built
//!   from, and the tensors.
//!
//! `crates/kiln-train/tests/integration/memory_estimate.rs` measures the
//! estimate against the resident memory training really takes.

use crate::spec::{Activation, JobSpec, LayerSpec, OptimizerKind};

/// Bytes of one value.
const F32: u64 = 4;

/// Rows of one validation forward pass (kiln-train's `EVAL_CHUNK`).
pub const EVAL_ROWS: u64 = 16_384;

/// A job's memory, in bytes, by what holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryEstimate {
    /// Weights and biases of every layer (and BatchNorm's, PReLU's).
    pub parameters: u64,
    /// The parameters, their gradients, the optimizer's state and the kept copies.
    pub model: u64,
    /// One training batch through the network and back.
    pub batch: u64,
    /// One validation chunk through the network.
    pub validation: u64,
    /// Both splits' features and targets.
    pub data: u64,
}

impl MemoryEstimate {
    /// The sum of the parts.
    pub fn total(&self) -> u64 {
        self.model
            .saturating_add(self.batch)
            .saturating_add(self.validation)
            .saturating_add(self.data)
    }

    /// The estimate for `spec` on data of `width` features, `outputs`
    /// network outputs (targets, or 1 or k logits) and the given row counts.
    pub fn for_job(
        spec: &JobSpec,
        width: usize,
        outputs: usize,
        train_rows: usize,
        validation_rows: usize,
    ) -> Self {
        let hidden = &spec.model.hidden;
        let parameters = parameters(width, hidden, outputs);
        let training = &spec.training;
        let state = match training.optimizer.kind {
            OptimizerKind::Sgd { momentum, .. } => u64::from(momentum > 0.0),
            OptimizerKind::Adam { amsgrad, .. } | OptimizerKind::AdamW { amsgrad, .. } => {
                2 + u64::from(amsgrad)
            }
            OptimizerKind::Nadam { .. } | OptimizerKind::Adamax { .. } => 2,
            OptimizerKind::RmsProp {
                momentum, centered, ..
            } => 1 + u64::from(momentum > 0.0) + u64::from(centered),
            OptimizerKind::Adagrad { .. } => 1,
        };
        // The weights, their gradients, the state, the best epoch's copy and
        // record, the serialized model, SWA's average.
        let copies = 2 + state + 3 + u64::from(training.swa.is_some());
        let per_row = activations_per_row(width, hidden, outputs);
        let batch_rows = (training.batch_size as u64).min(train_rows as u64);
        let eval_rows = EVAL_ROWS.min(validation_rows as u64);
        let rows = (train_rows as u64).saturating_add(validation_rows as u64);
        MemoryEstimate {
            parameters,
            model: parameters.saturating_mul(copies).saturating_mul(F32),
            batch: per_row
                .saturating_mul(2)
                .saturating_mul(batch_rows)
                .saturating_mul(F32),
            validation: per_row.saturating_mul(eval_rows).saturating_mul(F32),
            data: rows
                .saturating_mul((width as u64).saturating_add(outputs as u64))
                .saturating_mul(2 * F32),
        }
    }
}

/// Parameters of a network: each linear layer's weights and biases, two per
/// unit for BatchNorm's affine map plus its two running statistics, and
/// PReLU's one slope per layer.
pub fn parameters(inputs: usize, hidden: &[LayerSpec], outputs: usize) -> u64 {
    let mut fan_in = inputs as u64;
    let mut total: u64 = 0;
    for layer in hidden {
        let units = layer.units as u64;
        let linear = fan_in.saturating_add(1).saturating_mul(units);
        let batch_norm = if layer.batch_norm.is_some() {
            4 * units
        } else {
            0
        };
        let prelu = u64::from(matches!(layer.activation, Activation::PRelu { .. }));
        total = total
            .saturating_add(linear)
            .saturating_add(batch_norm)
            .saturating_add(prelu);
        fan_in = units;
    }
    total.saturating_add(fan_in.saturating_add(1).saturating_mul(outputs as u64))
}

/// Values one row leaves in the forward pass: its features, then per hidden
/// layer the linear output, the BatchNorm output, the activation and the
/// dropout mask where there are any, and the outputs.
fn activations_per_row(inputs: usize, hidden: &[LayerSpec], outputs: usize) -> u64 {
    let layers = hidden.iter().map(|l| {
        let tensors = 2 + u64::from(l.batch_norm.is_some()) + u64::from(l.dropout > 0.0);
        (l.units as u64).saturating_mul(tensors)
    });
    layers.fold(
        (inputs as u64).saturating_add(outputs as u64),
        u64::saturating_add,
    )
}

/// Bytes as people read them: "1.5 GiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} bytes"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::testing::minimal;
    use kiln::v1 as pb;

    fn spec(units: &[u32], batch_norm: bool) -> JobSpec {
        let mut s = minimal();
        s.model = Some(pb::ModelSpec {
            hidden_layers: units
                .iter()
                .map(|&u| pb::HiddenLayer {
                    units: u,
                    batch_norm,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        s.training = Some(pb::TrainingSpec {
            batch_size: 64,
            ..Default::default()
        });
        JobSpec::from_proto(&s).unwrap()
    }

    /// torch's count for nn.Sequential(Linear(3, 8), BatchNorm1d(8), ReLU(),
    /// Linear(8, 2)): 32 + 16 + 18 = 66 parameters, plus BatchNorm's 16
    /// running statistics.
    #[test]
    fn parameters_are_counted_as_torch_does() {
        let s = spec(&[8], true);
        assert_eq!(parameters(3, &s.model.hidden, 2), 32 + 32 + 18);
        let s = spec(&[8], false);
        assert_eq!(parameters(3, &s.model.hidden, 2), 32 + 18);
    }

    #[test]
    fn the_estimate_adds_up_its_parts() {
        let s = spec(&[100, 50], false);
        let e = MemoryEstimate::for_job(&s, 10, 3, 1000, 250);
        let p = 11 * 100 + 101 * 50 + 51 * 3;
        assert_eq!(e.parameters, p);
        // Adam: weights, gradients, two moments, the best copy and record, the serialized model.
        assert_eq!(e.model, p * 7 * 4);
        let per_row = 10 + 3 + 2 * 100 + 2 * 50;
        assert_eq!(e.batch, per_row * 2 * 64 * 4);
        assert_eq!(e.validation, per_row * 250 * 4);
        assert_eq!(e.data, 1250 * 13 * 4 * 2);
        assert_eq!(e.total(), e.model + e.batch + e.validation + e.data);
    }

    /// The job: two layers of 65,536 units on 2 inputs, ~4.3e9
    /// weights, over 100 GiB with Adam; counted without overflow.
    #[test]
    fn a_huge_network_is_counted_not_allocated() {
        let s = spec(&[65_536, 65_536], false);
        let e = MemoryEstimate::for_job(&s, 2, 2, 1000, 250);
        assert!(e.parameters > 4_294_000_000, "{e:?}");
        assert!(e.total() > 100 << 30, "{}", human_bytes(e.total()));
        let s = spec(&[65_536; 64], true);
        assert!(MemoryEstimate::for_job(&s, 65_536, 1 << 20, usize::MAX, usize::MAX).total() > 0);
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 bytes");
    }
}
