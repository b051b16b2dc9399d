//! The peer: Seldon's MLServer (KServe's Python runtime) serving the same
//! exported model through a dozen-line custom runtime
//! (`mlserver_runtime.py`), over the same Open Inference Protocol.
//!
//! One MLServer process serves the model twice: `bench` with adaptive
//! batching off and `bench-batched` with it on, so both are measured on the
//! same process, threads and pinning. Only one is driven at a time.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::inference as oip;
use oip::grpc_inference_service_client::GrpcInferenceServiceClient;

use crate::{BoxError, Endpoint};

/// The MLServer release the comparison was written against.
pub const VERSION: &str = "1.7.1";
const RUNTIME: &str = include_str!("mlserver_runtime.py");

/// Adaptive batching of the `bench-batched` model (MLServer's
/// `max_batch_size` and `max_batch_time`, in seconds).
#[derive(Clone, Copy)]
pub struct Batching {
    pub max_batch_size: usize,
    pub max_batch_time: f64,
}

/// `python`'s MLServer version, installing it with pip on first use.
pub fn ensure_installed(python: &Path) -> Result<String, BoxError> {
    if !python.exists() {
        return Err(format!("{} is missing: run `make setup` first", python.display()).into());
    }
    let version = || -> Option<String> {
        let out = Command::new(python)
            .args([
                "-c",
                "import importlib.metadata as m; print(m.version('mlserver'))",
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    if let Some(v) = version() {
        return Ok(v);
    }
    eprintln!(
        "installing mlserver=={VERSION} into {} ...",
        python.display()
    );
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(format!("mlserver=={VERSION}"))
        .status()?;
    if !status.success() {
        return Err(format!("pip install mlserver=={VERSION} failed ({status})").into());
    }
    version().ok_or_else(|| "mlserver installed but not importable".into())
}

/// A running MLServer with its settings in a scratch directory.
pub struct MlServer {
    child: Child,
    grpc_addr: String,
    dir: PathBuf,
}

fn free_port() -> Result<u16, BoxError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl MlServer {
    /// Writes the settings, the runtime and `model` (kiln's exported
    /// safetensors file), starts `mlserver start` (pinned to `cpus` when
    /// given) and waits until both models are ready.
    pub async fn start(
        python: &Path,
        model: &[u8],
        threads: usize,
        workers: usize,
        batching: Batching,
        cpus: Option<&str>,
    ) -> Result<MlServer, BoxError> {
        let dir = std::env::temp_dir().join(format!("kiln-bench-mlserver-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("mlserver_runtime.py"), RUNTIME)?;
        std::fs::write(dir.join("model.safetensors"), model)?;
        let grpc_port = free_port()?;
        let settings = serde_json::json!({
            "debug": false,
            "host": "127.0.0.1",
            "http_port": free_port()?,
            "grpc_port": grpc_port,
            // 0: inference in the server process itself, no worker pool to hop to.
            "parallel_workers": workers,
            "metrics_endpoint": null,
        });
        std::fs::write(dir.join("settings.json"), settings.to_string())?;
        for (name, size, time) in [
            ("bench", 0, 0.0),
            (
                "bench-batched",
                batching.max_batch_size,
                batching.max_batch_time,
            ),
        ] {
            let model_dir = dir.join(name);
            std::fs::create_dir_all(&model_dir)?;
            let settings = serde_json::json!({
                "name": name,
                "implementation": "mlserver_runtime.KilnMlp",
                "max_batch_size": size,
                "max_batch_time": time,
                "parameters": {
                    "uri": dir.join("model.safetensors"),
                    "extra": {"threads": threads},
                },
            });
            std::fs::write(model_dir.join("model-settings.json"), settings.to_string())?;
        }
        let mlserver = python.with_file_name("mlserver");
        let log = std::fs::File::create(dir.join("mlserver.log"))?;
        let child = crate::pinned(&mlserver, cpus)
            .arg("start")
            .arg(&dir)
            .current_dir(&dir)
            .env("PYTHONPATH", &dir)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {}: {e}", mlserver.display()))?;
        let mut server = MlServer {
            child,
            grpc_addr: format!("127.0.0.1:{grpc_port}"),
            dir,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Polls ModelReady for both models (up to 2 minutes: MLServer imports
    /// torch and its web stack first).
    async fn wait_ready(&mut self) -> Result<(), BoxError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("mlserver exited ({status}): {}", self.log_tail()).into());
            }
            if Instant::now() > deadline {
                return Err(format!("mlserver not ready in 2 minutes: {}", self.log_tail()).into());
            }
            if self.ready().await.unwrap_or(false) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn ready(&self) -> Result<bool, BoxError> {
        let mut client =
            GrpcInferenceServiceClient::connect(format!("http://{}", self.grpc_addr)).await?;
        for name in ["bench", "bench-batched"] {
            let ready = client
                .model_ready(oip::ModelReadyRequest {
                    name: name.into(),
                    version: String::new(),
                })
                .await?
                .into_inner()
                .ready;
            if !ready {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn log_tail(&self) -> String {
        let mut log = String::new();
        let _ = std::fs::File::open(self.dir.join("mlserver.log"))
            .and_then(|mut f| f.read_to_string(&mut log));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            addr: self.grpc_addr.clone(),
            pid: self.child.id(),
        }
    }
}

impl Drop for MlServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
