//! What the integration tests share: the Python that has torch (and Keras),
//! running a reference script from tests/reference on a JSON request, small
//! deterministic data sets, and the lock on libtorch's generator.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// `$KILN_PYTHON`, else the venv behind `.libtorch`
/// (`<venv>/lib/python3.X/site-packages/torch`, linked by scripts/setup.sh).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_PYTHON") {
        return p.into();
    }
    let torch = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.libtorch");
    let torch = torch
        .canonicalize()
        .expect(".libtorch: run scripts/setup.sh first");
    torch.ancestors().nth(4).unwrap().join("bin/python")
}

/// Runs `tests/reference/<script>` with `request` on stdin and parses its
/// stdout as JSON.
pub fn run_reference<T: serde::de::DeserializeOwned>(
    script: &str,
    request: &serde_json::Value,
) -> T {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference")
        .join(script);
    let mut child = Command::new(python())
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script} failed");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{script} printed bad JSON: {e}"))
}

/// Deterministic values in [-1, 1) (an LCG), the same in every parity test.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `rows` rows of `inputs` (at least 3) pseudo-random features and a smooth
/// target with a little noise.
pub fn regression_data(rows: usize, inputs: usize, seed: u64) -> kiln_core::prepare::Split {
    let x = pseudo_random(rows * inputs, seed);
    let noise = pseudo_random(rows, seed + 1);
    let y = x
        .chunks(inputs)
        .zip(noise)
        .map(|(r, n)| r[0] * 2.0 - r[1] + 0.5 * r[2] * r[0] + 0.1 * n)
        .collect();
    kiln_core::prepare::Split {
        x,
        y: kiln_core::prepare::SplitTargets::Values(y),
        rows,
    }
}

/// A prepared regression problem on 4 unscaled features ("a".."d"):
/// `train_rows` training rows and 64 validation rows of [`regression_data`].
pub fn regression_prepared(train_rows: usize) -> kiln_core::prepare::Prepared {
    let names = ["a", "b", "c", "d"];
    kiln_core::prepare::Prepared {
        report: Default::default(),
        train: regression_data(train_rows, names.len(), 5),
        validation: regression_data(64, names.len(), 6),
        width: names.len(),
        outputs: 1,
        encoding: kiln_core::encoding::InputEncoding::numeric(&names),
        feature_names: names.iter().map(|n| n.to_string()).collect(),
        target_names: vec!["y".into()],
        class_labels: vec![],
        feature_scaler: kiln_core::scaler::Scaler::identity(names.len()),
        target_scaler: None,
    }
}

/// libtorch's generator is one per process, and this binary's tests run in
/// parallel threads: a test that seeds it and draws (initial weights, dropout
/// and RReLU masks) while another draws gets part of the other's stream. So
/// every test that draws from it holds this while it does: those whose
/// numbers depend on the draws, and those whose draws would land in the
/// middle of another's stream. Tests of pure arithmetic (schedules, early
/// stopping) and of fixed tensors (losses) need not.
pub fn generator_alone() -> std::sync::MutexGuard<'static, ()> {
    static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GENERATOR.lock().unwrap_or_else(|e| e.into_inner())
}
