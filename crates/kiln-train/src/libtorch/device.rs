//! libtorch's devices, threads and out-of-memory errors.

use burn::tensor::Device;

pub(super) fn cpu() -> Device {
    Device::libtorch()
}

pub(super) fn cuda(index: usize) -> Device {
    Device::libtorch_cuda(index)
}

/// CUDA devices libtorch sees; 0 when it sees no CUDA at all.
pub(super) fn cuda_device_count() -> usize {
    if tch::Cuda::is_available() {
        tch::Cuda::device_count() as usize
    } else {
        0
    }
}

pub(super) fn set_threads(threads: usize) {
    tch::set_num_threads(threads.max(1) as i32);
}

/// Whether a libtorch error reports running out of memory: CUDA's caching
/// allocator ("CUDA out of memory. Tried to allocate ...", raised as
/// torch.OutOfMemoryError) or the CPU allocator ("DefaultCPUAllocator:
/// can't allocate memory: ...").
pub(super) fn is_out_of_memory(message: &str) -> bool {
    let message = message.to_lowercase();
    message.contains("out of memory") || message.contains("can't allocate memory")
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
