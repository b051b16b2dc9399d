//! kiln's gRPC API, generated from `proto/` at build time.

pub mod v1 {
    tonic::include_proto!("kiln.v1");
}

/// The Open Inference Protocol v2 (KServe's V2 inference protocol, as Triton
/// speaks it): `inference.GRPCInferenceService`.
pub mod inference {
    tonic::include_proto!("inference");
}

/// Encoded `FileDescriptorSet` of every kiln proto (and its imports), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kiln_descriptor");
