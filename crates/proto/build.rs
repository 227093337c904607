//! Compiles etcdgate's own .proto files (no system protoc: protox parses them) into prost
//! messages, tonic server and client stubs, and pbjson serde impls (reading base64, integers and
//! enum numbers as Go does, see src/go_json.rs).
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

    // `bytes`, integer and enum fields are read as etcd's gateway reads them (see src/go_json.rs).
    for package in PACKAGES {
        let path = out.join(format!("{}.serde.rs", package.trim_start_matches('.')));
        let code = std::fs::read_to_string(&path)?;
        let code = code
            .replace("::pbjson::private::BytesDeserialize", "crate::go_json::Base64Bytes")
            .replace("::pbjson::private::NumberDeserialize", "crate::go_json::GoNumber");
        std::fs::write(&path, open_enums(&code))?;
    }
    Ok(())
}

/// Each `map_.next_value::<Enum>()? as i32` (a singular enum field) as
/// `map_.next_value::<crate::go_json::OpenEnum<Enum>>()?.0`.
fn open_enums(code: &str) -> String {
    const START: &str = "map_.next_value::<";
    const END: &str = ">()? as i32";
    let open = |line: &str| match (line.find(START), line.find(END)) {
        (Some(start), Some(end)) if start < end => {
            let enum_type = &line[start + START.len()..end];
            format!("{}{START}crate::go_json::OpenEnum<{enum_type}>>()?.0{}", &line[..start], &line[end + END.len()..])
        }
        _ => line.to_string(),
    };
    code.lines().map(open).collect::<Vec<_>>().join("\n")
}
