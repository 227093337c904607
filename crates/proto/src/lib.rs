//! etcd v3 wire types, owned here and nowhere else: prost messages and tonic server/client
//! stubs for `etcdserverpb` (KV, Watch, Lease, Cluster, Maintenance, Auth), `mvccpb`,
//! `authpb`, `v3lockpb` and `v3electionpb`, plus the proto3-JSON mapping etcd's HTTP gateway
//! uses (original field names on output, lowerCamel or original accepted on input, 64-bit
//! integers as strings, enums by name, bytes as base64, zero values omitted), reading base64
//! and enums as etcd's gateway (Go) reads them, and naming JSON syntax errors in Go's words.

#![allow(clippy::all, missing_docs)]

pub mod go_json;
pub mod go_scanner;

pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}
