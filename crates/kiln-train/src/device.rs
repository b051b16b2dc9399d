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

/// Whether a libtorch error reports running out of memory: CUDA's caching
/// allocator ("CUDA out of memory. Tried to allocate ...", raised as
/// torch.OutOfMemoryError) or the CPU allocator ("DefaultCPUAllocator:
/// can't allocate memory: ...").
pub fn is_out_of_memory(message: &str) -> bool {
    let message = message.to_lowercase();
    message.contains("out of memory") || message.contains("can't allocate memory")
}

#[allow(deprecated)] // burn-tch is deprecated in 0.22 (removed in 0.23) but is our backend.
pub fn cpu() -> Device {
    Device::libtorch()
}

#[allow(deprecated)]
fn cuda(index: usize) -> Device {
    Device::libtorch_cuda(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_allocation_failures_are_out_of_memory() {
        // With the kernel's default overcommit policy, 16 TiB is refused at
        // once (policy 1 would hand out untouched pages; nothing to check then).
        let policy = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap_or_default();
        if policy.trim() != "1" {
            let e = tch::Tensor::f_empty([1i64 << 42], (tch::Kind::Float, tch::Device::Cpu))
                .expect_err("16 TiB allocated");
            assert!(is_out_of_memory(&e.to_string()), "{e}");
        }
        // The message of PyTorch's CUDA caching allocator (CUDACachingAllocator.cpp).
        assert!(is_out_of_memory(
            "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity \
             of 79.10 GiB of which 3.50 MiB is free."
        ));
        assert!(!is_out_of_memory(
            "shape mismatch: value tensor of shape [3] cannot be broadcast"
        ));
    }
}
