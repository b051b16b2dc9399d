//! Starts the real kiln-server binary on a free port with its own data
//! directory, and gives the tests generated gRPC clients for it.
#![allow(dead_code)] // each test binary uses a different part of this

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kiln::v1 as pb;
use pb::dataset_service_client::DatasetServiceClient;
use pb::inference_service_client::InferenceServiceClient;
use pb::job_service_client::JobServiceClient;
use tonic::transport::Channel;

pub struct Server {
    child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KILN_SERVER_BIN") {
        return path.into();
    }
    // Integration tests run from target/<profile>/deps; the server sits in target/<profile>.
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("kiln-server");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p kiln-server` (make test does)",
        path.display()
    );
    path
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// Starts a server with extra `KILN_*` environment settings.
    pub fn start_with(env: &[(&str, &str)]) -> Server {
        let data_dir =
            std::env::temp_dir().join(format!("kiln-test-{}-{}", std::process::id(), uuid_like()));
        Self::start_in(data_dir, env)
    }

    /// Starts a server on `data_dir` (e.g. one a killed server left behind).
    pub fn start_in(data_dir: PathBuf, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(server_binary())
            .env("KILN_LISTEN", "127.0.0.1:0")
            .env("KILN_DATA_DIR", &data_dir)
            .env("KILN_TORCH_THREADS", "1")
            .env("KILN_LOG", "warn")
            // Many test servers run at once: no Prometheus listener unless a test asks.
            .env("KILN_METRICS_LISTEN", "")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kiln-server");
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        // Log lines written before the banner (e.g. a model that a restart
        // could not load) are passed on to stderr.
        let addr = loop {
            let mut line = String::new();
            let read = reader.read_line(&mut line).expect("read server banner");
            if read == 0 {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kiln-server exited before its banner");
            }
            match line.trim().strip_prefix("kiln-server listening on ") {
                Some(addr) => break addr.to_string(),
                None => eprint!("{line}"),
            }
        };
        Server {
            child,
            addr,
            data_dir,
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to kiln-server")
    }

    pub async fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel().await)
    }

    pub async fn datasets(&self) -> DatasetServiceClient<Channel> {
        DatasetServiceClient::new(self.channel().await)
    }

    pub async fn inference(&self) -> InferenceServiceClient<Channel> {
        InferenceServiceClient::new(self.channel().await)
    }
}

impl Server {
    /// SIGKILLs the server (no shutdown of any kind) and returns its data
    /// directory, left in place for [`Server::start_in`].
    pub fn kill_keeping_data(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut self.data_dir)
    }
}

impl Server {
    /// Sends the server SIGTERM (a graceful shutdown).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits, at most `limit`, for the server to exit by itself, and returns
    /// its data directory, left in place for [`Server::start_in`].
    pub fn wait_exit_keeping_data(mut self, limit: Duration) -> PathBuf {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for kiln-server") {
                assert!(status.success(), "kiln-server exited with {status}");
                return std::mem::take(&mut self.data_dir);
            }
            assert!(
                started.elapsed() < limit,
                "kiln-server still running {limit:?} after it was asked to stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.data_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

fn uuid_like() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Uploads `csv` in chunks of `chunk` bytes.
pub async fn upload(
    server: &Server,
    name: &str,
    csv: &[u8],
    chunk: usize,
) -> Result<pb::Dataset, tonic::Status> {
    let messages: Vec<pb::UploadDatasetRequest> = csv
        .chunks(chunk)
        .enumerate()
        .map(|(i, c)| pb::UploadDatasetRequest {
            name: if i == 0 {
                name.to_string()
            } else {
                String::new()
            },
            chunk: c.to_vec(),
            ..Default::default()
        })
        .collect();
    server
        .datasets()
        .await
        .upload_dataset(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

/// Every event of a job until it ends.
pub async fn watch_all(server: &Server, job_id: &str) -> Vec<pb::JobEvent> {
    let mut stream = server
        .jobs()
        .await
        .watch_job(pb::WatchJobRequest {
            job_id: job_id.to_string(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(600), stream.message())
        .await
        .expect("a job event within 10 minutes")
        .expect("stream ok")
    {
        events.push(event);
    }
    events
}

pub fn epochs(events: &[pb::JobEvent]) -> Vec<pb::EpochMetrics> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::Epoch(m)) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

pub fn finished(events: &[pb::JobEvent]) -> pb::Finished {
    match events.last().and_then(|e| e.kind.clone()) {
        Some(pb::job_event::Kind::Finished(f)) => f,
        other => panic!("the job did not succeed: last event {other:?}"),
    }
}

pub async fn submit(server: &Server, spec: pb::JobSpec) -> Result<pb::Job, tonic::Status> {
    server
        .jobs()
        .await
        .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await
        .map(|r| r.into_inner())
}

pub async fn list_models(server: &Server) -> Vec<pb::ModelInfo> {
    server
        .inference()
        .await
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("ListModels")
        .into_inner()
        .models
}

/// A CPU regression job on `rows` inline rows (x = i, y = i mod 7) with one
/// ReLU layer of `units`; `epochs` large makes a job that runs for hours.
pub fn inline_regression(rows: usize, units: u32, epochs: u32, batch_size: u32) -> pb::JobSpec {
    pb::JobSpec {
        task: pb::Task::Regression as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::Inline(pb::InlineData {
                columns: vec!["x".into(), "y".into()],
                rows: (0..rows)
                    .map(|i| pb::Row {
                        values: vec![i as f64, (i % 7) as f64],
                    })
                    .collect(),
            })),
            target_columns: vec!["y".into()],
            ..Default::default()
        }),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![layer(units)],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs,
            batch_size,
            ..Default::default()
        }),
        device: pb::Device::Cpu as i32,
        ..Default::default()
    }
}

pub async fn get_job(server: &Server, id: &str) -> pb::Job {
    server
        .jobs()
        .await
        .get_job(pb::GetJobRequest { job_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

/// How long a test waits for a job to reach a point it needs: generous,
/// since a loaded 2-core machine is slow; a healthy run takes seconds.
pub const JOB_WAIT: Duration = Duration::from_secs(300);

/// Polls until `id` has completed an epoch (it is training).
pub async fn wait_for_epoch(server: &Server, id: &str) {
    let deadline = std::time::Instant::now() + JOB_WAIT;
    while get_job(server, id).await.epochs_completed == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no epoch within {JOB_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls GetJob until the running job `id` reports a step in the first half
/// of an epoch after its first `after_epochs`, and returns where it stood.
/// At least half an epoch of steps is then still to come, so a stop asked
/// for right after lands inside that epoch; a test proves it afterwards from
/// the epochs the job's checkpoint holds. Fails if the job ends first (its
/// epochs are too short to be caught).
pub async fn wait_mid_epoch(server: &Server, id: &str, after_epochs: u32) -> pb::TrainingProgress {
    let mut client = server.jobs().await;
    let deadline = std::time::Instant::now() + JOB_WAIT;
    loop {
        let job = client
            .get_job(pb::GetJobRequest { job_id: id.into() })
            .await
            .unwrap()
            .into_inner();
        if let Some(p) = job
            .progress
            .filter(|p| p.epoch > after_epochs && p.rows_done > 0)
        {
            if p.rows_done <= job.train_rows / 2 {
                return p;
            }
        }
        assert!(
            matches!(job.state(), pb::JobState::Queued | pb::JobState::Running),
            "job {id} ended ({:?}) before it was seen in the first half of an epoch",
            job.state()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} not seen mid-epoch within {JOB_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The suspension event (a graceful shutdown checkpointed the job where it
/// stood), if the job has one.
pub fn suspension(events: &[pb::JobEvent]) -> Option<pb::StateChanged> {
    events.iter().find_map(|e| match &e.kind {
        Some(pb::job_event::Kind::StateChanged(s)) if s.suspended => Some(s.clone()),
        _ => None,
    })
}

pub fn layer(units: u32) -> pb::HiddenLayer {
    pb::HiddenLayer {
        units,
        activation: pb::Activation::Relu as i32,
        ..Default::default()
    }
}

pub fn dataset_source(id: &str, targets: &[&str]) -> pb::DataSpec {
    pb::DataSpec {
        source: Some(pb::data_spec::Source::DatasetId(id.to_string())),
        target_columns: targets.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn read_example(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("examples").join(name)).expect("example file")
}

/// Parses a numeric CSV (header skipped) into rows of strings.
pub fn csv_rows(bytes: &[u8]) -> Vec<Vec<String>> {
    String::from_utf8_lossy(bytes)
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// A program installed by scripts/setup.sh in the cache's venv, unless `env` overrides it.
pub fn venv_tool(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return path.into();
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cache = std::env::var("KILN_CACHE").unwrap_or(format!("{home}/.cache/kiln"));
    let path = PathBuf::from(cache).join("venv/bin").join(name);
    assert!(
        path.exists(),
        "{name} is missing: run scripts/setup.sh (make test does)"
    );
    path
}
