//! Batch scoring of uploaded datasets (`ScoreDataset`) and dataset downloads.

use futures::{StreamExt, TryStreamExt};

use crate::{pb, Client, Error, Result};

/// A stream of a scoring's events: progress, then its `Finished` event.
pub type ScoreEvents = futures::stream::BoxStream<'static, Result<pb::ScoreEvent>>;

/// Which uploaded dataset to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetRef {
    /// By id (`ds-...`).
    Id(String),
    /// The newest dataset uploaded under this name.
    Name(String),
}

impl DatasetRef {
    fn into_proto(self) -> pb::score_dataset_request::Dataset {
        match self {
            DatasetRef::Id(id) => pb::score_dataset_request::Dataset::DatasetId(id),
            DatasetRef::Name(name) => pb::score_dataset_request::Dataset::DatasetName(name),
        }
    }
}

/// The metrics a scoring reported, by name without the epoch events' `val_`
/// prefix (`accuracy`, `log_loss`, `roc_auc`, `pr_auc`, `f1`,
/// `balanced_accuracy`; `mae`, `rmse`, `r2`).
pub fn score_metrics(finished: &pb::ScoreFinished) -> Vec<(&'static str, f64)> {
    finished
        .metrics
        .as_ref()
        .map(|m| {
            crate::epoch_metrics(m)
                .into_iter()
                .map(|(name, v)| (name.strip_prefix("val_").unwrap_or(name), v))
                .collect()
        })
        .unwrap_or_default()
}

impl Client {
    /// Starts scoring every row of an uploaded dataset with `model` at
    /// `version` (a number, an alias, or "" for the newest loaded version)
    /// on the server, off the online Predict path. The predictions are stored
    /// as a dataset named `output_name` ("" for `<model>-v<version>-scores`).
    /// Dropping the stream stops the scoring.
    pub async fn score_dataset(
        &self,
        model: &str,
        version: &str,
        dataset: DatasetRef,
        output_name: &str,
    ) -> Result<ScoreEvents> {
        let stream = self
            .inference
            .clone()
            .score_dataset(pb::ScoreDatasetRequest {
                model: model.to_string(),
                version: version.to_string(),
                dataset: Some(dataset.into_proto()),
                output_name: output_name.to_string(),
            })
            .await?
            .into_inner();
        Ok(stream.map_err(Error::from).boxed())
    }

    /// [`Client::score_dataset`], calling `progress` on every progress event,
    /// until the final event.
    pub async fn score_dataset_and_wait(
        &self,
        model: &str,
        version: &str,
        dataset: DatasetRef,
        output_name: &str,
        mut progress: impl FnMut(&pb::ScoreProgress),
    ) -> Result<pb::ScoreFinished> {
        let mut events = self
            .score_dataset(model, version, dataset, output_name)
            .await?;
        while let Some(event) = events.next().await {
            match event?.kind {
                Some(pb::score_event::Kind::Progress(p)) => progress(&p),
                Some(pb::score_event::Kind::Finished(f)) => return Ok(f),
                None => {}
            }
        }
        Err(Error::from(tonic::Status::unavailable(
            "the scoring stream ended without a result",
        )))
    }

    /// Which dataset `name_or_id` means: the dataset with that id if there is
    /// one, else the newest dataset with that name.
    pub async fn dataset_ref(&self, name_or_id: &str) -> Result<DatasetRef> {
        let datasets = self.datasets().await?;
        Ok(if datasets.iter().any(|d| d.id == name_or_id) {
            DatasetRef::Id(name_or_id.to_string())
        } else {
            DatasetRef::Name(name_or_id.to_string())
        })
    }

    /// The stored file of a dataset (a CSV as uploaded or as scoring wrote it;
    /// an NPY dataset's float32 matrix).
    pub async fn download_dataset(&self, dataset_id: &str) -> Result<Vec<u8>> {
        let mut stream = self
            .datasets
            .clone()
            .download_dataset(pb::GetDatasetRequest {
                dataset_id: dataset_id.to_string(),
            })
            .await?
            .into_inner();
        let mut file = Vec::new();
        while let Some(chunk) = stream.message().await? {
            file.extend_from_slice(&chunk.chunk);
        }
        Ok(file)
    }
}
