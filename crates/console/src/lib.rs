//! The operations console: what an operator needs to know about the etcd cluster behind
//! etcdgate, and the jobs that keep it safe.
//!
//! - [`inspect`]: one look at every member (reachable, leader, raft lag, db size against its
//!   quota, alarms, versions, learners) and whether the members agree on the data (HashKV at
//!   one revision), as findings an operator can act on.
//! - [`snapshot`]: reads an etcd snapshot file (a bbolt database with etcd's sha256 trailer)
//!   without etcd: checks its integrity and says what it holds (revision, keys, KV hash).
//! - [`backup`]: takes snapshots through the member pool, keeps each only once it is verified
//!   (integrity, and its data's hash against the member's HashKV), keeps the newest ones.
//! - [`membership`]: membership changes that cannot take the cluster down (learner first,
//!   promote once caught up, remove only while a quorum stays).
//! - [`apisix`]: the APISIX-aware key browser: APISIX's configuration in etcd by resource
//!   type, and what in it APISIX would skip or serve wrongly (invalid JSON, references to
//!   nothing, shadowed routes, ...).
//! - [`web`]: the `/console` page and its JSON API, served on etcdgate's port, and the
//!   background inspections behind them;
//! - [`metrics`]: the latest inspection's figures for `/metrics`.

pub mod apisix;
pub mod backup;
mod calls;
pub mod inspect;
pub mod membership;
pub mod metrics;
pub mod snapshot;
pub mod web;

pub use calls::Credentials;
