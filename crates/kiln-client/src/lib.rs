//! The Rust SDK for kiln: typed, async clients over kiln's gRPC API.
//!
//! [`Client`] wraps the generated tonic clients of `kiln.v1` (jobs, datasets
//! and inference) behind one handle that is cheap to clone. The generated
//! messages are re-exported as [`pb`], so a caller needs no other crate to
//! build a [`pb::JobSpec`] or read a [`pb::Job`].
//!
//! Job files are the `SubmitJobRequest` messages that grpcurl takes, in the
//! proto3 JSON mapping, written as JSON or YAML: [`load_job_file`] reads one
//! through the proto descriptors, so an unknown field or enum value is an
//! error that names it.
//!
//! # Submit a job, follow it, predict
//!
//! ```no_run
//! use kiln_client::{load_job_file, pb, Client};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), kiln_client::Error> {
//!     let client = Client::connect("http://127.0.0.1:50051").await?;
//!
//!     // examples/rings.json is a SubmitJobRequest in the proto3 JSON mapping.
//!     let request = load_job_file("examples/rings.json")?;
//!     let job = client
//!         .submit_and_wait_with(request, |event| {
//!             if let Some(pb::job_event::Kind::Epoch(m)) = &event.kind {
//!                 println!("epoch {}: val_loss {:.4}", m.epoch, m.val_loss);
//!             }
//!         })
//!         .await?;
//!     assert_eq!(job.state(), pb::JobState::Succeeded);
//!
//!     let answer = client
//!         .predict_rows(&job.model_name, &[vec![1.0, 0.0], vec![0.0, 2.2]])
//!         .await?;
//!     for p in &answer.predictions {
//!         println!("{} {:?}", p.class_label, p.probabilities);
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Watch a job's events as a stream
//!
//! ```no_run
//! use futures::StreamExt;
//! use kiln_client::{pb, Client};
//!
//! async fn follow(client: &Client, job_id: &str) -> Result<(), kiln_client::Error> {
//!     let mut events = client.watch(job_id).await?;
//!     while let Some(event) = events.next().await {
//!         match event?.kind {
//!             Some(pb::job_event::Kind::Finished(f)) => println!("best epoch {}", f.best_epoch),
//!             Some(pb::job_event::Kind::Failed(f)) => println!("failed: {}", f.message),
//!             _ => {}
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Errors
//!
//! Every call returns [`Error`]. A status from the server keeps its code and
//! message ([`Error::code`], [`Error::status`]) and displays as
//! `NOT_FOUND: <message>`.

use std::path::{Path, PathBuf};

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

mod jobfile;
mod score;
pub mod table;

pub use score::{score_metrics, DatasetRef, ScoreEvents};

pub use jobfile::{
    load_job_file, load_message_file, load_sweep_file, parse_job, parse_message, parse_sweep,
    JobFileFormat,
};

/// The generated `kiln.v1` messages and clients (re-exported from the `kiln` crate).
pub use kiln::v1 as pb;

use pb::dataset_service_client::DatasetServiceClient;
use pb::inference_service_client::InferenceServiceClient;
use pb::job_service_client::JobServiceClient;
use pb::sweep_service_client::SweepServiceClient;

/// The address `kiln` and the SDK use when none is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// Bytes per `UploadDataset` message.
pub const UPLOAD_CHUNK_BYTES: usize = 256 * 1024;

/// Everything that can go wrong in a kiln call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection to the server could not be made.
    #[error("cannot connect to {addr}: {}", chain(source))]
    Transport {
        addr: String,
        source: tonic::transport::Error,
    },
    /// The server (or the gRPC stack) answered with a status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(Box<tonic::Status>),
    /// A job file could not be read as a `SubmitJobRequest`.
    #[error("{}: {message}", path.display())]
    JobFile { path: PathBuf, message: String },
    /// A local file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Input that the SDK rejects before calling the server (a bad CSV, a bad address).
    #[error("{0}")]
    Invalid(String),
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status(Box::new(status))
    }
}

impl Error {
    /// The gRPC status, when the error is one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Status(s) => Some(s),
            _ => None,
        }
    }

    /// The gRPC status code, when the error is a status.
    pub fn code(&self) -> Option<tonic::Code> {
        self.status().map(|s| s.code())
    }
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The canonical name of a gRPC status code, e.g. `NOT_FOUND`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An error and its sources, joined with ": ".
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// A stream of a job's events, from the first until the job ends.
pub type JobEvents = BoxStream<'static, Result<pb::JobEvent>>;

/// Where a dataset's bytes come from: a file or memory.
#[derive(Debug, Clone)]
pub enum DatasetSource {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

impl From<&Path> for DatasetSource {
    fn from(p: &Path) -> Self {
        DatasetSource::Path(p.to_path_buf())
    }
}
impl From<PathBuf> for DatasetSource {
    fn from(p: PathBuf) -> Self {
        DatasetSource::Path(p)
    }
}
impl From<&PathBuf> for DatasetSource {
    fn from(p: &PathBuf) -> Self {
        DatasetSource::Path(p.clone())
    }
}
impl From<Vec<u8>> for DatasetSource {
    fn from(b: Vec<u8>) -> Self {
        DatasetSource::Bytes(b)
    }
}
impl From<&[u8]> for DatasetSource {
    fn from(b: &[u8]) -> Self {
        DatasetSource::Bytes(b.to_vec())
    }
}

impl DatasetSource {
    async fn read(self) -> Result<Vec<u8>> {
        match self {
            DatasetSource::Bytes(b) => Ok(b),
            DatasetSource::Path(path) => tokio::fs::read(&path)
                .await
                .map_err(|source| Error::Io { path, source }),
        }
    }
}

/// What [`Client::submit`] takes: a [`pb::SubmitJobRequest`] or a bare [`pb::JobSpec`].
pub trait IntoJobRequest {
    fn into_job_request(self) -> pb::SubmitJobRequest;
}

impl IntoJobRequest for pb::SubmitJobRequest {
    fn into_job_request(self) -> pb::SubmitJobRequest {
        self
    }
}

impl IntoJobRequest for pb::JobSpec {
    fn into_job_request(self) -> pb::SubmitJobRequest {
        pb::SubmitJobRequest { spec: Some(self) }
    }
}

/// The channel every generated client uses: plain, or adding the bearer token.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Debug, Clone, Default)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    /// A token for a server with `auth_token` set; `None` sends none.
    pub fn new(token: Option<&str>) -> Result<BearerToken> {
        token
            .map(|t| {
                format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| Error::Invalid("the token must be printable ASCII".into()))
            })
            .transpose()
            .map(BearerToken)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connection to a kiln server. Clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    jobs: JobServiceClient<AuthChannel>,
    datasets: DatasetServiceClient<AuthChannel>,
    inference: InferenceServiceClient<AuthChannel>,
    sweeps: SweepServiceClient<AuthChannel>,
}

impl Client {
    /// Connects to `addr`, e.g. `http://127.0.0.1:50051` (`127.0.0.1:50051`
    /// means the same: plaintext HTTP/2).
    pub async fn connect(addr: impl AsRef<str>) -> Result<Client> {
        Self::connect_with_token(addr, None).await
    }

    /// Connects to a server that checks a bearer token (its `auth_token`).
    pub async fn connect_with_token(addr: impl AsRef<str>, token: Option<&str>) -> Result<Client> {
        let token = BearerToken::new(token)?;
        let addr = addr.as_ref().trim();
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Channel::from_shared(uri.clone())
            .map_err(|e| Error::Invalid(format!("bad server address {addr:?}: {e}")))?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| Error::Transport { addr: uri, source })?;
        Ok(Client::from_channel_with_token(channel, token))
    }

    /// Uses an existing channel (for TLS or timeouts set up by the caller).
    pub fn from_channel(channel: Channel) -> Client {
        Self::from_channel_with_token(channel, BearerToken::default())
    }

    /// Uses an existing channel and sends `token` with every call.
    pub fn from_channel_with_token(channel: Channel, token: BearerToken) -> Client {
        let with = |c: &Channel| InterceptedService::new(c.clone(), token.clone());
        Client {
            jobs: JobServiceClient::new(with(&channel)),
            datasets: DatasetServiceClient::new(with(&channel)),
            sweeps: SweepServiceClient::new(with(&channel)),
            inference: InferenceServiceClient::new(with(&channel))
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
        }
    }

    /// The generated JobService client, for calls the SDK does not wrap.
    pub fn job_service(&self) -> JobServiceClient<AuthChannel> {
        self.jobs.clone()
    }

    /// The generated DatasetService client.
    pub fn dataset_service(&self) -> DatasetServiceClient<AuthChannel> {
        self.datasets.clone()
    }

    /// The generated InferenceService client (registry calls: aliases, load, export...).
    pub fn inference_service(&self) -> InferenceServiceClient<AuthChannel> {
        self.inference.clone()
    }

    // ---- jobs ----

    /// Submits a job (a [`pb::SubmitJobRequest`] or a bare [`pb::JobSpec`]);
    /// the server validates it and answers with the QUEUED job.
    pub async fn submit(&self, request: impl IntoJobRequest) -> Result<pb::Job> {
        Ok(self
            .jobs
            .clone()
            .submit_job(request.into_job_request())
            .await?
            .into_inner())
    }

    /// Submits a job and waits until it ends; returns the final job (any end
    /// state: check [`pb::Job::state`]).
    pub async fn submit_and_wait(&self, request: impl IntoJobRequest) -> Result<pb::Job> {
        self.submit_and_wait_with(request, |_| {}).await
    }

    /// Like [`Client::submit_and_wait`], calling `on_event` with each of the job's events.
    pub async fn submit_and_wait_with(
        &self,
        request: impl IntoJobRequest,
        on_event: impl FnMut(&pb::JobEvent),
    ) -> Result<pb::Job> {
        let job = self.submit(request).await?;
        self.wait_with(&job.id, on_event).await
    }

    /// Follows a job until it ends, calling `on_event` with each event (from
    /// the first); returns the final job.
    pub async fn wait_with(
        &self,
        job_id: &str,
        mut on_event: impl FnMut(&pb::JobEvent),
    ) -> Result<pb::Job> {
        let mut events = self.watch(job_id).await?;
        while let Some(event) = events.next().await {
            on_event(&event?);
        }
        self.get_job(job_id).await
    }

    /// Every event of the job from the first, then the live ones until it ends.
    pub async fn watch(&self, job_id: &str) -> Result<JobEvents> {
        self.watch_from(job_id, 0).await
    }

    /// The job's events from sequence `from` on (after a broken stream: the
    /// sequence after the last event seen), then the live ones until it ends.
    pub async fn watch_from(&self, job_id: &str, from: u64) -> Result<JobEvents> {
        let stream = self
            .jobs
            .clone()
            .watch_job(pb::WatchJobRequest {
                job_id: job_id.to_string(),
                from_sequence: from,
            })
            .await?
            .into_inner();
        Ok(stream.map_err(Error::from).boxed())
    }

    pub async fn get_job(&self, job_id: &str) -> Result<pb::Job> {
        Ok(self
            .jobs
            .clone()
            .get_job(pb::GetJobRequest {
                job_id: job_id.to_string(),
            })
            .await?
            .into_inner())
    }

    /// Every job, newest first.
    pub async fn jobs(&self) -> Result<Vec<pb::Job>> {
        self.jobs_in_state(pb::JobState::Unspecified).await
    }

    /// The jobs in one state (`Unspecified`: all), newest first.
    pub async fn jobs_in_state(&self, state: pb::JobState) -> Result<Vec<pb::Job>> {
        Ok(self
            .jobs
            .clone()
            .list_jobs(pb::ListJobsRequest {
                state: state as i32,
                ..Default::default()
            })
            .await?
            .into_inner()
            .jobs)
    }

    /// ListJobs with filters (state, sweep id, labels) and an order
    /// (`order_by: "val_loss"`, `"-val_accuracy"`).
    pub async fn list_jobs(&self, request: pb::ListJobsRequest) -> Result<Vec<pb::Job>> {
        Ok(self
            .jobs
            .clone()
            .list_jobs(request)
            .await?
            .into_inner()
            .jobs)
    }

    /// The spec fields that differ between jobs, their best metrics and
    /// per-epoch curves.
    pub async fn compare(&self, job_ids: &[String]) -> Result<pb::CompareJobsResponse> {
        Ok(self
            .jobs
            .clone()
            .compare_jobs(pb::CompareJobsRequest {
                job_ids: job_ids.to_vec(),
            })
            .await?
            .into_inner())
    }

    // ---- sweeps ----

    /// The generated SweepService client.
    pub fn sweep_service(&self) -> SweepServiceClient<AuthChannel> {
        self.sweeps.clone()
    }

    /// Starts a sweep; answers with it RUNNING (its trials not started yet).
    pub async fn submit_sweep(&self, request: pb::SubmitSweepRequest) -> Result<pb::Sweep> {
        Ok(self
            .sweeps
            .clone()
            .submit_sweep(request)
            .await?
            .into_inner())
    }

    /// A sweep with its leaderboard.
    pub async fn get_sweep(&self, sweep_id: &str) -> Result<pb::Sweep> {
        Ok(self
            .sweeps
            .clone()
            .get_sweep(pb::GetSweepRequest {
                sweep_id: sweep_id.to_string(),
            })
            .await?
            .into_inner())
    }

    /// Follows a sweep until it ends, calling `on_event` with each event
    /// (from the first); returns the final sweep.
    pub async fn wait_sweep_with(
        &self,
        sweep_id: &str,
        mut on_event: impl FnMut(&pb::SweepEvent),
    ) -> Result<pb::Sweep> {
        let mut stream = self
            .sweeps
            .clone()
            .watch_sweep(pb::WatchSweepRequest {
                sweep_id: sweep_id.to_string(),
                from_sequence: 0,
            })
            .await?
            .into_inner();
        while let Some(event) = stream.message().await? {
            on_event(&event);
        }
        self.get_sweep(sweep_id).await
    }

    /// Stops a sweep: cancels its unfinished trials and starts no more.
    pub async fn cancel_sweep(&self, sweep_id: &str) -> Result<pb::Sweep> {
        Ok(self
            .sweeps
            .clone()
            .cancel_sweep(pb::CancelSweepRequest {
                sweep_id: sweep_id.to_string(),
            })
            .await?
            .into_inner())
    }

    /// Stops a queued or running job; answers with the job as it is then.
    pub async fn cancel(&self, job_id: &str) -> Result<pb::Job> {
        Ok(self
            .jobs
            .clone()
            .cancel_job(pb::CancelJobRequest {
                job_id: job_id.to_string(),
            })
            .await?
            .into_inner())
    }

    // ---- datasets ----

    /// Uploads a CSV file with a header row (a path or the bytes) as dataset `name`.
    pub async fn upload_csv(
        &self,
        source: impl Into<DatasetSource>,
        name: &str,
    ) -> Result<pb::Dataset> {
        let bytes = source.into().read().await?;
        let messages = chunk_messages(name, pb::DatasetFormat::Csv, "", bytes, true);
        self.upload(messages).await
    }

    /// Uploads NumPy arrays (`.npy` files as `np.save` writes them) as one
    /// dataset: each `(array name, source)` becomes the columns named after it.
    pub async fn upload_npy<S: Into<DatasetSource>>(
        &self,
        arrays: impl IntoIterator<Item = (String, S)>,
        name: &str,
    ) -> Result<pb::Dataset> {
        let mut messages = Vec::new();
        for (array, source) in arrays {
            let bytes = source.into().read().await?;
            let first = messages.is_empty();
            messages.extend(chunk_messages(
                name,
                pb::DatasetFormat::Npy,
                &array,
                bytes,
                first,
            ));
        }
        self.upload(messages).await
    }

    async fn upload(&self, messages: Vec<pb::UploadDatasetRequest>) -> Result<pb::Dataset> {
        Ok(self
            .datasets
            .clone()
            .upload_dataset(futures::stream::iter(messages))
            .await?
            .into_inner())
    }

    /// Every dataset, newest first.
    pub async fn datasets(&self) -> Result<Vec<pb::Dataset>> {
        Ok(self
            .datasets
            .clone()
            .list_datasets(pb::ListDatasetsRequest {})
            .await?
            .into_inner()
            .datasets)
    }

    pub async fn get_dataset(&self, dataset_id: &str) -> Result<pb::Dataset> {
        Ok(self
            .datasets
            .clone()
            .get_dataset(pb::GetDatasetRequest {
                dataset_id: dataset_id.to_string(),
            })
            .await?
            .into_inner())
    }

    // ---- models and predictions ----

    /// Every version of every model.
    pub async fn models(&self) -> Result<Vec<pb::ModelInfo>> {
        Ok(self
            .inference
            .clone()
            .list_models(pb::ListModelsRequest {})
            .await?
            .into_inner()
            .models)
    }

    /// The model version that Predict would use for `model` (a name or a job
    /// id) and `version` (a number, an alias, or empty for the newest loaded
    /// version), if the registry has it.
    pub async fn model_info(&self, model: &str, version: &str) -> Result<Option<pb::ModelInfo>> {
        Ok(resolve_model(self.models().await?, model, version))
    }

    /// Predicts with a full request (model, version, `rows` or `text_rows`).
    pub async fn predict(&self, request: pb::PredictRequest) -> Result<pb::PredictResponse> {
        Ok(self.inference.clone().predict(request).await?.into_inner())
    }

    /// Predicts numeric feature rows (in the model's `feature_columns` order)
    /// with the newest loaded version of `model`.
    pub async fn predict_rows<R: AsRef<[f32]>>(
        &self,
        model: &str,
        rows: &[R],
    ) -> Result<pb::PredictResponse> {
        self.predict(pb::PredictRequest {
            model: model.to_string(),
            rows: rows
                .iter()
                .map(|r| pb::Row {
                    values: r.as_ref().iter().map(|&v| f64::from(v)).collect(),
                })
                .collect(),
            ..Default::default()
        })
        .await
    }

    /// Predicts rows as they appear in the training CSV (one cell per
    /// `input_columns`; categorical values as text) with the newest loaded
    /// version of `model`.
    pub async fn predict_text_rows<R: AsRef<[S]>, S: AsRef<str>>(
        &self,
        model: &str,
        rows: &[R],
    ) -> Result<pb::PredictResponse> {
        self.predict(pb::PredictRequest {
            model: model.to_string(),
            text_rows: rows
                .iter()
                .map(|r| pb::TextRow {
                    cells: r.as_ref().iter().map(|c| c.as_ref().to_string()).collect(),
                })
                .collect(),
            ..Default::default()
        })
        .await
    }

    /// Predicts the rows of a CSV with a header row: the columns are matched
    /// to the model's input columns by name (extra columns, such as the
    /// target, are ignored) and sent as `text_rows`, so categorical values
    /// work. Returns the predictions as a table ready to write as CSV.
    pub async fn predict_csv(
        &self,
        model: &str,
        version: &str,
        csv: &[u8],
    ) -> Result<table::PredictionTable> {
        let info = self.model_info(model, version).await?;
        let mut text_rows = table::read_feature_csv(csv, info.as_ref())?;
        // Chunks of PREDICT_CHUNK_ROWS, each asking for the version that
        // answered the first, so a moving alias cannot mix two models.
        let mut answer: Option<pb::PredictResponse> = None;
        let mut pinned = version.to_string();
        while !text_rows.is_empty() || answer.is_none() {
            let rest = text_rows.split_off(text_rows.len().min(PREDICT_CHUNK_ROWS));
            let response = self
                .predict(pb::PredictRequest {
                    model: model.to_string(),
                    version: pinned.clone(),
                    text_rows: std::mem::replace(&mut text_rows, rest),
                    ..Default::default()
                })
                .await?;
            pinned = response.model_version.to_string();
            match &mut answer {
                Some(all) => all.predictions.extend(response.predictions),
                None => answer = Some(response),
            }
        }
        let answer = answer.expect("one request at least");
        Ok(table::PredictionTable::new(answer, info.as_ref()))
    }
}

/// Rows per Predict request when a table is scored (`predict_csv`): a few
/// MB of request, under the server's default message limit (max_message_bytes).
const PREDICT_CHUNK_ROWS: usize = 4096;

/// Largest Predict answer the client reads (tonic's default is 4 MB).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// The first message of an upload carries the name and format; every one carries a chunk.
fn chunk_messages(
    name: &str,
    format: pb::DatasetFormat,
    array: &str,
    bytes: Vec<u8>,
    first: bool,
) -> Vec<pb::UploadDatasetRequest> {
    let mut chunks: Vec<&[u8]> = bytes.chunks(UPLOAD_CHUNK_BYTES).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let head = first && i == 0;
            pb::UploadDatasetRequest {
                name: if head {
                    name.to_string()
                } else {
                    String::new()
                },
                format: if head { format as i32 } else { 0 },
                array: array.to_string(),
                chunk: chunk.to_vec(),
            }
        })
        .collect()
}

/// Picks the version Predict would use: by number, by alias, or the newest
/// loaded one when `version` is empty. `model` is a name or a job id.
pub fn resolve_model(
    models: Vec<pb::ModelInfo>,
    model: &str,
    version: &str,
) -> Option<pb::ModelInfo> {
    let candidates = models
        .into_iter()
        .filter(|m| m.name == model || m.job_id == model);
    let version = version.trim();
    if version.is_empty() {
        candidates.filter(|m| m.loaded).max_by_key(|m| m.version)
    } else if let Ok(n) = version.parse::<u32>() {
        candidates.into_iter().find(|m| m.version == n)
    } else {
        candidates
            .into_iter()
            .find(|m| m.aliases.iter().any(|a| a == version))
    }
}

/// The epochs a job will train at most: the spec's `training.epochs`, 100 when unset.
pub fn planned_epochs(job: &pb::Job) -> u32 {
    match job
        .spec
        .as_ref()
        .and_then(|s| s.training.as_ref())
        .map(|t| t.epochs)
    {
        Some(n) if n > 0 => n,
        _ => 100,
    }
}

/// A job state without its prefix: `SUCCEEDED`, `RUNNING`, ...
pub fn state_name(state: pb::JobState) -> &'static str {
    let name = state.as_str_name();
    name.strip_prefix("JOB_STATE_").unwrap_or(name)
}

/// A stop reason without its prefix: `COMPLETED`, `EARLY_STOPPED`, ...
pub fn stop_reason_name(reason: pb::StopReason) -> &'static str {
    let name = reason.as_str_name();
    name.strip_prefix("STOP_REASON_").unwrap_or(name)
}

/// The validation metrics an epoch carries besides its losses, by name
/// (`val_accuracy`, `val_log_loss`, `val_roc_auc`, `val_pr_auc`, `val_f1`,
/// `val_balanced_accuracy` for classification; `val_mae`, `val_rmse`, `val_r2`
/// for regression).
pub fn epoch_metrics(m: &pb::EpochMetrics) -> Vec<(&'static str, f64)> {
    // kiln-core's table, so a new metric shows up here without a second list.
    kiln_core::spec::Metric::ALL
        .into_iter()
        .filter(|metric| !metric.is_loss())
        .filter_map(|metric| metric.value(m).map(|v| (metric.name(), v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, version: u32, loaded: bool, aliases: &[&str]) -> pb::ModelInfo {
        pb::ModelInfo {
            name: name.into(),
            version,
            job_id: format!("job-{name}-{version}"),
            loaded,
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn resolves_versions_like_predict() {
        let models = vec![
            info("a", 1, true, &["production"]),
            info("a", 2, true, &[]),
            info("a", 3, false, &[]),
            info("b", 1, true, &[]),
        ];
        let pick = |m: &str, v: &str| resolve_model(models.clone(), m, v).map(|i| i.version);
        assert_eq!(pick("a", ""), Some(2));
        assert_eq!(pick("a", "3"), Some(3));
        assert_eq!(pick("a", "production"), Some(1));
        assert_eq!(pick("job-a-1", ""), Some(1));
        assert_eq!(pick("a", "nope"), None);
        assert_eq!(pick("c", ""), None);
    }

    #[test]
    fn uploads_put_name_and_format_in_the_first_message() {
        let bytes = vec![7u8; UPLOAD_CHUNK_BYTES * 2 + 1];
        let messages = chunk_messages("d", pb::DatasetFormat::Csv, "", bytes, true);
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0].name, "d");
        assert_eq!(messages[0].format, pb::DatasetFormat::Csv as i32);
        assert!(messages[1..]
            .iter()
            .all(|m| m.name.is_empty() && m.format == 0));
        assert_eq!(
            messages.iter().map(|m| m.chunk.len()).sum::<usize>(),
            UPLOAD_CHUNK_BYTES * 2 + 1
        );
    }

    #[test]
    fn status_errors_keep_code_and_message() {
        let e = Error::from(tonic::Status::not_found("job x not found"));
        assert_eq!(e.code(), Some(tonic::Code::NotFound));
        assert_eq!(e.to_string(), "NOT_FOUND: job x not found");
    }
}
