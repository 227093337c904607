//! Compiles etcdgate's own .proto files (no system protoc: protox parses them) into prost
//! messages, tonic server and client stubs, and pbjson serde impls (their base64 decoding
//! replaced by Go's, see src/go_base64.rs).
use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/etcdserverpb/rpc.proto",
    "proto/v3lockpb/v3lock.proto",
    "proto/v3electionpb/v3election.proto",
];
const PACKAGES: &[&str] = &[".etcdserverpb", ".mvccpb", ".authpb", ".v3lockpb", ".v3electionpb"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["proto"])?;
    let descriptor_path = out.join("etcd_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptor_path)?)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(PACKAGES)?;

    // `bytes` fields decode as etcd's gateway decodes them (see src/go_base64.rs).
    for package in PACKAGES {
        let path = out.join(format!("{}.serde.rs", package.trim_start_matches('.')));
        let code = std::fs::read_to_string(&path)?;
        std::fs::write(&path, code.replace("::pbjson::private::BytesDeserialize", "crate::go_base64::Base64Bytes"))?;
    }
    Ok(())
}
