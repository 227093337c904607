//! The etcd cluster as etcdgate sees it: one HTTP/2 connection per member and worker, the
//! state of every member, which member gets a request, and when a failed request may be
//! tried on another member.
//!
//! This crate owns member selection and retry safety; it knows nothing about the front ends
//! or the cache. `Pool::call` runs one RPC with failover, `Pool::leader` and
//! `Pool::named` pin a request to a particular member.
//!
//! - `health`: the per-member state machine (healthy, suspect, down, hung, leaderless,
//!   lagging, learner, removed) and member list matching, pure logic;
//! - `probe`: the background prober of a pool family (Status probes, MemberList sync);
//! - `pool`: the pools, the order a call tries members in, passive failure signals;
//! - `balance`: per-member load (open calls, peak-EWMA latency) and the power-of-two-choices
//!   pick among healthy members;
//! - `connection`: one HTTP/2 connection to one member;
//! - `tls`: TLS to `https://` members (CA, client certificate and key);
//! - `retry`: which failures may go to another member, and the pause before it;
//! - `login`: etcdgate's own login to etcd (`--user`) and the token it sends;
//! - `member_http`: plain HTTP GETs of members' client URLs (`/version`, `/health`, `/metrics`);
//! - `metrics`: member states, state changes, requests and failovers for Prometheus.

mod balance;
mod connection;
mod hedge;
pub mod health;
pub mod login;
pub mod member_http;
pub mod metrics;
mod pool;
mod probe;
mod retry;
mod tls;

pub use balance::Timing;
pub use connection::{ConnectOptions, MemberConnection, NOT_SENT};
pub use health::State;
pub use pool::{Member, Pool, PoolOptions, Target, CUT_TWICE};
pub use retry::{classify, Failure, RetryPolicy};
pub use tls::{crypto_provider, read_certificates, MemberTls, TlsFiles};
