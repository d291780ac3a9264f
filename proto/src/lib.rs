//! ferry-proto: the protocol buffer schemas of ferry and the code prost and
//! tonic generate from them, and the seal that checks replication messages.
//!
//! # Layout
//! - `proto/ferry/v1/wal.proto`: the WAL record schema (mutations as effects).
//! - `proto/ferry/v1/replication.proto`: the replication stream.
//! - `proto/ferry/v1/status.proto`: node status (WAL positions, role,
//!   replicas, the link to the primary).
//! - `proto/ferry/v1/admin.proto`: operations on a running node.
//! - [`v1`]: the generated messages; the tonic clients and servers are
//!   included with the `grpc` feature.
//! - [`FILE_DESCRIPTOR_SET`]: the schemas, for gRPC server reflection.
//! - [`seal`]: the crc32 each replication message carries over its fields.
//! - `auth` (with `grpc`): the cluster token gRPC calls carry.
//! - `tls` (with `grpc`): TLS on the gRPC channel.

/// Version 1 of ferry's protocol (`package ferry.v1`).
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/ferry.v1.rs"));
}

pub mod seal;

#[cfg(feature = "grpc")]
pub mod auth;
#[cfg(feature = "grpc")]
pub mod tls;

/// The encoded `FileDescriptorSet` of every schema above.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ferry_descriptor.bin"));
