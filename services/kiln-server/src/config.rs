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
    /// How long a prediction worker holding a partial batch waits for more
    /// rows, in milliseconds (0: take what is queued, never wait).
    pub max_queue_delay_ms: f64,
    /// Prediction worker threads per loaded model, each with its own copy.
    pub model_instances: usize,
    /// Log filter in `tracing` syntax, e.g. "info" or "kiln=debug".
    pub log: String,
    /// Seconds open calls get to finish after SIGTERM/SIGINT before exit.
    pub shutdown_grace_seconds: f64,
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
            max_queue_delay_ms: 0.0,
            model_instances: 1,
            log: "info".into(),
            shutdown_grace_seconds: 10.0,
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
        let environment = config::Environment::with_prefix("KILN")
            .try_parsing(true)
            .source(Some(Self::environment(std::env::vars())));
        let merged = builder.add_source(environment).build()?;
        Ok(merged.try_deserialize()?)
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
}
