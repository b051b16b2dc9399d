//! The Open Inference Protocol v2 (`inference.GRPCInferenceService`) through
//! the real server: the real Triton Python client (`tritonclient[grpc]`) gets
//! the same numbers as kiln's own Predict for a multi-class, a binary and a
//! two-target regression model, and a generated tonic client checks typed
//! contents and the statuses of bad requests.

use std::io::Write;
use std::process::{Command, Stdio};

use kiln::inference as oip;
use kiln::v1 as pb;
use kiln_testkit::*;
use oip::grpc_inference_service_client::GrpcInferenceServiceClient;
use oip::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

/// A model trained for these tests, and rows to ask it about.
struct Case {
    name: &'static str,
    task: pb::Task,
    width: usize,
    /// Values per output row (2 for binary).
    outputs: usize,
    output: &'static str,
    rows: Vec<Vec<f32>>,
}

/// A deterministic value in [-1, 1] that f32 holds exactly.
fn wave(i: usize, j: usize) -> f32 {
    let v = ((i * 7 + j * 13) as f64 * 0.61).sin();
    (v * 256.0).round() as f32 / 256.0
}

fn features(n: usize, width: usize, offset: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| (0..width).map(|j| wave(i + offset, j)).collect())
        .collect()
}

/// A row's target values from its features.
type Target = fn(&[f32]) -> Vec<f64>;

/// The job for `case`: 240 inline rows, a few epochs of a small network.
fn job(case: &Case) -> pb::JobSpec {
    let width = case.width;
    let (targets, target): (Vec<String>, Target) = match case.task {
        pb::Task::MulticlassClassification => (vec!["label".into()], |x| {
            vec![if x[0] < -0.3 {
                0.0
            } else if x[0] < 0.3 {
                1.0
            } else {
                2.0
            }]
        }),
        pb::Task::BinaryClassification => (vec!["label".into()], |x| {
            vec![f64::from(x[0] + x[1] - x[2] > 0.0)]
        }),
        _ => (vec!["y1".into(), "y2".into()], |x| {
            let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            vec![30.0 * x[0] + 10.0 * x[1] + 100.0, x[1] * x[2] - 5.0]
        }),
    };
    let mut columns: Vec<String> = (0..width).map(|j| format!("x{j}")).collect();
    columns.extend(targets.iter().cloned());
    let rows = features(240, width, 1000)
        .into_iter()
        .map(|x| {
            let mut values: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            values.extend(target(&x));
            pb::Row { values }
        })
        .collect();
    pb::JobSpec {
        task: case.task as i32,
        model_name: case.name.into(),
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::Inline(pb::InlineData {
                columns,
                rows,
            })),
            target_columns: targets,
            ..Default::default()
        }),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![layer(16)],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs: 8,
            batch_size: 32,
            seed: 3,
            optimizer: Some(pb::Optimizer {
                learning_rate: Some(0.01),
                ..Default::default()
            }),
            ..Default::default()
        }),
        device: pb::Device::Cpu as i32,
        ..Default::default()
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "oip-classes",
            task: pb::Task::MulticlassClassification,
            width: 2,
            outputs: 3,
            output: "probabilities",
            rows: features(12, 2, 0),
        },
        Case {
            name: "oip-binary",
            task: pb::Task::BinaryClassification,
            width: 3,
            outputs: 2,
            output: "probabilities",
            rows: features(5, 3, 50),
        },
        Case {
            name: "oip-regress",
            task: pb::Task::Regression,
            width: 3,
            outputs: 2,
            output: "predictions",
            rows: features(9, 3, 100),
        },
    ]
}

async fn train(server: &Server, cases: &[Case]) {
    let mut ids = Vec::new();
    for case in cases {
        ids.push(submit(server, job(case)).await.expect("submit").id);
    }
    for id in ids {
        finished(&watch_all(server, &id).await);
    }
}

/// kiln's own Predict on `case.rows`, flattened row-major.
async fn predict(server: &Server, case: &Case) -> Vec<f64> {
    let response = server
        .inference()
        .await
        .predict(pb::PredictRequest {
            model: case.name.into(),
            rows: case
                .rows
                .iter()
                .map(|r| pb::Row {
                    values: r.iter().map(|&v| v as f64).collect(),
                })
                .collect(),
            ..Default::default()
        })
        .await
        .expect("Predict")
        .into_inner();
    response
        .predictions
        .into_iter()
        .flat_map(|p| {
            if case.task == pb::Task::Regression {
                p.values
            } else {
                p.probabilities
            }
        })
        .collect()
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
            "{what}[{i}]: {g} vs Predict's {w}"
        );
    }
}

/// The rows of a JSON matrix, flattened.
fn flat(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .expect("a matrix")
        .iter()
        .flat_map(|row| row.as_array().expect("a row").iter())
        .map(|v| v.as_f64().expect("a number"))
        .collect()
}

#[tokio::test]
async fn open_inference_protocol_with_tritonclient_and_tonic() {
    let server = Server::start();
    let cases = cases();
    train(&server, &cases).await;
    tritonclient_agrees_with_predict(&server, &cases).await;
    tonic_client(&server, &cases[0]).await;
}

async fn tritonclient_agrees_with_predict(server: &Server, cases: &[Case]) {
    let input: Value = cases
        .iter()
        .map(|c| json!({"model": c.name, "rows": c.rows}))
        .collect();
    let mut child = Command::new(venv_tool("KILN_PYTHON", "python"))
        .arg(crate::e2e_dir().join("reference_clients/oip_client.py"))
        .arg(&server.addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "oip_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("JSON from oip_client.py");

    assert_eq!(got["live"], true);
    assert_eq!(got["ready"], true);
    assert_eq!(
        got["server"],
        json!({"name": "kiln", "version": env!("CARGO_PKG_VERSION"), "extensions": []})
    );
    assert_eq!(got["unknown_model_ready"], false);

    for case in cases {
        let m = &got["models"][case.name];
        let (n, w, k) = (case.rows.len(), case.width, case.outputs);
        assert_eq!(m["ready"], true, "{}", case.name);
        assert_eq!(m["ready_v1"], true, "{}", case.name);
        assert_eq!(m["ready_v9"], false, "{}", case.name);
        assert_eq!(
            m["metadata"],
            json!({
                "name": case.name,
                "versions": ["1"],
                "platform": "kiln_mlp",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, w]}],
                "outputs": [{"name": case.output, "datatype": "FP32", "shape": [-1, k]}],
            })
        );
        let want = predict(server, case).await;
        for key in ["infer", "infer_v1_named"] {
            let r = &m[key];
            let what = format!("{} {key}", case.name);
            assert_eq!(r["model_name"], case.name, "{what}");
            assert_eq!(r["model_version"], "1", "{what}");
            assert_eq!(
                r["outputs"],
                json!([{"name": case.output, "datatype": "FP32", "shape": [n, k]}]),
                "{what}"
            );
            // The request was raw (set_data_from_numpy), so is the answer.
            assert_eq!(r["raw"], 1, "{what}");
            assert_eq!(r["dtype"], "float32", "{what}");
            assert_eq!(r["shape"], json!([n, k]), "{what}");
            assert_close(&flat(&r["values"]), &want, &what);
            let params = &r["parameters"];
            assert_eq!(params["model_version"], 1, "{what}: {params}");
            for p in ["queue_seconds", "compute_seconds"] {
                assert!(
                    params[p].as_f64().is_some_and(|s| s >= 0.0),
                    "{what}: {params}"
                );
            }
        }
        assert_eq!(m["infer"]["id"], format!("req-{}", case.name));
        assert_eq!(m["infer_v1_named"]["id"], "");
        let bad = &m["wrong_datatype"];
        assert_eq!(bad["status"], "StatusCode.INVALID_ARGUMENT", "{bad}");
        assert!(
            bad["message"]
                .as_str()
                .unwrap()
                .contains("inputs[0].datatype: must be FP32, got FP64"),
            "{bad}"
        );
    }
}

fn typed(model: &str, shape: Vec<i64>, values: Vec<f32>) -> oip::ModelInferRequest {
    oip::ModelInferRequest {
        model_name: model.into(),
        id: "typed-1".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape,
            contents: Some(oip::InferTensorContents {
                fp32_contents: values,
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `request` with its input's values moved to raw_input_contents.
fn raw(mut request: oip::ModelInferRequest) -> oip::ModelInferRequest {
    let contents = request.inputs[0].contents.take().unwrap();
    request.raw_input_contents = vec![contents
        .fp32_contents
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()];
    request
}

async fn expect_status(
    client: &mut GrpcInferenceServiceClient<Channel>,
    request: oip::ModelInferRequest,
    code: Code,
    needle: &str,
) {
    let status = client.model_infer(request).await.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "{needle:?} not in {:?}",
        status.message()
    );
}

async fn tonic_client(server: &Server, case: &Case) {
    let mut client = GrpcInferenceServiceClient::new(server.channel().await);
    let (n, w, k) = (
        case.rows.len() as i64,
        case.width as i64,
        case.outputs as i64,
    );
    let values: Vec<f32> = case.rows.iter().flatten().copied().collect();
    let want = predict(server, case).await;

    // Typed contents in, typed contents out.
    let mut request = typed(case.name, vec![n, w], values.clone());
    request.outputs = vec![InferRequestedOutputTensor {
        name: case.output.into(),
        ..Default::default()
    }];
    let response = client
        .model_infer(request.clone())
        .await
        .expect("ModelInfer")
        .into_inner();
    assert_eq!(response.model_name, case.name);
    assert_eq!(response.model_version, "1");
    assert_eq!(response.id, "typed-1");
    assert!(response.raw_output_contents.is_empty());
    let [tensor] = response.outputs.as_slice() else {
        panic!("one output expected: {:?}", response.outputs);
    };
    assert_eq!(
        (
            tensor.name.as_str(),
            tensor.datatype.as_str(),
            &tensor.shape[..]
        ),
        (case.output, "FP32", &[n, k][..])
    );
    let typed_out: Vec<f64> = tensor
        .contents
        .as_ref()
        .expect("typed contents")
        .fp32_contents
        .iter()
        .map(|&v| v as f64)
        .collect();
    assert_close(&typed_out, &want, "typed fp32_contents");
    assert!(matches!(
        response.parameters["compute_seconds"].parameter_choice,
        Some(oip::infer_parameter::ParameterChoice::DoubleParam(s)) if s >= 0.0
    ));

    // Raw in, raw out, the same numbers.
    let response = client
        .model_infer(raw(request.clone()))
        .await
        .expect("raw ModelInfer")
        .into_inner();
    assert!(response.outputs[0].contents.is_none());
    let raw_out: Vec<f64> = response.raw_output_contents[0]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
        .collect();
    assert_close(&raw_out, &want, "raw_output_contents");

    // Readiness and metadata.
    let ready = |name: &str, version: &str| oip::ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    for (name, version, want) in [
        (case.name, "", true),
        (case.name, "1", true),
        (case.name, "2", false),
        ("no-such-model", "", false),
    ] {
        let got = client
            .model_ready(ready(name, version))
            .await
            .unwrap()
            .into_inner()
            .ready;
        assert_eq!(got, want, "ModelReady({name}, {version:?})");
    }
    for (name, version) in [("no-such-model", ""), (case.name, "7")] {
        let status = client
            .model_metadata(oip::ModelMetadataRequest {
                name: name.into(),
                version: version.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::NotFound,
            "{name} {version}: {status:?}"
        );
    }

    // The statuses of bad requests.
    let mut unknown = request.clone();
    unknown.model_name = "no-such-model".into();
    expect_status(&mut client, unknown, Code::NotFound, "no-such-model").await;

    let mut version = request.clone();
    version.model_version = "7".into();
    expect_status(&mut client, version, Code::NotFound, "7").await;

    let mut datatype = request.clone();
    datatype.inputs[0].datatype = "INT64".into();
    datatype.inputs[0].contents = Some(oip::InferTensorContents {
        int64_contents: vec![1; values.len()],
        ..Default::default()
    });
    expect_status(
        &mut client,
        datatype,
        Code::InvalidArgument,
        "inputs[0].datatype: must be FP32, got INT64",
    )
    .await;

    let shape = typed(case.name, vec![n, w + 1], values.clone());
    expect_status(&mut client, shape, Code::InvalidArgument, "inputs[0].shape").await;
    let flat_shape = typed(case.name, vec![n * w], values.clone());
    expect_status(
        &mut client,
        flat_shape,
        Code::InvalidArgument,
        "inputs[0].shape",
    )
    .await;

    let mut short = raw(request.clone());
    short.raw_input_contents[0].pop();
    expect_status(
        &mut client,
        short,
        Code::InvalidArgument,
        "raw_input_contents[0]",
    )
    .await;

    let count = typed(case.name, vec![n, w], values[1..].to_vec());
    expect_status(
        &mut client,
        count,
        Code::InvalidArgument,
        "inputs[0].contents.fp32_contents",
    )
    .await;

    let mut name = request.clone();
    name.inputs[0].name = "x".into();
    expect_status(&mut client, name, Code::InvalidArgument, "inputs[0].name").await;

    let mut two = request.clone();
    two.inputs.push(two.inputs[0].clone());
    expect_status(&mut client, two, Code::InvalidArgument, "inputs:").await;

    let mut output = request.clone();
    output.outputs[0].name = "logits".into();
    expect_status(
        &mut client,
        output,
        Code::InvalidArgument,
        "outputs[0].name",
    )
    .await;

    let mut inf = values.clone();
    inf[1] = f32::INFINITY;
    let inf = typed(case.name, vec![n, w], inf);
    expect_status(&mut client, inf, Code::InvalidArgument, "is not finite").await;

    let mut both = raw(request.clone());
    both.inputs[0].contents = request.inputs[0].contents.clone();
    expect_status(
        &mut client,
        both,
        Code::InvalidArgument,
        "inputs[0].contents",
    )
    .await;

    // Reflection lists the service (grpcurl needs no .proto files for it).
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let response = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "inference.GRPCInferenceService"),
        "{list:?}"
    );
}
