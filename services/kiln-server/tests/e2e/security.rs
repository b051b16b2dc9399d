//! Authentication, TLS, limits and data-directory confinement, end to end
//! against the real server: a bearer token guards every service but
//! grpc.health.v1; TLS with a CA and certificate generated here; each limit
//! answers its status; dataset ids and model names never become paths.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln::inference as oip;
use kiln::v1 as pb;
use kiln_testkit::*;
use oip::grpc_inference_service_client::GrpcInferenceServiceClient;
use pb::dataset_service_client::DatasetServiceClient;
use pb::inference_service_client::InferenceServiceClient;
use pb::job_service_client::JobServiceClient;
use pb::sweep_service_client::SweepServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::{server_reflection_request, ServerReflectionRequest};

const TOKEN: &str = "kiln-test-token-0123456789abcdef";

/// Sends `authorization: Bearer <token>` on every call (no header for None).
#[derive(Clone)]
struct Bearer(Option<&'static str>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = self.0 {
            let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

async fn health(channel: Channel) -> Result<i32, Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// One call on each kiln service, OIP and reflection; the status of each.
async fn call_everything(
    channel: Channel,
    token: Option<&'static str>,
) -> Vec<(&'static str, Result<(), Status>)> {
    let auth = Bearer(token);
    let mut results = Vec::new();
    let r = JobServiceClient::with_interceptor(channel.clone(), auth.clone())
        .list_jobs(pb::ListJobsRequest::default())
        .await;
    results.push(("JobService/ListJobs", r.map(drop)));
    let r = DatasetServiceClient::with_interceptor(channel.clone(), auth.clone())
        .list_datasets(pb::ListDatasetsRequest {})
        .await;
    results.push(("DatasetService/ListDatasets", r.map(drop)));
    let r = InferenceServiceClient::with_interceptor(channel.clone(), auth.clone())
        .list_models(pb::ListModelsRequest {})
        .await;
    results.push(("InferenceService/ListModels", r.map(drop)));
    let r = SweepServiceClient::with_interceptor(channel.clone(), auth.clone())
        .list_sweeps(pb::ListSweepsRequest {})
        .await;
    results.push(("SweepService/ListSweeps", r.map(drop)));
    let r = GrpcInferenceServiceClient::with_interceptor(channel.clone(), auth.clone())
        .server_live(oip::ServerLiveRequest {})
        .await;
    results.push(("GRPCInferenceService/ServerLive", r.map(drop)));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let r = match ServerReflectionClient::with_interceptor(channel, auth)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
    {
        Ok(response) => response.into_inner().message().await.map(drop),
        Err(status) => Err(status),
    };
    results.push(("ServerReflection", r));
    results
}

#[tokio::test]
async fn a_token_guards_every_service_but_health() {
    let server = Server::start_with(&[("KILN_AUTH_TOKEN", TOKEN)]);
    let channel = server.channel().await;

    // Probes need no token.
    assert_eq!(
        health(channel.clone()).await.unwrap(),
        ServingStatus::Serving as i32
    );
    for (call, result) in call_everything(channel.clone(), None).await {
        let status = result.expect_err(call);
        assert_eq!(status.code(), Code::Unauthenticated, "{call}: {status:?}");
        assert!(
            status.message().contains("authorization: Bearer <token>"),
            "{call}: {status:?}"
        );
    }
    for (call, result) in call_everything(channel.clone(), Some("not-the-token")).await {
        let status = result.expect_err(call);
        assert_eq!(status.code(), Code::Unauthenticated, "{call}: {status:?}");
        assert!(status.message().contains("not valid"), "{call}: {status:?}");
    }
    for (call, result) in call_everything(channel.clone(), Some(TOKEN)).await {
        result.unwrap_or_else(|s| panic!("{call} with the token: {s:?}"));
    }
    // Services and methods the server does not have: UNAUTHENTICATED
    // without the token (nothing about what exists), UNIMPLEMENTED with it.
    for path in [
        "/kiln.v1.NoSuchService/Call",
        "/kiln.v1.JobService/NoSuchMethod",
    ] {
        for (token, code) in [
            (None, Code::Unauthenticated),
            (Some("not-the-token"), Code::Unauthenticated),
            (Some(TOKEN), Code::Unimplemented),
        ] {
            let status = call_unknown(channel.clone(), token, path).await;
            assert_eq!(status.code(), code, "{path} {token:?}: {status:?}");
        }
    }
    // --print-config does not show the token.
    let printed = Command::new(server_binary())
        .arg("--print-config")
        .env("KILN_AUTH_TOKEN", TOKEN)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.contains("auth_token = \"<redacted>\""), "{printed}");
    assert!(!printed.contains(TOKEN));
}

/// Calls `path`, which no service of the server has, with an empty message.
async fn call_unknown(channel: Channel, token: Option<&'static str>, path: &'static str) -> Status {
    let mut grpc = tonic::client::Grpc::new(InterceptedService::new(channel, Bearer(token)));
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(Request::new(()), path, codec).await.unwrap_err()
}

/// A throwaway directory under the system's temp dir.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-security-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KILN_SERVER_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("kiln-server")
}

/// The server's stderr when it refuses to start with these settings.
fn start_fails(env: &[(&str, &Path)]) -> String {
    let data = scratch("refused");
    let mut child = Command::new(server_binary())
        .env("KILN_LISTEN", "127.0.0.1:0")
        .env("KILN_DATA_DIR", &data)
        .env("KILN_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It must exit on its own; one that starts anyway is stopped here.
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&data);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success() && !stdout.contains("listening on"),
        "the server started with {env:?}"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A CA, and a certificate for `localhost` that it signed: (CA PEM, cert
/// file, key file).
fn certificates(dir: &Path) -> (String, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (ca_cert.pem(), cert_file, key_file)
}

#[tokio::test]
async fn tls_with_a_generated_certificate() {
    let dir = scratch("tls");
    let (ca, cert_file, key_file) = certificates(&dir);
    // The token from a file, as a Kubernetes Secret mounts it.
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let server = Server::start_with(&[
        ("KILN_TLS_CERT_FILE", cert_file.to_str().unwrap()),
        ("KILN_TLS_KEY_FILE", key_file.to_str().unwrap()),
        ("KILN_AUTH_TOKEN_FILE", token_file.to_str().unwrap()),
    ]);
    let port = server.addr.rsplit(':').next().unwrap();

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .domain_name("localhost");
    // The certificate names localhost; connect by address, verify the name.
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connection with the test CA");
    assert_eq!(
        health(channel.clone()).await.unwrap(),
        ServingStatus::Serving as i32
    );
    let mut jobs: JobServiceClient<Authed> =
        JobServiceClient::with_interceptor(channel.clone(), Bearer(Some(TOKEN)));
    jobs.list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap();
    let denied = JobServiceClient::new(channel)
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);

    // A plaintext client gets nowhere.
    let plaintext = async {
        let channel = Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        health(channel).await.map_err(|s| s.to_string())
    };
    let outcome = tokio::time::timeout(Duration::from_secs(20), plaintext).await;
    assert!(
        !matches!(outcome, Ok(Ok(_))),
        "a plaintext client was answered by the TLS server"
    );

    // Half a TLS configuration, or a key that is not one, stops the start.
    let err = start_fails(&[("KILN_TLS_CERT_FILE", &cert_file)]);
    assert!(
        err.contains("tls_cert_file is set but tls_key_file is not"),
        "{err}"
    );
    let err = start_fails(&[("KILN_TLS_KEY_FILE", &key_file)]);
    assert!(
        err.contains("tls_key_file is set but tls_cert_file is not"),
        "{err}"
    );
    let err = start_fails(&[
        ("KILN_TLS_CERT_FILE", &cert_file),
        ("KILN_TLS_KEY_FILE", &token_file),
    ]);
    assert!(err.contains("tls_cert_file / tls_key_file"), "{err}");
    let err = start_fails(&[("KILN_AUTH_TOKEN_FILE", &dir.join("missing"))]);
    assert!(err.contains("reading auth_token_file"), "{err}");
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `rows` inline rows of a regression problem, trained for `epochs`.
fn inline_job(rows: usize, epochs: u32) -> pb::JobSpec {
    inline_regression(rows, 16, epochs, 4)
}

async fn wait_until_running(server: &Server, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = server
            .jobs()
            .await
            .get_job(pb::GetJobRequest { job_id: id.into() })
            .await
            .unwrap()
            .into_inner();
        if job.state() == pb::JobState::Running {
            return;
        }
        assert!(Instant::now() < deadline, "job {id} is {:?}", job.state());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cancel(server: &Server, id: &str) {
    server
        .jobs()
        .await
        .cancel_job(pb::CancelJobRequest { job_id: id.into() })
        .await
        .unwrap();
}

#[tokio::test]
async fn each_limit_answers_its_status() {
    let server = Server::start_with(&[
        ("KILN_MAX_QUEUED_JOBS", "1"),
        ("KILN_MAX_EPOCH_ROWS", "10000000"),
        ("KILN_MAX_MESSAGE_BYTES", "65536"),
        ("KILN_MAX_DATASET_BYTES", "4096"),
        ("KILN_MAX_CONCURRENT_STREAMS", "1"),
    ]);

    // Epochs x training rows over the budget: 100_000 x 160 > 10^7.
    let status = submit(&server, inline_job(200, 100_000)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("spec.training.epochs: ")
            && status.message().contains("budget of 10000000")
            && status.message().contains("max_epoch_rows"),
        "{status:?}"
    );

    // One job runs (100_000 x 80 rows is within the budget, and runs for
    // minutes), one waits QUEUED, and the next is refused.
    let running = submit(&server, inline_job(100, 100_000)).await.unwrap();
    wait_until_running(&server, &running.id).await;
    let queued = submit(&server, inline_job(100, 100_000)).await.unwrap();
    let status = submit(&server, inline_job(100, 100_000)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_queued_jobs") && status.message().contains("limit is 1"),
        "{status:?}"
    );

    // One stream per connection: while a WatchJob is open on a channel, a
    // second call on it waits; another connection is answered.
    let channel = server.channel().await;
    let mut watch = JobServiceClient::new(channel.clone())
        .watch_job(pb::WatchJobRequest {
            job_id: running.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(Duration::from_secs(30), watch.message())
        .await
        .expect("an event of the running job")
        .unwrap();
    let get = pb::GetJobRequest {
        job_id: queued.id.clone(),
    };
    let second = tokio::time::timeout(
        Duration::from_millis(1500),
        JobServiceClient::new(channel.clone()).get_job(get.clone()),
    )
    .await;
    assert!(second.is_err(), "a second stream ran: {second:?}");
    server.jobs().await.get_job(get).await.unwrap();
    drop(watch);

    // A message over max_message_bytes.
    let status = server
        .jobs()
        .await
        .get_job(pb::GetJobRequest {
            job_id: "x".repeat(100_000),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_message_bytes")
            && status.message().contains("limit is 65536"),
        "{status:?}"
    );
    let status = upload(&server, "big-chunk", &vec![b'1'; 100_000], 100_000)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_message_bytes"), "{status:?}");

    // A dataset over max_dataset_bytes, in small chunks.
    let mut csv = b"x,y\n".to_vec();
    while csv.len() <= 4096 {
        csv.extend_from_slice(b"1.5,2.5\n");
    }
    let status = upload(&server, "too-big", &csv, 1000).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_dataset_bytes"), "{status:?}");
    upload(&server, "fits", &csv[..4 + 8 * 250], 1000)
        .await
        .expect("a dataset under the limit");

    cancel(&server, &queued.id).await;
    cancel(&server, &running.id).await;
}

#[tokio::test]
async fn dataset_ids_and_model_names_are_never_paths() {
    // A data directory with planted metadata: a dataset whose file is a
    // symlink to a CSV outside, and one whose id climbs out.
    let root = scratch("paths");
    let data_dir = root.join("data");
    let datasets = data_dir.join("datasets");
    std::fs::create_dir_all(&datasets).unwrap();
    let outside = root.join("outside.csv");
    std::fs::write(&outside, "x,y\n1,2\n3,4\n5,6\n7,8\n").unwrap();
    let meta = |id: &str| {
        format!(
            r#"{{"id":"{id}","name":"planted","columns":["x","y"],"rows":4,"size_bytes":20,"created_unix":0}}"#
        )
    };
    std::fs::write(datasets.join("ds-link.json"), meta("ds-link")).unwrap();
    std::os::unix::fs::symlink(&outside, datasets.join("ds-link.csv")).unwrap();
    std::fs::write(datasets.join("escape.json"), meta("../../outside")).unwrap();
    // (KILN_LOG=error: the warnings about the planted files would come
    // before the banner that the harness reads.)
    let server = Server::start_with(&[
        ("KILN_DATA_DIR", data_dir.to_str().unwrap()),
        ("KILN_LOG", "error"),
    ]);

    let mut client = server.datasets().await;
    let listed = client
        .list_datasets(pb::ListDatasetsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.datasets.is_empty(), "{listed:?}");
    for id in [
        "../../outside",
        "/etc/passwd",
        "ds-x/../../outside",
        "..",
        "ds-link.csv",
    ] {
        let status = client
            .get_dataset(pb::GetDatasetRequest {
                dataset_id: id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{id}: {status:?}");
        assert!(status.message().starts_with("dataset_id: "), "{status:?}");
        let status = submit(&server, with_dataset(id)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{id}: {status:?}");
        assert!(
            status
                .message()
                .starts_with("spec.data.dataset_id: must be a dataset id"),
            "{status:?}"
        );
    }
    let status = client
        .get_dataset(pb::GetDatasetRequest {
            dataset_id: "ds-link".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = submit(&server, with_dataset("ds-link")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Model names are names, not paths.
    for name in ["../evil", "/tmp/evil", "a/b", "..", "."] {
        let mut spec = inline_job(20, 1);
        spec.model_name = name.into();
        let status = submit(&server, spec).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().starts_with("spec.model_name: "),
            "{status:?}"
        );
        let import = pb::ImportModelRequest {
            name: name.into(),
            chunk: b"not a model".to_vec(),
        };
        let status = server
            .inference()
            .await
            .import_model(tokio_stream::iter([import]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(status.message().starts_with("name: "), "{status:?}");
    }
    // "...", a valid name, names the model only: its files stay under the
    // data directory, keyed by job id.
    let mut spec = inline_job(20, 1);
    spec.model_name = "...".into();
    let job = submit(&server, spec).await.unwrap();
    finished(&watch_all(&server, &job.id).await);
    assert!(data_dir.join("models").join(&job.id).is_dir());
    assert!(!root.join(&job.id).exists() && !data_dir.join(&job.id).exists());
    let entries: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}"); // data/ and outside.csv
    drop(server);
    std::fs::remove_dir_all(&root).unwrap();
}

fn with_dataset(id: &str) -> pb::JobSpec {
    pb::JobSpec {
        data: Some(dataset_source(id, &["y"])),
        ..inline_job(1, 1)
    }
}
