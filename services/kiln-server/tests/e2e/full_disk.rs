//! A full data directory, for real: the server's data directory is on a
//! small tmpfs ([`SmallDisk`]) that the test fills to the last byte. Skipped,
//! saying so, where a tmpfs cannot be mounted (not root).
//!
//! What it shows, step by step: a running job stops (its events cannot be
//! recorded) and says so; every call that would write is refused with
//! RESOURCE_EXHAUSTED and leaves nothing behind; Predict, reads and health
//! go on; a restart on the full disk starts and serves; once space is back,
//! writes are accepted again without a restart and the stopped job continues
//! from its checkpoint with an unbroken curve; and a server stopped cleanly
//! starts on a disk that then filled up (the database opened read-only).

use std::path::Path;
use std::time::{Duration, Instant};

use kiln::v1 as pb;
use kiln_testkit::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The health name that reports whether writes succeed.
const STORAGE: &str = "kiln.storage";

fn spec(model: &str, epochs: u32) -> pb::JobSpec {
    pb::JobSpec {
        model_name: model.into(),
        ..inline_regression(64, 8, epochs, 8)
    }
}

async fn health(server: &Server, service: &str) -> ServingStatus {
    let status = HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

/// Polls until `kiln.storage` reports `want`; how long that took.
async fn storage_turns(server: &Server, want: ServingStatus) -> Duration {
    let started = Instant::now();
    while health(server, STORAGE).await != want {
        assert!(
            started.elapsed() < JOB_WAIT,
            "{STORAGE} not {want:?} within {JOB_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn predict(server: &Server, model: &str, version: &str) -> Result<(), tonic::Status> {
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
        .map(|_| ())
}

async fn set_alias(server: &Server, alias: &str, version: &str) -> Result<(), tonic::Status> {
    server
        .inference()
        .await
        .set_alias(pb::SetAliasRequest {
            model: "kept".into(),
            alias: alias.into(),
            version: version.into(),
        })
        .await
        .map(|_| ())
}

async fn trained(server: &Server, spec: pb::JobSpec) -> pb::Finished {
    let job = submit(server, spec).await.expect("submit");
    finished(&watch_all(server, &job.id).await)
}

fn exhausted(result: Result<impl std::fmt::Debug, tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::ResourceExhausted, "{what}: {status:?}");
    assert!(
        status.message().contains("out of space"),
        "{what}: {}",
        status.message()
    );
}

/// Files a write in progress or refused could leave: `*.tmp`, and model
/// directories of imports.
fn leftovers(data_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for dir in [data_dir.join("datasets"), data_dir.join("models")] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") || name.starts_with("import-") {
                found.push(name);
            }
        }
    }
    found
}

/// Refused while full: each call that would write, with nothing left behind.
async fn writes_are_refused(server: &Server, jobs_before: usize) {
    exhausted(submit(server, spec("refused", 2)).await, "SubmitJob");
    exhausted(
        upload(server, "refused", b"x,y\n1,2\n3,4\n", 4).await,
        "UploadDataset",
    );
    exhausted(set_alias(server, "prod", "1").await, "SetAlias");
    let file = export_model(server, "kept").await;
    let import = server
        .inference()
        .await
        .import_model(tokio_stream::iter([pb::ImportModelRequest {
            name: "imported".into(),
            chunk: file,
        }]))
        .await;
    exhausted(import, "ImportModel");
    assert_eq!(
        list_jobs(server).await.len(),
        jobs_before,
        "no job was added"
    );
    assert_eq!(leftovers(&server.data_dir), Vec::<String>::new());
}

/// Reads, Predict (by alias too) and the server's health go on.
async fn still_serving(server: &Server) {
    predict(server, "kept", "stable")
        .await
        .expect("Predict by alias");
    predict(server, "kept", "").await.expect("Predict");
    assert_eq!(health(server, "").await, ServingStatus::Serving);
}

#[tokio::test]
async fn a_full_disk_makes_kiln_read_only_until_space_is_back() {
    let Some(disk) = SmallDisk::mount(64) else {
        return;
    };
    let server = Server::start_in(disk.path().join("data"), &[]);
    trained(&server, spec("kept", 3)).await;
    set_alias(&server, "stable", "1").await.unwrap();
    let long = submit(&server, spec("long", 100_000)).await.unwrap();
    // Three epochs recorded: the checkpoint after the second is written
    // (a run records an epoch, then checkpoints it), so it has one to
    // continue from whenever the disk fills.
    let started = Instant::now();
    while get_job(&server, &long.id).await.epochs_completed < 3 {
        assert!(started.elapsed() < JOB_WAIT, "no three epochs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health(&server, STORAGE).await, ServingStatus::Serving);

    // The disk fills up under the running job.
    let taken = disk.fill();
    storage_turns(&server, ServingStatus::NotServing).await;
    let started = Instant::now();
    let stalled = loop {
        let job = get_job(&server, &long.id).await;
        if job.message.contains("data directory is full") {
            break job;
        }
        assert!(
            started.elapsed() < JOB_WAIT,
            "the job never stopped: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        stalled.state(),
        pb::JobState::Running,
        "recorded as it stood"
    );
    eprintln!(
        "filled {taken} bytes; the job stopped after {} recorded epochs",
        stalled.epochs_completed
    );
    let jobs_before = list_jobs(&server).await.len();
    writes_are_refused(&server, jobs_before).await;
    still_serving(&server).await;

    // A restart on the full disk: it starts, serves, and refuses writes.
    server.terminate();
    let data_dir = server.wait_exit_keeping_data(JOB_WAIT);
    let server = Server::start_in(data_dir, &[]);
    storage_turns(&server, ServingStatus::NotServing).await;
    still_serving(&server).await;
    assert_eq!(
        list_jobs(&server).await.len(),
        jobs_before,
        "every job kept"
    );
    let job = get_job(&server, &long.id).await;
    assert_eq!(job.epochs_completed, stalled.epochs_completed);
    assert!(job.message.contains("data directory is full"), "{job:?}");
    writes_are_refused(&server, jobs_before).await;

    // Space comes back: writes resume without a restart, the job continues.
    disk.free();
    let took = storage_turns(&server, ServingStatus::Serving).await;
    eprintln!("writes accepted again {took:?} after space came back");
    let started = Instant::now();
    while get_job(&server, &long.id).await.epochs_completed <= stalled.epochs_completed + 1 {
        assert!(
            started.elapsed() < JOB_WAIT,
            "the stopped job did not continue"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    set_alias(&server, "prod", "1")
        .await
        .expect("SetAlias again");
    server
        .jobs()
        .await
        .cancel_job(pb::CancelJobRequest {
            job_id: long.id.clone(),
        })
        .await
        .unwrap();
    let events = watch_all(&server, &long.id).await;
    let resumed = events
        .iter()
        .find_map(|e| match &e.kind {
            Some(pb::job_event::Kind::StateChanged(s)) if !s.reason.is_empty() => Some(s.clone()),
            _ => None,
        })
        .expect("a QUEUED event saying why it stopped");
    assert!(resumed.suspended, "not counted as a restart: {resumed:?}");
    assert!(resumed.resume_after_epoch <= stalled.epochs_completed);
    assert!(
        resumed.resume_after_epoch > 0,
        "continued from a checkpoint"
    );
    let curve: Vec<u32> = epochs(&events).iter().map(|e| e.epoch).collect();
    let unbroken: Vec<u32> = (1..=curve.len() as u32).collect();
    assert_eq!(curve, unbroken, "every epoch once, in order");
    assert_eq!(
        get_job(&server, &long.id).await.state(),
        pb::JobState::Cancelled
    );
    trained(&server, spec("after", 2)).await;

    // Stopped cleanly, then the disk fills: it starts (the database opened
    // read-only) and serves; space back, it writes again.
    server.terminate();
    let data_dir = server.wait_exit_keeping_data(JOB_WAIT);
    disk.fill();
    let server = Server::start_in(data_dir, &[]);
    storage_turns(&server, ServingStatus::NotServing).await;
    predict(&server, "kept", "prod")
        .await
        .expect("Predict by the alias set before");
    still_serving(&server).await;
    let jobs_before = list_jobs(&server).await.len();
    writes_are_refused(&server, jobs_before).await;
    disk.free();
    storage_turns(&server, ServingStatus::Serving).await;
    trained(&server, spec("last", 2)).await;
    drop(server);
    drop(disk);
}
