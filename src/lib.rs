//! kiln's gRPC API, generated from `proto/` at build time.

pub mod v1 {
    tonic::include_proto!("kiln.v1");
}

/// Encoded `FileDescriptorSet` of every kiln proto (and its imports), for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kiln_descriptor");
