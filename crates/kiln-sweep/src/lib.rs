//! The pure side of kiln's hyper-parameter sweeps, with no server and no
//! burn: search spaces (grid expansion, seeded random sampling), trial specs
//! made by setting a JobSpec field by its proto path (through prost-reflect),
//! the early-termination policies (the median stopping rule and ASHA) and
//! spec diffs for run comparison.

pub mod policy;
pub mod space;
pub mod spec_path;

pub use policy::{Asha, AshaRungs, Goal, MedianStopping};
pub use space::{Dimension, Rng, SearchSpace, TrialParams};
pub use spec_path::{apply, diff_specs, flatten_spec, trial_spec};

/// A parameter value as people read it: `0.001`, `64`, `RELU`, `true`.
pub fn value_text(value: &prost_types::Value) -> String {
    use prost_types::value::Kind;
    match &value.kind {
        Some(Kind::NumberValue(x)) => format_number(*x),
        Some(Kind::StringValue(s)) => s.clone(),
        Some(Kind::BoolValue(b)) => b.to_string(),
        Some(Kind::NullValue(_)) | None => "null".into(),
        Some(Kind::StructValue(_)) => "{...}".into(),
        Some(Kind::ListValue(_)) => "[...]".into(),
    }
}

/// Integers without a fraction, the rest in Rust's shortest round-trip form.
pub fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}
