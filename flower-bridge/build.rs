//! Generates the Rust types and gRPC service of Flower's original protocol
//! from `proto/flower_legacy.proto`, compiled by protox (pure Rust, so no
//! `protoc` is needed on the build machine).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/flower_legacy.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
