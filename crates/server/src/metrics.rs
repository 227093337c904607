//! Prometheus metrics of the serving side (requests per RPC and outcome, client streams moved
//! between members, reads asked again because they came from behind the client) and the `/metrics` endpoint, which also carries the member pool's.

use std::sync::{Mutex, OnceLock, PoisonError};

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tonic::Status;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    rpc: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    stream: &'static str,
}

#[derive(Default)]
struct ServerMetrics {
    requests: Family<RequestLabels, Counter>,
    stream_moves: Family<StreamLabels, Counter>,
    reads_behind: Family<RpcLabels, Counter>,
    held_back: Family<RpcLabels, Counter>,
    joined: Family<RpcLabels, Counter>,
    cache_reads: Family<CacheReadLabels, Counter>,
    cache_loads: Counter,
    cache_events_in: Counter,
    cache_events_out: Counter,
    hub_watchers: Gauge,
    upstream_watches: Gauge,
    calls_in_flight: Gauge,
    feed_stalls: Counter,
    barrier_rounds: Counter,
    permits_asked: Family<PermitLabels, Counter>,
    history: Family<PrefixLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrefixLabels {
    prefix: String,
    what: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheReadLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PermitLabels {
    granted: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
}

fn metrics() -> &'static ServerMetrics {
    static METRICS: OnceLock<ServerMetrics> = OnceLock::new();
    METRICS.get_or_init(ServerMetrics::default)
}

/// A unary call finished with `result`.
pub fn request_done<T>(rpc: &'static str, result: &Result<T, Status>) {
    let code = match result {
        Ok(_) => "OK".to_string(),
        Err(status) => format!("{:?}", status.code()),
    };
    metrics().requests.get_or_create(&RequestLabels { rpc, code }).inc();
}

/// A request two members failed while serving it was held back (see [`crate::guard`]).
pub fn held_back(rpc: &'static str) {
    metrics().held_back.get_or_create(&RpcLabels { rpc }).inc();
}

/// A call was answered by the identical one in flight (see [`crate::shared_calls`]).
pub fn call_joined(rpc: &'static str) {
    metrics().joined.get_or_create(&RpcLabels { rpc }).inc();
}

/// A read was answered from behind what its client had seen, and asked again.
pub fn read_behind(rpc: &'static str) {
    metrics().reads_behind.get_or_create(&RpcLabels { rpc }).inc();
}

/// A Range inside a cached prefix was answered from the cache (`hit`) or sent to etcd.
pub fn cache_read(hit: bool) {
    metrics().cache_reads.get_or_create(&CacheReadLabels { result: if hit { "hit" } else { "miss" } }).inc();
}

/// A cached prefix was read from etcd (at start, or again after its watch was compacted).
pub fn cache_loaded() {
    metrics().cache_loads.inc();
}

/// Events the cache's upstream watches brought in.
pub fn cache_events_in(events: usize) {
    metrics().cache_events_in.inc_by(events as u64);
}

/// Events sent to clients by watches served from the cache.
pub fn cache_events_out(events: usize) {
    metrics().cache_events_out.inc_by(events as u64);
}

/// The cache's upstream watches open: `delta` more.
pub fn upstream_watches(delta: i64) {
    metrics().upstream_watches.inc_by(delta);
}

/// A cached prefix's upstream watch went silent without a write etcd had acknowledged, and
/// was moved to another member.
pub fn feed_stalled() {
    metrics().feed_stalls.inc();
}

/// A round of the linearizable-read barrier (one read of etcd's revision) finished.
pub fn barrier_round() {
    metrics().barrier_rounds.inc();
}

/// etcd was asked whether some credentials may read a cached range (`granted`: it answered).
pub fn permit_asked(granted: bool) {
    metrics().permits_asked.get_or_create(&PermitLabels { granted: if granted { "yes" } else { "no" } }).inc();
}

/// What a cached prefix holds: keys, history events and bytes, oldest and newest revision
/// of the history.
pub fn cache_held(prefix: &str, keys: usize, events: usize, bytes: usize, span: Option<(i64, i64)>) {
    let set = |what: &'static str, value: i64| {
        metrics().history.get_or_create(&PrefixLabels { prefix: prefix.to_string(), what }).set(value);
    };
    set("keys", keys as i64);
    set("history_events", events as i64);
    set("history_bytes", bytes as i64);
    if let Some((oldest, newest)) = span {
        set("history_oldest_revision", oldest);
        set("history_newest_revision", newest);
    }
}

/// Client watches served from the cache: `delta` more.
pub fn hub_watchers(delta: i64) {
    metrics().hub_watchers.inc_by(delta);
}

/// Client calls being answered (see [`crate::drain`]): `delta` more.
pub fn calls_in_flight(delta: i64) {
    metrics().calls_in_flight.inc_by(delta);
}

/// A client stream was moved to another member.
pub fn stream_moved(stream: &'static str) {
    metrics().stream_moves.get_or_create(&StreamLabels { stream }).inc();
}

/// Other crates' metrics (the console's), added to `/metrics` when it is first served.
static MORE_METRICS: Mutex<Vec<fn(&mut Registry)>> = Mutex::new(Vec::new());

/// Serves the metrics `register` adds beside etcdgate's own; call before serving.
pub fn add_metrics(register: fn(&mut Registry)) {
    MORE_METRICS.lock().unwrap_or_else(PoisonError::into_inner).push(register);
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut registry = Registry::default();
        let metrics = metrics();
        registry.register("etcdgate_requests", "Unary requests by RPC and gRPC code", metrics.requests.clone());
        registry.register(
            "etcdgate_calls_in_flight",
            "Client calls being answered, which a stop waits for (watches, keep-alives and observations not counted; a scrape counts itself)",
            metrics.calls_in_flight.clone(),
        );
        registry.register(
            "etcdgate_stream_moves",
            "Client streams (watch, keepalive) moved to another member",
            metrics.stream_moves.clone(),
        );
        registry.register(
            "etcdgate_reads_behind",
            "Reads answered by a member behind a revision the client had already seen, asked again",
            metrics.reads_behind.clone(),
        );
        registry.register(
            "etcdgate_requests_held_back",
            "Requests held back after two members failed while serving them (a request etcd crashes on?)",
            metrics.held_back.clone(),
        );
        registry.register(
            "etcdgate_calls_joined",
            "Calls answered by the identical call in flight instead of a call of their own (Authenticate: one password hash for many)",
            metrics.joined.clone(),
        );
        registry.register("etcdgate_cache_reads", "Ranges inside a cached prefix, by whether the cache answered", metrics.cache_reads.clone());
        registry.register("etcdgate_cache_loads", "Full reads of a cached prefix from etcd (start, resync after compaction)", metrics.cache_loads.clone());
        registry.register("etcdgate_cache_events_in", "Events received by the cache's upstream watches", metrics.cache_events_in.clone());
        registry.register("etcdgate_cache_watchers", "Client watches served from the cache", metrics.hub_watchers.clone());
        registry.register("etcdgate_cache_events_out", "Events sent to clients by watches served from the cache", metrics.cache_events_out.clone());
        registry.register("etcdgate_cache_upstream_watches", "The cache's watches on etcd that are open (one per cached prefix)", metrics.upstream_watches.clone());
        registry.register(
            "etcdgate_cache_feed_stalls",
            "Upstream watches of the cache moved because they went silent without a write etcd had acknowledged",
            metrics.feed_stalls.clone(),
        );
        registry.register(
            "etcdgate_cache_permit_reads",
            "Reads of etcd asking whether some credentials may read a cached range (each verdict serves for 1 s)",
            metrics.permits_asked.clone(),
        );
        registry.register("etcdgate_cache_barrier_rounds", "Reads of etcd's revision for linearizable cached reads (each serves every read waiting)", metrics.barrier_rounds.clone());
        registry.register("etcdgate_cache_held", "What each cached prefix holds (keys, history events and bytes, history's oldest and newest revision)", metrics.history.clone());
        etcdgate_upstream::metrics::register(&mut registry);
        for register in MORE_METRICS.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            register(&mut registry);
        }
        registry
    })
}

/// `GET /metrics`, in the OpenMetrics text format.
pub async fn endpoint() -> Response {
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, registry()).is_err() {
        return (http::StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed").into_response();
    }
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    response
}
