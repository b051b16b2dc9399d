//! `kiln.v1.InferenceService`: predictions go to the model version's batcher;
//! the registry calls (load, unload, alias, export, import) go to the registry.

use std::sync::Arc;

use kiln::v1 as pb;
use kiln_core::encoding::{InputColumn, InputEncoding};
use kiln_core::spec::check_model_name;
use kiln_serve::{ModelRegistry, ServeError, ServedModel, VersionInfo};
use kiln_train::{ModelArtifact, Output};
use pb::inference_service_server::InferenceService;
use tonic::{Request, Response, Status, Streaming};

use crate::{deadline, metrics, status, Kiln};

pub struct Inference(pub Arc<Kiln>);

/// Bytes per ExportModel message.
const EXPORT_CHUNK: usize = 1 << 20;

impl Inference {
    /// The loaded model answering for `name` at `version`, or why there is none.
    fn model(&self, name: &str, version: &str) -> Result<Arc<ServedModel>, Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument("model: required"));
        }
        let error = match self.0.models.resolve(name, version) {
            Ok(model) => return Ok(model),
            Err(e) => e,
        };
        // Known as a job or a job's model name, but nothing served yet?
        let job = self
            .0
            .store
            .list(None)
            .into_iter()
            .find(|j| j.id == name || j.model_name == name);
        match job {
            Some(job) if self.0.models.versions(name).is_empty() => {
                Err(Status::failed_precondition(format!(
                    "model \"{name}\" is not servable yet: job {} is {}",
                    job.id,
                    job.state().as_str_name()
                )))
            }
            _ => Err(status::serve(error)),
        }
    }

    fn info(&self, name: &str, version: u32) -> Result<pb::ModelInfo, Status> {
        self.0
            .models
            .list()
            .into_iter()
            .find(|v| v.name == name && v.version == version)
            .map(|v| self.to_proto(v))
            .ok_or_else(|| Status::not_found(format!("model \"{name}\" version {version}")))
    }

    fn to_proto(&self, v: VersionInfo) -> pb::ModelInfo {
        let meta = &v.meta;
        pb::ModelInfo {
            task: meta.arch.task.to_proto() as i32,
            feature_columns: meta.feature_names.clone(),
            input_columns: meta.encoding.input_names(),
            categorical_columns: categorical_columns(&meta.encoding),
            target_columns: meta.target_names.clone(),
            classes: meta.class_labels.clone(),
            metrics: self.0.store.get(&v.job_id).ok().and_then(|j| j.best),
            device: v.device,
            loaded: v.loaded,
            aliases: v.aliases,
            stats: v.stats.map(|s| pb::BatcherStats {
                queue_depth: s.queue_depth as u64,
                requests: s.requests,
                rejected_full: s.rejected_full,
                expired: s.expired,
                batches: s.batches,
                batch_rows: s.batch_rows,
                max_batch_rows: s.max_batch_rows,
                queue_seconds: s.queue_seconds,
                compute_seconds: s.compute_seconds,
            }),
            load_error: v.error.unwrap_or_default(),
            decision_threshold: meta.decision_threshold,
            name: v.name,
            version: v.version,
            job_id: v.job_id,
        }
    }

    /// Runs registry work that may load a model (seconds) off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&ModelRegistry) -> Result<T, ServeError> + Send + 'static,
    ) -> Result<T, Status> {
        let models = self.0.models.clone();
        tokio::task::spawn_blocking(move || work(&models))
            .await
            .map_err(|e| Status::internal(format!("model registry task panicked: {e}")))?
            .map_err(status::serve)
    }
}

#[tonic::async_trait]
impl InferenceService for Inference {
    async fn predict(
        &self,
        request: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let deadline = deadline::from_metadata(request.metadata());
        let request = request.into_inner();
        let model = self.model(&request.model, &request.version)?;
        let values = match (request.rows.is_empty(), request.text_rows.is_empty()) {
            (false, true) => feature_rows(&model, &request.rows)?,
            (true, false) => text_rows(&model, &request.text_rows)?,
            (true, true) => {
                return Err(Status::invalid_argument(
                    "rows: at least one row (in rows or text_rows) is required",
                ))
            }
            (false, false) => {
                return Err(Status::invalid_argument(
                    "text_rows: set either rows or text_rows, not both",
                ))
            }
        };
        let answer = model
            .batcher
            .predict(values, deadline)
            .await
            .map_err(status::serve)?;
        let labels = &model.meta.class_labels;
        let predictions = match answer.output {
            Output::Values { values, width } => values
                .chunks(width)
                .map(|row| pb::Prediction {
                    values: row.iter().map(|&v| v as f64).collect(),
                    ..Default::default()
                })
                .collect(),
            Output::Probabilities { probs, classes } => probs
                .chunks(classes)
                .map(|row| {
                    let best = model.meta.class_of(row);
                    pb::Prediction {
                        probabilities: row.iter().map(|&p| p as f64).collect(),
                        class_index: best as u32,
                        class_label: labels.get(best).cloned().unwrap_or_default(),
                        ..Default::default()
                    }
                })
                .collect(),
        };
        Ok(Response::new(pb::PredictResponse {
            model: request.model,
            job_id: model.job_id.clone(),
            model_version: model.version,
            predictions,
            queue_seconds: answer.queue_time.as_secs_f64(),
            compute_seconds: answer.compute_time.as_secs_f64(),
            batch_rows: answer.batch_rows as u32,
        }))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self.0.models.list();
        Ok(Response::new(pb::ListModelsResponse {
            models: models.into_iter().map(|v| self.to_proto(v)).collect(),
        }))
    }

    async fn load_model(
        &self,
        request: Request<pb::ModelRef>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let r = request.into_inner();
        let model = self
            .blocking(move |models| models.load(&r.model, &r.version))
            .await?;
        tracing::info!(model = %model.name, version = model.version, "model loaded");
        Ok(Response::new(self.info(&model.name, model.version)?))
    }

    async fn unload_model(
        &self,
        request: Request<pb::ModelRef>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let r = request.into_inner();
        let version = self
            .0
            .models
            .unload(&r.model, &r.version)
            .map_err(status::serve)?;
        let name = self.0.models.resolve_name(&r.model);
        tracing::info!(model = %name, version, "model unloaded");
        Ok(Response::new(self.info(&name, version)?))
    }

    async fn set_alias(
        &self,
        request: Request<pb::SetAliasRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let r = request.into_inner();
        crate::durability::refuse_writes(&self.0)?;
        // The registry saves the move before it makes it.
        let version = self
            .0
            .models
            .set_alias(&r.model, &r.alias, &r.version)
            .map_err(|e| crate::durability::serve_status(&self.0, e))?;
        tracing::info!(model = %r.model, alias = %r.alias, version, "alias moved");
        Ok(Response::new(self.info(&r.model, version)?))
    }

    type ExportModelStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::ModelFileChunk, Status>> + Send>,
    >;

    async fn export_model(
        &self,
        request: Request<pb::ModelRef>,
    ) -> Result<Response<Self::ExportModelStream>, Status> {
        let r = request.into_inner();
        let file = self
            .blocking(move |models| {
                let (_, artifact) = models.artifact(&r.model, &r.version)?;
                artifact
                    .to_safetensors()
                    .map_err(|e| ServeError::Load(e.to_string()))
            })
            .await?;
        let chunks: Vec<_> = file
            .chunks(EXPORT_CHUNK)
            .map(|c| Ok(pb::ModelFileChunk { chunk: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn import_model(
        &self,
        request: Request<Streaming<pb::ImportModelRequest>>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        crate::durability::refuse_writes(&self.0)?;
        let mut stream = request.into_inner();
        let limit = self.0.config.max_dataset_bytes;
        let mut name = None;
        let mut file = Vec::new();
        while let Some(message) = stream.message().await? {
            name.get_or_insert(message.name);
            if (file.len() + message.chunk.len()) as u64 > limit {
                return Err(Status::resource_exhausted(format!(
                    "model file is larger than the server's limit of {limit} bytes (max_dataset_bytes)"
                )));
            }
            file.extend_from_slice(&message.chunk);
        }
        let name = name.unwrap_or_default();
        check_model_name("name", &name).map_err(status::invalid)?;
        let artifact = ModelArtifact::from_safetensors(&file)
            .map_err(|e| Status::invalid_argument(format!("chunk: {e}")))?;
        check_model_memory(&artifact, self.0.config.max_job_memory_bytes)?;
        self.0
            .models
            .check_task(&name, artifact.meta.arch.task)
            .map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
        let serve = self.0.serve_device.clone();
        // Kept like a trained model's files, so a restart serves it again.
        let dir_name = format!("import-{}", uuid::Uuid::new_v4().simple());
        let dir = self.0.config.data_dir.join("models").join(&dir_name);
        let kiln = self.0.clone();
        let model = tokio::task::spawn_blocking(move || {
            let stored = crate::durability::save_artifact(&artifact, &dir).and_then(|()| {
                kiln.models
                    .register(&name, "", &dir_name, artifact, serve.device, &serve.name)
                    .map_err(|e| crate::durability::serve_status(&kiln, e))
            });
            if stored.is_err() {
                let _ = std::fs::remove_dir_all(&dir); // nothing half-imported stays
            }
            stored
        })
        .await
        .map_err(|e| Status::internal(format!("import panicked: {e}")))??;
        tracing::info!(model = %model.name, version = model.version, "model imported");
        Ok(Response::new(self.info(&model.name, model.version)?))
    }

    type ScoreDatasetStream = crate::scoring::ScoreStream;

    async fn score_dataset(
        &self,
        request: Request<pb::ScoreDatasetRequest>,
    ) -> Result<Response<Self::ScoreDatasetStream>, Status> {
        let request = request.into_inner();
        crate::durability::refuse_writes(&self.0)?;
        let model = self.model(&request.model, &request.version)?;
        crate::scoring::start(self.0.clone(), model, request)
            .await
            .map(Response::new)
    }
}

/// RESOURCE_EXHAUSTED when a model's weights alone are over the per-job
/// memory budget (`max_job_memory_bytes`; 0: no limit).
fn check_model_memory(artifact: &ModelArtifact, limit: u64) -> Result<(), Status> {
    let arch = &artifact.meta.arch;
    let parameters = kiln_core::budget::parameters(arch.inputs, &arch.hidden, arch.outputs);
    let bytes = parameters.saturating_mul(4);
    if limit == 0 || bytes <= limit {
        return Ok(());
    }
    Err(Status::resource_exhausted(format!(
        "chunk: the model's {parameters} parameters take {}, over the server's limit of {} \
         (max_job_memory_bytes)",
        kiln_core::budget::human_bytes(bytes),
        kiln_core::budget::human_bytes(limit)
    )))
}

/// Feature rows (after encoding, before scaling), checked for width; NaN (a
/// missing value) filled as in training, any other non-finite value refused.
fn feature_rows(model: &ServedModel, rows: &[pb::Row]) -> Result<Vec<f32>, Status> {
    let width = model.meta.arch.inputs;
    let mut values = Vec::with_capacity(rows.len() * width);
    for (i, row) in rows.iter().enumerate() {
        if row.values.len() != width {
            return Err(Status::invalid_argument(format!(
                "rows[{i}]: has {} values; model \"{}\" expects {width} features ({})",
                row.values.len(),
                model.name,
                model.meta.feature_names.join(", ")
            )));
        }
        values.extend(row.values.iter().map(|&v| v as f32));
    }
    fill_missing(model, &mut values, |r, f| format!("rows[{r}].values[{f}]"))?;
    Ok(values)
}

/// Fills the NaN of feature rows with the model's fills (counted in the
/// metrics); `at(row, feature)` names a refused value.
pub(crate) fn fill_missing(
    model: &ServedModel,
    values: &mut [f32],
    at: impl Fn(usize, usize) -> String,
) -> Result<(), Status> {
    let encoding = &model.meta.encoding;
    let mut filled = vec![0; encoding.columns.len()];
    encoding
        .fill_missing(values, &mut filled, at)
        .map_err(status::invalid)?;
    metrics::missing_filled(&model.name, filled.iter().sum());
    Ok(())
}

/// Raw rows of the input columns, encoded as in training: missing cells
/// filled, unseen categories refused or ignored (and counted) as the model says.
fn text_rows(model: &ServedModel, rows: &[pb::TextRow]) -> Result<Vec<f32>, Status> {
    let inputs = model.meta.encoding.input_names();
    let encoder = model.meta.encoding.encoder();
    let mut values = Vec::with_capacity(rows.len() * model.meta.arch.inputs);
    for (i, row) in rows.iter().enumerate() {
        if row.cells.len() != inputs.len() {
            return Err(Status::invalid_argument(format!(
                "text_rows[{i}]: has {} cells; model \"{}\" reads {} columns ({})",
                row.cells.len(),
                model.name,
                inputs.len(),
                inputs.join(", ")
            )));
        }
        encoder
            .encode(
                |j| row.cells[j].trim(),
                |j| format!("text_rows[{i}].cells[{j}] (column \"{}\")", inputs[j]),
                &mut values,
            )
            .map_err(status::invalid)?;
    }
    metrics::unseen_categories(&model.name, encoder.unseen());
    metrics::missing_filled(&model.name, encoder.filled());
    Ok(values)
}

fn categorical_columns(encoding: &InputEncoding) -> Vec<pb::CategoricalColumn> {
    encoding
        .columns
        .iter()
        .filter_map(|c| match c {
            InputColumn::OneHot {
                name, categories, ..
            } => Some(pb::CategoricalColumn {
                column: name.clone(),
                categories: categories.clone(),
            }),
            InputColumn::Numeric(_) => None,
        })
        .collect()
}
