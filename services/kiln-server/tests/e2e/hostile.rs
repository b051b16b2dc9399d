//! What a hostile user tried (issue 20): model names that take over a job
//! id, one name holding models of two tasks, two servers on one data
//! directory, and huge inputs echoed back in error messages.

use kiln::v1 as pb;
use kiln_testkit::*;
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

/// A small regression job named `name` ("" for the job id).
fn regression(name: &str) -> pb::JobSpec {
    pb::JobSpec {
        model_name: name.into(),
        ..inline_regression(20, 8, 1, 4)
    }
}

/// The same rows as [`regression`], y reduced to two classes.
fn binary(name: &str) -> pb::JobSpec {
    let mut spec = regression(name);
    spec.task = pb::Task::BinaryClassification as i32;
    if let Some(pb::data_spec::Source::Inline(inline)) =
        spec.data.as_mut().and_then(|d| d.source.as_mut())
    {
        for row in &mut inline.rows {
            row.values[1] = f64::from(row.values[0] as u32 % 2);
        }
    }
    spec
}

/// Submits `spec` and waits for its model; returns the job id.
async fn trained(server: &Server, spec: pb::JobSpec) -> String {
    let job = submit(server, spec).await.expect("submit");
    finished(&watch_all(server, &job.id).await);
    job.id
}

async fn predict(
    server: &Server,
    model: &str,
    version: &str,
) -> Result<pb::PredictResponse, tonic::Status> {
    server
        .inference()
        .await
        .predict(pb::PredictRequest {
            model: model.into(),
            version: version.into(),
            rows: vec![pb::Row { values: vec![3.0] }],
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

async fn import(
    server: &Server,
    name: &str,
    file: Vec<u8>,
) -> Result<pb::ModelInfo, tonic::Status> {
    let request = pb::ImportModelRequest {
        name: name.into(),
        chunk: file,
    };
    server
        .inference()
        .await
        .import_model(tokio_stream::iter([request]))
        .await
        .map(|r| r.into_inner())
}

async fn serving(server: &Server) {
    let status = HealthClient::new(server.channel().await)
        .check(HealthCheckRequest::default())
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn model_names_cannot_take_over_job_ids() {
    let server = Server::start();
    let first = trained(&server, regression("shared")).await;
    let second = trained(&server, regression("shared")).await;

    // A model name of the form of a job id, this server's or not, "." and "..".
    for name in [first.as_str(), "job-0123456789ab", ".", ".."] {
        let status = submit(&server, regression(name)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().starts_with("spec.model_name: "),
            "{status:?}"
        );
        let status = import(&server, name, export_model(&server, &first).await)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(status.message().starts_with("name: "), "{status:?}");
    }

    // A job id means that job's version, whatever its model is named.
    for (id, version) in [(&first, 1), (&second, 2)] {
        let answer = predict(&server, id, "").await.unwrap();
        assert_eq!(
            (answer.job_id.as_str(), answer.model_version),
            (id.as_str(), version)
        );
        let same = predict(&server, id, &version.to_string()).await.unwrap();
        assert_eq!(same.model_version, version);
    }
    // Another version with a job id: NOT_FOUND saying which version.
    let status = predict(&server, &first, "2").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(
        status.message(),
        format!("job \"{first}\" trained version 1 of model \"shared\"; it has no version \"2\"")
    );
}

#[tokio::test]
async fn one_model_name_holds_one_task() {
    let server = Server::start();
    trained(&server, regression("one-task")).await;
    let binary_job = trained(&server, binary("two-classes")).await;

    let status = submit(&server, binary("one-task")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("spec.model_name: ")
            && status.message().contains("TASK_REGRESSION"),
        "{status:?}"
    );
    let status = import(
        &server,
        "one-task",
        export_model(&server, &binary_job).await,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("name: ") && status.message().contains("TASK_REGRESSION"),
        "{status:?}"
    );
    // Same task: a new version.
    let info = import(
        &server,
        "two-classes",
        export_model(&server, &binary_job).await,
    )
    .await
    .unwrap();
    assert_eq!(info.version, 2);
    let models = list_models(&server).await;
    assert_eq!(models.iter().filter(|m| m.name == "one-task").count(), 1);
}

#[tokio::test]
async fn one_server_per_data_directory() {
    let first = Server::start();
    let dir = first.data_dir.clone();
    let pid = std::fs::read_to_string(dir.join("LOCK")).unwrap();
    let pid = pid.trim();
    assert!(pid.parse::<u32>().is_ok(), "{pid:?}");

    let stderr = Server::fails_to_start(&dir, &[]);
    assert!(
        stderr.contains("in use by another kiln-server") && stderr.contains(&format!("pid {pid}")),
        "{stderr}"
    );
    // The first one goes on; once it is killed, a new one takes the directory.
    serving(&first).await;
    let dir = first.kill_keeping_data();
    let again = Server::start_in(dir, &[]);
    serving(&again).await;
}

#[tokio::test]
async fn long_inputs_come_back_bounded() {
    let server = Server::start();
    let job = trained(&server, regression("bounded")).await;
    let huge = "job-".to_string() + &"a".repeat(20_000);
    let data_dir = server.data_dir.display().to_string();
    let check = |call: &str, status: tonic::Status, code: Code| {
        assert_eq!(
            status.code(),
            code,
            "{call}: {}",
            &status.message()[..200.min(status.message().len())]
        );
        let chars = status.message().chars().count();
        assert!(chars < 300, "{call}: {chars} characters");
        assert!(
            !status.message().contains(&data_dir),
            "{call}: {}",
            status.message()
        );
    };
    let mut jobs = server.jobs().await;
    let status = jobs
        .get_job(pb::GetJobRequest {
            job_id: huge.clone(),
        })
        .await
        .unwrap_err();
    assert!(status.message().contains('…'), "{}", status.message());
    check("GetJob", status, Code::NotFound);
    let status = jobs
        .watch_job(pb::WatchJobRequest {
            job_id: huge.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    check("WatchJob", status, Code::NotFound);
    let status = jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: huge.clone(),
        })
        .await
        .unwrap_err();
    check("CancelJob", status, Code::NotFound);
    let status = predict(&server, &huge, "").await.unwrap_err();
    assert!(status.message().contains('…'), "{}", status.message());
    check("Predict", status, Code::NotFound);
    let status = predict(&server, &job, &huge).await.unwrap_err();
    check("Predict version", status, Code::NotFound);
    let status = predict(&server, "bounded", &huge).await.unwrap_err();
    check("Predict alias", status, Code::NotFound);
    let mut inference = server.inference().await;
    let status = inference
        .load_model(pb::ModelRef {
            model: huge.clone(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    check("LoadModel", status, Code::NotFound);
    let status = inference
        .set_alias(pb::SetAliasRequest {
            model: "bounded".into(),
            alias: "a".repeat(20_000),
            version: "1".into(),
        })
        .await
        .unwrap_err();
    check("SetAlias", status, Code::InvalidArgument);
    let status = submit(&server, regression(&"m".repeat(20_000)))
        .await
        .unwrap_err();
    check("SubmitJob", status, Code::InvalidArgument);
    let upload = pb::UploadDatasetRequest {
        name: "n".repeat(129),
        chunk: b"x,y\n1,2\n3,4\n5,6\n".to_vec(),
        ..Default::default()
    };
    let status = server
        .datasets()
        .await
        .upload_dataset(tokio_stream::iter([upload]))
        .await
        .unwrap_err();
    assert!(status.message().starts_with("name: "), "{status:?}");
    check("UploadDataset", status, Code::InvalidArgument);
    serving(&server).await;
}
