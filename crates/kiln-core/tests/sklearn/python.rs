//! The venv's Python, running a script on text from stdin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_PYTHON") {
        return p.into();
    }
    let cache = match std::env::var_os("KILN_CACHE") {
        Some(cache) => PathBuf::from(cache),
        None => {
            let home = std::env::var_os("HOME").expect("HOME is not set (or set KILN_PYTHON)");
            Path::new(&home).join(".cache/kiln")
        }
    };
    cache.join("venv/bin/python")
}

/// What `script` prints given `input` on stdin; panics (the test fails) when
/// Python or scikit-learn is missing or the script fails.
pub fn run(script: &str, input: &str) -> String {
    let py = python();
    let check = Command::new(&py)
        .args(["-c", "import sklearn"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}. Run scripts/setup.sh (make test does), \
                 or point KILN_PYTHON at a Python with scikit-learn installed",
                py.display()
            )
        });
    assert!(
        check.status.success(),
        "{} has no scikit-learn: run scripts/setup.sh (make test does)\n{}",
        py.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    let mut child = Command::new(&py)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .expect("write the input");
    let out = child.wait_with_output().expect("run python");
    assert!(
        out.status.success(),
        "the scikit-learn script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
