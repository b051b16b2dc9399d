//! Where work runs on a node with several GPUs. A job with `DEVICE_AUTO`
//! trains on the visible GPU with the fewest jobs queued or running on it
//! (the lowest index on a tie), or on the CPU when there is none; a job
//! that names a CUDA device trains there. Each device has its own queue and
//! `max_concurrent_jobs` trainer threads. Served models (trained, imported,
//! restored, a sweep's best) go to `serve_device`, not to where they
//! trained, so that serving does not take training's GPU memory.

use std::collections::HashMap;
use std::sync::Mutex;

use kiln_core::spec::DeviceChoice;
use kiln_train::Device;

/// Jobs placed on each device that have not finished (queued or running),
/// by device name ("cpu", "cuda:1").
#[derive(Default)]
pub struct DeviceLoad(Mutex<HashMap<String, usize>>);

impl DeviceLoad {
    /// A job was placed on `device`.
    pub fn add(&self, device: &str) {
        *self
            .0
            .lock()
            .unwrap()
            .entry(device.to_string())
            .or_default() += 1;
    }

    /// A job placed on `device` left it (ended, or stopped running here).
    pub fn done(&self, device: &str) {
        if let Some(n) = self.0.lock().unwrap().get_mut(device) {
            *n = n.saturating_sub(1);
        }
    }

    /// Jobs on `device` now.
    pub fn of(&self, device: &str) -> usize {
        self.0.lock().unwrap().get(device).copied().unwrap_or(0)
    }

    /// Jobs queued or running on every device together.
    pub fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

/// The device a job with `choice` trains on, given `gpus` visible GPUs and
/// the jobs each device has now.
pub fn place(choice: DeviceChoice, gpus: usize, load: &DeviceLoad) -> DeviceChoice {
    match choice {
        DeviceChoice::Auto if gpus == 0 => DeviceChoice::Cpu,
        DeviceChoice::Auto => {
            let loads: Vec<usize> = (0..gpus).map(|i| load.of(&cuda_name(i))).collect();
            DeviceChoice::Cuda(least_busy(&loads))
        }
        named => named,
    }
}

/// The index of the smallest load; the lowest index among equals.
fn least_busy(loads: &[usize]) -> usize {
    (0..loads.len())
        .min_by_key(|&i| (loads[i], i))
        .expect("at least one device")
}

fn cuda_name(index: usize) -> String {
    format!("cuda:{index}")
}

/// `serve_device` as written: "auto" (CUDA device 0 when there is one, else
/// the CPU), "cpu", or "cuda:N".
pub fn parse_serve_device(text: &str) -> Result<DeviceChoice, String> {
    match text.trim() {
        "" | "auto" => Ok(DeviceChoice::Auto),
        "cpu" => Ok(DeviceChoice::Cpu),
        other => other
            .strip_prefix("cuda:")
            .and_then(|i| i.parse().ok())
            .map(DeviceChoice::Cuda)
            .ok_or_else(|| {
                format!("serve_device: \"{other}\" is not one of auto, cpu, cuda:N (N a GPU index)")
            }),
    }
}

/// Where models are served: the device and its name.
#[derive(Clone)]
pub struct ServeDevice {
    pub device: Device,
    pub name: String,
}

impl ServeDevice {
    /// `serve_device` resolved on this machine; a GPU it does not have is an
    /// error (the server does not start).
    pub fn from_config(text: &str) -> Result<ServeDevice, String> {
        let choice = parse_serve_device(text)?;
        let (device, name) =
            kiln_train::device::resolve(choice).map_err(|e| format!("serve_device: {e}"))?;
        Ok(ServeDevice { device, name })
    }
}

/// The memory of GPU `cuda:N` in bytes, from `nvidia-smi` (libtorch does
/// not say); `None` for the CPU (its budget is `max_job_memory_bytes`) or
/// when `nvidia-smi` cannot tell. Asked once per GPU: a GPU's memory does
/// not change while the server runs, and SubmitJob should not fork a process.
pub fn gpu_memory_bytes(device_name: &str) -> Option<u64> {
    static KNOWN: Mutex<Option<HashMap<usize, Option<u64>>>> = Mutex::new(None);
    let index: usize = device_name.strip_prefix("cuda:")?.parse().ok()?;
    *KNOWN
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(index)
        .or_insert_with(|| query_gpu_memory(index))
}

fn query_gpu_memory(index: usize) -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=memory.total", "--format=csv,noheader,nounits"])
        .arg(format!("--id={index}"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| parse_mib(&String::from_utf8_lossy(&out.stdout)))
        .flatten()
}

/// `nvidia-smi`'s `memory.total` in MiB (no header, no unit) as bytes.
fn parse_mib(text: &str) -> Option<u64> {
    let mib: u64 = text.lines().next()?.trim().parse().ok()?;
    Some(mib << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(jobs: &[(&str, usize)]) -> DeviceLoad {
        let load = DeviceLoad::default();
        for (device, n) in jobs {
            for _ in 0..*n {
                load.add(device);
            }
        }
        load
    }

    #[test]
    fn auto_takes_the_least_busy_gpu_and_the_lowest_index_on_a_tie() {
        let none = DeviceLoad::default();
        assert_eq!(place(DeviceChoice::Auto, 8, &none), DeviceChoice::Cuda(0));
        let load = loaded(&[("cuda:0", 2), ("cuda:1", 1), ("cuda:2", 1), ("cpu", 0)]);
        assert_eq!(place(DeviceChoice::Auto, 3, &load), DeviceChoice::Cuda(1));
        // A GPU this process does not see is not a candidate.
        let load = loaded(&[("cuda:0", 1), ("cuda:1", 1), ("cuda:5", 0)]);
        assert_eq!(place(DeviceChoice::Auto, 2, &load), DeviceChoice::Cuda(0));
    }

    #[test]
    fn eight_jobs_on_four_gpus_take_two_each_and_a_finished_one_frees_its_gpu() {
        let load = DeviceLoad::default();
        let mut placed = Vec::new();
        for _ in 0..8 {
            let DeviceChoice::Cuda(i) = place(DeviceChoice::Auto, 4, &load) else {
                panic!("a GPU was expected");
            };
            load.add(&cuda_name(i));
            placed.push(i);
        }
        assert_eq!(placed, [0, 1, 2, 3, 0, 1, 2, 3]);
        load.done("cuda:2");
        assert_eq!(place(DeviceChoice::Auto, 4, &load), DeviceChoice::Cuda(2));
    }

    #[test]
    fn no_gpu_means_the_cpu_and_a_named_device_is_kept() {
        let load = loaded(&[("cuda:3", 9)]);
        assert_eq!(place(DeviceChoice::Auto, 0, &load), DeviceChoice::Cpu);
        assert_eq!(place(DeviceChoice::Cpu, 4, &load), DeviceChoice::Cpu);
        assert_eq!(
            place(DeviceChoice::Cuda(3), 4, &load),
            DeviceChoice::Cuda(3)
        );
    }

    #[test]
    fn gpu_memory_is_read_from_nvidia_smi_in_mib() {
        assert_eq!(parse_mib("81559\n"), Some(81559 << 20));
        assert_eq!(parse_mib("[N/A]\n"), None);
        assert_eq!(parse_mib(""), None);
        assert_eq!(gpu_memory_bytes("cpu"), None);
    }

    #[test]
    fn serve_device_is_auto_cpu_or_a_cuda_index() {
        assert_eq!(parse_serve_device("auto"), Ok(DeviceChoice::Auto));
        assert_eq!(parse_serve_device(""), Ok(DeviceChoice::Auto));
        assert_eq!(parse_serve_device("cpu"), Ok(DeviceChoice::Cpu));
        assert_eq!(parse_serve_device("cuda:3"), Ok(DeviceChoice::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1"] {
            let err = parse_serve_device(bad).unwrap_err();
            assert!(err.starts_with("serve_device:"), "{err}");
        }
        // This machine's GPUs: an index past them stops the start.
        let gpus = kiln_train::device::cuda_device_count();
        let err = ServeDevice::from_config(&format!("cuda:{gpus}"))
            .err()
            .unwrap();
        assert!(
            err.contains("serve_device") && err.contains("CUDA devices"),
            "{err}"
        );
        assert_eq!(ServeDevice::from_config("cpu").unwrap().name, "cpu");
    }
}
