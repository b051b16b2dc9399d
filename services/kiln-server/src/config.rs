//! Server configuration: built-in defaults < `kiln.toml` (or `--config FILE`)
//! < `KILN_*` environment variables (e.g. `KILN_LISTEN=0.0.0.0:50051`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server listens on.
    pub listen: String,
    /// Where datasets and model artifacts are kept.
    pub data_dir: PathBuf,
    /// libtorch intra-op threads for the whole process (training and serving).
    pub torch_threads: usize,
    /// Largest gRPC message accepted, in bytes (requests and upload chunks).
    pub max_message_bytes: usize,
    /// Largest dataset an upload may create, in bytes.
    pub max_dataset_bytes: u64,
    /// Rows per prediction forward pass, at most.
    pub max_batch_rows: usize,
    /// Prediction requests that may wait per model; more get RESOURCE_EXHAUSTED.
    pub predict_queue_capacity: usize,
    /// Log filter in `tracing` syntax, e.g. "info" or "kiln=debug".
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            data_dir: "data".into(),
            torch_threads: 2,
            max_message_bytes: 64 << 20,
            max_dataset_bytes: 1 << 30,
            max_batch_rows: 1024,
            predict_queue_capacity: 1024,
            log: "info".into(),
        }
    }
}

impl Config {
    /// Loads the layers. `file` defaults to `kiln.toml` in the working
    /// directory, which may be absent; a file named explicitly must exist.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let defaults = config::Config::try_from(&Config::default())?;
        let mut builder = config::Config::builder().add_source(defaults);
        builder = match file {
            Some(path) => builder.add_source(config::File::from(path).required(true)),
            None => builder.add_source(config::File::with_name("kiln.toml").required(false)),
        };
        let merged = builder
            .add_source(config::Environment::with_prefix("KILN").try_parsing(true))
            .build()?;
        Ok(merged.try_deserialize()?)
    }
}
