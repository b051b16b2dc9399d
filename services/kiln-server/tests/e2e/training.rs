//! End to end through the real server: upload, submit, watch, predict — and
//! the model that answers is the one training said it kept.

use kiln::v1 as pb;
use kiln_testkit::*;

#[tokio::test]
async fn spirals_classification_reaches_95_percent() {
    let server = Server::start();
    let csv = read_example("spirals.csv");
    // Small chunks: the upload really is a stream.
    let dataset = upload(&server, "spirals", &csv, 4096).await.unwrap();
    assert_eq!(dataset.columns, ["x", "y", "arm"]);
    assert_eq!(dataset.rows, 900);

    let job = submit(
        &server,
        pb::JobSpec {
            model_name: "spirals".into(),
            task: pb::Task::MulticlassClassification as i32,
            data: Some(dataset_source(&dataset.id, &["arm"])),
            model: Some(pb::ModelSpec {
                hidden_layers: vec![layer(64), layer(64)],
                ..Default::default()
            }),
            training: Some(pb::TrainingSpec {
                optimizer: Some(pb::Optimizer {
                    learning_rate: Some(0.01),
                    kind: Some(pb::optimizer::Kind::Adam(pb::Adam::default())),
                    ..Default::default()
                }),
                epochs: 300,
                batch_size: 32,
                early_stopping: Some(pb::EarlyStopping {
                    monitor: "val_loss".into(),
                    patience: Some(30),
                    ..Default::default()
                }),
                seed: 3,
                ..Default::default()
            }),
            device: pb::Device::Cpu as i32,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(job.state(), pb::JobState::Queued);
    assert_eq!(
        (job.train_rows, job.validation_rows, job.input_features),
        (720, 180, 2)
    );

    let events = watch_all(&server, &job.id).await;
    let done = finished(&events);
    let best = done.best.unwrap();
    assert!(
        best.val_accuracy.unwrap() >= 0.95,
        "validation accuracy {:?}",
        best.val_accuracy
    );

    // Predict every row by model name: labels come back as the CSV's strings.
    let rows = csv_rows(&csv);
    let request = pb::PredictRequest {
        model: "spirals".into(),
        rows: rows
            .iter()
            .map(|r| pb::Row {
                values: vec![r[0].parse().unwrap(), r[1].parse().unwrap()],
            })
            .collect(),
        ..Default::default()
    };
    let response = server
        .inference()
        .await
        .predict(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.job_id, job.id);
    assert_eq!(response.model_version, 1);
    assert_eq!(response.predictions.len(), 900);
    let right = response
        .predictions
        .iter()
        .zip(&rows)
        .filter(|(p, r)| p.class_label == r[2])
        .count();
    assert!(
        right as f64 / 900.0 >= 0.95,
        "accuracy over all rows {}",
        right as f64 / 900.0
    );
    for p in &response.predictions {
        assert_eq!(p.probabilities.len(), 3);
        assert!((p.probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    }
    let job = server
        .jobs()
        .await
        .get_job(pb::GetJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.state(), pb::JobState::Succeeded);
    assert_eq!(job.device, "cpu");
}

/// R² the regression example must reach on its validation split.
const REGRESSION_MIN_R2: f64 = 0.95;

#[tokio::test]
async fn regression_reaches_its_r2_and_predicts_in_target_units() {
    let server = Server::start();
    let csv = read_example("regression.csv");
    let dataset = upload(&server, "regression", &csv, 1 << 16).await.unwrap();
    let job = submit(
        &server,
        pb::JobSpec {
            task: pb::Task::Regression as i32,
            data: Some(dataset_source(&dataset.id, &["y"])),
            model: Some(pb::ModelSpec {
                hidden_layers: vec![layer(64), layer(64)],
                ..Default::default()
            }),
            training: Some(pb::TrainingSpec {
                optimizer: Some(pb::Optimizer {
                    learning_rate: Some(0.003),
                    ..Default::default()
                }),
                epochs: 120,
                batch_size: 64,
                early_stopping: Some(pb::EarlyStopping {
                    patience: Some(20),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Without a model_name the job id is the model's name.
    assert_eq!(job.model_name, job.id);
    let events = watch_all(&server, &job.id).await;
    let best = finished(&events).best.unwrap();
    assert!(
        best.val_r2.unwrap() >= REGRESSION_MIN_R2,
        "R² {:?}",
        best.val_r2
    );

    // Noise-free targets for fresh points: answers are in y's units.
    let points: [[f64; 3]; 3] = [[1.0, 2.0, -1.0], [-2.0, 0.5, 2.5], [0.3, -2.0, 0.0]];
    let truth: Vec<f64> = points
        .iter()
        .map(|p| p[0].sin() * p[1] + 0.5 * p[2] * p[2])
        .collect();
    let response = server
        .inference()
        .await
        .predict(pb::PredictRequest {
            model: job.id.clone(),
            rows: points
                .iter()
                .map(|p| pb::Row { values: p.to_vec() })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for (p, t) in response.predictions.iter().zip(&truth) {
        assert_eq!(p.values.len(), 1);
        assert!(
            (p.values[0] - t).abs() < 0.5,
            "predicted {} for {t}",
            p.values[0]
        );
    }
}

/// Deterministic noise: features and a target with nothing to learn.
fn noise_csv(rows: usize) -> Vec<u8> {
    let mut state = 12345u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
    };
    let mut csv = String::from("a,b,c,d,e,y\n");
    for _ in 0..rows {
        let v: Vec<String> = (0..6).map(|_| format!("{:.5}", next())).collect();
        csv.push_str(&v.join(","));
        csv.push('\n');
    }
    csv.into_bytes()
}

#[tokio::test]
async fn early_stopping_stops_and_serves_the_best_epoch() {
    let server = Server::start();
    let csv = noise_csv(120);
    let dataset = upload(&server, "noise", &csv, 1 << 16).await.unwrap();
    let mut data = dataset_source(&dataset.id, &["y"]);
    data.validation_fraction = Some(0.3);
    data.split_seed = 5;
    let spec = pb::JobSpec {
        task: pb::Task::Regression as i32,
        data: Some(data),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![layer(256), layer(256)],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            optimizer: Some(pb::Optimizer {
                learning_rate: Some(0.01),
                ..Default::default()
            }),
            epochs: 1000,
            batch_size: 16,
            early_stopping: Some(pb::EarlyStopping {
                patience: Some(5),
                ..Default::default()
            }),
            ..Default::default()
        }),
        device: pb::Device::Cpu as i32,
        ..Default::default()
    };
    let job = submit(&server, spec.clone()).await.unwrap();
    let events = watch_all(&server, &job.id).await;
    let done = finished(&events);
    let epochs = epochs(&events);
    assert_eq!(done.reason(), pb::StopReason::EarlyStopped);
    assert!(done.epochs_completed < 1000);
    // Keras semantics: stop `patience` epochs after the best one.
    assert_eq!(done.epochs_completed, done.best_epoch + 5);
    let stopped = events.iter().find_map(|e| match &e.kind {
        Some(pb::job_event::Kind::EarlyStopped(s)) => Some(s.clone()),
        _ => None,
    });
    assert_eq!(stopped.unwrap().best_epoch, done.best_epoch);
    let best = done.best.unwrap();
    let last = epochs.last().unwrap().clone();
    assert!(best.val_loss < last.val_loss);

    // Rebuild the validation split exactly as the server did, and score the
    // served model on it: it must be the best epoch's, not the last one's.
    let core_spec = kiln_core::spec::JobSpec::from_proto(&spec).unwrap();
    let table = kiln_core::data::Table::from_csv(&csv).unwrap();
    let dataset =
        kiln_core::data::Dataset::from_table(&table, &core_spec.data, core_spec.task).unwrap();
    let prepared = kiln_core::prepare::prepare(&dataset, &core_spec.data);
    let mut x = prepared.validation.x.clone();
    prepared.feature_scaler.inverse(&mut x);
    let kiln_core::prepare::SplitTargets::Values(mut y) = prepared.validation.y.clone() else {
        unreachable!()
    };
    prepared.target_scaler.as_ref().unwrap().inverse(&mut y);
    let response = server
        .inference()
        .await
        .predict(pb::PredictRequest {
            model: job.id.clone(),
            rows: x
                .chunks(5)
                .map(|r| pb::Row {
                    values: r.iter().map(|&v| v as f64).collect(),
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mae = response
        .predictions
        .iter()
        .zip(&y)
        .map(|(p, &t)| (p.values[0] - t as f64).abs())
        .sum::<f64>()
        / y.len() as f64;
    let best_mae = best.val_mae.unwrap();
    let last_mae = last.val_mae.unwrap();
    assert!(
        (mae - best_mae).abs() < 1e-4,
        "served MAE {mae} vs best epoch's {best_mae}"
    );
    assert!(
        (mae - last_mae).abs() > 1e-3,
        "the last epoch ({last_mae}) must differ from the best ({best_mae}) for this test to prove anything"
    );
}
