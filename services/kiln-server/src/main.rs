//! kiln-server: reads the configuration, opens the stores, and serves
//! kiln.v1 (jobs, datasets, inference), grpc.health.v1 and reflection.

mod auth;
mod catalog;
mod config;
mod datasets;
mod deadline;
mod durability;
mod follower;
mod inference;
mod jobs;
mod leases;
mod metrics;
mod oip;
mod placement;
mod queued_job;
mod recovery;
mod roles;
mod runner;
mod scoring;
mod serve;
mod status;
mod sweeps;
mod telemetry;
mod tensorboard;

use std::path::PathBuf;
use std::sync::Arc;

use kiln_serve::ModelRegistry;
use kiln_store::{DatasetStore, JobStore, ModelCatalog, SweepRecords};

use crate::config::Config;

/// What the services share.
pub struct Kiln {
    pub config: Config,
    pub store: Arc<JobStore>,
    /// Where every store writes through (SQLite or PostgreSQL): its write health.
    pub storage: Arc<dyn kiln_store::Storage>,
    /// Whether files can be written in the data directory (the probe's finding).
    pub file_fault: durability::FileFault,
    pub datasets: Arc<DatasetStore>,
    pub models: Arc<ModelRegistry>,
    /// The registry's saved versions and aliases (the registry writes them
    /// itself; a start reads them back).
    pub catalog: Arc<ModelCatalog>,
    /// Sweeps' saved records (each sweep's controller writes its own).
    pub sweep_records: Arc<SweepRecords>,
    pub runner: runner::Runner,
    /// What this process does (`roles`).
    pub roles: roles::Roles,
    /// On a database other processes share (`database_url`): jobs are
    /// taken by trainers' leases, and the stores read back what others wrote.
    pub shared: bool,
    /// Object storage for the files (`object_store_url`), with the data
    /// directory as this process's cache.
    pub blobs: Option<Arc<kiln_store::Blobs>>,
    /// Where models are served (`serve_device`).
    pub serve_device: placement::ServeDevice,
    pub sweeps: sweeps::Sweeps,
    /// Turns true when a shutdown begins: new calls are refused, open
    /// watch streams end.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// kiln-server's command line: everything else is configuration.
#[derive(clap::Parser)]
#[command(
    version,
    about = "kiln's gRPC server: training jobs, datasets, sweeps and inference",
    after_help = "Configuration: built-in defaults < kiln.toml (or --config FILE) < KILN_* \
                  environment variables, e.g. KILN_LISTEN=0.0.0.0:50051 KILN_DATA_DIR=/var/lib/kiln."
)]
struct Args {
    /// The configuration file (default: kiln.toml in the working directory, if any).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration (the auth token redacted) and exit.
    #[arg(long)]
    print_config: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let config = Config::load(args.config.as_deref())?;
    if args.print_config {
        print!("{}", toml_like(&config));
        return Ok(());
    }
    let telemetry = telemetry::init(&config)?;
    let result = serve::run(config).await;
    // Flush the spans still buffered, also when serving failed.
    telemetry.shutdown().await;
    result
}

/// A URL with its password (`user:password@`) shown as `<redacted>`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{name}:<redacted>@{host}")
        }
        _ => url.to_string(),
    }
}

/// The effective configuration, one `key = value` a line.
fn toml_like(config: &Config) -> String {
    let mut value = serde_json::to_value(config).expect("config serializes");
    if !config.auth_token.is_empty() {
        value["auth_token"] = "<redacted>".into();
    }
    value["database_url"] = redact_password(&config.database_url).into();
    value["object_store_url"] = redact_password(&config.object_store_url).into();
    let mut out = String::new();
    for (k, v) in value.as_object().expect("config is a struct") {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_database_password_is_never_printed() {
        use super::redact_password;
        assert_eq!(
            redact_password("postgres://kiln:s3cret@db:5432/kiln"),
            "postgres://kiln:<redacted>@db:5432/kiln"
        );
        assert_eq!(
            redact_password("postgres://kiln@db/kiln"),
            "postgres://kiln@db/kiln"
        );
        assert_eq!(redact_password(""), "");
    }
}
