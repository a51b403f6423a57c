//! Generated gRPC code of `proto/ewtune/v1` (package `ewtune.v1`) and its descriptor set for
//! server reflection. Never leaves `src/api/`.
#![allow(missing_docs, clippy::all)]

tonic::include_proto!("ewtune.v1");

/// Encoded `FileDescriptorSet` of the ewtune.v1 protos.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ewtune_descriptor");
