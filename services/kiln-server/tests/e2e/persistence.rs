//! Persistence and recovery through the real server: a server is killed with
//! SIGKILL and started again on the same data directory.

use std::path::Path;

use kiln::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use kiln::v1 as pb;
use kiln_testkit::*;
use tonic::Code;

/// A small deterministic regression job on inline data.
fn regression(rows: usize, epochs: u32, model: &str) -> pb::JobSpec {
    pb::JobSpec {
        model_name: model.into(),
        task: pb::Task::Regression as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::Inline(pb::InlineData {
                columns: vec!["x".into(), "z".into(), "y".into()],
                rows: (0..rows)
                    .map(|i| {
                        let x = (i as f64 / rows as f64) * 6.0 - 3.0;
                        let z = ((i * 7) % 11) as f64 / 11.0;
                        pb::Row {
                            values: vec![x, z, x.sin() + 0.5 * z],
                        }
                    })
                    .collect(),
            })),
            target_columns: vec!["y".into()],
            ..Default::default()
        }),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![layer(16)],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs,
            batch_size: 8,
            seed: 7,
            ..Default::default()
        }),
        device: pb::Device::Cpu as i32,
        ..Default::default()
    }
}

async fn predict(
    server: &Server,
    model: &str,
    version: &str,
) -> Result<Vec<Vec<f64>>, tonic::Status> {
    let rows = [[-2.0, 0.1], [0.0, 0.5], [1.5, 0.9]]
        .iter()
        .map(|r| pb::Row { values: r.to_vec() })
        .collect();
    let response = server
        .inference()
        .await
        .predict(pb::PredictRequest {
            model: model.into(),
            version: version.into(),
            rows,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(response.predictions.into_iter().map(|p| p.values).collect())
}

fn sequences(events: &[pb::JobEvent]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

fn flip_byte(path: &Path, at_fraction: f64) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = ((bytes.len() as f64 * at_fraction) as usize).min(bytes.len() - 1);
    bytes[i] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn a_finished_job_and_its_model_survive_a_kill() {
    let server = Server::start();
    let job = submit(&server, regression(200, 4, "persisted"))
        .await
        .unwrap();
    let events = watch_all(&server, &job.id).await;
    finished(&events);
    server
        .inference()
        .await
        .set_alias(pb::SetAliasRequest {
            model: "persisted".into(),
            alias: "production".into(),
            version: "1".into(),
        })
        .await
        .unwrap();
    // An imported model (a copy of the trained one) is kept too.
    let file = export_model(&server, "persisted").await;
    server
        .inference()
        .await
        .import_model(tokio_stream::iter([pb::ImportModelRequest {
            name: "imported".into(),
            chunk: file,
        }]))
        .await
        .unwrap();
    let before = (get_job(&server, &job.id).await, list_jobs(&server).await);
    let answers = predict(&server, "persisted", "").await.unwrap();

    let server = Server::start_in(server.kill_keeping_data(), &[]);
    assert_eq!(
        get_job(&server, &job.id).await,
        before.0,
        "GetJob after restart"
    );
    assert_eq!(list_jobs(&server).await, before.1, "ListJobs after restart");
    let replayed = watch_all(&server, &job.id).await;
    assert_eq!(replayed, events, "the same events, sequences and times");
    assert_eq!(predict(&server, "persisted", "").await.unwrap(), answers);
    assert_eq!(
        predict(&server, "persisted", "production").await.unwrap(),
        answers
    );
    assert_eq!(predict(&server, &job.id, "").await.unwrap(), answers);
    assert_eq!(predict(&server, "imported", "1").await.unwrap(), answers);
    let models = list_models(&server).await;
    assert_eq!(models.len(), 2);
    assert_eq!(
        (models[0].name.as_str(), models[0].loaded),
        ("imported", true)
    );
    let m = &models[1];
    assert_eq!(
        (m.name.as_str(), m.version, m.job_id.as_str()),
        ("persisted", 1, job.id.as_str())
    );
    assert!(m.loaded && m.load_error.is_empty(), "{m:?}");
    assert_eq!(m.aliases, ["production"]);

    // The registry continues: the next job's model is version 2.
    let second = submit(&server, regression(100, 1, "persisted"))
        .await
        .unwrap();
    assert_eq!(
        finished(&watch_all(&server, &second.id).await).model_name,
        "persisted"
    );
    let versions: Vec<u32> = list_models(&server)
        .await
        .iter()
        .filter(|m| m.name == "persisted")
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, [1, 2]);
}

#[tokio::test]
async fn a_job_killed_mid_training_resumes_from_its_checkpoint_to_the_same_result() {
    let spec = regression(3000, 10, "rerun");
    let server = Server::start();
    let interrupted = submit(&server, spec.clone()).await.unwrap();
    // Killed inside an epoch after the first, so the epochs before it are
    // checkpointed (every epoch is) and at least half an epoch is lost.
    let stood = wait_mid_epoch(&server, &interrupted.id, 1).await;
    let server = Server::start_in(server.kill_keeping_data(), &[]);

    let events = watch_all(&server, &interrupted.id).await;
    let fin = finished(&events);
    assert_eq!(
        sequences(&events),
        (0..events.len() as u64).collect::<Vec<_>>(),
        "every sequence number once, in order"
    );
    // The log: QUEUED, RUNNING, the first run's epochs, QUEUED again (the
    // restart, from the checkpoint), RUNNING, the remaining epochs, FINISHED.
    let states: Vec<&pb::StateChanged> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::job_event::Kind::StateChanged(s)) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(
        states.iter().map(|s| s.state()).collect::<Vec<_>>(),
        [
            pb::JobState::Queued,
            pb::JobState::Running,
            pb::JobState::Queued,
            pb::JobState::Running
        ]
    );
    let restart = states[2];
    assert!(!restart.suspended, "a kill gives no warning");
    assert_eq!(
        restart.resume_after_epoch,
        stood.epoch - 1,
        "killed in epoch {} at row {}: {restart:?}",
        stood.epoch,
        stood.rows_done
    );
    // Every epoch reported exactly once, though the resumed run repeated the
    // epochs after its checkpoint that were already reported.
    let all_epochs = epochs(&events);
    assert_eq!(
        all_epochs.iter().map(|m| m.epoch).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    let job = get_job(&server, &interrupted.id).await;
    assert_eq!(job.state(), pb::JobState::Succeeded);
    assert_eq!(job.epochs_completed, 10);
    assert!(
        !server
            .data_dir
            .join("checkpoints")
            .join(format!("{}.ckpt", job.id))
            .exists(),
        "the checkpoint goes when the job ends"
    );

    // The same spec, never interrupted, ends with the same numbers, bit for
    // bit: the checkpoint holds all the run's state.
    let fresh = submit(&server, spec).await.unwrap();
    let reference_events = watch_all(&server, &fresh.id).await;
    let reference = finished(&reference_events);
    assert_eq!(fin.best_epoch, reference.best_epoch);
    assert_eq!(fin.best.unwrap().val_loss, reference.best.unwrap().val_loss);
    let curve = |ms: Vec<pb::EpochMetrics>| {
        ms.iter()
            .map(|m| (m.train_loss, m.val_loss))
            .collect::<Vec<_>>()
    };
    assert_eq!(curve(all_epochs), curve(epochs(&reference_events)));
}

#[tokio::test]
async fn a_job_interrupted_too_often_fails() {
    let env = [("KILN_MAX_JOB_RESTARTS", "0")];
    let server = Server::start_with(&env);
    let job = submit(&server, regression(2000, 1000, "doomed"))
        .await
        .unwrap();
    wait_for_epoch(&server, &job.id).await;
    let server = Server::start_in(server.kill_keeping_data(), &env);
    let events = watch_all(&server, &job.id).await;
    let job = get_job(&server, &job.id).await;
    assert_eq!(job.state(), pb::JobState::Failed);
    assert!(
        job.message.contains("max_job_restarts is 0"),
        "{}",
        job.message
    );
    assert_eq!(
        sequences(&events),
        (0..events.len() as u64).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn corrupted_models_and_datasets_are_detected_not_served() {
    let server = Server::start();
    let dataset = upload(&server, "csv", &read_example("regression.csv"), 1 << 16)
        .await
        .unwrap();
    let job = submit(&server, regression(200, 2, "damaged"))
        .await
        .unwrap();
    finished(&watch_all(&server, &job.id).await);
    predict(&server, "damaged", "").await.unwrap();

    let dir = server.kill_keeping_data();
    flip_byte(&dir.join("models").join(&job.id).join("weights.bpk"), 0.5);
    flip_byte(
        &dir.join("datasets").join(format!("{}.csv", dataset.id)),
        0.5,
    );
    let server = Server::start_in(dir, &[]);

    let models = list_models(&server).await;
    assert_eq!(models.len(), 1);
    assert!(!models[0].loaded);
    assert!(
        models[0].load_error.contains("corrupted") && models[0].load_error.contains("weights.bpk"),
        "{}",
        models[0].load_error
    );
    // Named inside the data directory, never by the server's path.
    let data_dir = server.data_dir.display().to_string();
    assert!(
        models[0]
            .load_error
            .contains(&format!("models/{}: ", job.id))
            && !models[0].load_error.contains(&data_dir),
        "{}",
        models[0].load_error
    );
    for version in ["", "1"] {
        let err = predict(&server, "damaged", version).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("corrupted"), "{}", err.message());
    }
    let load = server
        .inference()
        .await
        .load_model(pb::ModelRef {
            model: "damaged".into(),
            version: "1".into(),
        })
        .await
        .unwrap_err();
    assert!(load.message().contains("corrupted"), "{}", load.message());
    let ready = GrpcInferenceServiceClient::new(server.channel().await)
        .model_ready(kiln::inference::ModelReadyRequest {
            name: "damaged".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ready.ready);
    // The job itself is still there, SUCCEEDED.
    assert_eq!(
        get_job(&server, &job.id).await.state(),
        pb::JobState::Succeeded
    );

    let mut spec = regression(10, 1, "from-csv");
    spec.data = Some(dataset_source(&dataset.id, &["y"]));
    let err = submit(&server, spec).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("dataset \"{}\" is corrupted", dataset.id)),
        "{}",
        err.message()
    );
    assert!(
        err.message()
            .contains(&format!("datasets/{}.csv", dataset.id))
            && !err.message().contains(&data_dir),
        "{}",
        err.message()
    );
}

/// What a crash mid-write leaves (an unfinished dataset file, an unfinished
/// file in a model's directory, the directory of a model that was never
/// registered) is removed at start, and the registered model is served as
/// before.
#[tokio::test]
async fn leftovers_of_a_crash_are_removed_at_start() {
    let server = Server::start();
    let job = submit(&server, regression(60, 3, "kept")).await.unwrap();
    finished(&watch_all(&server, &job.id).await);
    let before = predict(&server, "kept", "").await.unwrap();
    let dir = server.kill_keeping_data();

    let models = dir.join("models");
    let planted = [
        dir.join("datasets/ds-0123456789abcdef0123456789abcdef.tmp"),
        models.join(&job.id).join("weights.tmp"),
        models.join("job-0123456789ab/weights.bpk"),
        models.join("import-0123456789abcdef0123456789abcdef/model.json"),
    ];
    for path in &planted {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"half a file").unwrap();
    }
    // Not kiln's: left alone.
    let foreign = models.join("notes/readme.txt");
    std::fs::create_dir_all(foreign.parent().unwrap()).unwrap();
    std::fs::write(&foreign, b"an operator's file").unwrap();

    let server = Server::start_in(dir.clone(), &[]);
    assert_eq!(predict(&server, "kept", "").await.unwrap(), before);
    for path in &planted {
        assert!(!path.exists(), "{} is still there", path.display());
    }
    assert!(!models.join("job-0123456789ab").exists());
    assert!(models.join(&job.id).join("model.json").exists());
    assert!(foreign.exists());
}
