//! ferry-proto: the protocol buffer schemas of ferry and the code prost and
//! tonic generate from them; nothing else lives here.
//!
//! # Layout
//! - `proto/ferry/v1/wal.proto`: the WAL record schema (mutations as effects).
//! - `proto/ferry/v1/status.proto`: node status (WAL positions, role).
//! - [`v1`]: the generated messages; the tonic clients and servers are
//!   included with the default `grpc` feature.

/// Version 1 of ferry's protocol (`package ferry.v1`).
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/ferry.v1.rs"));
}
