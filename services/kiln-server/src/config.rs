//! Server configuration: built-in defaults < `kiln.toml` (or `--config FILE`)
//! < `KILN_*` environment variables (e.g. `KILN_LISTEN=0.0.0.0:50051`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server listens on.
    pub listen: String,
    /// Where everything is kept: the database `kiln.db` (jobs, events,
    /// dataset metadata, the model registry), datasets and model artifacts.
    pub data_dir: PathBuf,
    /// What this process does: "api,serve,trainer" (everything, the
    /// default, and the only set without `database_url`), or on a shared
    /// database any set of `api` (the job, dataset and sweep services),
    /// `serve` (Predict, OIP and the registry, following it), and `trainer`
    /// (takes queued jobs by lease and trains them). See roles.rs and
    /// deploy/README.md.
    pub roles: String,
    /// PostgreSQL URL for kiln's state (jobs, events, sweeps, datasets'
    /// metadata, the model registry) instead of `<data_dir>/kiln.db`, e.g.
    /// `postgres://kiln:secret@db:5432/kiln`; empty: the SQLite file. Files
    /// (datasets, models, checkpoints) stay under `data_dir`, which the
    /// processes on one database share (a ReadWriteMany volume). Several
    /// processes may use one database: the shared mode.
    pub database_url: String,
    /// The shared mode: where every process keeps kiln's files (datasets,
    /// checkpoints, model files, and each job's TensorBoard run once it
    /// ends) so that none needs a shared volume:
    /// `s3://bucket/prefix` (AWS or any S3-compatible store; endpoint and
    /// credentials from `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, … as the AWS
    /// tools read them), `gs://bucket/prefix`, `az://container/prefix`, or
    /// `file:///dir`. `data_dir` is then each process's cache. Empty: the
    /// files are only under `data_dir`. Needs `database_url`.
    pub object_store_url: String,
    /// The shared mode: how long a trainer's lease on a job lasts without a
    /// renewal (renewed every third of it). A trainer that stops renewing
    /// (killed, paused, cut off) loses the job after this, and another
    /// trainer continues it from its checkpoint.
    pub lease_seconds: f64,
    /// Root of every job's TensorBoard event log
    /// (`<tensorboard_dir>/<model_name>/<job id>`). Unset: `<data_dir>/tensorboard`;
    /// an empty string turns logging off.
    pub tensorboard_dir: Option<PathBuf>,
    /// libtorch intra-op threads for the whole process (training and serving).
    pub torch_threads: usize,
    /// Jobs that train at once on each device (trainer threads sharing the
    /// device's queue); the rest wait QUEUED. Sweeps need more than 1 to run
    /// trials concurrently. A job with DEVICE_AUTO goes to the visible GPU
    /// with the fewest jobs queued or running (the CPU when there is none).
    pub max_concurrent_jobs: usize,
    /// Where models are served (trained, imported, restored): "auto" (CUDA
    /// device 0 when there is one, else the CPU), "cpu", or "cuda:N". Not
    /// where they trained, so that serving does not take training's memory.
    pub serve_device: String,
    /// Largest gRPC message accepted, in bytes (requests and upload chunks).
    pub max_message_bytes: usize,
    /// Largest dataset an upload may create, in bytes.
    pub max_dataset_bytes: u64,
    /// Jobs that may wait QUEUED at once; SubmitJob beyond it gets
    /// RESOURCE_EXHAUSTED (0: no limit).
    pub max_queued_jobs: usize,
    /// Budget of one training job: epochs x training rows; a job over it is
    /// refused with INVALID_ARGUMENT (0: no limit).
    pub max_epoch_rows: u64,
    /// Memory one training job may need by kiln's estimate (weights, their
    /// gradients and optimizer state, one batch's activations, a validation
    /// chunk, the data; see kiln_core::budget), in bytes; a job over it is
    /// refused with RESOURCE_EXHAUSTED before anything is allocated, and so
    /// is an imported model whose weights alone are over it (0: no limit).
    /// Default: half of this machine's memory.
    pub max_job_memory_bytes: u64,
    /// Concurrent gRPC calls (HTTP/2 streams) per client connection (0: no limit).
    pub max_concurrent_streams: u32,
    /// Bearer token every call but grpc.health.v1 must carry
    /// (`authorization: Bearer <token>`); empty: no authentication.
    pub auth_token: String,
    /// File holding the bearer token (read at start; for Kubernetes Secrets).
    /// Set this or `auth_token`, not both.
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain for TLS; set together with `tls_key_file`.
    /// Neither set: plaintext.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for TLS; set together with `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Rows per prediction forward pass, at most.
    pub max_batch_rows: usize,
    /// Prediction requests that may wait per model; more get RESOURCE_EXHAUSTED.
    pub predict_queue_capacity: usize,
    /// How long a prediction worker holding a partial batch waits for more
    /// rows, in milliseconds (0: take what is queued, never wait).
    pub max_queue_delay_ms: f64,
    /// Prediction worker threads per loaded model, each with its own copy.
    pub model_instances: usize,
    /// Log filter in `tracing` syntax, e.g. "info" or "kiln=debug".
    pub log: String,
    /// OTLP/gRPC endpoint traces are exported to, e.g. "http://127.0.0.1:4317";
    /// empty: no export.
    pub otlp_endpoint: String,
    /// Address of the Prometheus endpoint (`GET /metrics`); empty: off.
    pub metrics_listen: String,
    /// Seconds open calls get to finish after SIGTERM/SIGINT before exit.
    pub shutdown_grace_seconds: f64,
    /// Times a job interrupted while RUNNING (the server stopped without
    /// warning) is run again at restart, from its last checkpoint; one
    /// interrupted more often ends FAILED. A graceful shutdown's suspension
    /// does not count.
    pub max_job_restarts: u32,
    /// A training job writes a checkpoint (under `<data_dir>/checkpoints`)
    /// after every this many epochs, which a restart continues from; 0: only
    /// when a shutdown suspends it.
    pub checkpoint_every_epochs: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            data_dir: "data".into(),
            database_url: String::new(),
            roles: "api,serve,trainer".into(),
            lease_seconds: 10.0,
            object_store_url: String::new(),
            tensorboard_dir: None,
            torch_threads: 2,
            max_concurrent_jobs: 1,
            serve_device: "auto".into(),
            max_message_bytes: 64 << 20,
            max_dataset_bytes: 1 << 30,
            max_queued_jobs: 1000,
            max_epoch_rows: 10_000_000_000,
            max_job_memory_bytes: host_memory_bytes() / 2,
            max_concurrent_streams: 256,
            auth_token: String::new(),
            auth_token_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            max_batch_rows: 1024,
            predict_queue_capacity: 1024,
            max_queue_delay_ms: 0.0,
            model_instances: 1,
            log: "info".into(),
            otlp_endpoint: String::new(),
            metrics_listen: "127.0.0.1:9464".into(),
            shutdown_grace_seconds: 10.0,
            max_job_restarts: 2,
            checkpoint_every_epochs: 1,
        }
    }
}

/// This machine's memory (MemTotal in /proc/meminfo); 16 GiB where that
/// cannot be read.
fn host_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(16 << 30)
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
        let environment = config::Environment::with_prefix("KILN")
            .try_parsing(true)
            .source(Some(Self::environment(std::env::vars())));
        let merged = builder.add_source(environment).build()?;
        let mut config: Config = merged.try_deserialize()?;
        // The token as written: the environment source would parse a token
        // such as "12e3" as a number.
        if let Ok(token) = std::env::var("KILN_AUTH_TOKEN") {
            config.auth_token = token;
        }
        if config.tensorboard_dir.is_none() {
            config.tensorboard_dir = Some(config.data_dir.join("tensorboard"));
        }
        Ok(config)
    }

    /// The TLS certificate and key files: both, or neither (plaintext).
    pub fn tls_files(&self) -> anyhow::Result<Option<(&Path, &Path)>> {
        fn set(p: &Option<PathBuf>) -> Option<&Path> {
            p.as_deref().filter(|p| !p.as_os_str().is_empty())
        }
        match (set(&self.tls_cert_file), set(&self.tls_key_file)) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (Some(_), None) => {
                anyhow::bail!(
                    "tls_cert_file is set but tls_key_file is not: set both for TLS, or neither"
                )
            }
            (None, Some(_)) => {
                anyhow::bail!(
                    "tls_key_file is set but tls_cert_file is not: set both for TLS, or neither"
                )
            }
        }
    }

    /// Where job TensorBoard logs go; `None` when logging is off.
    pub fn tensorboard_dir(&self) -> Option<PathBuf> {
        match &self.tensorboard_dir {
            None => Some(self.data_dir.join("tensorboard")),
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => Some(dir.clone()),
        }
    }

    /// The `KILN_*` variables that name a configuration key. Other `KILN_*`
    /// variables (tooling such as KILN_CACHE) are not the server's business,
    /// while a misspelt key in kiln.toml is still an error.
    fn environment(vars: impl Iterator<Item = (String, String)>) -> config::Map<String, String> {
        let defaults = serde_json::to_value(Config::default()).expect("config serializes");
        let keys = defaults.as_object().expect("config is a struct");
        vars.filter(|(name, _)| {
            name.strip_prefix("KILN_")
                .is_some_and(|key| keys.contains_key(&key.to_lowercase()))
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_keys_are_taken_from_the_environment() {
        let vars = [
            ("KILN_LISTEN", "0.0.0.0:1"),
            ("KILN_CACHE", "/somewhere"),
            ("KILN_MAX_BATCH_ROWS", "8"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let env = Config::environment(vars.into_iter());
        let mut names: Vec<_> = env.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["KILN_LISTEN", "KILN_MAX_BATCH_ROWS"]);
    }

    #[test]
    fn tls_needs_both_files_or_neither() {
        let with = |cert: Option<&str>, key: Option<&str>| Config {
            tls_cert_file: cert.map(Into::into),
            tls_key_file: key.map(Into::into),
            ..Config::default()
        };
        assert!(with(None, None).tls_files().unwrap().is_none());
        assert!(with(Some(""), Some("")).tls_files().unwrap().is_none());
        let both = with(Some("c.pem"), Some("k.pem"));
        let files = both.tls_files().unwrap();
        assert_eq!(files, Some((Path::new("c.pem"), Path::new("k.pem"))));
        let err = with(Some("c.pem"), None).tls_files().unwrap_err();
        assert!(err.to_string().contains("tls_key_file is not"), "{err}");
        let err = with(None, Some("k.pem")).tls_files().unwrap_err();
        assert!(err.to_string().contains("tls_cert_file is not"), "{err}");
    }

    #[test]
    fn tensorboard_dir_defaults_under_data_dir_and_empty_turns_it_off() {
        let dir = std::env::temp_dir().join(format!("kiln-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let load = |toml: &str| {
            let file = dir.join("kiln.toml");
            std::fs::write(&file, toml).unwrap();
            Config::load(Some(&file)).unwrap()
        };
        let default = load("data_dir = \"/srv/kiln\"\n");
        assert_eq!(
            default.tensorboard_dir(),
            Some("/srv/kiln/tensorboard".into())
        );
        // --print-config shows the resolved directory.
        assert_eq!(
            default.tensorboard_dir,
            Some("/srv/kiln/tensorboard".into())
        );
        let set = load("tensorboard_dir = \"/tb\"\n");
        assert_eq!(set.tensorboard_dir(), Some("/tb".into()));
        let off = load("tensorboard_dir = \"\"\n");
        assert_eq!(off.tensorboard_dir(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
