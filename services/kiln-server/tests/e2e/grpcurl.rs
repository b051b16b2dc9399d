//! The README's walk-through with the real grpcurl binary and nothing but
//! server reflection: list, submit examples/rings.json, watch, predict, health.
//! Also checks reflection v1 (newer grpcurl) with a generated v1 client.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use kiln_testkit::*;
use serde_json::Value;

fn grpcurl_binary() -> PathBuf {
    venv_tool("KILN_GRPCURL", "grpcurl")
}

/// Runs grpcurl and returns its stdout, failing the test on a non-zero exit.
pub(crate) fn grpcurl(server: &Server, args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut child = Command::new(grpcurl_binary())
        .arg("-plaintext")
        .args(args.iter().take(args.len().saturating_sub(1)))
        .arg(&server.addr)
        .args(args.last())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run grpcurl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// grpcurl prints a stream as concatenated JSON objects.
fn json_stream(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(|v| v.unwrap())
        .collect()
}

#[test]
fn readme_walkthrough_with_grpcurl() {
    let server = Server::start();
    let services = grpcurl(&server, &["list"], None);
    for service in [
        "kiln.v1.JobService",
        "kiln.v1.DatasetService",
        "kiln.v1.InferenceService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.contains(service),
            "{service} missing from {services}"
        );
    }

    let job_file = read_example("rings.json");
    let job: Value = serde_json::from_str(&grpcurl(
        &server,
        &["-d", "@", "kiln.v1.JobService/SubmitJob"],
        Some(&job_file),
    ))
    .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["state"], "JOB_STATE_QUEUED");

    let watch = grpcurl(
        &server,
        &[
            "-d",
            &format!(r#"{{"job_id":"{id}"}}"#),
            "kiln.v1.JobService/WatchJob",
        ],
        None,
    );
    let events = json_stream(&watch);
    assert_eq!(events[0]["stateChanged"]["state"], "JOB_STATE_QUEUED");
    let last = events.last().unwrap();
    let accuracy = last["finished"]["best"]["valAccuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.95, "rings validation accuracy {accuracy}");

    let predict = grpcurl(
        &server,
        &[
            "-d",
            r#"{"model":"rings","rows":[{"values":[1.0,0.0]},{"values":[0.0,2.2]}]}"#,
            "kiln.v1.InferenceService/Predict",
        ],
        None,
    );
    let answer: Value = serde_json::from_str(&predict).unwrap();
    let labels: Vec<&str> = answer["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["classLabel"].as_str().unwrap())
        .collect();
    // The inner ring is class 0, the outer ring class 1.
    assert_eq!(labels, ["0", "1"]);

    let health: Value =
        serde_json::from_str(&grpcurl(&server, &["grpc.health.v1.Health/Check"], None)).unwrap();
    assert_eq!(health["status"], "SERVING");
}

/// Every job file in examples/ trains to success through grpcurl, and each
/// shows the lever it demonstrates in its events.
#[test]
fn every_example_job_trains() {
    let server = Server::start();
    let dir = repo_root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let job: Value = serde_json::from_str(&grpcurl(
            &server,
            &["-d", "@", "kiln.v1.JobService/SubmitJob"],
            Some(&std::fs::read(&file).unwrap()),
        ))
        .unwrap();
        let id = job["id"].as_str().unwrap();
        let events = json_stream(&grpcurl(
            &server,
            &[
                "-d",
                &format!(r#"{{"job_id":"{id}"}}"#),
                "kiln.v1.JobService/WatchJob",
            ],
            None,
        ));
        let best = &events.last().unwrap()["finished"]["best"];
        assert!(
            best.is_object(),
            "{name} did not finish: {:?}",
            events.last()
        );
        let epochs: Vec<&Value> = events.iter().filter_map(|e| e.get("epoch")).collect();
        let lrs: Vec<f64> = epochs
            .iter()
            .map(|e| e["learningRate"].as_f64().unwrap())
            .collect();
        match name.as_str() {
            "rings.json" | "selu_alpha_dropout.json" => {
                assert!(
                    best["valAccuracy"].as_f64().unwrap() >= 0.9,
                    "{name}: {best}"
                );
            }
            "sgd_nesterov_onecycle.json" => {
                assert!(
                    best["valAccuracy"].as_f64().unwrap() >= 0.9,
                    "{name}: {best}"
                );
                // The LR rises towards max_lr then anneals far below it;
                // momentum moves the other way, within [0.85, 0.95].
                let peak = lrs.iter().cloned().fold(0.0, f64::max);
                assert!(peak > 0.05 && peak <= 0.1, "{name}: peak LR {peak}");
                assert!(
                    lrs[0] < peak && *lrs.last().unwrap() < 1e-3,
                    "{name}: {lrs:?}"
                );
                let momenta: Vec<f64> = epochs
                    .iter()
                    .map(|e| e["momentum"].as_f64().unwrap())
                    .collect();
                assert!(
                    momenta.iter().all(|m| (0.85..=0.95).contains(m)),
                    "{name}: {momenta:?}"
                );
            }
            "huber_plateau.json" => {
                assert!(best["valR2"].as_f64().unwrap() >= 0.8, "{name}: {best}");
                // ReduceLROnPlateau only ever halves the LR.
                for lr in &lrs {
                    let halvings = (0.01 / lr).log2();
                    assert!(
                        (halvings - halvings.round()).abs() < 1e-6,
                        "{name}: {lrs:?}"
                    );
                }
            }
            other => panic!("no expectations for example {other}"),
        }
    }
}

#[tokio::test]
async fn reflection_v1_lists_the_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };

    let server = Server::start();
    let mut client = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"kiln.v1.JobService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"kiln.v1.InferenceService".to_string()),
        "{names:?}"
    );
}
