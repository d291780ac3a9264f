//! Compiles the `.proto` files with the vendored `protoc`, so building ferry
//! needs no system protobuf compiler. Also writes the file descriptor set
//! that gRPC server reflection serves.

const PROTOS: &[&str] = &[
    "proto/ferry/v1/admin.proto",
    "proto/ferry/v1/replication.proto",
    "proto/ferry/v1/status.proto",
    "proto/ferry/v1/wal.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // `bytes` fields as `bytes::Bytes`: decoding a record slices it, no copies.
    config.bytes(["."]);
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .file_descriptor_set_path(out_dir.join("ferry_descriptor.bin"))
        .compile_with_config(config, PROTOS, &["proto"])?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
