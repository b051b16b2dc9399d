//! `kiln.v1.InferenceService`: requests go to the model's batcher.

use std::sync::Arc;

use kiln::v1 as pb;
use kiln_core::encoding::{InputColumn, InputEncoding};
use kiln_serve::ServedModel;
use kiln_train::Output;
use pb::inference_service_server::InferenceService;
use tonic::{Request, Response, Status};

use crate::{status, Kiln};

pub struct Inference(pub Arc<Kiln>);

impl Inference {
    /// The model answering for `name`, or why there is none.
    fn model(&self, name: &str) -> Result<Arc<ServedModel>, Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument("model: required"));
        }
        if let Some(model) = self.0.models.get(name) {
            return Ok(model);
        }
        // Known as a job or a job's model name, but nothing served yet?
        let job = self
            .0
            .store
            .list(None)
            .into_iter()
            .find(|j| j.id == name || j.model_name == name);
        match job {
            Some(job) => Err(Status::failed_precondition(format!(
                "model \"{name}\" is not servable yet: job {} is {}",
                job.id,
                job.state().as_str_name()
            ))),
            None => Err(Status::not_found(format!("model \"{name}\" not found"))),
        }
    }
}

#[tonic::async_trait]
impl InferenceService for Inference {
    async fn predict(
        &self,
        request: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let request = request.into_inner();
        let model = self.model(&request.model)?;
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
        let answer = model.batcher.predict(values).await.map_err(status::serve)?;
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
                    let best = kiln_train::train::argmax(row);
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
        }))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self
            .0
            .models
            .list()
            .into_iter()
            .map(|m| pb::ModelInfo {
                name: m.name.clone(),
                version: m.version,
                job_id: m.job_id.clone(),
                task: m.meta.arch.task.to_proto() as i32,
                feature_columns: m.meta.feature_names.clone(),
                input_columns: m.meta.encoding.input_names(),
                categorical_columns: categorical_columns(&m.meta.encoding),
                target_columns: m.meta.target_names.clone(),
                classes: m.meta.class_labels.clone(),
                metrics: self.0.store.get(&m.job_id).ok().and_then(|j| j.best),
                device: m.device.clone(),
            })
            .collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }
}

/// Feature rows (after encoding, before scaling), checked for width and finiteness.
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
        if let Some(j) = row.values.iter().position(|v| !v.is_finite()) {
            return Err(Status::invalid_argument(format!(
                "rows[{i}].values[{j}]: must be finite"
            )));
        }
        values.extend(row.values.iter().map(|&v| v as f32));
    }
    Ok(values)
}

/// Raw rows of the input columns, encoded as in training.
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
