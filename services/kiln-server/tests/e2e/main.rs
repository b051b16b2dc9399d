//! kiln end to end: each module starts real kiln-server processes
//! (`kiln_testkit::Server`, the binary cargo built for this package) and
//! drives them over gRPC, HTTP and the Python clients, the way users do.
//!
//! One test binary, so the workspace links the server's dependencies once for
//! all of them; `cargo test -p kiln-server --test e2e MODULE::` runs one area.

mod devices;
mod full_disk;
mod grpcurl;
mod hostile;
mod jobs;
mod malformed;
mod object_store;
mod oip;
mod persistence;
mod postgres;
mod preprocessing;
mod python_sdk;
mod real_tables;
mod replicas;
mod scoring;
mod security;
mod serving;
mod shutdown;
mod sweeps;
mod telemetry;
mod tensorboard;
mod trainers;
mod training;
mod training_stack;

/// This folder: the test data the modules read (malformed inputs, the
/// reference OIP client).
fn e2e_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}
