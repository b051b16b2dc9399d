//! The network a spec describes: blocks of Linear -> [BatchNorm] -> activation
//! -> [dropout], then a linear output layer.
//!
//! Training behaviour (batch statistics, dropout) follows the device: a module
//! on an autodiff device trains, the same module after `valid()` evaluates.
//!
//! Parameters are initialized lazily, on their first read: the order in which
//! the forward pass first reads them (and draws dropout masks between them)
//! is the order of the random draws, and a reproducible run depends on it.

mod activation;
mod batch_norm;
mod init;
mod mlp;

use kiln_core::prepare::Prepared;
use kiln_core::spec::{JobSpec, LayerSpec, OutputActivation, Task};
use serde::{Deserialize, Serialize};

pub use activation::{activate, AlphaDropout};
pub use batch_norm::BatchNorm1d;
pub use init::initializer;
pub use mlp::{all_finite, Mlp};

/// Everything needed to rebuild the network's shape (weights are stored apart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelArch {
    /// The task the output layer serves.
    pub task: Task,
    /// Input features (after one-hot encoding).
    pub inputs: usize,
    /// The hidden layers, input side first.
    pub hidden: Vec<LayerSpec>,
    /// Output units: targets for regression, 1 for binary, classes for multi-class.
    pub outputs: usize,
    /// Applied to the output layer's values.
    pub output_activation: OutputActivation,
}

impl ModelArch {
    /// Output units for a task with `outputs` targets or classes.
    pub fn output_units(task: Task, outputs: usize) -> usize {
        match task {
            Task::Binary => 1,
            Task::Regression | Task::Multiclass => outputs,
        }
    }

    /// The network `spec` describes for `data`'s width and outputs.
    pub(crate) fn for_job(spec: &JobSpec, data: &Prepared) -> Self {
        ModelArch {
            task: spec.task,
            inputs: data.width,
            hidden: spec.model.hidden.clone(),
            outputs: ModelArch::output_units(spec.task, data.outputs),
            output_activation: spec.model.output_activation,
        }
    }
}

/// Helpers shared by the submodules' tests.
#[cfg(test)]
mod test_util {
    use burn::tensor::{Device, Tensor, TensorData};

    pub(super) fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().expect("f32 tensor")
    }

    pub(super) fn matrix(rows: usize, cols: usize, salt: usize, device: &Device) -> Tensor<2> {
        let data = (0..rows * cols)
            .map(|i| ((i * 37 + salt * 11) % 29) as f32 / 7.0 - 2.0 + (i % cols) as f32 * 0.3)
            .collect();
        Tensor::from_data(TensorData::new(data, [rows, cols]), device)
    }

    pub(super) fn assert_close(what: &str, fast: &[f32], reference: &[f32], tol: f32) {
        assert_eq!(fast.len(), reference.len(), "{what}: length");
        for (i, (a, b)) in fast.iter().zip(reference).enumerate() {
            assert!(
                (a - b).abs() <= tol * (1.0 + b.abs()),
                "{what}[{i}]: libtorch path {a}, burn ops {b}"
            );
        }
    }
}
