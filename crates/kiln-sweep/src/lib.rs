//! The pure side of kiln's hyper-parameter sweeps, with no server, no
//! runtime and no burn: search spaces (grid expansion, seeded random
//! sampling), trial specs made by setting a JobSpec field by its proto path
//! (through prost-reflect), the early-termination policies (the median
//! stopping rule and ASHA), spec diffs for run comparison, and every decision
//! of a sweep's controller: the plan validated from a request, the
//! leaderboard, which trials start and which are stopped, what is taken over
//! after a restart, and how the sweep ends. kiln-server does the I/O.

#![warn(missing_docs)]

pub mod adoption;
pub mod controller;
pub mod leaderboard;
pub mod outcome;
pub mod plan;
pub mod policy;
pub mod pruning;
pub mod space;
pub mod spec_path;
#[cfg(test)]
mod testing;

pub use adoption::{Adoption, Resume};
pub use controller::{Controller, Start};
pub use plan::{plan, Plan};
pub use policy::{Asha, AshaRungs, Goal, MedianStopping};
pub use pruning::{Policy, Pruner};
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
