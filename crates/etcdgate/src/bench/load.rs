//! The load generator: a closed loop of `concurrency` workers, each sending one request at a
//! time to one target, for a warm-up and then a measured window. Latencies of requests that
//! start inside the window go into an hdrhistogram in microseconds; failures are counted
//! (with the first error message kept so a report can say what went wrong).
//!
//! gRPC cells use `connections` tonic channels (one HTTP/2 connection each) spread over the
//! target's URLs; HTTP cells use hyper-util's legacy client with keep-alive connections
//! (HTTP/1.1 carries one request at a time, so it keeps up to `concurrency` of them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use etcdgate_proto::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use etcdgate_testkit::workload::error_chain;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client as LegacyClient};
use hyper_util::rt::TokioExecutor;
use tonic::transport::{Channel, Endpoint};

/// A request slower than this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Histogram bounds: 1 µs .. 60 s, 3 significant digits.
const HIST_MAX_US: u64 = 60_000_000;

/// What a cell sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// gRPC Range of one random preloaded key, `serializable = true`.
    RangeSerializable,
    /// gRPC Range of one random preloaded key, linearizable (goes through raft's read index).
    RangeLinearizable,
    /// gRPC Put of one random preloaded key.
    Put,
    /// HTTP/1.1 `POST /v3/kv/range` with a JSON body, linearizable.
    HttpRange,
    /// APISIX's full read over HTTP/JSON: every key under `/apisix` (see
    /// [`APISIX_KEYS`]), serializable.
    ApisixReadSerializable,
    /// The same, linearizable (what APISIX sends).
    ApisixReadLinearizable,
    /// gRPC Range of every key under `/apisix` at an earlier revision, linearizable (a
    /// paginated list's later pages, `etcdctl get --rev`): the revision before
    /// [`APISIX_REWRITES`] of the keys were written again (see [`Keyspace::earlier_revision`]).
    ApisixReadEarlier,
}

/// Keys preloaded under `/apisix/routes/` for the APISIX full-read workloads, and their size.
pub const APISIX_KEYS: usize = 1000;
pub const APISIX_VALUE_BYTES: usize = 1024;
/// Keys under `/apisix/routes/` written again, once the proxies are up, for
/// [`Workload::ApisixReadEarlier`] to read from before.
pub const APISIX_REWRITES: usize = 100;

impl Workload {
    /// Every workload, the writes last (see `BenchArgs::workloads`).
    pub const ALL: [Workload; 7] = [
        Workload::RangeSerializable,
        Workload::RangeLinearizable,
        Workload::HttpRange,
        Workload::ApisixReadSerializable,
        Workload::ApisixReadLinearizable,
        Workload::ApisixReadEarlier,
        Workload::Put,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::RangeSerializable => "range-serializable",
            Workload::RangeLinearizable => "range-linearizable",
            Workload::Put => "put",
            Workload::HttpRange => "http-range",
            Workload::ApisixReadSerializable => "apisix-read-serializable",
            Workload::ApisixReadLinearizable => "apisix-read-linearizable",
            Workload::ApisixReadEarlier => "apisix-read-earlier",
        }
    }

    /// Whether it reads the keys under `/apisix` (which are then preloaded).
    pub fn reads_apisix(self) -> bool {
        matches!(self, Workload::ApisixReadSerializable | Workload::ApisixReadLinearizable | Workload::ApisixReadEarlier)
    }

    pub fn is_grpc(self) -> bool {
        !matches!(self, Workload::HttpRange | Workload::ApisixReadSerializable | Workload::ApisixReadLinearizable)
    }

    /// The fixed HTTP body of the APISIX full-read workloads.
    fn apisix_body(self) -> Option<Bytes> {
        let serializable = match self {
            Workload::ApisixReadSerializable => true,
            Workload::ApisixReadLinearizable => false,
            _ => return None,
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = format!(r#"{{"key":"{}","range_end":"{}","serializable":{serializable}}}"#, b64.encode("/apisix"), b64.encode("/apisiy"));
        Some(Bytes::from(body))
    }

    pub fn parse(s: &str) -> Result<Workload, String> {
        Workload::ALL.into_iter().find(|w| w.name() == s).ok_or_else(|| {
            let names: Vec<_> = Workload::ALL.iter().map(|w| w.name()).collect();
            format!("unknown workload {s:?}; one of {}", names.join(", "))
        })
    }
}

/// Where the preloaded keys live.
const BENCH_PREFIX: &str = "/bench/";

/// The preloaded keys and the request bodies made from them, built once so that workers do
/// no encoding of their own beyond what the client library does.
pub struct Keyspace {
    pub keys: Vec<Vec<u8>>,
    pub value: Vec<u8>,
    /// The auth token every request carries (`--auth`): gRPC `token` metadata, the HTTP
    /// `Authorization` header.
    pub token: Option<String>,
    /// `{"key":"<base64>"}` per key, for the HTTP cells.
    http_bodies: Vec<Bytes>,
    /// The revision [`Workload::ApisixReadEarlier`] reads at (0 until set).
    pub earlier_revision: i64,
}

impl Keyspace {
    pub fn new(count: usize, value_size: usize) -> Keyspace {
        let keys: Vec<Vec<u8>> = (0..count).map(|i| format!("{BENCH_PREFIX}key/{i:06}").into_bytes()).collect();
        let value = (0..value_size).map(|i| b'a' + (i % 26) as u8).collect();
        let b64 = base64::engine::general_purpose::STANDARD;
        let http_bodies = keys.iter().map(|k| Bytes::from(format!(r#"{{"key":"{}"}}"#, b64.encode(k)))).collect();
        Keyspace { keys, value, token: None, http_bodies, earlier_revision: 0 }
    }
}

/// How a cell reaches its target.
#[derive(Clone)]
pub enum Client {
    /// KV clients grouped by URL: `groups[u]` are the channels to the target's URL `u`.
    Grpc(Vec<Vec<KvClient<Channel>>>),
    /// One keep-alive pool, and `http://host:port/v3/kv/range` of each of the target's URLs.
    Http { client: Box<HttpPool>, uris: Vec<http::Uri> },
}

type HttpPool = LegacyClient<HttpConnector, Full<Bytes>>;

impl Client {
    /// `connections` gRPC channels spread over `urls` (at least one per URL), all connected.
    pub async fn grpc(urls: &[String], connections: usize) -> anyhow::Result<Client> {
        let mut groups = vec![Vec::new(); urls.len()];
        for j in 0..connections.max(urls.len()) {
            let url = &urls[j % urls.len()];
            let channel = Endpoint::from_shared(url.clone())
                .with_context(|| format!("endpoint {url}"))?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .with_context(|| format!("connecting to {url}"))?;
            groups[j % urls.len()].push(KvClient::new(channel));
        }
        Ok(Client::Grpc(groups))
    }

    /// A keep-alive HTTP/1.1 client keeping up to `max_idle` connections per URL.
    pub fn http(urls: &[String], max_idle: usize) -> anyhow::Result<Client> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = LegacyClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_idle)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let uris = urls
            .iter()
            .map(|u| format!("{}/v3/kv/range", u.trim_end_matches('/')).parse().with_context(|| format!("url {u}")))
            .collect::<anyhow::Result<_>>()?;
        Ok(Client::Http { client: Box::new(client), uris })
    }
}

/// Timing of one cell.
#[derive(Clone, Copy, Debug)]
pub struct CellConfig {
    pub warmup: Duration,
    pub duration: Duration,
    pub concurrency: usize,
}

impl CellConfig {
    /// The measured window of a cell starting at `start`.
    pub fn window(&self, start: Instant) -> (Instant, Instant) {
        let from = start + self.warmup;
        (from, from + self.duration)
    }
}

/// What one cell measured.
pub struct CellResult {
    /// Requests that succeeded inside the measured window.
    pub ok: u64,
    /// Requests that failed (error, unexpected answer or timeout) inside the measured window.
    pub errors: u64,
    /// Failures during the warm-up (not in `errors`, but shown when non-zero).
    pub warmup_errors: u64,
    pub first_error: Option<String>,
    /// Latency of successful requests, µs.
    pub hist: Histogram<u64>,
    pub window: Duration,
}

impl CellResult {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// Runs `workload` against `client` with `config.concurrency` workers: warm-up from `start`,
/// then the measured window ([`CellConfig::window`]).
pub async fn run_cell(
    client: &Client,
    workload: Workload,
    keys: &Arc<Keyspace>,
    config: CellConfig,
    start: Instant,
) -> CellResult {
    let measure_from = start + config.warmup;
    let end = measure_from + config.duration;
    let mut workers = Vec::with_capacity(config.concurrency);
    for id in 0..config.concurrency {
        let client = client.clone();
        let keys = keys.clone();
        workers.push(tokio::spawn(async move { worker(id, client, workload, keys, measure_from, end).await }));
    }
    let mut total = CellResult {
        ok: 0,
        errors: 0,
        warmup_errors: 0,
        first_error: None,
        hist: new_histogram(),
        window: config.duration,
    };
    for worker in workers {
        match worker.await {
            Ok(part) => {
                total.ok += part.ok;
                total.errors += part.errors;
                total.warmup_errors += part.warmup_errors;
                if total.first_error.is_none() {
                    total.first_error = part.first_error;
                }
                let _ = total.hist.add(&part.hist);
            }
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert_with(|| format!("worker panicked: {e}"));
            }
        }
    }
    total
}

/// xorshift64*: cheap, per worker, good enough to pick keys.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % n
    }
}

async fn worker(
    id: usize,
    client: Client,
    workload: Workload,
    keys: Arc<Keyspace>,
    measure_from: Instant,
    end: Instant,
) -> CellResult {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9)));
    let mut out = CellResult {
        ok: 0,
        errors: 0,
        warmup_errors: 0,
        first_error: None,
        hist: new_histogram(),
        window: end - measure_from,
    };
    // Each worker keeps its own clones of the KV clients (cheap: they share channels).
    let mut grpc = match &client {
        Client::Grpc(groups) => groups.clone(),
        Client::Http { .. } => Vec::new(),
    };
    let mut seq: usize = 0;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let key = rng.below(keys.keys.len());
        let apisix_body = workload.apisix_body();
        let attempt = async {
            match &client {
                Client::Grpc(_) => {
                    // Rotate over URLs per request; a worker sticks to one channel of each.
                    let groups = grpc.len();
                    let group = &mut grpc[(id + seq) % groups];
                    let n = group.len();
                    grpc_once(&mut group[id % n], workload, &keys, key).await
                }
                Client::Http { client, uris } => {
                    let body = apisix_body.as_ref().unwrap_or(&keys.http_bodies[key]);
                    http_once(client, &uris[(id + seq) % uris.len()], body, keys.token.as_deref()).await
                }
            }
        };
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {REQUEST_TIMEOUT:?}")),
        };
        let elapsed = t0.elapsed();
        seq = seq.wrapping_add(1);
        let measured = t0 >= measure_from;
        match result {
            Ok(()) if measured => {
                out.ok += 1;
                out.hist.saturating_record((elapsed.as_micros() as u64).max(1));
            }
            Ok(()) => {}
            Err(error) => {
                if measured {
                    out.errors += 1;
                } else {
                    out.warmup_errors += 1;
                }
                out.first_error.get_or_insert(error);
                // Do not spin on a target that fails at once (connection refused).
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    out
}

async fn grpc_once(kv: &mut KvClient<Channel>, workload: Workload, keys: &Keyspace, key: usize) -> Result<(), String> {
    let status = |s: tonic::Status| format!("gRPC {:?}: {}", s.code(), s.message());
    match workload {
        Workload::RangeSerializable | Workload::RangeLinearizable => {
            let request = with_token(
                RangeRequest { key: keys.keys[key].clone(), serializable: workload == Workload::RangeSerializable, ..Default::default() },
                keys,
            );
            let response = kv.range(request).await.map_err(status)?.into_inner();
            if response.kvs.len() != 1 {
                return Err(format!("range returned {} kvs, expected 1", response.kvs.len()));
            }
        }
        Workload::Put => {
            let request = with_token(PutRequest { key: keys.keys[key].clone(), value: keys.value.clone(), ..Default::default() }, keys);
            let response = kv.put(request).await.map_err(status)?.into_inner();
            if response.header.is_none_or(|h| h.revision <= 0) {
                return Err("put response without a header revision".into());
            }
        }
        Workload::ApisixReadEarlier => {
            let request = RangeRequest {
                key: b"/apisix".to_vec(),
                range_end: b"/apisiy".to_vec(),
                revision: keys.earlier_revision,
                ..Default::default()
            };
            let response = kv.range(with_token(request, keys)).await.map_err(status)?.into_inner();
            if response.kvs.len() != APISIX_KEYS {
                return Err(format!("range returned {} kvs, expected {APISIX_KEYS}", response.kvs.len()));
            }
        }
        Workload::HttpRange | Workload::ApisixReadSerializable | Workload::ApisixReadLinearizable => {
            unreachable!("{} is not a gRPC workload", workload.name())
        }
    }
    Ok(())
}

/// `message` as a gRPC request carrying the keyspace's token, if any.
pub(super) fn with_token<T>(message: T, keys: &Keyspace) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = keys.token.as_deref().and_then(|token| token.parse().ok()) {
        request.metadata_mut().insert("token", token);
    }
    request
}

async fn http_once(client: &HttpPool, uri: &http::Uri, body: &Bytes, token: Option<&str>) -> Result<(), String> {
    let mut request = http::Request::post(uri.clone()).header(http::header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, token);
    }
    let request = request
        .body(Full::new(body.clone()))
        .map_err(|e| format!("building request: {e}"))?;
    let response = client.request(request).await.map_err(|e| error_chain(&e))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| format!("reading body: {e}"))?.to_bytes();
    if !status.is_success() {
        let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(format!("HTTP {status}: {shown}"));
    }
    if !body.windows(5).any(|w| w == b"\"kvs\"") {
        let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(format!("HTTP 200 without kvs: {shown}"));
    }
    Ok(())
}

