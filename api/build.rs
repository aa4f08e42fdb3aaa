//! Compiles the gRPC APIs with protox (pure Rust: no `protoc` needed): the public one from
//! `proto/streamrec/v1/`, whose descriptor set is kept for the reflection service, and the
//! internal node-to-node one (`proto/internal.proto`), compiled apart so that reflection never
//! lists it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let public = "proto/streamrec/v1/recommender.proto";
    let internal = "proto/internal.proto";
    println!("cargo:rerun-if-changed={public}");
    println!("cargo:rerun-if-changed={internal}");
    let descriptors = protox::compile([public], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("streamrec_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .compile_fds(descriptors)?;
    tonic_prost_build::configure()
        .build_client(true)
        .compile_fds(protox::compile([internal], ["proto"])?)?;
    Ok(())
}
