//! The scenarios of `http_compat.rs` again, with the gateway serving the whole keyspace from its
//! watch cache (`common::Pair` starts it so in every `*_cached` test binary): answers from
//! the cache must be etcd's, byte for byte.

#[path = "http_compat.rs"]
mod scenarios;
