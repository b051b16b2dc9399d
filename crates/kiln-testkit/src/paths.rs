//! Files the tests read: the repository's examples and the programs
//! scripts/setup.sh installs in its cache.

use std::path::PathBuf;

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .canonicalize()
        .expect("the repository root")
}

/// The bytes of `examples/<name>`.
pub fn read_example(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("examples").join(name)).expect("example file")
}

/// Parses a numeric CSV (header skipped) into rows of strings.
pub fn csv_rows(bytes: &[u8]) -> Vec<Vec<String>> {
    String::from_utf8_lossy(bytes)
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// A program installed by scripts/setup.sh in the cache's venv, unless `env` overrides it.
pub fn venv_tool(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return path.into();
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cache = std::env::var("KILN_CACHE").unwrap_or(format!("{home}/.cache/kiln"));
    let path = PathBuf::from(cache).join("venv/bin").join(name);
    assert!(
        path.exists(),
        "{name} is missing: run scripts/setup.sh (make test does)"
    );
    path
}
