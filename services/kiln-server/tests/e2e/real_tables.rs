//! A messy table end to end, as a user downloads one: gaps in numeric and
//! text columns written every way pandas writes them, a 5%-positive binary
//! target, a job that names its dataset by name, balances its classes and
//! early-stops on PR AUC. Checked against scikit-learn (the imputer's fill
//! values, the held-out metrics of the served model) and across every client
//! (the CLI, the Rust and Python SDKs and grpcurl answer row for row alike),
//! with an unseen category at Predict.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::v1 as pb;
use kiln_testkit::*;
use serde_json::Value;

use crate::telemetry::{free_port, http_get};

const ROWS: usize = 800;
const POSITIVES: usize = ROWS / 20;

/// The README's walk-through table (examples/make_examples.py writes it):
/// age and income with gaps, city and plan (text, with gaps), tenure, and
/// churn = "yes" for the 5% riskiest rows.
fn churn_csv() -> String {
    String::from_utf8(read_example("churn.csv")).unwrap()
}

/// examples/churn.yaml, as `kiln submit` reads it.
fn job_spec() -> pb::JobSpec {
    let path = repo_root().join("examples/churn.yaml");
    kiln_client::load_job_file(path).unwrap().spec.unwrap()
}

/// Runs `script` in the test venv's Python with `args`; its stdout.
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new(venv_tool("KILN_PYTHON", "python"))
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// sklearn's SimpleImputer(strategy="mean") of age and income on the given
/// table rows, read as pandas reads the CSV.
const IMPUTER: &str = r#"
import sys, pandas as pd
from sklearn.impute import SimpleImputer
frame = pd.read_csv(sys.argv[1])
train = frame.iloc[[int(r) for r in sys.argv[2].split(",")]]
for column in ["age", "income"]:
    print(repr(float(SimpleImputer(strategy="mean").fit(train[[column]]).statistics_[0])))
"#;

/// sklearn's metrics of P(yes) against the truth (1 = yes), one per line:
/// roc_auc, average_precision, log_loss, f1 (threshold 0.5), balanced
/// accuracy; then the confusion matrix at the threshold argv[3], and the
/// best F1 along precision_recall_curve.
const METRICS: &str = r#"
import sys, numpy as np
from sklearn import metrics
y = np.array([int(v) for v in sys.argv[1].split(",")])
p = np.array([float(v) for v in sys.argv[2].split(",")])
pred = (p > 0.5).astype(int)
for v in [metrics.roc_auc_score(y, p), metrics.average_precision_score(y, p),
          metrics.log_loss(y, np.stack([1 - p, p], axis=1)),
          metrics.f1_score(y, pred), metrics.balanced_accuracy_score(y, pred)]:
    print(repr(float(v)))
at = (p >= float(sys.argv[3])).astype(int)
print(" ".join(str(c) for c in metrics.confusion_matrix(y, at, labels=[0, 1]).ravel()))
precision, recall, _ = metrics.precision_recall_curve(y, p)
with np.errstate(invalid="ignore", divide="ignore"):
    f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
print(repr(float(f1.max())))
"#;

/// The Python SDK's predictions of a CSV read by pandas, as CSV text.
const SDK_PREDICT: &str = r#"
import sys, pandas as pd, kiln_sdk
frame = pd.read_csv(sys.argv[2])
out = kiln_sdk.Client(sys.argv[1]).predict("churn", frame)
print(out.to_csv(index=False, float_format="%.9g"), end="")
"#;

fn lines_f64(text: &str) -> Vec<f64> {
    text.lines().map(|l| l.parse().unwrap()).collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The churn probability column of a prediction CSV (header class,p_no,p_yes).
fn p_yes(csv: &str) -> Vec<(String, f64)> {
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("class,p_no,p_yes"), "{csv}");
    lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            (cells[0].to_string(), cells[2].parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn a_messy_table_trains_and_serves_alike_from_every_client() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start_with(&[("KILN_METRICS_LISTEN", metrics_addr.as_str())]);
    let dir = temp_dir("real-tables");
    let csv = churn_csv();
    let table_path = repo_root().join("examples/churn.csv");
    upload(&server, "churn-table", csv.as_bytes(), 1 << 14)
        .await
        .unwrap();

    let spec = job_spec();
    let job = submit(&server, spec.clone()).await.unwrap();
    let events = watch_all(&server, &job.id).await;
    let done = finished(&events);
    let job = get_job(&server, &job.id).await;
    assert_eq!(job.state(), pb::JobState::Succeeded, "{}", job.message);
    let Some(pb::data_spec::Source::DatasetId(dataset_id)) = job
        .spec
        .as_ref()
        .unwrap()
        .data
        .as_ref()
        .unwrap()
        .source
        .clone()
    else {
        panic!("the name resolves to the dataset's id in the record")
    };

    // The data report: every gap counted, numeric ones filled with the
    // training split's mean (scikit-learn's, on the same rows), text ones
    // with a category of their own.
    let report = job.data_report.clone().expect("the job reports its data");
    let event = events.iter().find_map(|e| match &e.kind {
        Some(pb::job_event::Kind::DataReport(r)) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(event.as_ref(), Some(&report));
    assert_eq!(report.rows_read, ROWS as u64);
    let rows: Vec<Vec<String>> = csv_rows(csv.as_bytes());
    assert_eq!(rows.iter().filter(|r| r[5] == "yes").count(), POSITIVES);
    let markers = ["", "NA", "null", "NaN", "N/A", "None"];
    let gaps = |column: usize| {
        rows.iter()
            .filter(|r| markers.contains(&r[column].as_str()))
            .count() as u64
    };
    let filled: Vec<(&str, &str, u64, bool)> = report
        .filled
        .iter()
        .map(|f| (f.column.as_str(), f.strategy.as_str(), f.cells, f.indicator))
        .collect();
    assert_eq!(
        filled,
        [
            ("age", "mean", gaps(0), true),
            ("income", "mean", gaps(1), true),
            ("city", "own_category", gaps(2), true),
            ("plan", "own_category", gaps(3), true),
        ]
    );
    // The split as the server made it (same code, same seed).
    let core_spec = kiln_core::spec::JobSpec::from_proto(&spec).unwrap();
    let table = kiln_core::data::Table::from_csv(csv.as_bytes()).unwrap();
    let dataset =
        kiln_core::data::Dataset::from_table(&table, &core_spec.data, core_spec.task).unwrap();
    let split = kiln_core::prepare::prepare(&dataset, &core_spec.data)
        .report
        .split;
    let join = |rows: &[usize]| {
        rows.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let means = lines_f64(&python(
        IMPUTER,
        &[table_path.to_str().unwrap(), &join(&split.train)],
    ));
    for (fill, mean) in report.filled[..2].iter().zip(&means) {
        let ours: f64 = fill.value.parse().unwrap();
        assert!(
            (ours - mean).abs() < 1e-9,
            "{}: {ours} vs sklearn {mean}",
            fill.column
        );
    }

    // The served model's held-out metrics are scikit-learn's on its
    // predictions of the validation rows (sent as raw text rows, gaps and all).
    let text_rows = |idx: &[usize]| {
        idx.iter()
            .map(|&r| pb::TextRow {
                cells: rows[r][..5].to_vec(),
            })
            .collect::<Vec<_>>()
    };
    let answer = server
        .inference()
        .await
        .predict(pb::PredictRequest {
            model: "churn".into(),
            text_rows: text_rows(&split.validation),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let truth: Vec<String> = split
        .validation
        .iter()
        .map(|&r| u8::from(rows[r][5] == "yes").to_string())
        .collect();
    assert_eq!(
        truth.iter().filter(|t| *t == "1").count(),
        POSITIVES / 5,
        "stratified"
    );
    let probabilities: Vec<String> = answer
        .predictions
        .iter()
        .map(|p| format!("{:?}", p.probabilities[1]))
        .collect();
    let threshold = done.decision_threshold.expect("tuned for F1");
    assert_eq!(job.decision_threshold, Some(threshold));
    let threshold_text = threshold.to_string();
    let answer_lines = python(
        METRICS,
        &[&truth.join(","), &probabilities.join(","), &threshold_text],
    );
    let lines: Vec<&str> = answer_lines.lines().collect();
    let sklearn = lines_f64(&lines[..5].join("\n"));
    let confusion: Vec<u64> = lines[5]
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect();
    let best_f1: f64 = lines[6].parse().unwrap();
    // The served confusion matrix is sklearn's at the served threshold, the
    // threshold reaches precision_recall_curve's best F1, and Predict's
    // classes follow it.
    let matrix = done.confusion_matrix.clone().expect("a confusion matrix");
    assert_eq!(matrix.labels, ["no", "yes"]);
    assert_eq!(matrix.counts, confusion);
    assert_eq!(job.confusion_matrix, Some(matrix));
    let [_, fp, fn_, tp] = confusion[..] else {
        panic!("{confusion:?}")
    };
    let f1 = 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64;
    assert!(
        (f1 - best_f1).abs() < 1e-9,
        "F1 {f1} at {threshold}; best {best_f1}"
    );
    for p in &answer.predictions {
        let yes = p.probabilities[1] >= threshold;
        assert_eq!(p.class_label, if yes { "yes" } else { "no" }, "{p:?}");
    }
    let best = done.best.clone().unwrap();
    let served = [
        ("val_roc_auc", best.val_roc_auc),
        ("val_pr_auc", best.val_pr_auc),
        ("val_log_loss", best.val_log_loss),
        ("val_f1", best.val_f1),
        ("val_balanced_accuracy", best.val_balanced_accuracy),
    ];
    for ((name, ours), theirs) in served.into_iter().zip(&sklearn) {
        let ours = ours.unwrap_or_else(|| panic!("{name} is reported"));
        assert!(
            (ours - theirs).abs() < 1e-5,
            "{name}: {ours} vs sklearn {theirs}"
        );
    }
    assert!(
        best.val_roc_auc.unwrap() > 0.8,
        "the model learned: {best:?}"
    );
    println!("data report: {report:?}");
    println!(
        "held out (epoch {} of {}): {served:?}; sklearn {sklearn:?}; \
         F1 threshold {threshold}: confusion {confusion:?} (F1 {f1})",
        best.epoch, done.epochs_completed
    );

    // Predict from every client on rows with gaps, and one unseen city.
    let mut sample: Vec<String> = csv.lines().take(31).map(str::to_string).collect();
    sample[1] = "41,,atlantis,NA,12,no".into();
    let sample = sample.join("\n") + "\n";
    let sample_path = write(&dir, "sample.csv", &sample);

    let client = kiln_client::Client::connect(server.url()).await.unwrap();
    let mut rust = Vec::new();
    client
        .predict_csv("churn", "", sample.as_bytes())
        .await
        .unwrap()
        .write_csv(&mut rust)
        .unwrap();
    let rust = String::from_utf8(rust).unwrap();
    let cli = Command::new(cli_binary())
        .args(["--server", &server.url(), "predict", "churn", "--csv"])
        .arg(&sample_path)
        .output()
        .expect("run kiln");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let cli = String::from_utf8(cli.stdout).unwrap();
    let python_sdk = python(SDK_PREDICT, &[&server.addr, sample_path.to_str().unwrap()]);
    let grpcurl = grpcurl_predict(&server, &sample);

    let reference = p_yes(&rust);
    assert_eq!(reference.len(), 30);
    for (name, answer) in [
        ("cli", p_yes(&cli)),
        ("python", p_yes(&python_sdk)),
        ("grpcurl", grpcurl),
    ] {
        assert_eq!(answer.len(), reference.len(), "{name}");
        for (row, (ours, theirs)) in reference.iter().zip(&answer).enumerate() {
            assert_eq!(ours.0, theirs.0, "{name}: class of row {row}");
            assert!(
                (ours.1 - theirs.1).abs() < 1e-6,
                "{name}: row {row}: {} vs {}",
                ours.1,
                theirs.1
            );
        }
    }

    // The fills, the unseen-category rule and the threshold travel in the
    // exported file: an imported copy answers the rows with gaps alike.
    let file = export_model(&server, "churn").await;
    server
        .inference()
        .await
        .import_model(tokio_stream::iter([pb::ImportModelRequest {
            name: "churn-copy".into(),
            chunk: file,
        }]))
        .await
        .unwrap();
    let mut copy = Vec::new();
    client
        .predict_csv("churn-copy", "", sample.as_bytes())
        .await
        .unwrap()
        .write_csv(&mut copy)
        .unwrap();
    for (row, (ours, theirs)) in reference
        .iter()
        .zip(p_yes(&String::from_utf8(copy).unwrap()))
        .enumerate()
    {
        assert_eq!(ours.0, theirs.0, "copy: class of row {row}");
        assert!((ours.1 - theirs.1).abs() < 1e-6, "copy: row {row}");
    }

    // Four requests met the unseen city; each counted it (the copy's own
    // request counts under its name).
    let (_, _, metrics) = http_get(&metrics_addr, "/metrics");
    assert!(
        metrics.contains("kiln_unseen_categories_total{model=\"churn\"} 4"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("unseen"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(dataset_id.starts_with("ds-"), "{dataset_id}");
}

/// Predict with grpcurl and text rows in JSON: (class, P(yes)) per row.
fn grpcurl_predict(server: &Server, sample: &str) -> Vec<(String, f64)> {
    let rows: Vec<Value> = csv_rows(sample.as_bytes())
        .into_iter()
        .map(|r| serde_json::json!({ "cells": r[..5] }))
        .collect();
    let request = serde_json::json!({ "model": "churn", "textRows": rows }).to_string();
    let out = crate::grpcurl::grpcurl(
        server,
        &["-d", "@", "kiln.v1.InferenceService/Predict"],
        Some(request.as_bytes()),
    );
    let answer: Value = serde_json::from_str(&out).unwrap();
    answer["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["classLabel"].as_str().unwrap().to_string(),
                p["probabilities"][1].as_f64().unwrap(),
            )
        })
        .collect()
}
