//! `kiln.v1.DatasetService`.

use std::sync::Arc;

use kiln::v1 as pb;
use kiln_store::{DatasetFormat, DatasetMeta};
use pb::dataset_service_server::DatasetService;
use tonic::{Request, Response, Status, Streaming};

use crate::{status, Kiln};

pub struct Datasets(pub Arc<Kiln>);

/// Bytes per DownloadDataset message.
const DOWNLOAD_CHUNK: usize = 1 << 20;

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
        format: match meta.format {
            DatasetFormat::Csv => pb::DatasetFormat::Csv,
            DatasetFormat::Npy => pb::DatasetFormat::Npy,
        } as i32,
    }
}

/// What an upload stream carried: one CSV file, or named `.npy` files.
enum Upload {
    Csv(Vec<u8>),
    Npy(Vec<(String, Vec<u8>)>),
}

impl Upload {
    fn new(format: i32) -> Result<Self, Status> {
        match pb::DatasetFormat::try_from(format) {
            Ok(pb::DatasetFormat::Unspecified | pb::DatasetFormat::Csv) => Ok(Upload::Csv(vec![])),
            Ok(pb::DatasetFormat::Npy) => Ok(Upload::Npy(vec![])),
            Err(_) => Err(Status::invalid_argument(format!(
                "format: unknown value {format}"
            ))),
        }
    }

    fn append(&mut self, array: String, chunk: &[u8]) -> Result<(), Status> {
        match self {
            Upload::Csv(bytes) if array.is_empty() => bytes.extend_from_slice(chunk),
            Upload::Csv(_) => {
                return Err(Status::invalid_argument(
                    "array: only NPY uploads (format DATASET_FORMAT_NPY) have arrays",
                ))
            }
            Upload::Npy(arrays) => {
                let name = if array.is_empty() { "x".into() } else { array };
                match arrays.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, bytes)) => bytes.extend_from_slice(chunk),
                    None => arrays.push((name, chunk.to_vec())),
                }
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl DatasetService for Datasets {
    async fn upload_dataset(
        &self,
        request: Request<Streaming<pb::UploadDatasetRequest>>,
    ) -> Result<Response<pb::Dataset>, Status> {
        // Refused before the upload is read when it could not be stored.
        crate::durability::refuse_writes(&self.0)?;
        let mut stream = request.into_inner();
        let limit = self.0.config.max_dataset_bytes;
        let mut header: Option<(String, Upload)> = None;
        let mut total = 0u64;
        while let Some(message) = stream.message().await? {
            if header.is_none() {
                header = Some((message.name, Upload::new(message.format)?));
            }
            total += message.chunk.len() as u64;
            if total > limit {
                return Err(Status::resource_exhausted(format!(
                    "dataset is larger than the server's limit of {limit} bytes (max_dataset_bytes)"
                )));
            }
            let (_, upload) = header.as_mut().expect("set above");
            upload.append(message.array, &message.chunk)?;
        }
        let Some((name, upload)) = header.filter(|_| total > 0) else {
            return Err(Status::invalid_argument(
                "chunk: the upload carried no data",
            ));
        };
        let datasets = self.0.datasets.clone();
        let meta = tokio::task::spawn_blocking(move || match upload {
            Upload::Csv(bytes) => datasets.put_csv(&name, &bytes),
            Upload::Npy(arrays) => datasets.put_npy(&name, &arrays),
        })
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

    type DownloadDatasetStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::DatasetChunk, Status>> + Send>,
    >;

    async fn download_dataset(
        &self,
        request: Request<pb::GetDatasetRequest>,
    ) -> Result<Response<Self::DownloadDatasetStream>, Status> {
        let id = request.into_inner().dataset_id;
        let datasets = self.0.datasets.clone();
        let (_, file) = tokio::task::spawn_blocking(move || datasets.read_file(&id))
            .await
            .map_err(|e| Status::internal(format!("dataset read panicked: {e}")))?
            .map_err(status::dataset)?;
        let chunks: Vec<_> = file
            .chunks(DOWNLOAD_CHUNK)
            .map(|c| Ok(pb::DatasetChunk { chunk: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
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
