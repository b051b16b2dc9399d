//! A prepared split as tensors on a device: features and targets.

use burn::tensor::{Device, Tensor, TensorData};
use kiln_core::prepare::{Split, SplitTargets};

use crate::loss::TargetTensor;

/// The split's features, `[rows, width]`.
pub(crate) fn features(split: &Split, width: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(
        TensorData::new(split.x.clone(), [split.rows, width]),
        device,
    )
}

/// The split's targets: values `[rows, outputs]` or class indices `[rows]`.
pub(crate) fn targets(split: &Split, outputs: usize, device: &Device) -> TargetTensor {
    match &split.y {
        SplitTargets::Values(v) => TargetTensor::Values(Tensor::from_data(
            TensorData::new(v.clone(), [split.rows, outputs]),
            device,
        )),
        SplitTargets::Classes(c) => TargetTensor::Classes(Tensor::from_data(
            TensorData::new(c.clone(), [split.rows]),
            device,
        )),
    }
}
