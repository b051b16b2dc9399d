//! kiln-server: reads the configuration, opens the stores, and serves
//! kiln.v1 (jobs, datasets, inference), grpc.health.v1 and reflection.

mod auth;
mod config;
mod datasets;
mod deadline;
mod inference;
mod jobs;
mod metrics;
mod oip;
mod runner;
mod status;
mod sweeps;
mod telemetry;
mod tensorboard;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use kiln::v1 as pb;
use kiln_serve::{BatcherConfig, ModelRegistry};
use kiln_store::{DatasetStore, JobStore};
use tonic::server::NamedService;
use tonic::transport::Server;

use crate::config::Config;

/// What the services share.
pub struct Kiln {
    pub config: Config,
    pub store: Arc<JobStore>,
    pub datasets: Arc<DatasetStore>,
    pub models: Arc<ModelRegistry>,
    pub runner: runner::Runner,
    pub sweeps: sweeps::Sweeps,
    /// Turns true when a shutdown begins: new calls are refused, open
    /// watch streams end.
    pub stopping: tokio::sync::watch::Receiver<bool>,
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
    let telemetry = telemetry::init(&config)?;
    let result = serve(config).await;
    // Flush the spans still buffered, also when serving failed.
    telemetry.shutdown().await;
    result
}

/// The effective configuration, one `key = value` a line.
fn toml_like(config: &Config) -> String {
    let mut value = serde_json::to_value(config).expect("config serializes");
    if !config.auth_token.is_empty() {
        value["auth_token"] = "<redacted>".into();
    }
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
    // The durable state (see "Persistence and recovery" in the README).
    let db_path = config.data_dir.join("kiln.db");
    let db = Arc::new(
        kiln_store::Db::open(&db_path)
            .with_context(|| format!("opening the database {}", db_path.display()))?,
    );
    let datasets = Arc::new(DatasetStore::open_with_db(
        config.data_dir.join("datasets"),
        db.clone(),
    )?);
    let store = Arc::new(
        JobStore::with_db(db)
            .with_context(|| format!("loading jobs from {}", db_path.display()))?,
    );
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
        config.tensorboard_dir(),
        runner::Checkpoints {
            dir: config.data_dir.join("checkpoints"),
            every_epochs: config.checkpoint_every_epochs,
        },
    )
    .with_max_concurrent_jobs(config.max_concurrent_jobs);
    let addr: std::net::SocketAddr = config
        .listen
        .parse()
        .with_context(|| format!("listen address {}", config.listen))?;
    let max_message = config.max_message_bytes;
    // Security settings are checked before anything listens.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let guards = auth::Guards {
        auth: auth::Auth::from_config(&config.auth_token, config.auth_token_file.as_deref())?,
        max_message_bytes: max_message,
        stopping: stop_rx.clone(),
    };
    let max_streams = (config.max_concurrent_streams > 0).then_some(config.max_concurrent_streams);
    let mut builder = Server::builder().max_concurrent_streams(max_streams);
    let tls = config.tls_files()?;
    if let Some((cert, key)) = tls {
        builder = builder
            .tls_config(auth::tls_config(cert, key)?)
            .context("tls_cert_file / tls_key_file: not a usable certificate and key")?;
    }
    let tls = tls.is_some();
    let kiln = Arc::new(Kiln {
        config,
        store,
        datasets,
        models,
        runner,
        sweeps: sweeps::Sweeps::default(),
        stopping: stop_rx.clone(),
    });
    // Before anything listens: serve the models kept from before, and run
    // again the jobs the previous process left queued or running.
    runner::recover(&kiln);
    sweeps::resume(&kiln);

    let (health, health_service) = tonic_health::server::health_reporter();
    for service in SERVICES {
        health
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kiln::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(
        %local,
        cuda = kiln_train::device::cuda_available(),
        tls,
        auth = guards.auth.enabled(),
        "kiln-server listening"
    );
    if !kiln.config.metrics_listen.is_empty() {
        let sources = Arc::new(metrics::Sources {
            store: kiln.store.clone(),
            models: kiln.models.clone(),
        });
        // A taken metrics port must not keep the service down: warn and go on.
        match tokio::net::TcpListener::bind(&kiln.config.metrics_listen).await {
            Ok(metrics_listener) => {
                let at = metrics_listener.local_addr()?;
                tracing::info!(%at, "Prometheus metrics at http://{at}/metrics");
                tokio::spawn(metrics::serve(metrics_listener, sources));
            }
            Err(e) => tracing::warn!(
                metrics_listen = %kiln.config.metrics_listen,
                error = %e,
                "cannot serve metrics"
            ),
        }
    }
    // Tests and scripts read this line to learn the port when listening on :0.
    println!("kiln-server listening on {local}");

    // On SIGTERM/SIGINT, in order: health turns NOT_SERVING, new calls get
    // UNAVAILABLE and watch streams end, running jobs checkpoint and go back
    // to QUEUED (calls in flight, predictions included, go on meanwhile);
    // then the listener closes and the calls still in flight finish. All
    // within the grace period, after which the process exits regardless.
    let grace = std::time::Duration::from_secs_f64(kiln.config.shutdown_grace_seconds);
    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    {
        let (health, kiln) = (health.clone(), kiln.clone());
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
            for service in SERVICES {
                health
                    .set_service_status(service, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            kiln.runner.suspend_all();
            let runner = kiln.clone();
            let idle = tokio::task::spawn_blocking(move || runner.runner.wait_idle(grace)).await;
            if !idle.unwrap_or(false) {
                tracing::warn!("jobs still running at the end of the grace period");
            }
            let _ = close_tx.send(true);
        });
    }
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // Every service but health is behind the guard (auth, message size).
    let server = builder
        .layer(telemetry::GrpcLayer)
        .add_service(health_service)
        .add_service(guards.wrap(reflection().build_v1()?))
        .add_service(guards.wrap(reflection().build_v1alpha()?))
        .add_service(
            guards.wrap(
                pb::job_service_server::JobServiceServer::new(jobs::Jobs(kiln.clone()))
                    .max_decoding_message_size(max_message),
            ),
        )
        .add_service(
            guards.wrap(
                pb::dataset_service_server::DatasetServiceServer::new(datasets::Datasets(
                    kiln.clone(),
                ))
                .max_decoding_message_size(max_message),
            ),
        )
        .add_service(
            guards.wrap(
                pb::sweep_service_server::SweepServiceServer::new(sweeps::SweepSvc(kiln.clone()))
                    .max_decoding_message_size(max_message)
                    .max_encoding_message_size(max_message),
            ),
        )
        .add_service(
            guards.wrap(
                pb::inference_service_server::InferenceServiceServer::new(inference::Inference(
                    kiln.clone(),
                ))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
            ),
        )
        .add_service(
            guards.wrap(
                kiln::inference::grpc_inference_service_server::GrpcInferenceServiceServer::new(
                    oip::Oip(kiln.clone()),
                )
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
            ),
        )
        .serve_with_incoming_shutdown(
            // TCP_NODELAY: without it Nagle's algorithm holds small
            // responses back for tens of milliseconds under concurrency.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped(close_rx),
        );
    tokio::select! {
        result = server => result?,
        _ = async { stopped(stop_rx).await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "grace period over with calls or jobs still open; exiting");
        }
    }
    tracing::info!("kiln-server stopped");
    Ok(())
}

/// The names health reports for: "" (the whole server) and each service;
/// SERVING once recovery is done, NOT_SERVING from the start of a shutdown.
const SERVICES: [&str; 6] = [
    "",
    <pb::job_service_server::JobServiceServer<jobs::Jobs> as NamedService>::NAME,
    <pb::dataset_service_server::DatasetServiceServer<datasets::Datasets> as NamedService>::NAME,
    <pb::sweep_service_server::SweepServiceServer<sweeps::SweepSvc> as NamedService>::NAME,
    <pb::inference_service_server::InferenceServiceServer<inference::Inference> as NamedService>::NAME,
    <kiln::inference::grpc_inference_service_server::GrpcInferenceServiceServer<oip::Oip> as NamedService>::NAME,
];

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
