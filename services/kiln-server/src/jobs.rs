//! `kiln.v1.JobService`: validation at the door, then the store and the runner.

use std::sync::Arc;

use kiln::v1 as pb;
use kiln_core::data::{Dataset, Table};
use kiln_core::prepare::prepare;
use kiln_core::spec::{DataSource, JobSpec};
use kiln_core::FieldError;
use pb::job_service_server::JobService;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::runner::QueuedJob;
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
        let (device, device_name) = kiln_train::device::resolve(spec.device)
            .map_err(|m| status::invalid(FieldError::new("spec.device", m)))?;
        // Reading and checking the data is CPU work: keep it off the async workers.
        let kiln = self.0.clone();
        let spec_for_data = spec.clone();
        let data = tokio::task::spawn_blocking(move || {
            let table = match &spec_for_data.data.source {
                DataSource::Dataset(id) => kiln.datasets.load(id).map_err(|e| match e {
                    kiln_store::DatasetError::NotFound(_) => {
                        Status::not_found(format!("spec.data.dataset_id: {e}"))
                    }
                    other => status::dataset(other),
                })?,
                DataSource::Inline { columns, rows } => {
                    Table::from_inline(columns, rows).map_err(status::invalid)?
                }
            };
            let dataset = Dataset::from_table(&table, &spec_for_data.data, spec_for_data.task)
                .map_err(status::invalid)?;
            let prepared = prepare(&dataset, &spec_for_data.data);
            spec_for_data
                .check_against_data(prepared.outputs)
                .map_err(status::invalid)?;
            Ok::<_, Status>(prepared)
        })
        .await
        .map_err(|e| Status::internal(format!("data preparation panicked: {e}")))??;

        let id = format!("job-{}", uuid_simple());
        let model_name = spec.model_name.clone().unwrap_or_else(|| id.clone());
        let job = self.0.store.create(pb::Job {
            id: id.clone(),
            model_name: model_name.clone(),
            spec: Some(proto),
            train_rows: data.train.rows as u64,
            validation_rows: data.validation.rows as u64,
            input_features: data.width as u32,
            ..Default::default()
        });
        tracing::info!(job = %id, model = %model_name, rows = data.train.rows + data.validation.rows, "job queued");
        self.0.runner.submit(QueuedJob {
            id,
            model_name,
            spec,
            data,
            device,
            device_name,
        });
        Ok(Response::new(job))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let id = request.into_inner().job_id;
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
        let state = match pb::JobState::try_from(request.into_inner().state) {
            Ok(pb::JobState::Unspecified) => None,
            Ok(s) => Some(s),
            Err(_) => return Err(Status::invalid_argument("state: unknown value")),
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs: self.0.store.list(state),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let id = request.into_inner().job_id;
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
        let id = request.into_inner().job_id;
        self.0.store.get(&id).map_err(status::job)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let store = self.0.store.clone();
        tokio::spawn(async move {
            let Ok(mut cursor) = store.watch(&id) else {
                return;
            };
            while let Some(batch) = cursor.next_batch().await {
                for event in batch {
                    if tx.send(Ok(event)).await.is_err() {
                        return; // the watcher has gone
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn uuid_simple() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}
