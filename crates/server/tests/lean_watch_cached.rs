//! The scenarios of `lean_watch.rs` again, with the gateway serving the whole keyspace from
//! its watch cache (`common::Pair` starts it so in every `*_cached` test binary).

#[path = "lean_watch.rs"]
mod scenarios;
