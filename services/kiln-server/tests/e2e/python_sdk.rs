//! The Python SDK (sdk/python, `kiln_sdk`) end to end: its pytest suite runs
//! against the real server. scripts/setup.sh installs the SDK and pytest into
//! the cache's venv (KILN_PYTHON overrides which python runs it).

use std::process::{Command, Output};

use kiln_testkit::{repo_root, venv_tool, Server};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn python_sdk_pytest_suite() {
    let python = venv_tool("KILN_PYTHON", "python");
    let check = Command::new(&python)
        .args(["-c", "import kiln_sdk, pytest"])
        .output()
        .expect("run python");
    assert!(
        check.status.success(),
        "kiln_sdk or pytest is missing from {}: run scripts/setup.sh (make test does)\n{}",
        python.display(),
        text(&check)
    );

    let server = Server::start();
    let token = "sdk-test-token";
    let guarded = Server::start_with(&[("KILN_AUTH_TOKEN", token)]);
    let out = Command::new(&python)
        .args(["-m", "pytest", "sdk/python/tests", "-q"])
        // Report skips (they count as failures here); no .pytest_cache in the checkout.
        .args(["-rs", "-p", "no:cacheprovider"])
        .current_dir(repo_root())
        .env("KILN_ADDR", &server.addr)
        .env("KILN_AUTH_ADDR", &guarded.addr)
        .env("KILN_AUTH_TOKEN", token)
        .env_remove("KILN_TOKEN")
        .output()
        .expect("run pytest");
    let report = text(&out);
    assert!(out.status.success(), "pytest failed:\n{report}");
    assert!(
        report.contains(" passed") && !report.contains("skipped"),
        "pytest ran no tests or skipped some:\n{report}"
    );
    println!("{report}");
}

/// What the Python client runs: submits a job, prints its id, then waits
/// for it and prints the sequences it saw and the final state.
const WAIT_ACROSS_RESTART: &str = r#"
import json, sys
from kiln_sdk import Client
client = Client(sys.argv[1])
rows = [{"values": [i, i % 7]} for i in range(64)]
job = client.submit({
    "modelName": "resumed",
    "task": "TASK_REGRESSION",
    "data": {"inline": {"columns": ["x", "y"], "rows": rows}, "targetColumns": ["y"]},
    "model": {"hiddenLayers": [{"units": 8, "activation": "ACTIVATION_RELU"}]},
    "training": {"epochs": 1000, "batchSize": 8},
    "device": "DEVICE_CPU",
})
print(job.id, flush=True)
seen = []
final = client.wait(job.id, on_event=lambda e: seen.append(e.sequence), reconnect_seconds=120)
print(json.dumps({"sequences": seen, "state": final.state}), flush=True)
"#;

#[tokio::test]
async fn python_wait_resumes_across_a_server_restart() {
    use std::io::{BufRead, BufReader};
    let python = venv_tool("KILN_PYTHON", "python");
    let server = Server::start();
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    let mut client = Command::new(&python)
        .args(["-c", WAIT_ACROSS_RESTART, &server.addr])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let job_id = lines.next().expect("the job id").unwrap();
    // Observed, not assumed: the job is training when the server goes.
    kiln_testkit::wait_for_epoch(&server, &job_id).await;
    server.terminate();
    let data_dir = server.wait_exit_keeping_data(kiln_testkit::JOB_WAIT);
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start_in(data_dir, &[("KILN_LISTEN", listen.as_str())]);
    let report = lines.next().expect("the report").unwrap();
    assert!(client.wait().unwrap().success());
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let seen: Vec<u64> = report["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    let events = kiln_testkit::watch_all(&server, &job_id).await;
    let all: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(seen, all, "every event once, in order, across the restart");
    assert!(
        kiln_testkit::suspension(&events).is_some(),
        "the job was suspended by the shutdown"
    );
    assert_eq!(report["state"], 3, "SUCCEEDED");
}
