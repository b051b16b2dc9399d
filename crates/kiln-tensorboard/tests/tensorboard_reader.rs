//! Writes a log dir of two runs with kiln-tensorboard, then reads it back with
//! PyPI `tensorboard`'s own readers (tests/read_events.py): EventAccumulator
//! per run, and the HParams plugin's `/experiment` and `/session_groups`
//! handlers for the whole log dir. Compares what they read with what was
//! written.
//!
//! Needs the Python at `$KILN_PYTHON`, else `~/.cache/kiln/venv/bin/python`,
//! with `tensorboard` installed (scripts/setup.sh, run by `make test`).

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_tensorboard::{EventWriter, HParamValue, SessionStatus};
use serde_json::{json, Value};

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_PYTHON") {
        return p.into();
    }
    let home = std::env::var_os("HOME").expect("HOME is not set (or set KILN_PYTHON)");
    Path::new(&home).join(".cache/kiln/venv/bin/python")
}

/// Runs the reader script, failing (not skipping) when Python or its
/// `tensorboard` package is missing.
fn read_with_tensorboard(logdir: &Path, runs: &[&str]) -> Value {
    let py = python();
    let check = Command::new(&py)
        .args(["-c", "import tensorboard; print(tensorboard.__version__)"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run Python {}: {e}. Run scripts/setup.sh (or `make test`), \
                 or point KILN_PYTHON at a Python with `tensorboard` installed",
                py.display()
            )
        });
    assert!(
        check.status.success(),
        "Python {} lacks the `tensorboard` package: run scripts/setup.sh \
         (or `{} -m pip install tensorboard`).\n{}",
        py.display(),
        py.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_events.py");
    let out = Command::new(&py)
        .arg(script)
        .arg(logdir)
        .args(runs)
        .output()
        .expect("run tests/read_events.py");
    assert!(
        out.status.success(),
        "read_events.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("read_events.py printed JSON")
}

struct Run {
    name: &'static str,
    hparams: Vec<(&'static str, HParamValue)>,
    loss: Vec<f32>,
    accuracy: Vec<f32>,
    status: SessionStatus,
}

#[test]
fn tensorboard_reads_scalars_and_hparams() {
    let logdir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kiln-tensorboard-reader-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&logdir);

    let n = 6;
    let runs = [
        Run {
            name: "lr_0.1",
            hparams: vec![
                ("lr", HParamValue::Number(0.1)),
                ("optimizer", HParamValue::Text("sgd".into())),
                ("nesterov", HParamValue::Bool(true)),
            ],
            // Includes 0.0 and a negative: both must survive.
            loss: vec![2.5, 1.25, 0.0, -0.5, 0.1, 1e-7],
            accuracy: (1..=n).map(|s| s as f32 / 10.0).collect(),
            status: SessionStatus::Success,
        },
        Run {
            name: "lr_0.01",
            hparams: vec![
                ("lr", HParamValue::Number(0.01)),
                ("optimizer", HParamValue::Text("adam".into())),
                ("nesterov", HParamValue::Bool(false)),
            ],
            loss: (1..=n).map(|s| 3.0 / s as f32).collect(),
            accuracy: (1..=n).map(|s| 0.5 + s as f32 / 100.0).collect(),
            status: SessionStatus::Failure,
        },
    ];

    let before = now();
    for run in &runs {
        let mut w = EventWriter::create(&logdir.join(run.name)).unwrap();
        w.hparams(&run.hparams, &["loss", "accuracy"]).unwrap();
        for (i, (loss, acc)) in run.loss.iter().zip(&run.accuracy).enumerate() {
            let step = i as i64 + 1;
            w.scalar("loss", step, *loss).unwrap();
            w.scalar("accuracy", step, *acc).unwrap();
        }
        w.session_end(run.status).unwrap();
        w.flush().unwrap();
    }
    let after = now();

    let names: Vec<&str> = runs.iter().map(|r| r.name).collect();
    let read = read_with_tensorboard(&logdir, &names);

    let status_name = |s: SessionStatus| match s {
        SessionStatus::Unknown => "STATUS_UNKNOWN",
        SessionStatus::Success => "STATUS_SUCCESS",
        SessionStatus::Failure => "STATUS_FAILURE",
        SessionStatus::Running => "STATUS_RUNNING",
    };
    let hparam_json = |v: &HParamValue| match v {
        HParamValue::Number(x) => json!({"kind": "number_value", "value": x}),
        HParamValue::Text(x) => json!({"kind": "string_value", "value": x}),
        HParamValue::Bool(x) => json!({"kind": "bool_value", "value": x}),
    };

    // Per run, through EventAccumulator.
    for run in &runs {
        let r = &read["runs"][run.name];
        assert_eq!(r["file_version"], json!(2.0), "{}", run.name);
        assert_eq!(
            r["tags"]["scalars"],
            json!(["accuracy", "loss"]),
            "{}",
            run.name
        );
        assert_eq!(
            r["tags"]["tensors"],
            json!([
                "_hparams_/experiment",
                "_hparams_/session_end_info",
                "_hparams_/session_start_info"
            ]),
            "{}",
            run.name
        );
        for (tag, values) in [("loss", &run.loss), ("accuracy", &run.accuracy)] {
            let got = r["scalars"][tag].as_array().unwrap();
            assert_eq!(got.len(), n, "{}/{tag}", run.name);
            for (i, (event, want)) in got.iter().zip(values.iter()).enumerate() {
                assert_eq!(
                    event[0].as_i64(),
                    Some(i as i64 + 1),
                    "{}/{tag} step",
                    run.name
                );
                // simple_value is f32; Python widens it exactly to f64.
                assert_eq!(
                    event[1].as_f64(),
                    Some(*want as f64),
                    "{}/{tag}@{i}",
                    run.name
                );
                let t = event[2].as_f64().unwrap();
                assert!(
                    before <= t && t <= after,
                    "wall_time {t} not in [{before}, {after}]"
                );
            }
        }

        let hp = &r["hparams"];
        let exp = &hp["_hparams_/experiment"];
        assert_eq!(exp["version"], json!(0));
        assert_eq!(
            exp["hparam_infos"],
            json!([
                ["lr", "DATA_TYPE_FLOAT64"],
                ["optimizer", "DATA_TYPE_STRING"],
                ["nesterov", "DATA_TYPE_BOOL"]
            ])
        );
        assert_eq!(exp["metric_tags"], json!([["", "loss"], ["", "accuracy"]]));
        let start = &hp["_hparams_/session_start_info"];
        assert_eq!(start["version"], json!(0));
        let want: serde_json::Map<String, Value> = run
            .hparams
            .iter()
            .map(|(k, v)| (k.to_string(), hparam_json(v)))
            .collect();
        assert_eq!(start["hparams"], Value::Object(want), "{}", run.name);
        let end = &hp["_hparams_/session_end_info"];
        assert_eq!(end["version"], json!(0));
        assert_eq!(
            end["status"],
            json!(status_name(run.status)),
            "{}",
            run.name
        );
    }

    // The whole log dir, through the HParams plugin (what its tab shows).
    let exp = &read["plugin"]["experiment"];
    let mut hparam_names: Vec<(&str, &str)> = exp["hparamInfos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i["type"].as_str().unwrap()))
        .collect();
    hparam_names.sort();
    assert_eq!(
        hparam_names,
        [
            ("lr", "DATA_TYPE_FLOAT64"),
            ("nesterov", "DATA_TYPE_BOOL"),
            ("optimizer", "DATA_TYPE_STRING")
        ]
    );
    let metric_tags: Vec<&str> = exp["metricInfos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"]["tag"].as_str().unwrap())
        .collect();
    assert_eq!(metric_tags, ["loss", "accuracy"]);

    let groups = read["plugin"]["session_groups"]["sessionGroups"]
        .as_array()
        .unwrap();
    assert_eq!(groups.len(), runs.len(), "{groups:?}");
    for run in &runs {
        let group = groups
            .iter()
            .find(|g| g["name"] == json!(run.name))
            .unwrap_or_else(|| panic!("no session group {}: {groups:?}", run.name));
        for (k, v) in &run.hparams {
            let want = match v {
                HParamValue::Number(x) => json!(x),
                HParamValue::Text(x) => json!(x),
                HParamValue::Bool(x) => json!(x),
            };
            assert_eq!(group["hparams"][k], want, "{} {k}", run.name);
        }
        let session = &group["sessions"][0];
        assert_eq!(session["name"], json!(run.name));
        assert_eq!(session["status"], json!(status_name(run.status)));
        // Each metric's value is the run's last scalar for that tag.
        for (tag, values) in [("loss", &run.loss), ("accuracy", &run.accuracy)] {
            let m = group["metricValues"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"]["tag"] == json!(tag))
                .unwrap_or_else(|| panic!("no metric {tag} in {group:?}"));
            assert_eq!(m["value"].as_f64(), Some(*values.last().unwrap() as f64));
            assert_eq!(m["trainingStep"].as_i64(), Some(n as i64));
        }
    }

    std::fs::remove_dir_all(&logdir).unwrap();
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
