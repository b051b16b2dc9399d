//! `inference.GRPCInferenceService`: the Open Inference Protocol v2 (KServe's
//! V2 inference protocol, the gRPC API Triton implements), so that
//! `tritonclient[grpc]` and KServe clients can call kiln's models unchanged.
//!
//! Each served model has one input and one output tensor:
//!
//! - `input`, FP32 `[n, width]`: `n >= 1` feature rows, exactly as the rows of
//!   `kiln.v1.InferenceService/Predict` (after one-hot encoding, before
//!   scaling). Only rank 2 is accepted; one row is `[1, width]`. The values come
//!   from `contents.fp32_contents` or from `raw_input_contents[0]`
//!   (little-endian f32, row-major), and must be finite.
//! - `probabilities` (classification, FP32 `[n, classes]`, binary models give
//!   `[P(class 0), P(class 1)]`) or `predictions` (regression, FP32
//!   `[n, targets]`, in the targets' units). The answer is raw
//!   (`raw_output_contents`) when the request was raw, typed otherwise.
//!
//! A version is "" (the latest loaded), a number or an alias, resolved by the
//! model registry. The response's `parameters` carry `job_id`,
//! `queue_seconds`, `compute_seconds` and `batch_rows`.

use std::collections::HashMap;
use std::sync::Arc;

use kiln::inference as oip;
use kiln_core::spec::Task;
use kiln_serve::ServedModel;
use kiln_train::Output;
use oip::grpc_inference_service_server::GrpcInferenceService;
use oip::infer_parameter::ParameterChoice;
use oip::model_infer_request::InferInputTensor;
use oip::model_metadata_response::TensorMetadata;
use tonic::{Request, Response, Status};

use crate::{status, Kiln};

/// The model's platform in ModelMetadata.
const PLATFORM: &str = "kiln_mlp";
/// The one input tensor's name.
const INPUT: &str = "input";
const FP32: &str = "FP32";

pub struct Oip(pub Arc<Kiln>);

impl Oip {
    fn model(&self, name: &str, version: &str, field: &str) -> Result<Arc<ServedModel>, Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument(format!("{field}: required")));
        }
        self.0.models.resolve(name, version).map_err(status::serve)
    }
}

/// The name of the model's output tensor.
fn output_name(model: &ServedModel) -> &'static str {
    if model.meta.arch.task.is_classification() {
        "probabilities"
    } else {
        "predictions"
    }
}

/// Values per row of the model's output: classes (2 for binary) or targets.
fn output_width(model: &ServedModel) -> usize {
    match model.meta.arch.task {
        Task::Binary => 2,
        Task::Multiclass | Task::Regression => model.meta.arch.outputs,
    }
}

fn double(value: f64) -> oip::InferParameter {
    oip::InferParameter {
        parameter_choice: Some(ParameterChoice::DoubleParam(value)),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Oip {
    async fn server_live(
        &self,
        _request: Request<oip::ServerLiveRequest>,
    ) -> Result<Response<oip::ServerLiveResponse>, Status> {
        Ok(Response::new(oip::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<oip::ServerReadyRequest>,
    ) -> Result<Response<oip::ServerReadyResponse>, Status> {
        Ok(Response::new(oip::ServerReadyResponse {
            ready: self.0.models.ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<oip::ModelReadyRequest>,
    ) -> Result<Response<oip::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let ready = !request.name.is_empty()
            && self
                .0
                .models
                .resolve(&request.name, &request.version)
                .is_ok();
        Ok(Response::new(oip::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _request: Request<oip::ServerMetadataRequest>,
    ) -> Result<Response<oip::ServerMetadataResponse>, Status> {
        Ok(Response::new(oip::ServerMetadataResponse {
            name: "kiln".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<oip::ModelMetadataRequest>,
    ) -> Result<Response<oip::ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let model = self.model(&request.name, &request.version, "name")?;
        // Asked by job id, the versions are those of the job's model name.
        let mut versions = self.0.models.versions(&request.name);
        if versions.is_empty() {
            versions = self.0.models.versions(&model.name);
        }
        let tensor = |name: &str, width: usize| TensorMetadata {
            name: name.into(),
            datatype: FP32.into(),
            shape: vec![-1, width as i64],
        };
        Ok(Response::new(oip::ModelMetadataResponse {
            name: request.name,
            versions: versions.iter().map(u32::to_string).collect(),
            platform: PLATFORM.into(),
            inputs: vec![tensor(INPUT, model.meta.arch.inputs)],
            outputs: vec![tensor(output_name(&model), output_width(&model))],
        }))
    }

    async fn model_infer(
        &self,
        request: Request<oip::ModelInferRequest>,
    ) -> Result<Response<oip::ModelInferResponse>, Status> {
        let deadline = crate::deadline::from_metadata(request.metadata());
        let mut request = request.into_inner();
        let model = self.model(&request.model_name, &request.model_version, "model_name")?;
        let output = output_name(&model);
        for (i, wanted) in request.outputs.iter().enumerate() {
            if wanted.name != output {
                return Err(Status::invalid_argument(format!(
                    "outputs[{i}].name: model \"{}\" has one output, \"{output}\"; got \"{}\"",
                    request.model_name, wanted.name
                )));
            }
            if wanted.parameters.contains_key("classification") {
                return Err(Status::invalid_argument(format!(
                    "outputs[{i}].parameters: the classification extension is not supported; \
                     read the class probabilities from \"{output}\""
                )));
            }
        }
        let raw = !request.raw_input_contents.is_empty();
        let values = input_rows(&model, &mut request)?;
        let answer = model
            .batcher
            .predict(values, deadline)
            .await
            .map_err(status::serve)?;
        let (data, width) = match answer.output {
            Output::Probabilities { probs, classes } => (probs, classes),
            Output::Values { values, width } => (values, width),
        };
        let rows = data.len() / width.max(1);
        let mut tensor = oip::model_infer_response::InferOutputTensor {
            name: output.into(),
            datatype: FP32.into(),
            shape: vec![rows as i64, width as i64],
            ..Default::default()
        };
        let mut raw_output_contents = Vec::new();
        if raw {
            raw_output_contents.push(data.iter().flat_map(|v| v.to_le_bytes()).collect());
        } else {
            tensor.contents = Some(oip::InferTensorContents {
                fp32_contents: data,
                ..Default::default()
            });
        }
        let parameters = HashMap::from([
            (
                "model_version".to_string(),
                oip::InferParameter {
                    parameter_choice: Some(ParameterChoice::Int64Param(model.version.into())),
                },
            ),
            (
                "job_id".to_string(),
                oip::InferParameter {
                    parameter_choice: Some(ParameterChoice::StringParam(model.job_id.clone())),
                },
            ),
            (
                "queue_seconds".to_string(),
                double(answer.queue_time.as_secs_f64()),
            ),
            (
                "compute_seconds".to_string(),
                double(answer.compute_time.as_secs_f64()),
            ),
            (
                "batch_rows".to_string(),
                oip::InferParameter {
                    parameter_choice: Some(ParameterChoice::Int64Param(answer.batch_rows as i64)),
                },
            ),
        ]);
        Ok(Response::new(oip::ModelInferResponse {
            model_name: request.model_name,
            model_version: model.version.to_string(),
            id: request.id,
            parameters,
            outputs: vec![tensor],
            raw_output_contents,
        }))
    }
}

/// The request's one input tensor as row-major feature rows, checked against
/// the model: name, datatype, shape and the values' count; NaN (a missing
/// value) filled as in training, any other non-finite value refused.
fn input_rows(
    model: &ServedModel,
    request: &mut oip::ModelInferRequest,
) -> Result<Vec<f32>, Status> {
    let invalid = |message: String| Err(Status::invalid_argument(message));
    let width = model.meta.arch.inputs;
    let input = match request.inputs.as_mut_slice() {
        [input] => input,
        inputs => {
            return invalid(format!(
                "inputs: model \"{}\" takes exactly one input tensor, \"{INPUT}\" (FP32 [n, {width}]); got {}",
                request.model_name,
                inputs.len()
            ))
        }
    };
    if input.name != INPUT {
        return invalid(format!(
            "inputs[0].name: must be \"{INPUT}\", got \"{}\"",
            input.name
        ));
    }
    if input.datatype != FP32 {
        return invalid(format!(
            "inputs[0].datatype: must be {FP32}, got {}",
            if input.datatype.is_empty() {
                "nothing"
            } else {
                &input.datatype
            }
        ));
    }
    let rows = match input.shape.as_slice() {
        &[n, w] if n >= 1 && w == width as i64 => n as u64,
        shape => {
            return invalid(format!(
                "inputs[0].shape: must be [n, {width}] (n >= 1 rows of the model's {width} features: {}), got {shape:?}",
                model.meta.feature_names.join(", ")
            ))
        }
    };
    let count = rows
        .checked_mul(width as u64)
        .filter(|&c| c <= usize::MAX as u64 / 4)
        .ok_or_else(|| Status::invalid_argument("inputs[0].shape: too many rows"))?
        as usize;
    let values = if request.raw_input_contents.is_empty() {
        typed_values(input, count)?
    } else {
        if request.raw_input_contents.len() != 1 {
            return invalid(format!(
                "raw_input_contents: must hold one entry per input (1), got {}",
                request.raw_input_contents.len()
            ));
        }
        if input.contents.as_ref().is_some_and(has_values) {
            return invalid(
                "inputs[0].contents: must be empty when raw_input_contents is used".into(),
            );
        }
        let bytes = &request.raw_input_contents[0];
        if bytes.len() != count * 4 {
            return invalid(format!(
                "raw_input_contents[0]: has {} bytes; FP32 {:?} needs {} ({count} values of 4 bytes)",
                bytes.len(),
                input.shape,
                count * 4
            ));
        }
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let mut values = values;
    crate::inference::fill_missing(model, &mut values, |r, f| {
        format!("inputs[0]: the value at row {r}, column {f}")
    })?;
    Ok(values)
}

/// FP32 values from the typed contents (taken out of the request).
fn typed_values(input: &mut InferInputTensor, count: usize) -> Result<Vec<f32>, Status> {
    let contents = input.contents.get_or_insert_with(Default::default);
    let fp32 = contents.fp32_contents.len();
    if fp32 == 0 && has_values(contents) {
        return Err(Status::invalid_argument(
            "inputs[0].contents: FP32 values go in fp32_contents",
        ));
    }
    if fp32 != count {
        return Err(Status::invalid_argument(format!(
            "inputs[0].contents.fp32_contents: has {fp32} values; shape {:?} needs {count}",
            input.shape
        )));
    }
    Ok(std::mem::take(&mut contents.fp32_contents))
}

fn has_values(c: &oip::InferTensorContents) -> bool {
    !(c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty())
}
