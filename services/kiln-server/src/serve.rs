//! Serving, step by step: open the saved state, recover what the previous
//! process left, listen, and on SIGTERM shut down gracefully. `run` reads
//! top to bottom; each step is a function below it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kiln::v1 as pb;
use kiln_serve::{BatcherConfig, ModelRegistry};
use kiln_store::{DatasetStore, JobStore, ModelCatalog, SweepRecords};
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::transport::Server;
use tower_layer::{Identity, Stack};

use crate::catalog::CatalogJournal;
use crate::config::Config;
use crate::roles::Roles;
use crate::{
    auth, datasets, durability, follower, inference, jobs, leases, metrics, oip, placement,
    recovery, runner, sweeps, telemetry, Kiln,
};

/// Serves until a shutdown signal, then drains (see [`on_shutdown_signal`]).
pub async fn run(config: Config) -> anyhow::Result<()> {
    kiln_train::device::set_threads(config.torch_threads);
    let shared = !config.database_url.is_empty();
    let roles = Roles::parse(&config.roles, shared).map_err(anyhow::Error::msg)?;
    let lease = config.lease_seconds;
    if !(0.3..=3600.0).contains(&lease) {
        anyhow::bail!("lease_seconds: {lease} is not between 0.3 and 3600 seconds");
    }
    // Held until the process exits (the kernel releases it then, kill -9
    // too). On a shared database the processes share the directory.
    let _lock = match shared {
        true => None,
        false => Some(lock_data_dir(&config.data_dir)?),
    };
    let State {
        store,
        storage,
        datasets,
        models,
        catalog,
        sweep_records,
        blobs,
    } = open_state(&config)?;
    let serve_device =
        placement::ServeDevice::from_config(&config.serve_device).map_err(anyhow::Error::msg)?;
    let runner = runner::Runner::new(
        store.clone(),
        models.clone(),
        serve_device.clone(),
        config.data_dir.join("models"),
        config.tensorboard_dir(),
        runner::Checkpoints {
            dir: config.data_dir.join("checkpoints"),
            every_epochs: config.checkpoint_every_epochs,
            blobs: blobs.clone(),
        },
    )
    .with_max_concurrent_jobs(config.max_concurrent_jobs)
    .with_serving(roles.serve);
    let addr: std::net::SocketAddr = config
        .listen
        .parse()
        .with_context(|| format!("listen address {}", config.listen))?;
    // Security settings are checked before anything listens.
    let (stop_tx, stop_rx) = watch::channel(false);
    let guards = auth::Guards {
        auth: auth::Auth::from_config(&config.auth_token, config.auth_token_file.as_deref())?,
        max_message_bytes: config.max_message_bytes,
        stopping: stop_rx.clone(),
        roles,
    };
    let (transport, tls) = transport(&config)?;
    let kiln = Arc::new(Kiln {
        config,
        store,
        storage,
        file_fault: Default::default(),
        datasets,
        models,
        catalog,
        sweep_records,
        runner,
        serve_device,
        roles,
        shared,
        blobs,
        sweeps: sweeps::Sweeps::default(),
        stopping: stop_rx.clone(),
    });
    // Before anything listens: serve the models kept from before, and run
    // again the jobs the previous process left queued or running. On a
    // shared database a process loads what the registry holds and follows
    // it, follows what the other processes record, and (a trainer) takes
    // queued jobs by lease.
    if shared {
        if roles.serve {
            follower::sync(&kiln);
            follower::follow(kiln.clone());
        }
        follower::follow_jobs(kiln.clone());
        if roles.api {
            sweeps::resume(&kiln, false);
            sweeps::follow(kiln.clone(), roles.serve);
        }
        if roles.trainer {
            leases::start(kiln.clone());
        }
    } else {
        recovery::recover(&kiln);
        sweeps::resume(&kiln, true);
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    for service in SERVICES {
        health
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    if roles.api || roles.trainer {
        durability::watch(kiln.clone(), health.clone()).await;
    }

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
    start_metrics(&kiln).await?;
    // Tests and scripts read this line to learn the port when listening on :0.
    println!("kiln-server listening on {local}");

    let grace = Duration::from_secs_f64(kiln.config.shutdown_grace_seconds);
    let close_rx = on_shutdown_signal(kiln.clone(), health, stop_tx, grace);
    let server = routes(transport, &kiln, &guards, health_service)?.serve_with_incoming_shutdown(
        // TCP_NODELAY: without it Nagle's algorithm holds small responses
        // back for tens of milliseconds under concurrency.
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        raised(close_rx),
    );
    tokio::select! {
        result = server => result?,
        _ = async { raised(stop_rx).await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "grace period over with calls or jobs still open; exiting");
        }
    }
    tracing::info!("kiln-server stopped");
    Ok(())
}

/// One server per data directory: an exclusive `flock` on
/// `<data_dir>/LOCK`, which holds the pid of the server holding it. A second
/// server on the same directory stops here, naming the first.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read as _, Seek as _, Write as _};
    std::fs::create_dir_all(dir).with_context(|| format!("creating data_dir {}", dir.display()))?;
    let path = dir.join("LOCK");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            anyhow::bail!(
                "data_dir {} is in use by another kiln-server (pid {}, holding {}); \
                 one server per data directory",
                dir.display(),
                pid.trim(),
                path.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
    // The pid is for the message above; the lock holds without it (a full
    // disk cannot take even these few bytes, and must not stop the start).
    let pid = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .and_then(|()| file.sync_all());
    if let Err(e) = pid {
        tracing::warn!(error = %e, "could not write the pid into the data directory's LOCK");
    }
    Ok(file)
}

/// What [`open_state`] opens.
struct State {
    store: Arc<JobStore>,
    storage: Arc<dyn kiln_store::Storage>,
    datasets: Arc<DatasetStore>,
    models: Arc<ModelRegistry>,
    catalog: Arc<ModelCatalog>,
    sweep_records: Arc<SweepRecords>,
    blobs: Option<Arc<kiln_store::Blobs>>,
}

/// The durable state under the data directory (see "Persistence and
/// recovery" in the README): the database with jobs, sweeps and the
/// registry's catalog of versions and aliases, the dataset files, and the
/// (still empty) registry of served models, which saves itself in the catalog.
fn open_state(config: &Config) -> anyhow::Result<State> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let db_path = config.data_dir.join("kiln.db");
    let db: Arc<dyn kiln_store::Storage> = if config.database_url.is_empty() {
        Arc::new(
            kiln_store::Db::open(&db_path)
                .with_context(|| format!("opening the database {}", db_path.display()))?,
        )
    } else {
        Arc::new(
            kiln_store::PgStorage::open(&config.database_url)
                .context("opening the PostgreSQL database (database_url)")?,
        )
    };
    let blobs = match config.object_store_url.as_str() {
        "" => None,
        _ if config.database_url.is_empty() => anyhow::bail!(
            "object_store_url keeps the files of processes that share a database: set database_url"
        ),
        url => Some(Arc::new(
            kiln_store::Blobs::open(url, &config.data_dir).map_err(anyhow::Error::msg)?,
        )),
    };
    let mut datasets = DatasetStore::open_with_db(config.data_dir.join("datasets"), db.clone())?;
    if let Some(blobs) = &blobs {
        datasets = datasets.with_blobs(blobs.clone());
    }
    let datasets = Arc::new(datasets);
    let catalog = Arc::new(ModelCatalog::new(db.clone()));
    let sweep_records = Arc::new(SweepRecords::new(db.clone()));
    let store = Arc::new(JobStore::with_db(db.clone()).context("loading the jobs")?);
    let models = Arc::new(
        ModelRegistry::new(BatcherConfig {
            max_batch_rows: config.max_batch_rows,
            queue_capacity: config.predict_queue_capacity,
            max_queue_delay: Duration::from_secs_f64(config.max_queue_delay_ms / 1e3),
            instances: config.model_instances,
        })
        .with_journal(Arc::new(CatalogJournal(catalog.clone()))),
    );
    Ok(State {
        store,
        storage: db,
        datasets,
        models,
        catalog,
        sweep_records,
        blobs,
    })
}

/// The HTTP/2 transport: stream limit, TLS if configured (and whether it is).
fn transport(config: &Config) -> anyhow::Result<(Server, bool)> {
    let max_streams = (config.max_concurrent_streams > 0).then_some(config.max_concurrent_streams);
    let mut builder = Server::builder().max_concurrent_streams(max_streams);
    let tls = config.tls_files()?;
    if let Some((cert, key)) = tls {
        builder = builder
            .tls_config(auth::tls_config(cert, key)?)
            .context("tls_cert_file / tls_key_file: not a usable certificate and key")?;
    }
    Ok((builder, tls.is_some()))
}

/// The Prometheus listener, if configured. A taken metrics port must not
/// keep the service down: it warns and goes on.
async fn start_metrics(kiln: &Arc<Kiln>) -> anyhow::Result<()> {
    if kiln.config.metrics_listen.is_empty() {
        return Ok(());
    }
    let sources = Arc::new(metrics::Sources {
        store: kiln.store.clone(),
        models: kiln.models.clone(),
    });
    match tokio::net::TcpListener::bind(&kiln.config.metrics_listen).await {
        Ok(listener) => {
            let at = listener.local_addr()?;
            tracing::info!(%at, "Prometheus metrics at http://{at}/metrics");
            tokio::spawn(metrics::serve(listener, sources));
        }
        Err(e) => tracing::warn!(
            metrics_listen = %kiln.config.metrics_listen,
            error = %e,
            "cannot serve metrics"
        ),
    }
    Ok(())
}

/// On SIGTERM/SIGINT, in order: health turns NOT_SERVING, new calls get
/// UNAVAILABLE and watch streams end (`stop`), running jobs checkpoint and go
/// back to QUEUED (calls in flight, predictions included, go on meanwhile);
/// then the returned signal closes the listener and the calls still in flight
/// finish. All within `grace`, after which `run` exits regardless.
fn on_shutdown_signal(
    kiln: Arc<Kiln>,
    health: tonic_health::server::HealthReporter,
    stop: watch::Sender<bool>,
    grace: Duration,
) -> watch::Receiver<bool> {
    let (close_tx, close_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
        for service in SERVICES {
            health
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
        kiln.runner.suspend_all();
        let draining = kiln.clone();
        let idle = tokio::task::spawn_blocking(move || draining.runner.wait_idle(grace)).await;
        if !idle.unwrap_or(false) {
            tracing::warn!("jobs still running at the end of the grace period");
        }
        let _ = close_tx.send(true);
    });
    close_rx
}

/// Resolves once `flag` turns true.
async fn raised(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|raised| *raised).await;
}

/// Every service, traced; all but health behind the guard (auth, message size).
fn routes(
    transport: Server,
    kiln: &Arc<Kiln>,
    guards: &auth::Guards,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> anyhow::Result<Router<Stack<auth::AuthLayer, Stack<telemetry::GrpcLayer, Identity>>>> {
    let max_message = kiln.config.max_message_bytes;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kiln::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok(transport
        .layer(telemetry::GrpcLayer)
        .layer(auth::AuthLayer(guards.auth.clone()))
        .add_service(health)
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
        ))
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
