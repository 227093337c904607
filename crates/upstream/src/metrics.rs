//! Prometheus metrics of the member pool: each member's state, its state changes, the client
//! calls sent to it, the requests that failed over from it and the reads hedged against it.
//! One set per process, shared by every worker's pool; the server exposes them on `/metrics`.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::health::State;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberState {
    member: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabel {
    member: String,
}

#[derive(Default)]
struct PoolMetrics {
    state: Family<MemberState, Gauge>,
    state_changes: Family<MemberState, Counter>,
    requests: Family<MemberLabel, Counter>,
    failovers: Family<MemberLabel, Counter>,
    hedges: Family<MemberLabel, Counter>,
}

fn metrics() -> &'static PoolMetrics {
    static METRICS: OnceLock<PoolMetrics> = OnceLock::new();
    METRICS.get_or_init(PoolMetrics::default)
}

/// A member went from one state to another.
pub(crate) fn state_changed(member: &str, from: State, to: State) {
    let labels = |state: State| MemberState { member: member.to_string(), state: state.as_str().to_string() };
    let metrics = metrics();
    metrics.state.get_or_create(&labels(from)).set(0);
    metrics.state.get_or_create(&labels(to)).set(1);
    metrics.state_changes.get_or_create(&labels(to)).inc();
}

/// The counter of client calls sent to `member`; the member keeps it, so that counting a call
/// is one atomic add.
pub(crate) fn member_requests(member: &str) -> Counter {
    metrics().requests.get_or_create(&MemberLabel { member: member.to_string() }).clone()
}

/// A request that failed on `member` was sent to another member.
pub(crate) fn failed_over(member: &str) {
    metrics().failovers.get_or_create(&MemberLabel { member: member.to_string() }).inc();
}

/// A read slow on `member` was sent to another member as well.
pub(crate) fn hedged(member: &str) {
    metrics().hedges.get_or_create(&MemberLabel { member: member.to_string() }).inc();
}

/// Adds the pool's metrics to `registry`.
pub fn register(registry: &mut Registry) {
    let metrics = metrics();
    registry.register("etcdgate_member_state", "1 for the state each member is in", metrics.state.clone());
    registry.register(
        "etcdgate_member_state_changes",
        "Times a member entered a state",
        metrics.state_changes.clone(),
    );
    registry.register(
        "etcdgate_member_requests",
        "Client calls sent to each member (stream opens and each attempt of a failed-over call included)",
        metrics.requests.clone(),
    );
    registry.register(
        "etcdgate_failovers",
        "Requests that failed on a member and were sent to another",
        metrics.failovers.clone(),
    );
    registry.register(
        "etcdgate_hedged_reads",
        "Reads a member was slow to answer, sent to a second member as well (by the slow member)",
        metrics.hedges.clone(),
    );
}
