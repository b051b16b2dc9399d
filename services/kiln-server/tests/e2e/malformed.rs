//! A corpus of malformed inputs, each refused with INVALID_ARGUMENT by the real
//! server and an error that names where it is (malformed/README.md next to this file):
//! job specs with one thing wrong each (malformed/specs) and CSV and NPY
//! uploads that cannot be read (malformed/datasets). None may panic the
//! server or come back as INTERNAL; the server answers after each of them.

use std::path::{Path, PathBuf};

use kiln::v1 as pb;
use kiln_client::JobFileFormat;
use kiln_testkit::*;
use tonic::Code;

fn corpus(dir: &str) -> Vec<(PathBuf, String)> {
    let dir = crate::e2e_dir().join("malformed").join(dir);
    let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_none_or(|ext| ext != "expect"))
        .map(|path| {
            let expect = PathBuf::from(format!("{}.expect", path.display()));
            let expect = std::fs::read_to_string(&expect)
                .unwrap_or_else(|e| panic!("{}: {e}", expect.display()));
            (path, expect.trim_end_matches('\n').to_string())
        })
        .collect();
    files.sort();
    files
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Ok when `status` is INVALID_ARGUMENT naming `field` ("field: message").
fn check(result: Result<impl std::fmt::Debug, tonic::Status>, field: &str) -> Result<(), String> {
    match result {
        Ok(ok) => Err(format!("accepted: {ok:?}")),
        Err(status) if status.code() != Code::InvalidArgument => Err(format!(
            "{:?} instead of INVALID_ARGUMENT: {}",
            status.code(),
            status.message()
        )),
        Err(status) if !status.message().starts_with(&format!("{field}: ")) => Err(format!(
            "the message does not start with \"{field}: \": {}",
            status.message()
        )),
        Err(_) => Ok(()),
    }
}

/// Still answering, and not INTERNAL for what came before.
async fn alive(server: &Server) {
    server
        .datasets()
        .await
        .list_datasets(pb::ListDatasetsRequest {})
        .await
        .expect("the server still answers");
}

#[tokio::test]
async fn malformed_job_specs_are_invalid_arguments_naming_the_field() {
    let specs = corpus("specs");
    assert!(specs.len() >= 20, "{} spec files", specs.len());
    let server = Server::start();
    let mut failures = Vec::new();
    for (path, field) in &specs {
        let text = std::fs::read_to_string(path).unwrap();
        let request = kiln_client::parse_job(&text, JobFileFormat::Json)
            .unwrap_or_else(|e| panic!("{}: {e}", name(path)));
        let spec = request.spec.expect("a spec");
        if let Err(e) = check(submit(&server, spec).await.map(|job| job.id), field) {
            failures.push(format!("{}: {e}", name(path)));
        }
    }
    alive(&server).await;
    assert!(
        failures.is_empty(),
        "{} of {} specs:\n{}",
        failures.len(),
        specs.len(),
        failures.join("\n")
    );
}

async fn upload_file(server: &Server, path: &Path) -> Result<pb::Dataset, tonic::Status> {
    let bytes = std::fs::read(path).unwrap();
    if path.extension().is_some_and(|ext| ext == "npy") {
        let messages: Vec<pb::UploadDatasetRequest> = bytes
            .chunks(4096)
            .map(|chunk| pb::UploadDatasetRequest {
                name: "malformed".into(),
                chunk: chunk.to_vec(),
                format: pb::DatasetFormat::Npy as i32,
                array: "x".into(),
            })
            .collect();
        server
            .datasets()
            .await
            .upload_dataset(tokio_stream::iter(messages))
            .await
            .map(|r| r.into_inner())
    } else {
        upload(server, "malformed", &bytes, 4096).await
    }
}

/// A regression on the last column of `dataset`, everything else default.
fn job_on(dataset: &pb::Dataset) -> pb::JobSpec {
    let target = dataset.columns.last().expect("columns").as_str();
    pb::JobSpec {
        task: pb::Task::Regression as i32,
        data: Some(dataset_source(&dataset.id, &[target])),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![layer(4)],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs: 1,
            ..Default::default()
        }),
        device: pb::Device::Cpu as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn malformed_datasets_are_invalid_arguments() {
    let datasets = corpus("datasets");
    assert!(datasets.len() >= 10, "{} dataset files", datasets.len());
    let server = Server::start();
    let mut failures = Vec::new();
    for (path, expect) in &datasets {
        let (stage, field) = expect
            .split_once(' ')
            .unwrap_or_else(|| panic!("{}.expect: want \"upload|submit FIELD\"", name(path)));
        let uploaded = upload_file(&server, path).await;
        let outcome = match stage {
            "upload" => check(uploaded.map(|d| d.id), field),
            "submit" => match uploaded {
                Ok(dataset) => check(
                    submit(&server, job_on(&dataset)).await.map(|job| job.id),
                    field,
                ),
                Err(status) => Err(format!("refused at upload: {status:?}")),
            },
            other => panic!("{}.expect: unknown stage {other:?}", name(path)),
        };
        if let Err(e) = outcome {
            failures.push(format!("{}: {e}", name(path)));
        }
        alive(&server).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {} datasets:\n{}",
        failures.len(),
        datasets.len(),
        failures.join("\n")
    );
}
