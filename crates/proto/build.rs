//! Compiles `proto/natter/v1/*.proto` with the protoc that protoc-bin-vendored
//! ships (the reference compiler, already a workspace dependency, and nothing
//! to install), then generates Rust from the resulting descriptor set.
//!
//! protoc is run here rather than through prost-build's `PROTOC` variable:
//! setting an environment variable is `unsafe` in edition 2024, and the
//! workspace forbids unsafe code. Running it ourselves also hands us the
//! descriptor set that server reflection serves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

use prost::Message;
use prost_types::FileDescriptorSet;

type Error = Box<dyn std::error::Error>;

/// Where this crate's descriptor set lands in `OUT_DIR`; `lib.rs` includes it.
const DESCRIPTOR_FILE: &str = "natter_descriptor.bin";

fn main() -> Result<(), Error> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut protos = proto_files(&proto_root.join("natter/v1"))?;
    protos.extend(proto_files(&proto_root.join("natter/bus/v1"))?);
    println!("cargo:rerun-if-changed={}", proto_root.display());
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }

    // The full set, imports (google/protobuf/timestamp.proto) included, is
    // what reflection clients need to resolve every type they are shown.
    let descriptor_path = out_dir.join(DESCRIPTOR_FILE);
    let status = Command::new(protoc_bin_vendored::protoc_bin_path()?)
        .arg("--include_imports")
        .arg("--include_source_info")
        .arg(format!(
            "--descriptor_set_out={}",
            descriptor_path.display()
        ))
        .arg(format!("--proto_path={}", proto_root.display()))
        .arg(format!(
            "--proto_path={}",
            protoc_bin_vendored::include_path()?.display()
        ))
        .args(&protos)
        .status()?;
    if !status.success() {
        return Err(format!("protoc failed with {status}").into());
    }

    // google.protobuf types map to prost-types; prost-build needs their
    // descriptors all the same, to decide what the generated types derive.
    let encoded = fs::read(&descriptor_path)?;
    let descriptors = FileDescriptorSet::decode(encoded.as_slice())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // No `XClient::connect(endpoint)` constructors: the generated one
        // would clash with the client method for `GatewayService.Connect`.
        // Callers build a `tonic::transport::Channel` and use `XClient::new`.
        .build_transport(false)
        // `bytes::Bytes` is what the domain holds thumbnails in.
        .bytes(".natter")
        // Maps in key order, so an encoding (protobuf or JSON) is the same
        // every time, as the domain's maps are.
        .btree_map(".natter")
        // pbjson-types' well-known types serialize in the proto3 JSON
        // mapping, which the WebSocket JSON subprotocol speaks.
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(descriptors)?;

    // serde impls in the proto3 JSON mapping, for the public API only.
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .preserve_proto_field_names()
        .btree_map([".natter"])
        .build(&[".natter.v1"])?;
    Ok(())
}

/// The `.proto` files of one directory, sorted so builds are reproducible.
fn proto_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
