//! The failover benchmark's workload: a small APISIX-like mix that records every call it
//! makes, with when it started and ended, which endpoint it went to and how it ended, so that
//! timelines, errors and the traffic a member got can be read off afterwards.
//!
//! - HTTP/JSON readers: `POST /v3/kv/range` of `/apisix/upstreams/` (a prefix of
//!   [`UPSTREAM_KEYS`] keys), linearizable, as APISIX reads;
//! - gRPC readers: `KV.Range` of one of [`ROUTE_KEYS`] `/apisix/routes/` keys, linearizable,
//!   as clientv3 reads by default;
//! - one gRPC writer: `KV.Put` of [`WRITER_KEY`] every `write_interval` through the target;
//! - one reference writer: the same with [`REFERENCE_WRITER_KEY`], straight to the member
//!   that led when the load started (never the victim), so that events keep coming while the
//!   target's writer is stuck on the bad member: watch stalls are measured against writes
//!   that went on. Its calls are not the target's: they count neither as throughput nor as
//!   errors (its failures are counted apart);
//! - each acknowledged revision of either writer is recorded with the times the put was sent
//!   and acknowledged;
//! - HTTP/JSON watchers: `POST /v3/watch` of all of `/apisix/`, as lua-resty-etcd watches,
//!   recording when each event's revision arrived; after an error they watch again from the
//!   next revision they have not seen.
//!
//! Readers and the writer are paced (one call per interval, the next at once if a call took
//! longer, no catching up), so throughput shows how many calls got through rather than how
//! much CPU there was. Every client has its own connections.
//!
//! Which endpoint gets a call is decided by [`Endpoints`]: round-robin over the target's URLs,
//! skipping for `fail_timeout` an endpoint a call just failed on (lua-resty-etcd's passive
//! health check as APISIX configures it: `max_fails` 1, `fail_timeout` 10 s). With one URL (a
//! proxy) that is always the proxy. The failed call itself is an error the client sees: APISIX
//! and clientv3 do not retry reads on another member on their own.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use etcdgate_proto::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use etcdgate_testkit::workload::{error_chain, JsonLines};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client as LegacyClient};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

/// Keys under `/apisix/upstreams/` that HTTP readers read as one prefix.
pub const UPSTREAM_KEYS: usize = 10;
/// Keys under `/apisix/routes/` that gRPC readers read one at a time.
pub const ROUTE_KEYS: usize = 100;
/// The key the writer overwrites.
pub const WRITER_KEY: &str = "/apisix/services/failbench-writer";
/// The key the reference writer overwrites.
pub const REFERENCE_WRITER_KEY: &str = "/apisix/services/failbench-reference";
/// Size of every preloaded value.
pub const VALUE_BYTES: usize = 200;
/// Pause of a watcher after its watch failed, before it watches again (APISIX pauses too).
const WATCH_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Connect timeout of every client connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a recorded call was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallKind {
    /// `POST /v3/kv/range` (HTTP/JSON reader).
    HttpRange,
    /// gRPC `KV.Range` (gRPC reader).
    GrpcRange,
    /// gRPC `KV.Put` (the writer).
    Put,
    /// `POST /v3/watch`: a successful open (ended when `created` arrived), or a watch that
    /// failed (from its open to the failure).
    Watch,
}

impl CallKind {
    pub fn name(self) -> &'static str {
        match self {
            CallKind::HttpRange => "http-range",
            CallKind::GrpcRange => "grpc-range",
            CallKind::Put => "put",
            CallKind::Watch => "watch",
        }
    }

    /// Reads and writes; watches are not counted in throughput.
    pub fn is_unary(self) -> bool {
        self != CallKind::Watch
    }
}

/// One call, times relative to the cell's start.
#[derive(Clone, Debug)]
pub struct CallRecord {
    pub kind: CallKind,
    /// Index of the target URL it went to (a member for `direct`, 0 for a proxy).
    pub endpoint: usize,
    pub started: Duration,
    pub finished: Duration,
    pub error: Option<String>,
}

/// An event of the writer's key delivered to a watcher.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub watcher: usize,
    pub revision: i64,
    pub at: Duration,
}

/// A write etcd acknowledged: when it was sent, and when the acknowledgement came.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub revision: i64,
    pub sent: Duration,
    pub at: Duration,
}

/// Everything the clients of one cell recorded.
#[derive(Clone, Debug, Default)]
pub struct Log {
    pub calls: Vec<CallRecord>,
    pub arrivals: Vec<Arrival>,
    /// Acknowledged puts of both writers.
    pub acks: Vec<Ack>,
    /// Puts of the reference writer that failed.
    pub reference_failures: u64,
}

/// Shared by every client of a cell: the log, and what the drain at the end waits for.
pub struct Recorder {
    origin: Instant,
    log: Mutex<Log>,
    last_ack: AtomicI64,
    /// Highest revision each watcher has received.
    watcher_highest: Vec<AtomicI64>,
}

impl Recorder {
    pub fn new(origin: Instant, watchers: usize) -> Recorder {
        Recorder {
            origin,
            log: Mutex::default(),
            last_ack: AtomicI64::new(0),
            watcher_highest: (0..watchers).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    /// Time since the cell's start.
    pub fn since_origin(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.origin)
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn call(&self, kind: CallKind, endpoint: usize, started: Instant, error: Option<String>) {
        let record = CallRecord {
            kind,
            endpoint,
            started: self.since_origin(started),
            finished: self.since_origin(Instant::now()),
            error,
        };
        self.log().calls.push(record);
    }

    fn ack(&self, revision: i64, sent: Instant) {
        let ack = Ack { revision, sent: self.since_origin(sent), at: self.since_origin(Instant::now()) };
        self.log().acks.push(ack);
        self.last_ack.fetch_max(revision, Ordering::Relaxed);
    }

    fn reference_failure(&self) {
        self.log().reference_failures += 1;
    }

    fn arrivals(&self, watcher: usize, revisions: &[i64]) {
        let at = self.since_origin(Instant::now());
        let mut log = self.log();
        for &revision in revisions {
            log.arrivals.push(Arrival { watcher, revision, at });
        }
        drop(log);
        if let (Some(&highest), Some(slot)) = (revisions.iter().max(), self.watcher_highest.get(watcher)) {
            slot.fetch_max(highest, Ordering::Relaxed);
        }
    }

    /// Whether every watcher has received the last acknowledged write.
    pub fn watchers_caught_up(&self) -> bool {
        let last = self.last_ack.load(Ordering::Relaxed);
        self.watcher_highest.iter().all(|w| w.load(Ordering::Relaxed) >= last)
    }

    pub fn snapshot(&self) -> Log {
        self.log().clone()
    }
}

/// The URLs of a target, and which of them a client should use next.
pub struct Endpoints {
    urls: Vec<String>,
    next: AtomicUsize,
    failed_until: Mutex<Vec<Option<Instant>>>,
    fail_timeout: Duration,
}

impl Endpoints {
    pub fn new(urls: Vec<String>, fail_timeout: Duration) -> Endpoints {
        let failed_until = Mutex::new(vec![None; urls.len()]);
        Endpoints { urls, next: AtomicUsize::new(0), failed_until, fail_timeout }
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn url(&self, endpoint: usize) -> &str {
        &self.urls[endpoint % self.urls.len()]
    }

    /// The next endpoint in round-robin order that has not failed within `fail_timeout`
    /// (if every one has, the next one anyway).
    pub fn pick(&self) -> usize {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        self.first_healthy_from(start)
    }

    /// The first endpoint from `start` on that has not failed within `fail_timeout`.
    pub fn first_healthy_from(&self, start: usize) -> usize {
        let now = Instant::now();
        let failed = self.failed_until.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.urls.len();
        (0..n).map(|k| (start + k) % n).find(|&i| failed[i].is_none_or(|until| until <= now)).unwrap_or(start % n)
    }

    /// A call to `endpoint` failed: skip it for `fail_timeout`.
    pub fn report_failure(&self, endpoint: usize) {
        let mut failed = self.failed_until.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = failed.get_mut(endpoint) {
            *slot = Some(Instant::now() + self.fail_timeout);
        }
    }
}

/// How many clients of each kind, how fast, and how long a call may take.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadConfig {
    pub http_readers: usize,
    pub grpc_readers: usize,
    pub watchers: usize,
    pub read_interval: Duration,
    pub write_interval: Duration,
    pub request_timeout: Duration,
    pub fail_timeout: Duration,
}

/// The running clients of one cell; dropping it aborts them.
pub struct Workload {
    config: WorkloadConfig,
    urls: Vec<String>,
    recorder: Arc<Recorder>,
    load_stop: watch::Sender<bool>,
    watch_stop: watch::Sender<bool>,
    load_tasks: Vec<JoinHandle<()>>,
    watch_tasks: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Starts the watchers against `urls`, from `start_revision`.
    pub fn start_watchers(config: WorkloadConfig, urls: &[String], recorder: &Arc<Recorder>, start_revision: i64) -> Workload {
        let (load_stop, _) = watch::channel(false);
        let (watch_stop, watch_stopped) = watch::channel(false);
        let mut workload = Workload {
            config,
            urls: urls.to_vec(),
            recorder: recorder.clone(),
            load_stop,
            watch_stop,
            load_tasks: Vec::new(),
            watch_tasks: Vec::new(),
        };
        for watcher in 0..config.watchers {
            let client = HttpClient::new(workload.endpoints(), recorder.clone(), config.request_timeout);
            workload.watch_tasks.push(tokio::spawn(client.watch_loop(watcher, start_revision, watch_stopped.clone())));
        }
        workload
    }

    /// Starts the readers, the writer, and the reference writer (to `leader_url`).
    pub fn start_load(&mut self, leader_url: &str) -> anyhow::Result<()> {
        let config = self.config;
        let load_stopped = self.load_stop.subscribe();
        let writer = GrpcClient::new(self.endpoints(), self.recorder.clone(), config.request_timeout)?;
        self.load_tasks.push(tokio::spawn(writer.write_loop(Writer::Target, config.write_interval, load_stopped.clone())));
        let leader = Arc::new(Endpoints::new(vec![leader_url.to_string()], config.fail_timeout));
        let reference = GrpcClient::new(leader, self.recorder.clone(), config.request_timeout)?;
        self.load_tasks.push(tokio::spawn(reference.write_loop(Writer::Reference, config.write_interval, load_stopped.clone())));
        for i in 0..config.grpc_readers {
            let reader = GrpcClient::new(self.endpoints(), self.recorder.clone(), config.request_timeout)?;
            self.load_tasks.push(tokio::spawn(reader.read_loop(i, config.read_interval, load_stopped.clone())));
        }
        for _ in 0..config.http_readers {
            let reader = HttpClient::new(self.endpoints(), self.recorder.clone(), config.request_timeout);
            self.load_tasks.push(tokio::spawn(reader.read_loop(config.read_interval, load_stopped.clone())));
        }
        Ok(())
    }

    /// A client's own view of which endpoint to use next.
    fn endpoints(&self) -> Arc<Endpoints> {
        Arc::new(Endpoints::new(self.urls.clone(), self.config.fail_timeout))
    }

    /// Stops the readers and the writer (calls under way are abandoned).
    pub async fn stop_load(&mut self) {
        let _ = self.load_stop.send(true);
        for task in self.load_tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }

    /// Stops the watchers.
    pub async fn stop_watchers(&mut self) {
        let _ = self.watch_stop.send(true);
        for task in self.watch_tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        for task in self.load_tasks.iter().chain(&self.watch_tasks) {
            task.abort();
        }
    }
}

/// Waits for `interval` after `started` (at once if the call took longer), or until stopped;
/// false once stopped.
async fn pace(started: Instant, interval: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let next = tokio::time::Instant::from_std(started + interval);
    tokio::select! {
        _ = tokio::time::sleep_until(next) => true,
        _ = stop.wait_for(|stopped| *stopped) => false,
    }
}

/// The `key` of the n-th route read by gRPC readers.
pub fn route_key(n: usize) -> String {
    format!("/apisix/routes/{n:04}")
}

/// The `key` of the n-th upstream read by HTTP readers.
pub fn upstream_key(n: usize) -> String {
    format!("/apisix/upstreams/{n:04}")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Which of the two writers a write loop is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writer {
    /// Through the target, as the workload's other clients.
    Target,
    /// Straight to the leader, for the watch figures.
    Reference,
}

/// A gRPC client (reader or writer) with one lazily connected channel per endpoint.
struct GrpcClient {
    endpoints: Arc<Endpoints>,
    channels: Vec<KvClient<Channel>>,
    recorder: Arc<Recorder>,
    timeout: Duration,
}

impl GrpcClient {
    fn new(endpoints: Arc<Endpoints>, recorder: Arc<Recorder>, timeout: Duration) -> anyhow::Result<GrpcClient> {
        let channels = (0..endpoints.len())
            .map(|i| {
                let endpoint = Endpoint::from_shared(endpoints.url(i).to_string())?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true);
                Ok(KvClient::new(endpoint.connect_lazy()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(GrpcClient { endpoints, channels, recorder, timeout })
    }

    async fn read_loop(mut self, reader: usize, interval: Duration, mut stop: watch::Receiver<bool>) {
        let mut n = reader * 37;
        loop {
            let started = Instant::now();
            let endpoint = self.endpoints.pick();
            let request = RangeRequest { key: route_key(n % ROUTE_KEYS).into_bytes(), ..Default::default() };
            let kv = &mut self.channels[endpoint];
            let result = match tokio::time::timeout(self.timeout, kv.range(request)).await {
                Err(_) => Err(timed_out(self.timeout)),
                Ok(Err(status)) => Err(status_error(&status)),
                Ok(Ok(answer)) if answer.get_ref().kvs.len() == 1 => Ok(()),
                Ok(Ok(answer)) => Err(format!("range returned {} kvs, expected 1", answer.get_ref().kvs.len())),
            };
            self.finish(CallKind::GrpcRange, endpoint, started, result.err());
            n += 1;
            if !pace(started, interval, &mut stop).await {
                return;
            }
        }
    }

    async fn write_loop(mut self, writer: Writer, interval: Duration, mut stop: watch::Receiver<bool>) {
        let key = match writer {
            Writer::Target => WRITER_KEY,
            Writer::Reference => REFERENCE_WRITER_KEY,
        };
        let mut sequence: u64 = 0;
        loop {
            let started = Instant::now();
            let endpoint = self.endpoints.pick();
            let request = PutRequest {
                key: key.as_bytes().to_vec(),
                value: format!("{{\"seq\":{sequence}}}").into_bytes(),
                ..Default::default()
            };
            let kv = &mut self.channels[endpoint];
            let result = match tokio::time::timeout(self.timeout, kv.put(request)).await {
                Err(_) => Err(timed_out(self.timeout)),
                Ok(Err(status)) => Err(status_error(&status)),
                Ok(Ok(answer)) => answer.into_inner().header.map(|h| h.revision).ok_or_else(|| "put answer without a header".to_string()),
            };
            if let Ok(revision) = result {
                self.recorder.ack(revision, started);
            }
            match writer {
                Writer::Target => self.finish(CallKind::Put, endpoint, started, result.err()),
                Writer::Reference if result.is_err() => self.recorder.reference_failure(),
                Writer::Reference => {}
            }
            sequence += 1;
            if !pace(started, interval, &mut stop).await {
                return;
            }
        }
    }

    fn finish(&self, kind: CallKind, endpoint: usize, started: Instant, error: Option<String>) {
        if error.is_some() {
            self.endpoints.report_failure(endpoint);
        }
        self.recorder.call(kind, endpoint, started, error);
    }
}

fn timed_out(timeout: Duration) -> String {
    format!("timed out after {timeout:?}")
}

fn status_error(status: &tonic::Status) -> String {
    let causes = std::error::Error::source(status).map(|inner| format!(": {}", error_chain(inner))).unwrap_or_default();
    format!("gRPC {:?}: {}{causes}", status.code(), status.message())
}

type HttpPool = LegacyClient<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client (reader or watcher) with its own keep-alive pool, as one APISIX worker.
struct HttpClient {
    endpoints: Arc<Endpoints>,
    pool: HttpPool,
    recorder: Arc<Recorder>,
    timeout: Duration,
}

impl HttpClient {
    fn new(endpoints: Arc<Endpoints>, recorder: Arc<Recorder>, timeout: Duration) -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let pool = LegacyClient::builder(TokioExecutor::new()).build(connector);
        HttpClient { endpoints, pool, recorder, timeout }
    }

    async fn post(&self, endpoint: usize, path: &str, body: &Value) -> Result<hyper::Response<Incoming>, String> {
        let request = hyper::Request::post(format!("{}{path}", self.endpoints.url(endpoint)))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| format!("bad request: {e}"))?;
        let response = self.pool.request(request).await.map_err(|e| error_chain(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]).trim()))
    }

    async fn read_loop(self, interval: Duration, mut stop: watch::Receiver<bool>) {
        let body = json!({
            "key": b64(b"/apisix/upstreams/"),
            "range_end": b64(b"/apisix/upstreams0"),
        });
        loop {
            let started = Instant::now();
            let endpoint = self.endpoints.pick();
            let call = async {
                let response = self.post(endpoint, "/v3/kv/range", &body).await?;
                let bytes = response.into_body().collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes();
                let answer: Value = serde_json::from_slice(&bytes).map_err(|e| format!("answer is not JSON: {e}"))?;
                match answer["kvs"].as_array().map(Vec::len) {
                    Some(UPSTREAM_KEYS) => Ok(()),
                    other => Err(format!("range returned {} kvs, expected {UPSTREAM_KEYS}", other.unwrap_or(0))),
                }
            };
            let result = tokio::time::timeout(self.timeout, call).await.unwrap_or_else(|_| Err(timed_out(self.timeout)));
            if result.is_err() {
                self.endpoints.report_failure(endpoint);
            }
            self.recorder.call(CallKind::HttpRange, endpoint, started, result.err());
            if !pace(started, interval, &mut stop).await {
                return;
            }
        }
    }

    /// Watches `/apisix/` from `start_revision` until stopped; after an error, again from the
    /// next revision not seen, on the next healthy endpoint.
    async fn watch_loop(self, watcher: usize, start_revision: i64, mut stop: watch::Receiver<bool>) {
        let mut next_revision = start_revision;
        // Watchers start spread over the endpoints, as APISIX workers do.
        let mut endpoint = self.endpoints.first_healthy_from(watcher);
        loop {
            // A watch only ends by failing (recorded by `watch_once`) or by the stop.
            tokio::select! {
                _ = self.watch_once(watcher, endpoint, &mut next_revision) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            self.endpoints.report_failure(endpoint);
            tokio::select! {
                _ = tokio::time::sleep(WATCH_RETRY_PAUSE) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            endpoint = self.endpoints.pick();
        }
    }

    /// One watch, until it fails (the failure is recorded); advances `next_revision` past
    /// every event received.
    async fn watch_once(&self, watcher: usize, endpoint: usize, next_revision: &mut i64) {
        let body = json!({ "create_request": {
            "key": b64(b"/apisix/"),
            "range_end": b64(b"/apisix0"),
            "start_revision": next_revision.to_string(),
        }});
        let opened = Instant::now();
        let open = async {
            let response = self.post(endpoint, "/v3/watch", &body).await?;
            let mut lines = JsonLines::new(response.into_body());
            let first = lines.next_result().await?;
            if first["created"] != Value::Bool(true) {
                return Err(format!("first message is not `created`: {first}"));
            }
            Ok(lines)
        };
        let mut lines = match tokio::time::timeout(self.timeout, open).await.unwrap_or_else(|_| Err(timed_out(self.timeout))) {
            Ok(lines) => lines,
            Err(error) => return self.recorder.call(CallKind::Watch, endpoint, opened, Some(format!("open: {error}"))),
        };
        self.recorder.call(CallKind::Watch, endpoint, opened, None);
        let created = Instant::now();
        loop {
            let result = match lines.next_result().await {
                Ok(result) => result,
                Err(error) => return self.recorder.call(CallKind::Watch, endpoint, created, Some(error)),
            };
            if result["canceled"] == Value::Bool(true) {
                return self.recorder.call(CallKind::Watch, endpoint, created, Some(format!("watch canceled: {result}")));
            }
            let revisions = match event_revisions(&result) {
                Ok(revisions) => revisions,
                Err(error) => return self.recorder.call(CallKind::Watch, endpoint, created, Some(error)),
            };
            if let Some(&last) = revisions.iter().max() {
                *next_revision = (*next_revision).max(last + 1);
                self.recorder.arrivals(watcher, &revisions);
            }
        }
    }
}

/// `mod_revision` of every event of a watch `result` (the gateway writes them as strings).
fn event_revisions(result: &Value) -> Result<Vec<i64>, String> {
    let Some(events) = result.get("events") else { return Ok(Vec::new()) };
    let events = events.as_array().ok_or_else(|| format!("events is not a list: {result}"))?;
    events
        .iter()
        .map(|event| match &event["kv"]["mod_revision"] {
            Value::String(text) => text.parse().map_err(|e| format!("bad mod_revision {text:?}: {e}")),
            Value::Number(n) => n.as_i64().ok_or_else(|| format!("bad mod_revision {n}")),
            other => Err(format!("event without mod_revision: {other}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_rotate_and_skip_a_failed_one() {
        let endpoints = Endpoints::new(vec!["a".into(), "b".into(), "c".into()], Duration::from_secs(60));
        assert_eq!((0..4).map(|_| endpoints.pick()).collect::<Vec<_>>(), vec![0, 1, 2, 0]);
        endpoints.report_failure(1);
        assert_eq!((0..4).map(|_| endpoints.pick()).collect::<Vec<_>>(), vec![2, 2, 0, 2]);
        assert_eq!(endpoints.first_healthy_from(1), 2);
        for i in 0..3 {
            endpoints.report_failure(i);
        }
        // Every one failed: plain round-robin.
        let next = endpoints.pick();
        assert_eq!(endpoints.pick(), (next + 1) % 3);
    }

    #[test]
    fn one_endpoint_is_always_picked() {
        let endpoints = Endpoints::new(vec!["proxy".into()], Duration::from_secs(60));
        endpoints.report_failure(0);
        assert_eq!(endpoints.pick(), 0);
        endpoints.report_failure(7);
        assert_eq!(endpoints.first_healthy_from(3), 0);
    }

    #[test]
    fn event_revisions_parse_as_the_gateway_writes_them() {
        let result: Value = serde_json::from_str(
            r#"{"header":{"revision":"9"},"events":[{"kv":{"mod_revision":"8"}},{"type":"DELETE","kv":{"mod_revision":9}}]}"#,
        )
        .unwrap();
        assert_eq!(event_revisions(&result), Ok(vec![8, 9]));
        assert_eq!(event_revisions(&json!({"header":{}})), Ok(vec![]));
        assert!(event_revisions(&json!({"events":[{"kv":{}}]})).is_err());
        assert!(event_revisions(&json!({"events":{}})).is_err());
    }

    #[test]
    fn recorder_knows_when_watchers_caught_up() {
        let recorder = Recorder::new(Instant::now(), 2);
        recorder.ack(5, Instant::now());
        assert!(!recorder.watchers_caught_up());
        recorder.arrivals(0, &[4, 5]);
        recorder.arrivals(1, &[5]);
        assert!(recorder.watchers_caught_up());
        assert_eq!(recorder.snapshot().arrivals.len(), 3);
    }
}
