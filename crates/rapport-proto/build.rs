//! Generates the Rust API from `proto/` with protox (no system `protoc`) and
//! writes the file descriptor set that server reflection serves.

use std::{env, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "rapport/v1/interaction.proto",
        "rapport/v1/interaction_service.proto",
        "rapport/v1/event.proto",
        "rapport/v1/event_log_service.proto",
        "rapport/v1/timeline_service.proto",
        "rapport/v1/admin_service.proto",
        "rapport/v1/scoring.proto",
        "rapport/v1/advocacy_service.proto",
        "rapport/v1/member_service.proto",
    ];
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let fds = protox::compile(files, [&proto_root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // compile_fds does not write the set; reflection needs it, imports included.
    std::fs::write(out_dir.join("rapport_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
