//! Which device a job or a model runs on (the backend's, through
//! [`crate::backend`]).

use burn::tensor::Device;
use kiln_core::spec::DeviceChoice;

use crate::backend::Backend;
use crate::Active;

/// Whether the backend sees a CUDA device.
pub fn cuda_available() -> bool {
    Active::cuda_device_count() > 0
}

/// The CUDA devices the backend sees (those `CUDA_VISIBLE_DEVICES` leaves).
pub fn cuda_device_count() -> usize {
    Active::cuda_device_count()
}

/// Caps the backend's intra-op threads for the whole process.
pub fn set_threads(threads: usize) {
    Active::set_threads(threads)
}

/// The device for `choice` and its name ("cpu", "cuda:0"). AUTO takes CUDA
/// device 0 when there is one. A CUDA index that does not exist is an error.
pub fn resolve(choice: DeviceChoice) -> Result<(Device, String), String> {
    match choice {
        DeviceChoice::Cpu => Ok((cpu(), "cpu".into())),
        DeviceChoice::Auto if cuda_available() => Ok((Active::cuda(0), "cuda:0".into())),
        DeviceChoice::Auto => Ok((cpu(), "cpu".into())),
        DeviceChoice::Cuda(i) => {
            let count = Active::cuda_device_count();
            if i < count {
                Ok((Active::cuda(i), format!("cuda:{i}")))
            } else {
                Err(format!(
                    "CUDA device {i} requested, but this server has {count} CUDA devices"
                ))
            }
        }
    }
}

/// Whether a backend error reports running out of memory (on the GPU or
/// the host), so that a job can say so rather than report a crash.
pub fn is_out_of_memory(message: &str) -> bool {
    Active::is_out_of_memory(message)
}

/// The host device.
pub fn cpu() -> Device {
    Active::cpu()
}
