//! `kiln.v1.JobService`: validation at the door, then the store and the runner.

use std::sync::Arc;

use kiln::v1 as pb;
use kiln_core::budget::{human_bytes, MemoryEstimate};
use kiln_core::data::{Dataset, Table};
use kiln_core::prepare::{check_split, prepare, DataReport, Prepared};
use kiln_core::spec::{DataSource, JobKind, JobSpec};
use kiln_core::FieldError;
use kiln_train::model::ModelArch;
use pb::job_service_server::JobService;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::queued_job::QueuedJob;
use crate::{status, Kiln};

pub struct Jobs(pub Arc<Kiln>);

#[tonic::async_trait]
impl JobService for Jobs {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let proto = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: required"))?;
        let spec = JobSpec::from_proto(&proto).map_err(status::invalid)?;
        // A full queue, or a full disk, is refused before the data is read.
        check_queue(&self.0)?;
        crate::durability::refuse_writes(&self.0)?;
        submit_checked(&self.0, proto, spec, true)
            .await
            .map(Response::new)
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let id = request.into_inner().job_id;
        read_if_unknown(&self.0, &id).await;
        self.0
            .store
            .get(&id)
            .map(Response::new)
            .map_err(status::job)
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let request = request.into_inner();
        let state = match pb::JobState::try_from(request.state) {
            Ok(pb::JobState::Unspecified) => None,
            Ok(s) => Some(s),
            Err(_) => return Err(Status::invalid_argument("state: unknown value")),
        };
        let mut labels: Vec<(String, String)> = request.labels.into_iter().collect();
        if !request.sweep_id.is_empty() {
            labels.push(("sweep".into(), request.sweep_id));
        }
        let filter = kiln_store::ListFilter {
            state,
            labels,
            order_by: request.order_by.trim().to_string(),
        };
        let jobs = self
            .0
            .store
            .list_filtered(&filter)
            .map_err(|m| Status::invalid_argument(format!("order_by: {m}")))?;
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let id = request.into_inner().job_id;
        read_if_unknown(&self.0, &id).await;
        self.0
            .store
            .cancel(&id)
            .map(Response::new)
            .map_err(status::job)
    }

    type WatchJobStream = ReceiverStream<Result<pb::JobEvent, Status>>;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let request = request.into_inner();
        let (id, from) = (request.job_id, request.from_sequence);
        read_if_unknown(&self.0, &id).await;
        self.0.store.get(&id).map_err(status::job)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let store = self.0.store.clone();
        let mut stopping = self.0.stopping.clone();
        tokio::spawn(async move {
            let Ok(mut cursor) = store.watch_from(&id, from) else {
                return;
            };
            loop {
                let batch = tokio::select! {
                    batch = cursor.next_batch() => batch,
                    // A shutdown ends the stream: the client watches again
                    // after the restart (events carry sequence numbers).
                    _ = crate::status::shutdown_begun(&mut stopping) => {
                        let _ = tx.send(Err(crate::status::shutting_down())).await;
                        return;
                    }
                };
                let Some(batch) = batch else { return };
                for event in batch {
                    if tx.send(Ok(event)).await.is_err() {
                        return; // the watcher has gone
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn compare_jobs(
        &self,
        request: Request<pb::CompareJobsRequest>,
    ) -> Result<Response<pb::CompareJobsResponse>, Status> {
        let ids = request.into_inner().job_ids;
        if ids.len() < 2 {
            return Err(Status::invalid_argument("job_ids: name two or more jobs"));
        }
        let mut jobs = Vec::new();
        let mut curves = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let job = self
                .0
                .store
                .get(id)
                .map_err(|e| Status::not_found(format!("job_ids[{i}]: {e}")))?;
            let epochs = self
                .0
                .store
                .events(id)
                .map_err(status::job)?
                .into_iter()
                .filter_map(|e| match e.kind {
                    Some(pb::job_event::Kind::Epoch(m)) => Some(m),
                    _ => None,
                })
                .collect();
            curves.push(pb::JobCurve {
                job_id: id.clone(),
                epochs,
            });
            jobs.push(job);
        }
        let specs: Vec<pb::JobSpec> = jobs
            .iter()
            .map(|j| j.spec.clone().unwrap_or_default())
            .collect();
        let differences = kiln_sweep::diff_specs(&specs)
            .into_iter()
            .map(|(path, values)| pb::ParameterDiff { path, values })
            .collect();
        Ok(Response::new(pb::CompareJobsResponse {
            jobs,
            differences,
            curves,
        }))
    }
}

/// The shared mode: a job this process has not seen yet (submitted on
/// another replica since the last sync) is read from the database now.
async fn read_if_unknown(kiln: &Arc<Kiln>, id: &str) {
    if kiln.shared && kiln.store.get(id).is_err() {
        let (kiln, id) = (kiln.clone(), id.to_string());
        let _ = tokio::task::spawn_blocking(move || kiln.store.refresh(&id)).await;
    }
}

/// Submits a sweep trial: as [`submit_checked`] without the queue limit,
/// since the sweep's own parallelism paces its trials.
pub async fn submit(
    kiln: &Arc<Kiln>,
    proto: pb::JobSpec,
    spec: JobSpec,
) -> Result<pb::Job, Status> {
    submit_checked(kiln, proto, spec, false).await
}

/// Held while the queue is counted and a job added, so concurrent
/// SubmitJobs cannot overshoot `max_queued_jobs`.
static QUEUE_GATE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// RESOURCE_EXHAUSTED when `max_queued_jobs` jobs are already QUEUED.
fn check_queue(kiln: &Kiln) -> Result<(), Status> {
    let limit = kiln.config.max_queued_jobs;
    if limit == 0 {
        return Ok(());
    }
    let queued = kiln.store.list(Some(pb::JobState::Queued)).len();
    if queued >= limit {
        return Err(Status::resource_exhausted(format!(
            "the job queue is full: {queued} jobs are QUEUED and the server's limit is {limit} \
             (max_queued_jobs); wait for queued jobs to start, or cancel some"
        )));
    }
    Ok(())
}

/// INVALID_ARGUMENT when epochs x training rows is over `max_epoch_rows`.
fn check_budget(kiln: &Kiln, spec: &JobSpec, train_rows: usize) -> Result<(), Status> {
    let budget = kiln.config.max_epoch_rows;
    if budget == 0 || spec.kind != JobKind::Train {
        return Ok(());
    }
    let epochs = u64::from(spec.training.epochs);
    let cost = epochs.saturating_mul(train_rows as u64);
    if cost > budget {
        return Err(Status::invalid_argument(format!(
            "spec.training.epochs: {epochs} epochs x {train_rows} training rows = {cost} row passes \
             is over the server's budget of {budget} per job (max_epoch_rows); use fewer epochs or less data"
        )));
    }
    Ok(())
}

/// RESOURCE_EXHAUSTED when the job's estimated memory is over
/// `max_job_memory_bytes`: refused before anything is allocated.
fn check_memory(
    kiln: &Kiln,
    spec: &JobSpec,
    data: &Prepared,
    device_name: &str,
) -> Result<(), Status> {
    let limit = kiln.config.max_job_memory_bytes;
    let outputs = ModelArch::output_units(spec.task, data.outputs);
    let e = MemoryEstimate::for_job(
        spec,
        data.width,
        outputs,
        data.train.rows,
        data.validation.rows,
    );
    if let Some(gpu) = crate::placement::gpu_memory_bytes(device_name) {
        if e.total() > gpu {
            return Err(Status::resource_exhausted(format!(
                "spec.model: the job needs an estimated {} ({} parameters), more than the {} \
                 of {device_name}; use fewer or narrower layers, a smaller batch_size or less data",
                human_bytes(e.total()),
                e.parameters,
                human_bytes(gpu),
            )));
        }
    }
    if limit == 0 || e.total() <= limit {
        return Ok(());
    }
    Err(Status::resource_exhausted(format!(
        "spec.model: the job needs an estimated {} ({} parameters: {} for the weights, their \
         gradients and the optimizer's state; {} for a batch; {} for validation; {} of data), \
         over the server's limit of {} per job (max_job_memory_bytes); use fewer or narrower \
         layers, a smaller batch_size or less data",
        human_bytes(e.total()),
        e.parameters,
        human_bytes(e.model),
        human_bytes(e.batch),
        human_bytes(e.validation),
        human_bytes(e.data),
        human_bytes(limit)
    )))
}

/// One model name holds one task: INVALID_ARGUMENT on `spec.model_name`
/// when the name already holds versions of another task.
fn check_model_task(kiln: &Kiln, spec: &JobSpec) -> Result<(), Status> {
    match (&spec.model_name, spec.kind) {
        (Some(name), JobKind::Train) => kiln
            .models
            .check_task(name, spec.task)
            .map_err(|e| Status::invalid_argument(format!("spec.model_name: {e}"))),
        _ => Ok(()),
    }
}

/// Checks the data of a validated spec, records the job QUEUED and hands it
/// to the runner; with `limit_queue` (SubmitJob) refuses it when
/// `max_queued_jobs` are already waiting.
async fn submit_checked(
    kiln: &Arc<Kiln>,
    mut proto: pb::JobSpec,
    mut spec: JobSpec,
    limit_queue: bool,
) -> Result<pb::Job, Status> {
    check_model_task(kiln, &spec)?;
    resolve_dataset_name(kiln, &mut proto, &mut spec)?;
    // The shared mode: the trainer that takes the job places it on its own
    // devices (a job asking for CUDA waits for a trainer with a GPU).
    let choice = match kiln.shared {
        true => kiln_core::spec::DeviceChoice::Cpu,
        false => spec.device,
    };
    let (device, device_name) = kiln
        .runner
        .place(choice)
        .map_err(|m| status::invalid(FieldError::new("spec.device", m)))?;
    // Reading and checking the data is CPU work: keep it off the async workers.
    let (shared, spec_for_data) = (kiln.clone(), spec.clone());
    let data = tokio::task::spawn_blocking(move || prepare_data(&shared, &spec_for_data))
        .await
        .map_err(|e| Status::internal(format!("data preparation panicked: {e}")))??;
    check_budget(kiln, &spec, data.train.rows)?;
    check_memory(kiln, &spec, &data, &device_name)?;

    let _gate = if limit_queue {
        let gate = QUEUE_GATE.lock().unwrap_or_else(|e| e.into_inner());
        check_queue(kiln)?;
        Some(gate)
    } else {
        None
    };
    let id = format!("job-{}", uuid_simple());
    let model_name = spec.model_name.clone().unwrap_or_else(|| id.clone());
    let labels = proto.labels.clone();
    let job = kiln
        .store
        .create(pb::Job {
            id: id.clone(),
            model_name: model_name.clone(),
            spec: Some(proto),
            train_rows: data.train.rows as u64,
            validation_rows: data.validation.rows as u64,
            input_features: data.width as u32,
            ..Default::default()
        })
        .map_err(status::job)?;
    let job = kiln
        .store
        .append(
            &job.id,
            pb::job_event::Kind::DataReport(data_report(&data.report)),
        )
        .unwrap_or(job);
    tracing::info!(job = %id, model = %model_name, rows = data.train.rows + data.validation.rows, "job queued");
    if kiln.shared {
        return Ok(job); // in the database's queue, for a trainer to take
    }
    kiln.runner.submit(QueuedJob {
        id,
        model_name,
        spec,
        labels,
        data,
        device,
        device_name,
        attempt: 0,
    });
    Ok(job)
}

/// Reads a spec's data (an uploaded dataset or inline rows), checks it against
/// the spec, and splits and scales it: SubmitJob's work, and a restart's for
/// the jobs it queues again.
pub fn prepare_data(kiln: &Kiln, spec: &JobSpec) -> Result<Prepared, Status> {
    let table = match &spec.data.source {
        DataSource::Dataset(id) => kiln_store::datasets::check_dataset_id(id)
            .map_err(|m| status::invalid(FieldError::new("spec.data.dataset_id", m)))
            .and_then(|()| {
                kiln.datasets.load(id).map_err(|e| match e {
                    kiln_store::DatasetError::NotFound(_) => {
                        Status::not_found(format!("spec.data.dataset_id: {e}"))
                    }
                    other => status::dataset(other),
                })
            })?,
        DataSource::DatasetName(name) => {
            let id = dataset_named(kiln, name)?.id;
            kiln.datasets.load(&id).map_err(status::dataset)?
        }
        DataSource::Inline { columns, rows } => {
            Table::from_inline(columns, rows).map_err(status::invalid)?
        }
    };
    let dataset = Dataset::from_table(&table, &spec.data, spec.task).map_err(status::invalid)?;
    check_split(dataset.rows(), spec.data.validation_fraction).map_err(status::invalid)?;
    let prepared = prepare(&dataset, &spec.data);
    spec.check_against_data(prepared.outputs)
        .map_err(status::invalid)?;
    Ok(prepared)
}

/// A spec naming its dataset by name trains on the newest upload with that
/// name: both the record's spec and the job's become that dataset's id, so a
/// restart reads the same data whatever was uploaded since.
fn resolve_dataset_name(
    kiln: &Kiln,
    proto: &mut pb::JobSpec,
    spec: &mut JobSpec,
) -> Result<(), Status> {
    let DataSource::DatasetName(name) = &spec.data.source else {
        return Ok(());
    };
    let meta = dataset_named(kiln, name)?;
    if let Some(data) = proto.data.as_mut() {
        data.source = Some(pb::data_spec::Source::DatasetId(meta.id.clone()));
    }
    spec.data.source = DataSource::Dataset(meta.id);
    Ok(())
}

fn dataset_named(kiln: &Kiln, name: &str) -> Result<kiln_store::DatasetMeta, Status> {
    kiln.datasets.newest_named(name).ok_or_else(|| {
        Status::not_found(format!(
            "spec.data.dataset_name: no dataset is named \"{}\"",
            kiln_core::brief(name)
        ))
    })
}

/// What reading the data did, as the job record and its event carry it.
fn data_report(report: &DataReport) -> pb::DataReport {
    pb::DataReport {
        rows_read: report.rows.read,
        rows_dropped_missing_target: report.rows.dropped_missing_target,
        rows_dropped_by_column: report
            .rows
            .dropped_by_column
            .iter()
            .map(|(column, count)| pb::ColumnCount {
                column: column.clone(),
                count: *count,
            })
            .collect(),
        filled: report
            .filled
            .iter()
            .map(|f| pb::ColumnFill {
                column: f.column.clone(),
                strategy: f.strategy.to_string(),
                cells: f.cells,
                value: f.value.clone(),
                indicator: f.indicator,
            })
            .collect(),
    }
}

fn uuid_simple() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}
