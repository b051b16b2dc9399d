//! Every job writes a TensorBoard event log (config key `tensorboard_dir`),
//! read back with PyPI `tensorboard`'s own readers
//! (crates/kiln-tensorboard/tests/read_events.py: EventAccumulator per run,
//! the HParams plugin's `/experiment` and `/session_groups` for a log dir) and
//! compared with the job's epoch events.
//!
//! Needs the Python at `$KILN_PYTHON`, else the cache venv's, with
//! `tensorboard` installed (scripts/setup.sh, run by `make test`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::v1 as pb;
use kiln_testkit::*;
use serde_json::{json, Value};

/// The hparams every run logs, before its `label.<key>` ones.
const HPARAMS: [&str; 13] = [
    "task",
    "optimizer",
    "learning_rate",
    "weight_decay",
    "batch_size",
    "epochs",
    "hidden_layers",
    "activation",
    "dropout",
    "batch_norm",
    "loss",
    "lr_schedule",
    "seed",
];
const METRICS: [&str; 11] = [
    "loss/train",
    "loss/val",
    "metrics/val_accuracy",
    "metrics/val_log_loss",
    "metrics/val_roc_auc",
    "metrics/val_pr_auc",
    "metrics/val_f1",
    "metrics/val_balanced_accuracy",
    "metrics/val_mae",
    "metrics/val_rmse",
    "metrics/val_r2",
];

/// Runs read_events.py on `logdir` for `runs`, failing (not skipping) when
/// Python or its `tensorboard` package is missing.
fn read_with_tensorboard(logdir: &Path, runs: &[String]) -> Value {
    let py = venv_tool("KILN_PYTHON", "python");
    let check = Command::new(&py)
        .args(["-c", "import tensorboard"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}. Run scripts/setup.sh", py.display()));
    assert!(
        check.status.success(),
        "{} lacks the `tensorboard` package: run scripts/setup.sh (make test does).\n{}",
        py.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    let script = repo_root().join("crates/kiln-tensorboard/tests/read_events.py");
    let out = Command::new(&py)
        .arg(script)
        .arg(logdir)
        .args(runs)
        .output()
        .expect("run read_events.py");
    assert!(
        out.status.success(),
        "read_events.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("read_events.py printed JSON")
}

/// A small inline job: binary (`y = x1 > x2`) or regression (`y = 2 x1 - x2`).
fn job(
    model_name: &str,
    task: pb::Task,
    learning_rate: f64,
    labels: &[(&str, &str)],
) -> pb::JobSpec {
    let rows = (0..48)
        .map(|i| {
            let x1 = ((i * 7) % 11) as f64 / 11.0;
            let x2 = ((i * 5) % 13) as f64 / 13.0;
            let y = match task {
                pb::Task::Regression => 2.0 * x1 - x2,
                _ => (x1 > x2) as i32 as f64,
            };
            pb::Row {
                values: vec![x1, x2, y],
            }
        })
        .collect();
    pb::JobSpec {
        model_name: model_name.into(),
        task: task as i32,
        data: Some(pb::DataSpec {
            source: Some(pb::data_spec::Source::Inline(pb::InlineData {
                columns: vec!["x1".into(), "x2".into(), "y".into()],
                rows,
            })),
            target_columns: vec!["y".into()],
            ..Default::default()
        }),
        model: Some(pb::ModelSpec {
            hidden_layers: vec![
                pb::HiddenLayer {
                    dropout: 0.125,
                    ..layer(8)
                },
                layer(4),
            ],
            ..Default::default()
        }),
        training: Some(pb::TrainingSpec {
            optimizer: Some(pb::Optimizer {
                learning_rate: Some(learning_rate),
                ..Default::default()
            }),
            epochs: 3,
            batch_size: 8,
            seed: 7,
            ..Default::default()
        }),
        device: pb::Device::Cpu as i32,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// Submits `spec`, waits for it to succeed, and returns its id and epochs.
async fn train(server: &Server, spec: pb::JobSpec) -> (String, Vec<pb::EpochMetrics>) {
    let id = submit(server, spec).await.expect("submit").id;
    let events = watch_all(server, &id).await;
    finished(&events);
    let epochs = epochs(&events);
    assert_eq!(epochs.len(), 3);
    (id, epochs)
}

/// TensorBoard stores scalars as f32, and the reader's JSON widens them to
/// f64 (serde_json may parse that back 1 ulp off): compare them as f32.
fn f32_of(v: f64) -> f32 {
    v as f32
}

fn scalars(run: &Value, tag: &str) -> Vec<(i64, f64)> {
    run["scalars"][tag]
        .as_array()
        .unwrap_or_else(|| panic!("no scalar {tag}: {:?}", run["tags"]))
        .iter()
        .map(|e| (e[0].as_i64().unwrap(), e[1].as_f64().unwrap()))
        .collect()
}

fn assert_scalars(run: &Value, tag: &str, want: impl Iterator<Item = f64>) {
    let want: Vec<(i64, f32)> = want
        .enumerate()
        .map(|(i, v)| (i as i64 + 1, f32_of(v)))
        .collect();
    let got: Vec<(i64, f32)> = scalars(run, tag)
        .into_iter()
        .map(|(s, v)| (s, f32_of(v)))
        .collect();
    assert_eq!(got, want, "{tag}");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn jobs_write_tensorboard_logs() {
    let tb = temp_dir("tensorboard-test");
    let server = Server::start_with(&[("KILN_TENSORBOARD_DIR", tb.to_str().unwrap())]);

    // A plain job: its run is <tensorboard_dir>/<model_name>/<job id>.
    let (id, epochs) = train(
        &server,
        job(
            "tb-binary",
            pb::Task::BinaryClassification,
            0.01,
            &[("owner", "tests")],
        ),
    )
    .await;
    // Two sweep trials with different learning rates: <tensorboard_dir>/sweep-<id>/<job id>.
    let sweep = [("sweep", "s1")];
    let (trial0, trial0_epochs) = train(
        &server,
        job("s1-trial-0", pb::Task::Regression, 0.01, &sweep),
    )
    .await;
    let (trial1, _) = train(
        &server,
        job("s1-trial-1", pb::Task::Regression, 0.05, &sweep),
    )
    .await;

    let mut dirs: Vec<String> = walk(&tb)
        .iter()
        .filter(|p| p.to_string_lossy().contains("tfevents"))
        .map(|p| {
            let rel = p.parent().unwrap().strip_prefix(&tb).unwrap();
            rel.to_string_lossy().into_owned()
        })
        .collect();
    dirs.sort();
    let mut want_dirs = vec![
        format!("tb-binary/{id}"),
        format!("sweep-s1/{trial0}"),
        format!("sweep-s1/{trial1}"),
    ];
    want_dirs.sort();
    assert_eq!(dirs, want_dirs, "one event file per job, in its run dir");

    // The plain job, through EventAccumulator.
    let run_name = format!("tb-binary/{id}");
    let read = read_with_tensorboard(&tb, std::slice::from_ref(&run_name));
    let run = &read["runs"][&run_name];
    let tags: Vec<&str> = run["tags"]["scalars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for tag in [
        "loss/train",
        "loss/val",
        "metrics/val_accuracy",
        "metrics/val_log_loss",
        "metrics/val_roc_auc",
        "metrics/val_pr_auc",
        "metrics/val_f1",
        "metrics/val_balanced_accuracy",
        "optimizer/learning_rate",
        "time/epoch_seconds",
        "time/samples_per_second",
        "gradients/grad_norm/hidden1",
        "gradients/grad_norm/hidden2",
        "gradients/grad_norm/output",
        "gradients/weight_norm/hidden1",
        "gradients/update_ratio/output",
        "gradients/dead_fraction/hidden1",
    ] {
        assert!(tags.contains(&tag), "no {tag} in {tags:?}");
    }
    for absent in ["metrics/val_mae", "optimizer/momentum"] {
        assert!(!tags.contains(&absent), "{absent} logged for a binary job");
    }
    assert_scalars(run, "loss/train", epochs.iter().map(|e| e.train_loss));
    assert_scalars(run, "loss/val", epochs.iter().map(|e| e.val_loss));
    assert_scalars(
        run,
        "metrics/val_accuracy",
        epochs.iter().map(|e| e.val_accuracy.unwrap()),
    );
    assert_scalars(
        run,
        "metrics/val_roc_auc",
        epochs.iter().map(|e| e.val_roc_auc.unwrap()),
    );
    assert_scalars(
        run,
        "optimizer/learning_rate",
        epochs.iter().map(|e| e.learning_rate),
    );
    assert_scalars(
        run,
        "time/epoch_seconds",
        epochs.iter().map(|e| e.epoch_seconds),
    );
    let layer = |e: &pb::EpochMetrics, name: &str| -> pb::LayerHealth {
        e.gradient_health
            .as_ref()
            .expect("gradient health")
            .layers
            .iter()
            .find(|l| l.layer == name)
            .unwrap()
            .clone()
    };
    assert_scalars(
        run,
        "gradients/grad_norm/hidden1",
        epochs.iter().map(|e| layer(e, "hidden1").grad_norm),
    );
    assert_scalars(
        run,
        "gradients/update_ratio/output",
        epochs.iter().map(|e| layer(e, "output").update_ratio),
    );

    let hp = &run["hparams"];
    let exp = &hp["_hparams_/experiment"];
    let names: Vec<&str> = exp["hparam_infos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[0].as_str().unwrap())
        .collect();
    let mut want_names = HPARAMS.to_vec();
    want_names.push("label.owner");
    assert_eq!(names, want_names);
    let metric_tags: Vec<&str> = exp["metric_tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[1].as_str().unwrap())
        .collect();
    assert_eq!(metric_tags, METRICS);
    let start = &hp["_hparams_/session_start_info"]["hparams"];
    let value = |k: &str| start[k]["value"].clone();
    let want = [
        ("task", json!("binary")),
        ("optimizer", json!("adam")),
        ("learning_rate", json!(0.01)),
        ("weight_decay", json!(0.0)),
        ("batch_size", json!(8.0)),
        ("epochs", json!(3.0)),
        ("hidden_layers", json!("8-4")),
        ("activation", json!("relu")),
        ("dropout", json!(0.125)),
        ("batch_norm", json!(false)),
        ("loss", json!("binary_cross_entropy")),
        ("lr_schedule", json!("constant")),
        ("seed", json!(7.0)),
        ("label.owner", json!("tests")),
    ];
    for (k, v) in want {
        assert_eq!(value(k), v, "hparam {k}: {start}");
    }
    assert_eq!(
        hp["_hparams_/session_end_info"]["status"],
        json!("STATUS_SUCCESS")
    );

    // The sweep as TensorBoard's HParams tab sees it.
    let sweep_dir = tb.join("sweep-s1");
    let read = read_with_tensorboard(&sweep_dir, &[trial0.clone(), trial1.clone()]);
    let trial_run = &read["runs"][&trial0];
    assert_scalars(
        trial_run,
        "loss/val",
        trial0_epochs.iter().map(|e| e.val_loss),
    );
    assert_scalars(
        trial_run,
        "metrics/val_mae",
        trial0_epochs.iter().map(|e| e.val_mae.unwrap()),
    );
    let exp = &read["plugin"]["experiment"];
    let mut names: Vec<&str> = exp["hparamInfos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    names.sort();
    let mut want_names = HPARAMS.to_vec();
    want_names.push("label.sweep");
    want_names.sort();
    assert_eq!(names, want_names);
    let groups = read["plugin"]["session_groups"]["sessionGroups"]
        .as_array()
        .unwrap();
    let lrs: HashMap<&str, f64> = groups
        .iter()
        .map(|g| {
            assert_eq!(g["sessions"][0]["status"], json!("STATUS_SUCCESS"), "{g}");
            assert_eq!(g["hparams"]["label.sweep"], json!("s1"), "{g}");
            (
                g["name"].as_str().unwrap(),
                g["hparams"]["learning_rate"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        lrs,
        HashMap::from([(trial0.as_str(), 0.01), (trial1.as_str(), 0.05)]),
        "{groups:?}"
    );
    // Each group's val_mae is the trial's last epoch's.
    let group0 = groups.iter().find(|g| g["name"] == json!(trial0)).unwrap();
    let mae = group0["metricValues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"]["tag"] == json!("metrics/val_mae"))
        .expect("val_mae metric");
    assert_eq!(
        f32_of(mae["value"].as_f64().unwrap()),
        f32_of(trial0_epochs[2].val_mae.unwrap())
    );
    assert_eq!(mae["trainingStep"], json!(3));

    drop(server);
    std::fs::remove_dir_all(&tb).unwrap();
}

#[tokio::test]
async fn tensorboard_dir_defaults_under_data_dir_and_empty_turns_it_off() {
    let server = Server::start();
    let (id, _) = train(&server, job("tb-default", pb::Task::Regression, 0.01, &[])).await;
    let run = server.data_dir.join("tensorboard/tb-default").join(&id);
    assert!(
        walk(&run)
            .iter()
            .any(|p| p.to_string_lossy().contains("tfevents")),
        "no event file in {}",
        run.display()
    );
    drop(server);

    let server = Server::start_with(&[("KILN_TENSORBOARD_DIR", "")]);
    train(&server, job("tb-off", pb::Task::Regression, 0.01, &[])).await;
    let written: Vec<PathBuf> = walk(&server.data_dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("tfevents"))
        .collect();
    assert!(written.is_empty(), "logging is off, yet {written:?}");
    assert!(!server.data_dir.join("tensorboard").exists());
}

/// Every file under `dir` (none when it does not exist).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
