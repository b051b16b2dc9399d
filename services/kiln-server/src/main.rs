//! kiln-server: reads the configuration, opens the stores, and serves
//! kiln.v1 (jobs, datasets, inference), grpc.health.v1 and reflection.

mod config;
mod datasets;
mod deadline;
mod inference;
mod jobs;
mod oip;
mod runner;
mod status;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use kiln::v1 as pb;
use kiln_serve::{BatcherConfig, ModelRegistry};
use kiln_store::{DatasetStore, JobStore};
use tonic::transport::Server;
use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// What the services share.
pub struct Kiln {
    pub config: Config,
    pub store: Arc<JobStore>,
    pub datasets: Arc<DatasetStore>,
    pub models: Arc<ModelRegistry>,
    pub runner: runner::Runner,
}

const USAGE: &str = "usage: kiln-server [--config FILE] [--print-config]

Configuration: built-in defaults < kiln.toml (or --config FILE) < KILN_* environment
variables, e.g. KILN_LISTEN=0.0.0.0:50051 KILN_DATA_DIR=/var/lib/kiln.";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config_file: Option<PathBuf> = None;
    let mut print_config = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => config_file = Some(args.next().context("--config needs a file")?.into()),
            "--print-config" => print_config = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let config = Config::load(config_file.as_deref())?;
    if print_config {
        print!("{}", toml_like(&config));
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    serve(config).await
}

/// The effective configuration, one `key = value` a line.
fn toml_like(config: &Config) -> String {
    let value = serde_json::to_value(config).expect("config serializes");
    let mut out = String::new();
    for (k, v) in value.as_object().expect("config is a struct") {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out
}

async fn serve(config: Config) -> anyhow::Result<()> {
    kiln_train::device::set_threads(config.torch_threads);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let datasets = Arc::new(DatasetStore::open(config.data_dir.join("datasets"))?);
    let store = Arc::new(JobStore::default());
    let models = Arc::new(ModelRegistry::new(BatcherConfig {
        max_batch_rows: config.max_batch_rows,
        queue_capacity: config.predict_queue_capacity,
        max_queue_delay: std::time::Duration::from_secs_f64(config.max_queue_delay_ms / 1e3),
        instances: config.model_instances,
    }));
    let runner = runner::Runner::new(
        store.clone(),
        models.clone(),
        config.data_dir.join("models"),
    );
    let addr: std::net::SocketAddr = config
        .listen
        .parse()
        .with_context(|| format!("listen address {}", config.listen))?;
    let max_message = config.max_message_bytes;
    let kiln = Arc::new(Kiln {
        config,
        store,
        datasets,
        models,
        runner,
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::job_service_server::JobServiceServer<jobs::Jobs>>()
        .await;
    health
        .set_serving::<pb::dataset_service_server::DatasetServiceServer<datasets::Datasets>>()
        .await;
    health
        .set_serving::<pb::inference_service_server::InferenceServiceServer<inference::Inference>>()
        .await;
    health
        .set_serving::<kiln::inference::grpc_inference_service_server::GrpcInferenceServiceServer<oip::Oip>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kiln::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, cuda = kiln_train::device::cuda_available(), "kiln-server listening");
    // Tests and scripts read this line to learn the port when listening on :0.
    println!("kiln-server listening on {local}");

    // On SIGTERM/SIGINT stop accepting and let calls finish, but never wait
    // longer than the grace period (an open WatchJob stream would hold a
    // graceful shutdown forever).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let grace = std::time::Duration::from_secs_f64(kiln.config.shutdown_grace_seconds);
    let server = Server::builder()
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(
            pb::job_service_server::JobServiceServer::new(jobs::Jobs(kiln.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            pb::dataset_service_server::DatasetServiceServer::new(datasets::Datasets(kiln.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            pb::inference_service_server::InferenceServiceServer::new(inference::Inference(
                kiln.clone(),
            ))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message),
        )
        .add_service(
            kiln::inference::grpc_inference_service_server::GrpcInferenceServiceServer::new(
                oip::Oip(kiln.clone()),
            )
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message),
        )
        .serve_with_incoming_shutdown(
            // TCP_NODELAY: without it Nagle's algorithm holds small
            // responses back for tens of milliseconds under concurrency.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped(stop_rx.clone()),
        );
    tokio::select! {
        result = server => result?,
        _ = async { stopped(stop_rx).await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "grace period over with calls still open; exiting");
        }
    }
    tracing::info!("kiln-server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}
