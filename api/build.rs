//! Compiles the public gRPC API from `proto/` with protox (pure Rust: no `protoc` needed) and
//! keeps its descriptor set for the reflection service.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/streamrec/v1/recommender.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("streamrec_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
