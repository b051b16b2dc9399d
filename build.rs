//! Compiles proto/ (kiln.v1 and the Open Inference Protocol's `inference`)
//! into the `kiln` API crate and writes the file descriptor set that the
//! server hands to gRPC reflection.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Vendored protoc: nothing to install on the machine.
    if env::var_os("PROTOC").is_none() {
        env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let protos = [
        "proto/kiln/v1/common.proto",
        "proto/kiln/v1/spec.proto",
        "proto/kiln/v1/jobs.proto",
        "proto/kiln/v1/sweeps.proto",
        "proto/kiln/v1/datasets.proto",
        "proto/kiln/v1/inference.proto",
        // The Open Inference Protocol v2 (package `inference`).
        "proto/inference/grpc_service.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("kiln_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
