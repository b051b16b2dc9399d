//! End to end: the `kiln` binary against a real kiln-server (started by
//! `kiln_testkit::Server`: a free port, its own data directory, one torch
//! thread).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_testkit::{repo_root, temp_dir, Server};

/// Runs `kiln --server <the server> args...`.
trait RunKiln {
    fn kiln(&self, args: &[&str]) -> Output;
}

impl RunKiln for Server {
    fn kiln(&self, args: &[&str]) -> Output {
        kiln(&[&["--server", &self.url()], args].concat())
    }
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env_remove("KILN_SERVER")
        .env_remove("KILN_TOKEN")
        .output()
        .expect("run kiln")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// The one line a failing command prints.
fn error_line(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got:\n{}",
        stdout(out)
    );
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    lines[0].to_string()
}

/// examples/rings.yaml with 3 epochs and its own model name.
fn short_rings_job(dir: &Path, model: &str) -> PathBuf {
    let yaml = std::fs::read_to_string(repo_root().join("examples/rings.yaml")).unwrap();
    assert!(yaml.contains("epochs: 60") && yaml.contains("modelName: rings"));
    let yaml = yaml
        .replace("epochs: 60", "epochs: 3")
        .replace("modelName: rings", &format!("modelName: {model}"));
    let path = dir.join("rings.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn submit_watch_list_and_predict() {
    let server = Server::start();
    let dir = temp_dir("job");
    let job_file = short_rings_job(&dir, "cli-rings");

    let out = server.kiln(&["submit", job_file.to_str().unwrap(), "--watch"]);
    assert_ok(&out, "kiln submit --watch");
    let summary = stdout(&out);
    let field = |name: &str| -> String {
        summary
            .lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {name:?} in the summary:\n{summary}"))
    };
    assert_eq!(field("state"), "SUCCEEDED", "{summary}");
    let job_id = field("job");
    assert!(job_id.starts_with("job-"), "{summary}");
    assert_eq!(field("epochs"), "3/3", "{summary}");
    assert!(!field("best epoch").is_empty());
    assert!(!field("val_accuracy").is_empty());
    assert_eq!(field("model"), "cli-rings version 1", "{summary}");
    // Without a terminal the progress comes as one line per event.
    let progress = stderr(&out);
    assert!(progress.contains("epoch 3/3"), "{progress}");
    assert!(progress.contains("finished"), "{progress}");

    let out = server.kiln(&["jobs"]);
    assert_ok(&out, "kiln jobs");
    let jobs = stdout(&out);
    let line = jobs
        .lines()
        .find(|l| l.starts_with(&job_id))
        .unwrap_or_else(|| panic!("{job_id} not listed:\n{jobs}"));
    assert!(
        line.contains("cli-rings") && line.contains("SUCCEEDED"),
        "{jobs}"
    );

    let out = server.kiln(&["models"]);
    assert_ok(&out, "kiln models");
    let models = stdout(&out);
    assert!(
        models
            .lines()
            .any(|l| l.starts_with("cli-rings ") && l.contains(&job_id)),
        "{models}"
    );

    // Columns by name, in any order; the label column is ignored.
    let csv = dir.join("rows.csv");
    std::fs::write(&csv, "label,y,x\n0,0.0,1.0\n1,2.2,0.0\n1,-2.1,0.3\n").unwrap();
    let out = server.kiln(&["predict", "cli-rings", "--csv", csv.to_str().unwrap()]);
    assert_ok(&out, "kiln predict");
    let predictions = stdout(&out);
    let lines: Vec<&str> = predictions.lines().collect();
    assert_eq!(lines[0], "class,p_0,p_1", "{predictions}");
    assert_eq!(lines.len(), 4, "{predictions}");
    for line in &lines[1..] {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), 3, "{predictions}");
        assert!(cells[0] == "0" || cells[0] == "1", "{predictions}");
        let p: f64 = cells[1].parse::<f64>().unwrap() + cells[2].parse::<f64>().unwrap();
        assert!((p - 1.0).abs() < 1e-5, "{predictions}");
    }

    // A file larger than one request (4096 rows) is sent in chunks, and the
    // answers come back whole and in order.
    let big = dir.join("big.csv");
    let rows: String = (0..10_002)
        .map(|i| ["0,0.0,1.0\n", "1,2.2,0.0\n", "1,-2.1,0.3\n"][i % 3])
        .collect();
    std::fs::write(&big, format!("label,y,x\n{rows}")).unwrap();
    let requests = || {
        let models = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(kiln_testkit::list_models(&server));
        let model = models.iter().find(|m| m.name == "cli-rings").unwrap();
        model.stats.as_ref().map_or(0, |s| s.requests)
    };
    let before = requests();
    let out = server.kiln(&["predict", "cli-rings", "--csv", big.to_str().unwrap()]);
    assert_ok(&out, "kiln predict of 10002 rows");
    assert_eq!(requests() - before, 3, "4096 + 4096 + 1810 rows");
    let all = stdout(&out);
    let all: Vec<&str> = all.lines().collect();
    assert_eq!(all.len(), 10_003);
    let cells = |line: &str| -> Vec<String> { line.split(',').map(str::to_string).collect() };
    for (i, line) in all[1..].iter().enumerate() {
        let (got, want) = (cells(line), cells(lines[1 + i % 3]));
        assert_eq!(got[0], want[0], "row {i}: {line}");
        let p = |c: &[String]| c[2].parse::<f64>().unwrap();
        assert!(
            (p(&got) - p(&want)).abs() < 1e-5,
            "row {i}: {line} vs {}",
            lines[1 + i % 3]
        );
    }

    // The same by job id, and by version; a version that does not exist is NOT_FOUND.
    let out = server.kiln(&["predict", &job_id, "--csv", csv.to_str().unwrap()]);
    assert_ok(&out, "kiln predict by job id");
    assert_eq!(stdout(&out), predictions);
    let out = server.kiln(&[
        "predict",
        "cli-rings",
        "--csv",
        csv.to_str().unwrap(),
        "--version",
        "1",
    ]);
    assert_ok(&out, "kiln predict --version 1");
    assert_eq!(stdout(&out), predictions);
    let out = server.kiln(&[
        "predict",
        "cli-rings",
        "--csv",
        csv.to_str().unwrap(),
        "--version",
        "9",
    ]);
    assert!(error_line(&out).contains("NOT_FOUND"));

    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_job_file_is_one_line_naming_the_field() {
    let dir = temp_dir("bad");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "spec:\n  modelName: x\n  training:\n    epochz: 3\n").unwrap();
    // The file is read before connecting, so no server is needed.
    let out = kiln(&[
        "--server",
        "http://127.0.0.1:9",
        "submit",
        bad.to_str().unwrap(),
    ]);
    let line = error_line(&out);
    assert!(line.contains("epochz"), "{line}");
    assert!(line.contains("spec.training"), "{line}");

    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"spec": {"task": "TASK_CLUSTERING"}}"#).unwrap();
    let out = kiln(&["submit", bad.to_str().unwrap()]);
    let line = error_line(&out);
    assert!(
        line.contains("spec.task") && line.contains("TASK_CLUSTERING"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn server_errors_carry_the_status_code() {
    let server = Server::start();
    let out = server.kiln(&["cancel", "job-does-not-exist"]);
    let line = error_line(&out);
    assert!(line.contains("NOT_FOUND"), "{line}");
    assert!(line.contains("job-does-not-exist"), "{line}");

    let out = server.kiln(&["watch", "job-does-not-exist"]);
    assert!(error_line(&out).contains("NOT_FOUND"));

    // A job the server rejects: INVALID_ARGUMENT with the server's message.
    let dir = temp_dir("invalid");
    let job = dir.join("job.json");
    std::fs::write(&job, r#"{"spec": {"modelName": "x"}}"#).unwrap();
    let out = server.kiln(&["submit", job.to_str().unwrap()]);
    assert!(error_line(&out).contains("INVALID_ARGUMENT"));
    let _ = std::fs::remove_dir_all(&dir);

    // Nothing listening: one line, no panic.
    drop(server);
    let out = kiln(&["--server", "http://127.0.0.1:9", "jobs"]);
    assert!(error_line(&out).contains("cannot connect"));
}

#[test]
fn datasets_upload_and_list() {
    let server = Server::start();
    let csv = repo_root().join("examples/spirals.csv");
    let out = server.kiln(&[
        "datasets",
        "upload",
        csv.to_str().unwrap(),
        "--name",
        "spirals",
    ]);
    assert_ok(&out, "kiln datasets upload");
    let uploaded = stdout(&out);
    assert!(
        uploaded.contains("spirals") && uploaded.contains("900"),
        "{uploaded}"
    );
    let out = server.kiln(&["datasets", "list"]);
    assert_ok(&out, "kiln datasets list");
    assert!(stdout(&out).contains("x,y,arm"), "{}", stdout(&out));
}

#[test]
fn sweep_submit_watch_get_and_compare() {
    let server = Server::start();
    let dir = temp_dir("sweep");
    let yaml = std::fs::read_to_string(repo_root().join("examples/sweep.yaml")).unwrap();
    assert!(yaml.contains("epochs: 30"));
    let file = dir.join("sweep.yaml");
    std::fs::write(&file, yaml.replace("epochs: 30", "epochs: 3")).unwrap();

    let out = server.kiln(&["sweep", "submit", file.to_str().unwrap(), "--watch"]);
    assert_ok(&out, "kiln sweep submit --watch");
    let text = stdout(&out);
    assert!(
        text.contains("SUCCEEDED") && text.contains("rings-sweep"),
        "{text}"
    );
    let header = text
        .lines()
        .find(|l| l.starts_with("RANK"))
        .expect("a leaderboard");
    assert!(
        header.contains("learning_rate") && header.contains("VAL_ACCURACY"),
        "{header}"
    );
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("RANK"))
        .skip(1)
        .collect();
    assert_eq!(rows.len(), 6, "{text}");
    assert!(rows[0].starts_with("1 "), "{text}");
    assert!(stderr(&out).contains("trial 6 started"), "{}", stderr(&out));
    let sweep_id = text.split_whitespace().nth(1).unwrap().to_string();
    assert!(sweep_id.starts_with("sweep-"), "{text}");

    let got = server.kiln(&["sweep", "get", &sweep_id]);
    assert_ok(&got, "kiln sweep get");
    assert_eq!(stdout(&got), text);

    let jobs: Vec<&str> = rows
        .iter()
        .map(|r| r.split_whitespace().nth(2).unwrap())
        .collect();
    let compared = server.kiln(&["compare", jobs[0], jobs[5]]);
    assert_ok(&compared, "kiln compare");
    let table = stdout(&compared);
    assert!(table.contains("labels.trial"), "{table}");
    assert!(table.contains("epoch 1 val_loss"), "{table}");

    let listed = server.kiln(&["jobs", "--sweep", &sweep_id, "--order-by", "-val_accuracy"]);
    assert_ok(&listed, "kiln jobs --sweep");
    assert_eq!(stdout(&listed).lines().count(), 7, "{}", stdout(&listed));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server with an auth token: the CLI sends `--token` or `KILN_TOKEN`;
/// without it, one UNAUTHENTICATED line and exit code 1.
#[test]
fn the_token_comes_from_the_flag_or_kiln_token() {
    let server = Server::start_with(&[("KILN_AUTH_TOKEN", "cli-secret")]);
    let without = server.kiln(&["jobs"]);
    assert_eq!(without.status.code(), Some(1));
    let err = String::from_utf8_lossy(&without.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("UNAUTHENTICATED") && err.lines().count() == 1,
        "{err}"
    );
    let flag = server.kiln(&["--token", "cli-secret", "jobs"]);
    assert!(
        flag.status.success(),
        "{}",
        String::from_utf8_lossy(&flag.stderr)
    );
    let env = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["--server", &format!("http://{}", server.addr), "jobs"])
        .env("KILN_TOKEN", "cli-secret")
        .output()
        .unwrap();
    assert!(
        env.status.success(),
        "{}",
        String::from_utf8_lossy(&env.stderr)
    );
}

#[test]
fn predict_dataset_and_evaluate_score_on_the_server() {
    let server = Server::start();
    let dir = temp_dir("score");
    let job_file = short_rings_job(&dir, "cli-score");
    let out = server.kiln(&["submit", job_file.to_str().unwrap(), "--watch"]);
    assert_ok(&out, "kiln submit --watch");

    // A table with the label (some rows without), columns in another order.
    let mut rows = String::from("label,y,x\n");
    for i in 0..50 {
        let (x, y) = ((i % 9) as f64 / 3.0 - 1.5, (i % 7) as f64 / 2.0 - 1.5);
        let label = match i {
            3 => String::new(),
            _ => ((x * x + y * y > 1.5) as u8).to_string(),
        };
        rows.push_str(&format!("{label},{y},{x}\n"));
    }
    let csv = dir.join("table.csv");
    std::fs::write(&csv, &rows).unwrap();
    let out = server.kiln(&["datasets", "upload", csv.to_str().unwrap(), "--name", "t"]);
    assert_ok(&out, "kiln datasets upload");

    let out = server.kiln(&["predict", "cli-score", "--csv", csv.to_str().unwrap()]);
    assert_ok(&out, "kiln predict --csv");
    let online = stdout(&out);
    assert!(online.starts_with("class,p_0,p_1\n"), "{online}");
    let out = server.kiln(&["predict", "cli-score", "--dataset", "t"]);
    assert_ok(&out, "kiln predict --dataset");
    assert_eq!(stdout(&out), online);
    assert!(stderr(&out).contains("scored 50 rows"), "{}", stderr(&out));

    // -o writes the file; the stored predictions download by id.
    let file = dir.join("scores.csv");
    let out = server.kiln(&[
        "predict",
        "cli-score",
        "--dataset",
        "t",
        "--version",
        "1",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_ok(&out, "kiln predict --dataset -o");
    assert!(stdout(&out).is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), online);
    let out = server.kiln(&["datasets", "download", "cli-score-v1-scores"]);
    assert_ok(&out, "kiln datasets download");
    assert_eq!(stdout(&out), online);

    let out = server.kiln(&["evaluate", "cli-score", "--dataset", "t"]);
    assert_ok(&out, "kiln evaluate");
    let report = stdout(&out);
    for name in [
        "accuracy",
        "log_loss",
        "roc_auc",
        "pr_auc",
        "f1",
        "balanced_accuracy",
        "confusion matrix",
    ] {
        assert!(report.contains(name), "no {name} in:\n{report}");
    }
    let evaluated = report
        .lines()
        .find_map(|l| l.strip_prefix("rows evaluated"))
        .map(str::trim);
    assert_eq!(evaluated, Some("49"), "{report}");

    // Nothing to evaluate without the target; a missing input column is named.
    std::fs::write(&csv, "x,y\n1,2\n").unwrap();
    let out = server.kiln(&["datasets", "upload", csv.to_str().unwrap(), "--name", "u"]);
    assert_ok(&out, "kiln datasets upload");
    let line = error_line(&server.kiln(&["evaluate", "cli-score", "--dataset", "u"]));
    assert!(line.contains("no target column"), "{line}");
    std::fs::write(&csv, "x\n1\n").unwrap();
    let out = server.kiln(&["datasets", "upload", csv.to_str().unwrap(), "--name", "v"]);
    assert_ok(&out, "kiln datasets upload");
    let line = error_line(&server.kiln(&["predict", "cli-score", "--dataset", "v"]));
    assert!(
        line.contains("INVALID_ARGUMENT") && line.contains("\"y\""),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
