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
