//! Which libtorch device a job or a model runs on.

use burn::tensor::Device;
use kiln_core::spec::DeviceChoice;

/// Whether libtorch sees a CUDA device.
pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}

/// Caps libtorch's intra-op threads for the whole process.
pub fn set_threads(threads: usize) {
    tch::set_num_threads(threads.max(1) as i32);
}

/// The device for `choice` and its name ("cpu", "cuda:0"). AUTO takes CUDA
/// device 0 when there is one. A CUDA index that does not exist is an error.
pub fn resolve(choice: DeviceChoice) -> Result<(Device, String), String> {
    match choice {
        DeviceChoice::Cpu => Ok((cpu(), "cpu".into())),
        DeviceChoice::Auto if cuda_available() => Ok((cuda(0), "cuda:0".into())),
        DeviceChoice::Auto => Ok((cpu(), "cpu".into())),
        DeviceChoice::Cuda(i) => {
            let count = if cuda_available() {
                tch::Cuda::device_count() as usize
            } else {
                0
            };
            if i < count {
                Ok((cuda(i), format!("cuda:{i}")))
            } else {
                Err(format!(
                    "CUDA device {i} requested, but this server has {count} CUDA devices"
                ))
            }
        }
    }
}

#[allow(deprecated)] // burn-tch is deprecated in 0.22 (removed in 0.23) but is our backend.
pub fn cpu() -> Device {
    Device::libtorch()
}

#[allow(deprecated)]
fn cuda(index: usize) -> Device {
    Device::libtorch_cuda(index)
}
