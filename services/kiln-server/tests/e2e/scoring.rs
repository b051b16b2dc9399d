//! Batch scoring (ScoreDataset) of uploaded datasets: the predictions dataset
//! equals online Predict's answers row for row, the metrics equal kiln-core's
//! (and kiln-train's) on those answers, and online Predict is answered while
//! a batch runs, never queued behind it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kiln::v1 as pb;
use kiln_client::table::PredictionTable;
use kiln_testkit::*;

/// A multi-class table: x, z numeric, shape categorical, a label that depends
/// on both; a few empty feature cells and one empty label.
fn shapes_csv() -> String {
    let shapes = ["circle", "square", "triangle"];
    let mut csv = String::from("id,x,shape,z,label\n");
    for i in 0..420 {
        let x = ((i * 37) % 200) as f64 / 100.0 - 1.0 + 0.0025;
        let z = ((i * 11) % 50) as f64 / 25.0 - 1.0;
        let shape = shapes[(i * 7 / 3) % 3];
        let label = match shape {
            "circle" if x > 0.3 => "high",
            "circle" => "low",
            "square" if x < -0.3 => "high",
            "square" => "mid",
            _ if z > 0.0 => "mid",
            _ => "low",
        };
        let x = if i % 37 == 5 {
            String::new()
        } else {
            x.to_string()
        };
        let shape = if i % 41 == 7 { "" } else { shape };
        let label = if i == 50 { "" } else { label };
        csv.push_str(&format!("r{i},{x},{shape},{z},{label}\n"));
    }
    csv
}

fn shapes_job(dataset: &str) -> pb::JobSpec {
    let mut data = dataset_source(dataset, &["label"]);
    data.categorical_columns = vec!["shape".into()];
    data.feature_columns = vec!["x".into(), "shape".into(), "z".into()];
    pb::JobSpec {
        task: pb::Task::MulticlassClassification as i32,
        model_name: "score-shapes".into(),
        data: Some(data),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![layer(16)],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs: 15,
            batch_size: 32,
            seed: 3,
            ..Default::default()
        }),
        device: pb::Device::Cpu as i32,
        ..Default::default()
    }
}

/// Parses `csv` (header, then rows) into records of cells.
fn records(csv: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::ReaderBuilder::new().from_reader(csv.as_bytes());
    let header = reader.headers().unwrap().iter().map(String::from).collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

/// Every event of a scoring, or its error.
async fn score(
    server: &Server,
    request: pb::ScoreDatasetRequest,
) -> Result<Vec<pb::ScoreEvent>, tonic::Status> {
    let mut stream = server
        .inference()
        .await
        .score_dataset(request)
        .await?
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await? {
        events.push(event);
    }
    Ok(events)
}

fn by_name(model: &str, dataset: &str) -> pb::ScoreDatasetRequest {
    pb::ScoreDatasetRequest {
        model: model.into(),
        dataset: Some(pb::score_dataset_request::Dataset::DatasetName(
            dataset.into(),
        )),
        ..Default::default()
    }
}

/// The progress events are increasing and end at the table's rows; the last
/// event is Finished.
fn finished(events: &[pb::ScoreEvent], rows: u64) -> pb::ScoreFinished {
    let mut done = 0;
    for event in &events[..events.len() - 1] {
        match &event.kind {
            Some(pb::score_event::Kind::Progress(p)) => {
                assert!(p.rows_done > done, "{events:?}");
                assert_eq!(p.rows_total, rows);
                done = p.rows_done;
            }
            other => panic!("expected progress, got {other:?}"),
        }
    }
    assert_eq!(done, rows);
    match &events.last().unwrap().kind {
        Some(pb::score_event::Kind::Finished(f)) => f.clone(),
        other => panic!("expected Finished last, got {other:?}"),
    }
}

async fn download(server: &Server, id: &str) -> String {
    let mut stream = server
        .datasets()
        .await
        .download_dataset(pb::GetDatasetRequest {
            dataset_id: id.into(),
        })
        .await
        .expect("DownloadDataset")
        .into_inner();
    let mut file = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        file.extend(chunk.chunk);
    }
    String::from_utf8(file).unwrap()
}

/// Online Predict of `csv`'s rows (text_rows of the model's input columns,
/// by name), laid out as `kiln predict` writes them.
async fn online(server: &Server, info: &pb::ModelInfo, csv: &str) -> PredictionTable {
    let (header, rows) = records(csv);
    let columns: Vec<usize> = info
        .input_columns
        .iter()
        .map(|c| header.iter().position(|h| h == c).unwrap())
        .collect();
    let text_rows = rows
        .iter()
        .map(|r| pb::TextRow {
            cells: columns.iter().map(|&j| r[j].clone()).collect(),
        })
        .collect();
    let response = server
        .inference()
        .await
        .predict(pb::PredictRequest {
            model: info.name.clone(),
            text_rows,
            ..Default::default()
        })
        .await
        .expect("Predict")
        .into_inner();
    PredictionTable::new(response, Some(info))
}

fn to_csv(table: &PredictionTable) -> String {
    let mut out = Vec::new();
    table.write_csv(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn classification_scores_equal_online_predict_and_kiln_core_metrics() {
    let server = Server::start();
    let csv = shapes_csv();
    let dataset = upload(&server, "score-shapes", csv.as_bytes(), 4096)
        .await
        .unwrap();
    let job = submit(&server, shapes_job(&dataset.id)).await.unwrap();
    finished_job(&server, &job.id).await;
    let info = list_models(&server).await.remove(0);
    assert_eq!(info.classes, ["high", "low", "mid"]);

    let events = score(&server, by_name("score-shapes", "score-shapes"))
        .await
        .unwrap();
    let done = finished(&events, 420);
    assert_eq!(done.rows_scored, 420);
    assert_eq!((done.model_version, &done.job_id), (1, &job.id));
    let predictions = done.predictions.clone().unwrap();
    assert_eq!(predictions.name, "score-shapes-v1-scores");
    assert_eq!(predictions.rows, 420);
    assert_eq!(predictions.columns, ["class", "p_high", "p_low", "p_mid"]);

    // Row for row what online Predict answers, in `kiln predict`'s CSV.
    let expected = online(&server, &info, &csv).await;
    let scored = download(&server, &predictions.id).await;
    assert_eq!(scored, to_csv(&expected));

    // The metrics are kiln-core's on the online probabilities, over the rows
    // with a label (row 51 has none).
    let (header, rows) = records(&csv);
    let label = header.iter().position(|h| h == "label").unwrap();
    let (mut probabilities, mut truth) = (Vec::new(), Vec::new());
    for (row, p) in rows.iter().zip(&expected.response.predictions) {
        if row[label].is_empty() {
            continue;
        }
        truth.push(info.classes.iter().position(|c| *c == row[label]).unwrap() as i64);
        probabilities.extend(&p.probabilities);
    }
    let want = kiln_core::metrics::classification_metrics(&probabilities, &truth, 3);
    assert_eq!((done.rows_evaluated, done.rows_missing_target), (419, 1));
    let m = done.metrics.clone().expect("metrics");
    assert_eq!(m.val_accuracy, Some(want.accuracy));
    assert_eq!(m.val_log_loss, Some(want.log_loss));
    assert_eq!(m.val_roc_auc, want.roc_auc);
    assert_eq!(m.val_pr_auc, want.pr_auc);
    assert_eq!(m.val_f1, Some(want.f1));
    assert_eq!(m.val_balanced_accuracy, Some(want.balanced_accuracy));
    assert!(m.val_mae.is_none() && m.val_rmse.is_none());
    assert!(want.accuracy > 0.6, "the model learned little: {want:?}");
    let cm = done.confusion_matrix.clone().expect("confusion matrix");
    assert_eq!(cm.labels, info.classes);
    let rows_of = want.confusion_matrix.rows();
    assert_eq!(cm.counts, rows_of.concat());
    assert_eq!(cm.counts.iter().sum::<u64>(), done.rows_evaluated);

    // By id, with an output name; the newest upload of a name is the one scored.
    let again = score(
        &server,
        pb::ScoreDatasetRequest {
            model: "score-shapes".into(),
            version: "1".into(),
            dataset: Some(pb::score_dataset_request::Dataset::DatasetId(
                dataset.id.clone(),
            )),
            output_name: "mine".into(),
        },
    )
    .await
    .unwrap();
    let again = finished(&again, 420);
    assert_eq!(again.predictions.as_ref().unwrap().name, "mine");
    assert_eq!(again.metrics, done.metrics);
    let few = "x,shape,z\n0.5,circle,0.1\n-0.5,hexagon,0.2\n";
    upload(&server, "score-shapes", few.as_bytes(), 4096)
        .await
        .unwrap();
    let events = score(&server, by_name("score-shapes", "score-shapes"))
        .await
        .unwrap();
    let few_done = finished(&events, 2);
    assert!(few_done.metrics.is_none() && few_done.confusion_matrix.is_none());
    let scored = download(&server, &few_done.predictions.unwrap().id).await;
    assert_eq!(scored, to_csv(&online(&server, &info, few).await));

    // Errors: unknown model and dataset; a missing input column; a bad cell
    // and an unknown label, named by row and column.
    let err = score(&server, by_name("no-such-model", "score-shapes"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = score(&server, by_name("score-shapes", "no-such-dataset"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let mut request = by_name("score-shapes", "");
    request.dataset = Some(pb::score_dataset_request::Dataset::DatasetId(
        "ds-nope".into(),
    ));
    let err = score(&server, request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let cases = [
        ("x,z\n1,2\n", "has no column \"shape\""),
        (
            "x,shape,z\n1,circle,2\n1,square,oops\n",
            "row 2, column \"z\": \"oops\" is not a number",
        ),
        (
            "x,shape,z,label\n1,circle,2,low\n1,square,2,lowest\n",
            "row 2, column \"label\": \"lowest\" is not a class of model \"score-shapes\"",
        ),
    ];
    for (i, (table, message)) in cases.iter().enumerate() {
        let name = format!("bad-{i}");
        upload(&server, &name, table.as_bytes(), 4096)
            .await
            .unwrap();
        let err = score(&server, by_name("score-shapes", &name))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(message), "{}", err.message());
    }
}

/// Waits for the job's events to end in Finished.
async fn finished_job(server: &Server, id: &str) {
    let events = watch_all(server, id).await;
    kiln_testkit::finished(&events);
}

#[tokio::test]
async fn regression_scores_and_metrics_in_target_units() {
    let server = Server::start();
    let mut csv = String::from("a,b,y1,y2\n");
    for i in 0..300 {
        let (a, b) = ((i % 17) as f64 / 4.0, ((i * 7) % 23) as f64 / 5.0);
        let y1 = 3.0 * a - b + 10.0;
        let y2 = a * b;
        let y2 = if i == 7 {
            String::new()
        } else {
            y2.to_string()
        };
        csv.push_str(&format!("{a},{b},{y1},{y2}\n"));
    }
    let dataset = upload(&server, "score-linear", csv.as_bytes(), 4096)
        .await
        .unwrap();
    let mut job = pb::JobSpec {
        task: pb::Task::Regression as i32,
        model_name: "score-linear".into(),
        data: Some(dataset_source(&dataset.id, &["y1", "y2"])),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![layer(16)],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            epochs: 10,
            batch_size: 32,
            seed: 1,
            ..Default::default()
        }),
        device: pb::Device::Cpu as i32,
        ..Default::default()
    };
    job.data.as_mut().unwrap().feature_columns = vec!["a".into(), "b".into()];
    let job = submit(&server, job).await.unwrap();
    finished_job(&server, &job.id).await;
    let info = list_models(&server).await.remove(0);

    let events = score(&server, by_name("score-linear", "score-linear"))
        .await
        .unwrap();
    let done = finished(&events, 300);
    let predictions = done.predictions.clone().unwrap();
    assert_eq!(predictions.columns, ["y1", "y2"]);
    let expected = online(&server, &info, &csv).await;
    assert_eq!(download(&server, &predictions.id).await, to_csv(&expected));

    let (_, rows) = records(&csv);
    let (mut pred, mut truth) = (Vec::new(), Vec::new());
    for (row, p) in rows.iter().zip(&expected.response.predictions) {
        if row[3].is_empty() {
            continue;
        }
        truth.extend([
            row[2].parse::<f32>().unwrap(),
            row[3].parse::<f32>().unwrap(),
        ]);
        pred.extend(p.values.iter().map(|&v| v as f32));
    }
    let want = kiln_train::train::regression_metrics(&pred, &truth, 2);
    assert_eq!((done.rows_evaluated, done.rows_missing_target), (299, 1));
    let m = done.metrics.expect("metrics");
    assert_eq!(
        (m.val_mae, m.val_rmse, m.val_r2),
        (Some(want.mae), Some(want.rmse), Some(want.r2))
    );
    assert!(m.val_accuracy.is_none() && done.confusion_matrix.is_none());
}

/// A batch that takes a while: online Predict requests sent after its first
/// progress event are all answered before its Finished event arrives, and
/// the version's batcher never saw the batch's rows. The batch's own progress
/// events order the observations; a machine fast enough to finish the batch
/// first gets a bigger batch, never a sleep.
#[tokio::test]
async fn online_predict_is_answered_while_a_batch_runs() {
    let server = Server::start();
    let mut spec = inline_regression(64, 256, 1, 32);
    spec.model_name = "offpath".into();
    spec.model.as_mut().unwrap().hidden_layers.push(layer(256));
    let job = submit(&server, spec).await.unwrap();
    finished_job(&server, &job.id).await;

    const ONLINE: u64 = 5;
    let mut online_requests = 0;
    let mut rows = 50_000;
    for attempt in 0..5 {
        let mut csv = String::with_capacity(rows * 12);
        csv.push_str("x,y\n");
        for i in 0..rows {
            csv.push_str(&format!("{},{}\n", i % 64, i % 7));
        }
        let name = format!("big-{attempt}");
        upload(&server, &name, csv.as_bytes(), 1 << 20)
            .await
            .unwrap();
        let mut stream = server
            .inference()
            .await
            .score_dataset(by_name("offpath", &name))
            .await
            .unwrap()
            .into_inner();
        // One clock for both sides: every observation takes the next tick.
        let clock = Arc::new(AtomicU64::new(0));
        let first = stream.message().await.unwrap().expect("a first event");
        assert!(
            matches!(first.kind, Some(pb::score_event::Kind::Progress(_))),
            "{first:?}"
        );
        let reader = {
            let clock = clock.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(event) = stream.message().await.unwrap() {
                    seen.push((clock.fetch_add(1, Ordering::SeqCst), event));
                }
                seen
            })
        };
        let mut inference = server.inference().await;
        let mut answered = Vec::new();
        for i in 0..ONLINE {
            let response = inference
                .predict(pb::PredictRequest {
                    model: "offpath".into(),
                    text_rows: vec![pb::TextRow {
                        cells: vec![format!("{}", i + 1)],
                    }],
                    ..Default::default()
                })
                .await
                .expect("online Predict during a batch");
            assert_eq!(response.into_inner().predictions.len(), 1);
            answered.push(clock.fetch_add(1, Ordering::SeqCst));
        }
        online_requests += ONLINE;
        let seen = reader.await.unwrap();
        let (finished_at, last) = seen.last().expect("events after the first");
        let done = match &last.kind {
            Some(pb::score_event::Kind::Finished(f)) => f.clone(),
            other => panic!("expected Finished last, got {other:?}"),
        };
        assert_eq!(done.rows_scored, rows as u64);
        // The batch never went through the batcher: it counted only online rows.
        let stats = list_models(&server).await.remove(0).stats.unwrap();
        assert_eq!(stats.requests, online_requests);
        assert_eq!(stats.batch_rows, online_requests);
        if answered.iter().all(|t| t < finished_at) {
            // Progress kept coming after the last online answer: the batch
            // was still computing while they were answered.
            let after = seen
                .iter()
                .filter(|(t, e)| {
                    *t > *answered.last().unwrap()
                        && matches!(e.kind, Some(pb::score_event::Kind::Progress(_)))
                })
                .count();
            println!(
                "{rows} rows: {ONLINE} online answers before Finished, {after} progress events after them"
            );
            return;
        }
        println!("{rows} rows finished before the online requests were answered; doubling");
        rows *= 2;
    }
    panic!("online Predict was never answered before a batch's Finished event");
}

/// A sample of the server's Prometheus text, 0 when absent.
fn scraped(addr: &str, sample: &str) -> f64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Dropping the stream stops the scoring: the server counts it cancelled,
/// before all rows were scored, and stores no predictions.
#[tokio::test]
async fn a_dropped_stream_stops_the_scoring() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let server = Server::start_with(&[("KILN_METRICS_LISTEN", metrics.as_str())]);
    let mut spec = inline_regression(64, 256, 1, 32);
    spec.model_name = "cancelled".into();
    spec.model.as_mut().unwrap().hidden_layers.push(layer(256));
    let job = submit(&server, spec).await.unwrap();
    finished_job(&server, &job.id).await;

    let rows = 400_000;
    let mut csv = String::from("x,y\n");
    for i in 0..rows {
        csv.push_str(&format!("{},{}\n", i % 64, i % 7));
    }
    upload(&server, "huge", csv.as_bytes(), 1 << 20)
        .await
        .unwrap();
    let mut request = by_name("cancelled", "huge");
    request.output_name = "never-stored".into();
    let mut stream = server
        .inference()
        .await
        .score_dataset(request)
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first event");
    assert!(matches!(
        first.kind,
        Some(pb::score_event::Kind::Progress(_))
    ));
    drop(stream);

    let ended = |outcome: &str| {
        scraped(
            &metrics,
            &format!("kiln_scorings_total{{model=\"cancelled\",outcome=\"{outcome}\"}}"),
        )
    };
    let deadline = std::time::Instant::now() + JOB_WAIT;
    while ended("cancelled") == 0.0 {
        assert_eq!(
            ended("finished"),
            0.0,
            "the scoring finished after its stream was dropped"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the scoring never stopped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let scored = scraped(&metrics, "kiln_scored_rows_total{model=\"cancelled\"}");
    assert!(scored < rows as f64, "{scored} rows scored");
    let datasets = server
        .datasets()
        .await
        .list_datasets(pb::ListDatasetsRequest {})
        .await
        .unwrap()
        .into_inner()
        .datasets;
    assert!(datasets.iter().all(|d| d.name != "never-stored"));
}
