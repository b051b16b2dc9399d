//! Telemetry end to end: OpenTelemetry traces reach an OTLP/gRPC receiver
//! run by the test (config key `otlp_endpoint`), and the Prometheus endpoint
//! (config key `metrics_listen`) serves text that PyPI `prometheus_client`'s
//! own parser reads, with counts that follow the requests made.
//!
//! Needs the Python at `$KILN_PYTHON`, else the cache venv's, with
//! `prometheus_client` installed (scripts/setup.sh, run by `make test`).

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln::v1 as pb;
use kiln_testkit::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use serde_json::Value;

/// A small regression job that trains for `epochs` epochs.
fn quick_job(name: &str, epochs: u32) -> pb::JobSpec {
    pb::JobSpec {
        model_name: name.into(),
        ..inline_regression(200, 8, epochs, 32)
    }
}

async fn predict(server: &Server, model: &str, rows: usize) -> Result<(), tonic::Status> {
    server
        .inference()
        .await
        .predict(pb::PredictRequest {
            model: model.into(),
            rows: (0..rows)
                .map(|i| pb::Row {
                    values: vec![i as f64],
                })
                .collect(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

// ---------------------------------------------------------------- traces

/// An OTLP/gRPC trace receiver keeping every export request.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// One received span: its resource's service.name, its name, its attributes.
#[derive(Debug)]
struct ReceivedSpan {
    service: String,
    name: String,
    attributes: HashMap<String, String>,
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

impl Receiver {
    /// Starts the receiver on a free port; returns its endpoint URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        let mut all = Vec::new();
        for request in self.0.lock().unwrap().iter() {
            for rs in &request.resource_spans {
                let resource = attributes(
                    rs.resource
                        .as_ref()
                        .map(|r| r.attributes.as_slice())
                        .unwrap_or_default(),
                );
                let service = resource.get("service.name").cloned().unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        all.push(ReceivedSpan {
                            service: service.clone(),
                            name: span.name.clone(),
                            attributes: attributes(&span.attributes),
                        });
                    }
                }
            }
        }
        all
    }

    /// Waits (up to 60 s) until `done` holds for the spans received.
    async fn wait_for(&self, what: &str, done: impl Fn(&[ReceivedSpan]) -> bool) {
        let start = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let names: Vec<_> = spans.iter().map(|s| &s.name).collect();
                panic!("no {what} within 60 s; spans received: {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn rpcs_and_jobs_are_traced_to_an_otlp_receiver() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let server = Server::start_with(&[
        ("KILN_OTLP_ENDPOINT", endpoint.as_str()),
        ("KILN_METRICS_LISTEN", ""),
        // Export every 100 ms rather than the default 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);

    let job = submit(&server, quick_job("traced", 3)).await.unwrap();
    let events = watch_all(&server, &job.id).await;
    finished(&events);
    predict(&server, "traced", 2).await.unwrap();
    let missing = predict(&server, "no-such-model", 1).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let rpc = |spans: &[ReceivedSpan], method: &str, code: &str| {
        spans.iter().any(|s| {
            s.name == method
                && s.attributes.get("rpc.grpc.status_code").map(String::as_str) == Some(code)
        })
    };
    receiver
        .wait_for("RPC and job spans", |spans| {
            rpc(spans, "kiln.v1.JobService/SubmitJob", "0")
                && rpc(spans, "kiln.v1.JobService/WatchJob", "0")
                && rpc(spans, "kiln.v1.InferenceService/Predict", "0")
                && rpc(spans, "kiln.v1.InferenceService/Predict", "5")
                && spans.iter().any(|s| s.name == "kiln.job")
        })
        .await;

    let spans = receiver.spans();
    assert!(
        spans.iter().all(|s| s.service == "kiln-server"),
        "service.name: {:?}",
        spans.iter().map(|s| &s.service).collect::<Vec<_>>()
    );
    let predict_span = spans
        .iter()
        .find(|s| s.name == "kiln.v1.InferenceService/Predict")
        .unwrap();
    assert_eq!(predict_span.attributes["rpc.system"], "grpc");
    assert_eq!(
        predict_span.attributes["rpc.service"],
        "kiln.v1.InferenceService"
    );
    assert_eq!(predict_span.attributes["rpc.method"], "Predict");
    assert!(
        predict_span.attributes["duration_ms"]
            .parse::<f64>()
            .unwrap()
            >= 0.0,
        "{predict_span:?}"
    );
    let job_span = spans.iter().find(|s| s.name == "kiln.job").unwrap();
    assert_eq!(job_span.attributes["job.id"], job.id, "{job_span:?}");
    assert_eq!(job_span.attributes["model"], "traced");
    assert_eq!(job_span.attributes["device"], "cpu");
    assert_eq!(job_span.attributes["outcome"], "succeeded");
}

/// Spans still buffered when the server gets SIGTERM are exported before it
/// exits (the batch exporter's schedule is set far beyond the test).
#[tokio::test]
async fn buffered_spans_are_flushed_on_sigterm() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let binary = std::env::var_os("KILN_SERVER_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().join("kiln-server")
        });
    let data_dir = std::env::temp_dir().join(format!("kiln-telemetry-{}", std::process::id()));
    let mut child = Command::new(&binary)
        .env("KILN_LISTEN", "127.0.0.1:0")
        .env("KILN_DATA_DIR", &data_dir)
        .env("KILN_LOG", "warn")
        .env("KILN_METRICS_LISTEN", "")
        .env("KILN_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
    let mut banner = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut banner,
    )
    .unwrap();
    let addr = banner
        .trim()
        .strip_prefix("kiln-server listening on ")
        .unwrap_or_else(|| panic!("unexpected banner {banner:?}"))
        .to_string();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::job_service_client::JobServiceClient::new(channel)
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap();
    drop(banner);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.spans().is_empty(), "exported before shutdown");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&data_dir);
    assert!(exited.success(), "kiln-server exited with {exited}");
    let names: Vec<String> = receiver.spans().into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "kiln.v1.JobService/ListJobs"),
        "spans received by exit: {names:?}"
    );
}

// ---------------------------------------------------------------- metrics

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` over plain HTTP/1.1; returns (status line, headers, body).
pub(crate) fn http_get(addr: &str, path: &str) -> (String, String, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics port");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed HTTP response {response:?}"));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_lowercase(), body.to_string())
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    families[f.name] = {
        "type": f.type,
        "samples": [[s.name, s.labels, s.value] for s in f.samples],
    }
print(json.dumps(families))
"#;

/// Parses exposition text with `prometheus_client`, failing (not skipping)
/// when Python or the package is missing.
fn parse_metrics(text: &str) -> Value {
    let py = venv_tool("KILN_PYTHON", "python");
    let check = Command::new(&py)
        .args(["-c", "import prometheus_client.parser"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}. Run scripts/setup.sh", py.display()));
    assert!(
        check.status.success(),
        "{} lacks the `prometheus_client` package: run scripts/setup.sh (make test does).\n{}",
        py.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    let mut child = Command::new(&py)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse the metrics:\n{}\n--- text:\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels` (0 if none).
fn sample(families: &Value, family: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = families[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family}"));
    samples
        .iter()
        .find(|s| s[0] == name && labels.iter().all(|(k, v)| s[1][*k].as_str() == Some(*v)))
        .map(|s| s[2].as_f64().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn prometheus_metrics_parse_and_follow_the_requests() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start_with(&[("KILN_METRICS_LISTEN", metrics_addr.as_str())]);

    let (status, _, _) = http_get(&metrics_addr, "/nope");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");

    const EPOCHS: u32 = 4;
    let job = submit(&server, quick_job("scraped", EPOCHS)).await.unwrap();
    finished(&watch_all(&server, &job.id).await);

    let (status, headers, text) = http_get(&metrics_addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    let before = parse_metrics(&text);
    for (family, kind) in [
        ("kiln_jobs", "gauge"),
        ("kiln_epoch_duration_seconds", "histogram"),
        ("kiln_grpc_requests", "counter"),
        ("kiln_predict_queue_depth", "gauge"),
        ("kiln_predict_rejected", "counter"),
        ("kiln_predict_batch_rows", "summary"),
        ("kiln_predict_queue_seconds", "summary"),
        ("kiln_predict_compute_seconds", "summary"),
    ] {
        assert_eq!(before[family]["type"], kind, "family {family}:\n{text}");
    }
    let jobs = |m: &Value, state| sample(m, "kiln_jobs", "kiln_jobs", &[("state", state)]);
    assert_eq!(jobs(&before, "succeeded"), 1.0, "{text}");
    assert_eq!(jobs(&before, "running"), 0.0, "{text}");
    assert_eq!(jobs(&before, "queued"), 0.0, "{text}");
    let epochs = |le| {
        sample(
            &before,
            "kiln_epoch_duration_seconds",
            "kiln_epoch_duration_seconds_bucket",
            &[("le", le)],
        )
    };
    assert_eq!(epochs("+Inf"), EPOCHS as f64, "{text}");
    assert_eq!(
        sample(
            &before,
            "kiln_epoch_duration_seconds",
            "kiln_epoch_duration_seconds_count",
            &[]
        ),
        EPOCHS as f64
    );
    let submitted = sample(
        &before,
        "kiln_grpc_requests",
        "kiln_grpc_requests_total",
        &[("method", "kiln.v1.JobService/SubmitJob"), ("code", "OK")],
    );
    assert_eq!(submitted, 1.0, "{text}");

    // N predictions of 3 rows each, and one for a model that does not exist.
    const N: usize = 5;
    for _ in 0..N {
        predict(&server, "scraped", 3).await.unwrap();
    }
    predict(&server, "no-such-model", 1).await.unwrap_err();

    let (_, _, text) = http_get(&metrics_addr, "/metrics");
    let after = parse_metrics(&text);
    let grpc = |m: &Value, code| {
        sample(
            m,
            "kiln_grpc_requests",
            "kiln_grpc_requests_total",
            &[
                ("method", "kiln.v1.InferenceService/Predict"),
                ("code", code),
            ],
        )
    };
    assert_eq!(grpc(&after, "OK") - grpc(&before, "OK"), N as f64, "{text}");
    assert_eq!(grpc(&after, "NOT_FOUND") - grpc(&before, "NOT_FOUND"), 1.0);
    let model = [("model", "scraped"), ("version", "1")];
    let predict_stat =
        |family: &str, suffix: &str| sample(&after, family, &format!("{family}{suffix}"), &model);
    assert_eq!(
        predict_stat("kiln_predict_queue_seconds", "_count"),
        N as f64,
        "{text}"
    );
    assert_eq!(
        predict_stat("kiln_predict_batch_rows", "_sum"),
        (3 * N) as f64
    );
    assert!(predict_stat("kiln_predict_compute_seconds", "_count") >= 1.0);
    assert!(predict_stat("kiln_predict_compute_seconds", "_sum") > 0.0);
    assert_eq!(
        sample(
            &after,
            "kiln_predict_queue_depth",
            "kiln_predict_queue_depth",
            &model
        ),
        0.0
    );
    assert_eq!(jobs(&after, "succeeded"), 1.0);
}
