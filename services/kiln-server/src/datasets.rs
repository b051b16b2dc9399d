//! `kiln.v1.DatasetService`.

use std::sync::Arc;

use kiln::v1 as pb;
use kiln_store::DatasetMeta;
use pb::dataset_service_server::DatasetService;
use tonic::{Request, Response, Status, Streaming};

use crate::{status, Kiln};

pub struct Datasets(pub Arc<Kiln>);

pub fn to_proto(meta: DatasetMeta) -> pb::Dataset {
    pb::Dataset {
        id: meta.id,
        name: meta.name,
        columns: meta.columns,
        rows: meta.rows,
        size_bytes: meta.size_bytes,
        created_at: Some(prost_types::Timestamp {
            seconds: meta.created_unix,
            nanos: 0,
        }),
    }
}

#[tonic::async_trait]
impl DatasetService for Datasets {
    async fn upload_dataset(
        &self,
        request: Request<Streaming<pb::UploadDatasetRequest>>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let mut stream = request.into_inner();
        let limit = self.0.config.max_dataset_bytes;
        let mut name = None;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await? {
            name.get_or_insert(chunk.name);
            if (bytes.len() + chunk.chunk.len()) as u64 > limit {
                return Err(Status::resource_exhausted(format!(
                    "dataset is larger than the server's limit of {limit} bytes (max_dataset_bytes)"
                )));
            }
            bytes.extend_from_slice(&chunk.chunk);
        }
        if bytes.is_empty() {
            return Err(Status::invalid_argument(
                "chunk: the upload carried no data",
            ));
        }
        let datasets = self.0.datasets.clone();
        let name = name.unwrap_or_default();
        let meta = tokio::task::spawn_blocking(move || datasets.put(&name, &bytes))
            .await
            .map_err(|e| Status::internal(format!("dataset upload panicked: {e}")))?
            .map_err(status::dataset)?;
        tracing::info!(dataset = %meta.id, rows = meta.rows, "dataset stored");
        Ok(Response::new(to_proto(meta)))
    }

    async fn get_dataset(
        &self,
        request: Request<pb::GetDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let id = request.into_inner().dataset_id;
        self.0
            .datasets
            .get(&id)
            .map(|m| Response::new(to_proto(m)))
            .map_err(status::dataset)
    }

    async fn list_datasets(
        &self,
        _request: Request<pb::ListDatasetsRequest>,
    ) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        Ok(Response::new(pb::ListDatasetsResponse {
            datasets: self.0.datasets.list().into_iter().map(to_proto).collect(),
        }))
    }
}
