//! The etcd cluster as etcdgate sees it: one gRPC channel per member, which member gets a
//! request, and when a failed request may be tried on another member.
//!
//! This crate owns member selection and retry safety; it knows nothing about the front ends
//! or the cache. `Pool::call` runs one RPC with failover, `Pool::leader` and
//! `Pool::named` pin a request to a particular member.

mod connection;
mod pool;
mod retry;

pub use connection::MemberConnection;
pub use pool::{Member, Pool, PoolOptions, Target};
pub use retry::{classify, Failure, RetryPolicy};
