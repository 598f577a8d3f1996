//! Compiles `proto/` with protox (no system `protoc`) into Rust types and gRPC stubs, and writes
//! the encoded descriptor set into `OUT_DIR` for server reflection and the JSON mapping.

use std::path::PathBuf;

use prost::Message;

const FILES: &[&str] = &[
    "privacy/v1/envelope.proto",
    "privacy/v1/audit.proto",
    "privacy/v1/consent.proto",
    "privacy/v1/requests.proto",
    "privacy/v1/retention.proto",
    "privacy/v1/disclosures.proto",
    "privacy/bench/v1/echo.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    for file in FILES {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(FILES, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection and the JSON mapping describe the contract only, not the benchmark's echo.
    let mut contract = fds.clone();
    contract
        .file
        .retain(|f| !f.name().starts_with("privacy/bench/"));
    std::fs::write(out.join("privacy_descriptor.bin"), contract.encode_to_vec())?;
    tonic_prost_build::configure()
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
