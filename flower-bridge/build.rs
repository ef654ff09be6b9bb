//! Generates the Rust types of Flower's two protocols, and the gRPC service of
//! the original one, from `proto/flower_legacy.proto` and
//! `proto/flower_fleet.proto` (one package, `flwr.proto`), compiled by protox
//! (pure Rust, so no `protoc` is needed on the build machine).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/flower_legacy.proto", "proto/flower_fleet.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
