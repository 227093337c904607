//! Shared harness for the wire-compatibility tests: "a client pointed at etcdgate cannot tell
//! it from etcd".
//!
//! A [`Pair`] is two identical, freshly started 1-member etcd clusters of one version: A is
//! talked to directly, B only through an in-process etcdgate. Every test sends the same
//! sequence of requests to both [`Side`]s and requires the same answers once the fields that
//! legitimately differ between two clusters (`cluster_id`, `member_id`, `raft_term` in
//! response headers, auth tokens) are taken out. Revisions, versions, values, counts, error
//! codes and messages must match exactly, and so must the key order of every JSON object.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use etcdgate_proto::etcdserverpb::{kv_client::KvClient, RangeRequest};
use etcdgate_cache::HistoryLimits;
use etcdgate_server::{CacheConfig, Caches, Gateway, ServerConfig};
use etcdgate_testkit::{Cluster, EtcdVersion};
use etcdgate_upstream::{Pool, PoolOptions};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

/// How long any single wait for a reply may take before the test fails (a hang is a bug).
pub const WAIT: Duration = Duration::from_secs(15);

/// Header fields that differ between two clusters and are dropped before comparing.
const HEADER_IDS: [&str; 3] = ["cluster_id", "member_id", "raft_term"];

// ---------------------------------------------------------------------------------------------
// The pair of clusters and the gateway.

/// Whether this test binary is a `*_cached` one, whose gateway serves the whole keyspace from
/// its watch cache (each includes the scenarios of its namesake).
pub fn cache_everything() -> bool {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_name().map(|name| name.to_string_lossy().contains("_cached")))
        .unwrap_or(false)
}

/// Two identical clusters of one etcd version, the second behind an in-process etcdgate.
pub struct Pair {
    pub version: EtcdVersion,
    /// Cluster A: the reference, talked to directly.
    pub etcd: Cluster,
    /// Cluster B: behind the gateway (tests may read it directly to check nothing was written).
    pub upstream: Cluster,
    pub gateway_addr: SocketAddr,
    http: HttpClient,
    channels: [Channel; 2],
    tokens: Mutex<[Option<String>; 2]>,
    _shutdown: oneshot::Sender<()>,
}

/// Which side of a [`Pair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Etcd,
    Gateway,
}

impl Pair {
    /// Default gateway configuration.
    pub async fn start(version: EtcdVersion) -> Pair {
        Pair::start_with(version, ServerConfig::default()).await
    }

    /// The gateway with `config`; in a `*_cached` test binary, serving the whole keyspace
    /// from its watch cache.
    pub async fn start_with(version: EtcdVersion, config: ServerConfig) -> Pair {
        let cache = cache_everything().then(|| CacheConfig {
            prefixes: vec![Vec::new()],
            limits: HistoryLimits::default(),
            max_request_bytes: config.max_request_bytes,
            login: None,
        });
        Pair::start_gateway(version, config, cache).await
    }

    async fn start_gateway(version: EtcdVersion, config: ServerConfig, cache: Option<CacheConfig>) -> Pair {
        let start = || async { Cluster::start(version, 1).await.unwrap_or_else(|e| panic!("start {version}: {e:#}")) };
        let (etcd, upstream) = tokio::join!(start(), start());
        let pool = Arc::new(Pool::new(&upstream.client_urls(), PoolOptions::default()).expect("pool"));
        let gateway = Arc::new(match cache {
            Some(cache) => Gateway::with_caches(pool.clone(), Caches::start(pool, &cache)),
            None => Gateway::new(pool),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind gateway");
        let gateway_addr = listener.local_addr().expect("gateway addr");
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = shutdown_rx.await;
            };
            etcdgate_server::serve(listener, gateway, config, shutdown).await.expect("serve");
        });
        let channels = [channel(&etcd.client_url(0)), channel(&format!("http://{gateway_addr}"))];
        Pair {
            version,
            etcd,
            upstream,
            gateway_addr,
            http: http_client(),
            channels,
            tokens: Mutex::new([None, None]),
            _shutdown: shutdown_tx,
        }
    }

    /// Runs `test` once per supported etcd version, each on a fresh pair.
    pub async fn each_version<F, Fut>(test: F)
    where
        F: Fn(Pair) -> Fut,
        Fut: Future<Output = ()>,
    {
        for version in EtcdVersion::all() {
            test(Pair::start(version).await).await;
        }
    }

    pub fn gateway_url(&self) -> String {
        format!("http://{}", self.gateway_addr)
    }

    /// One side: its URL, gRPC channel and current auth token.
    pub fn side(&self, which: Which) -> Side {
        let i = which as usize;
        Side {
            which,
            url: match which {
                Which::Etcd => self.etcd.client_url(0),
                Which::Gateway => self.gateway_url(),
            },
            channel: self.channels[i].clone(),
            token: self.tokens.lock().unwrap()[i].clone(),
            http: self.http.clone(),
        }
    }

    pub fn sides(&self) -> [Side; 2] {
        [self.side(Which::Etcd), self.side(Which::Gateway)]
    }

    /// Sets the token each side sends (`Authorization` over HTTP, `token` over gRPC).
    pub fn set_tokens(&self, tokens: [Option<String>; 2]) {
        *self.tokens.lock().unwrap() = tokens;
    }

    /// Authenticates on both sides over HTTP (answers compared with the token masked) and
    /// makes every later request of this pair carry the tokens.
    pub async fn login(&self, name: &str, password: &str) {
        self.set_tokens([None, None]);
        let body = format!(r#"{{"name":"{name}","password":"{password}"}}"#);
        let replies = self.post_both("/v3/auth/authenticate", body).await;
        assert_same(self.version, &format!("login {name}"), &replies[0].normalized(), &replies[1].normalized());
        let token = |r: &HttpReply| {
            let v: Value = serde_json::from_slice(&r.body).expect("authenticate reply is JSON");
            v["token"].as_str().unwrap_or_else(|| panic!("no token in {v}")).to_string()
        };
        self.set_tokens([Some(token(&replies[0])), Some(token(&replies[1]))]);
    }

    /// Runs `scenario` against the direct side, then against the gateway side.
    pub async fn both<F, Fut, T>(&self, scenario: F) -> [T; 2]
    where
        F: Fn(Side) -> Fut,
        Fut: Future<Output = T>,
    {
        let etcd = scenario(self.side(Which::Etcd)).await;
        let gateway = scenario(self.side(Which::Gateway)).await;
        [etcd, gateway]
    }

    /// Runs `scenario` on both sides and requires the same transcript; returns it.
    pub async fn same<F, Fut, T>(&self, what: &str, scenario: F) -> T
    where
        F: Fn(Side) -> Fut,
        Fut: Future<Output = T>,
        T: PartialEq + std::fmt::Debug,
    {
        let [etcd, gateway] = self.both(scenario).await;
        assert_eq!(etcd, gateway, "{}: {what}: etcd (left) and etcdgate (right) differ", self.version);
        etcd
    }

    /// POSTs `body` to `path` on both sides; both answers, compared by the caller.
    pub async fn post_both(&self, path: &str, body: impl Into<Bytes>) -> [HttpReply; 2] {
        let body: Bytes = body.into();
        self.both(|side| {
            let body = body.clone();
            async move { side.post(path, body).await }
        })
        .await
    }

    /// POSTs `body` to `path` on both sides and requires the same normalized answer (status,
    /// content type, body with key order). Returns etcd's answer as JSON.
    pub async fn http(&self, path: &str, body: impl Into<String>) -> Value {
        self.http_masked(path, body, &[]).await
    }

    /// [`Pair::http`], with the values of `masked` keys (e.g. a remaining `TTL`) replaced.
    pub async fn http_masked(&self, path: &str, body: impl Into<String>, masked: &[&str]) -> Value {
        let body = body.into();
        let [etcd, gateway] = self.post_both(path, body.clone()).await;
        let what = format!("POST {path} {}", abbreviate(&body));
        assert_same(self.version, &what, &etcd.normalized_masked(masked), &gateway.normalized_masked(masked));
        if etcd.status != 200 {
            // Error bodies have nothing to normalize: they must be byte-identical.
            assert_same(self.version, &what, &etcd.raw(), &gateway.raw());
        }
        etcd.json()
    }

    /// Sends `message` with `call` to both sides over gRPC and requires the same outcome:
    /// the response as normalized JSON, or the same status code and message.
    pub async fn grpc<Req, Resp, F, Fut>(&self, message: Req, call: F) -> Outcome
    where
        Req: Clone + std::fmt::Debug,
        Resp: serde::Serialize,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        self.grpc_masked(message, &[], call).await
    }

    /// [`Pair::grpc`] with the values of `masked` keys replaced.
    pub async fn grpc_masked<Req, Resp, F, Fut>(&self, message: Req, masked: &[&str], call: F) -> Outcome
    where
        Req: Clone + std::fmt::Debug,
        Resp: serde::Serialize,
        F: Fn(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let what = abbreviate(&format!("{message:?}"));
        let [etcd, gateway] = self
            .both(|side| {
                let request = side.request(message.clone());
                let (call, what) = (&call, &what);
                async move {
                    let result = tokio::time::timeout(WAIT, call(side.channel, request)).await;
                    outcome(result.unwrap_or_else(|_| panic!("{:?}: gRPC {what} hung", side.which)), masked)
                }
            })
            .await;
        assert_eq!(etcd, gateway, "{}: gRPC {what}: etcd (left) and etcdgate (right) differ", self.version);
        etcd
    }

    /// [`Side::settle`] on both sides.
    pub async fn settle(&self) {
        for side in self.sides() {
            side.settle().await;
        }
    }

    /// The current revision of a cluster, read directly (not through the gateway).
    pub async fn revision(&self, which: Which) -> i64 {
        let cluster = match which {
            Which::Etcd => &self.etcd,
            Which::Gateway => &self.upstream,
        };
        let mut kv = KvClient::new(channel(&cluster.client_url(0)));
        let response = kv.range(RangeRequest { key: b"\0".to_vec(), ..Default::default() }).await.expect("range");
        response.into_inner().header.expect("header").revision
    }
}

// ---------------------------------------------------------------------------------------------
// One side: HTTP and gRPC with that side's token.

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A lazily connected gRPC channel to `url`.
pub fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string()).expect("endpoint").connect_lazy()
}

#[derive(Clone)]
pub struct Side {
    pub which: Which,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub channel: Channel,
    pub token: Option<String>,
    http: HttpClient,
}

impl Side {
    /// POSTs a JSON body (with the side's token, if any).
    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> HttpReply {
        self.send(http::Method::POST, path, body.into(), &[]).await
    }

    pub async fn get(&self, path: &str) -> HttpReply {
        self.send(http::Method::GET, path, Bytes::new(), &[]).await
    }

    /// One HTTP/1.1 request with extra headers; the whole answer, within [`WAIT`].
    pub async fn send(&self, method: http::Method, path: &str, body: Bytes, headers: &[(&str, &str)]) -> HttpReply {
        let mut request = http::Request::builder().method(method).uri(format!("{}{path}", self.url));
        request = request.header("content-type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", token.as_str());
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body)).expect("request");
        let exchange = async {
            let response = self.http.request(request).await.expect("HTTP request");
            let status = response.status().as_u16();
            let content_type = content_type(response.headers());
            let headers = response.headers().clone();
            let body = response.into_body().collect().await.expect("HTTP body").to_bytes();
            HttpReply { status, content_type, headers, body }
        };
        tokio::time::timeout(WAIT, exchange).await.unwrap_or_else(|_| panic!("{:?}: POST {path} hung", self.which))
    }

    /// Waits until raft has caught up with the last membership change: etcd answers a
    /// membership call once it is applied, but raft drops (and etcd then waits forever on) a
    /// second change proposed before it has advanced past the first. A linearizable read
    /// goes through raft's next cycle, so it returns only after that.
    pub async fn settle(&self) {
        let reply = self.post("/v3/kv/range", r#"{"key":"AA=="}"#).await;
        assert_eq!(reply.status, 200, "{:?}: settle: {}", self.which, reply.raw());
    }

    /// A gRPC request carrying the side's token.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert("token", token.parse().expect("token metadata"));
        }
        request
    }

    /// Opens a bidirectional gRPC stream whose first message is `first` (etcd sends response
    /// headers only with its first answer, so the stream cannot open on an empty input).
    pub async fn grpc_stream<Req, Resp, F, Fut>(&self, first: Req, open: F) -> Result<GrpcStream<Req, Resp>, Status>
    where
        Req: Send + 'static,
        F: FnOnce(Channel, Request<tokio_stream::wrappers::ReceiverStream<Req>>) -> Fut,
        Fut: Future<Output = Result<Response<Streaming<Resp>>, Status>>,
    {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.expect("queue first message");
        let request = self.request(tokio_stream::wrappers::ReceiverStream::new(rx));
        let response = tokio::time::timeout(WAIT, open(self.channel.clone(), request)).await.expect("stream open hung")?;
        Ok(GrpcStream { tx: Some(tx), rx: response.into_inner() })
    }

    /// Opens an HTTP/1.1 POST whose body is sent piece by piece; see [`HttpStream`].
    pub async fn http_stream(&self, path: &str) -> HttpStream {
        HttpStream::open(&self.url, path, self.token.as_deref()).await
    }
}

/// A whole HTTP answer.
#[derive(Clone, Debug)]
pub struct HttpReply {
    pub status: u16,
    pub content_type: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl HttpReply {
    /// Status, content type and the body with header ids and tokens taken out (every JSON
    /// line re-serialized in its own key order; anything else kept as text).
    pub fn normalized(&self) -> String {
        self.normalized_masked(&[])
    }

    pub fn normalized_masked(&self, masked: &[&str]) -> String {
        format!("{} {}\n{}", self.status, self.content_type.as_deref().unwrap_or("-"), normalize_body(&self.body, masked))
    }

    /// The values of the headers whose names start with `prefix`, sorted by name.
    pub fn headers_named(&self, prefix: &str) -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(name, _)| name.as_str().starts_with(prefix))
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("?").to_string()))
            .collect();
        found.sort();
        found
    }

    /// Status, content type and the body exactly as sent.
    pub fn raw(&self) -> String {
        format!("{} {}\n{}", self.status, self.content_type.as_deref().unwrap_or("-"), String::from_utf8_lossy(&self.body))
    }

    /// The body as JSON, with header ids removed (Null if it is not JSON).
    pub fn json(&self) -> Value {
        let mut value: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        normalize(&mut value, &[]);
        value
    }

    /// Asserts an error answer of etcdgate's own: the given status and a JSON body with
    /// exactly `error`, `code`, `message`, in etcd's layout for the pair's version.
    pub fn assert_json_error(&self, status: u16, code: tonic::Code) -> String {
        assert_eq!(self.status, status, "unexpected answer: {}", self.raw());
        assert_eq!(self.content_type.as_deref(), Some("application/json"), "{}", self.raw());
        let value: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.raw()));
        let keys: Vec<&str> = value.as_object().expect("object").keys().map(String::as_str).collect();
        assert!(keys == ["error", "code", "message"] || keys == ["error", "message", "code"], "{}", self.raw());
        assert_eq!(value["code"], code as i32, "{}", self.raw());
        assert_eq!(value["error"], value["message"], "{}", self.raw());
        value["message"].as_str().unwrap_or_default().to_string()
    }
}

fn content_type(headers: &http::HeaderMap) -> Option<String> {
    headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// Normalization and comparison.

/// Removes the header fields that differ between clusters (at any depth: txn responses and
/// stream results nest headers), masks auth tokens and the `masked` keys.
pub fn normalize(value: &mut Value, masked: &[&str]) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(header)) = map.get_mut("header") {
                for key in HEADER_IDS {
                    header.shift_remove(key);
                }
            }
            for (key, value) in map.iter_mut() {
                if key == "token" || masked.contains(&key.as_str()) {
                    *value = Value::String("<masked>".into());
                } else {
                    normalize(value, masked);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| normalize(v, masked)),
        _ => {}
    }
}

/// A body normalized line by line (one line for unary answers, one per message for streams).
pub fn normalize_body(body: &[u8], masked: &[&str]) -> String {
    let text = String::from_utf8_lossy(body);
    text.split_inclusive('\n').map(|line| normalize_line(line, masked)).collect()
}

fn normalize_line(line: &str, masked: &[&str]) -> String {
    let (content, newline) = match line.strip_suffix('\n') {
        Some(content) => (content, "\n"),
        None => (line, ""),
    };
    match serde_json::from_str::<Value>(content) {
        Ok(mut value) if !content.trim().is_empty() => {
            normalize(&mut value, masked);
            format!("{}{newline}", serde_json::to_string(&value).expect("serialize"))
        }
        _ => line.to_string(),
    }
}

/// Fails with both answers in full if they differ.
pub fn assert_same(version: EtcdVersion, what: &str, etcd: &str, gateway: &str) {
    assert!(
        etcd == gateway,
        "{version}: {what}: etcd and etcdgate differ\n--- etcd ---\n{etcd}\n--- etcdgate ---\n{gateway}\n"
    );
}

fn abbreviate(text: &str) -> String {
    if text.len() <= 200 {
        text.to_string()
    } else {
        format!("{}... ({} bytes)", text.chars().take(200).collect::<String>(), text.len())
    }
}

/// A gRPC call's outcome as compared: the response as normalized JSON, or code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome(pub Result<String, (tonic::Code, String)>);

impl Outcome {
    /// The response as JSON; panics on an error.
    pub fn json(&self) -> Value {
        match &self.0 {
            Ok(json) => serde_json::from_str(json).expect("outcome JSON"),
            Err(error) => panic!("expected success, got {error:?}"),
        }
    }

    /// Requires the call to have failed with `code` and `message`.
    pub fn expect_error(&self, code: tonic::Code, message: &str) {
        assert_eq!(self.0.as_ref().err(), Some(&(code, message.to_string())), "{self:?}");
    }
}

/// Turns a gRPC result into an [`Outcome`].
pub fn outcome<Resp: serde::Serialize>(result: Result<Response<Resp>, Status>, masked: &[&str]) -> Outcome {
    Outcome(match result {
        Ok(response) => Ok(to_json(response.get_ref(), masked)),
        Err(status) => Err((status.code(), status.message().to_string())),
    })
}

/// A message as normalized JSON (proto3 JSON, as the HTTP gateway would write it).
pub fn to_json<T: serde::Serialize>(message: &T, masked: &[&str]) -> String {
    let mut value = serde_json::to_value(message).expect("to JSON");
    normalize(&mut value, masked);
    serde_json::to_string(&value).expect("serialize")
}

/// Base64 of a string, as JSON wants bytes.
pub fn b64(text: impl AsRef<[u8]>) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

// ---------------------------------------------------------------------------------------------
// Streams.

/// A bidirectional gRPC stream: send requests, read responses (each read bounded by [`WAIT`]).
pub struct GrpcStream<Req, Resp> {
    tx: Option<mpsc::Sender<Req>>,
    rx: Streaming<Resp>,
}

impl<Req, Resp> GrpcStream<Req, Resp> {
    pub async fn send(&mut self, message: Req) {
        let tx = self.tx.as_ref().expect("input already closed");
        assert!(tx.send(message).await.is_ok(), "stream input closed");
    }

    /// Ends the client's side of the stream.
    pub fn close_input(&mut self) {
        self.tx = None;
    }

    /// The next message (`Ok(None)` at the end of the stream).
    pub async fn next(&mut self) -> Result<Option<Resp>, Status> {
        tokio::time::timeout(WAIT, self.rx.message()).await.expect("no stream message in time")
    }
}

/// Reads the next message of a server stream, normalized, or the error that ended it.
pub async fn next_outcome<Resp: serde::Serialize>(stream: &mut Streaming<Resp>, masked: &[&str]) -> Result<Option<String>, (tonic::Code, String)> {
    match tokio::time::timeout(WAIT, stream.message()).await.expect("no stream message in time") {
        Ok(Some(message)) => Ok(Some(to_json(&message, masked))),
        Ok(None) => Ok(None),
        Err(status) => Err((status.code(), status.message().to_string())),
    }
}

/// An HTTP/1.1 POST on its own connection whose request body is streamed (chunked) and whose
/// response body is read frame by frame: each frame is one HTTP chunk (or part of one).
pub struct HttpStream {
    tx: Option<mpsc::Sender<Result<Frame<Bytes>, Infallible>>>,
    response: Option<http::Response<Incoming>>,
    pending: Option<tokio::task::JoinHandle<hyper::Result<http::Response<Incoming>>>>,
    pub status: u16,
    pub content_type: Option<String>,
}

impl HttpStream {
    async fn open(url: &str, path: &str, token: Option<&str>) -> HttpStream {
        let authority = url.trim_start_matches("http://").to_string();
        let tcp = TcpStream::connect(&authority).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut request = http::Request::post(format!("{url}{path}"))
            .header("host", authority)
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", token);
        }
        let request = request.body(body).expect("request");
        // The answer's head may only come after the first message, so wait for it lazily.
        let pending = tokio::spawn(async move { sender.send_request(request).await });
        HttpStream { tx: Some(tx), response: None, pending: Some(pending), status: 0, content_type: None }
    }

    /// Sends a piece of the request body.
    pub async fn send(&mut self, data: impl Into<Bytes>) {
        let tx = self.tx.as_ref().expect("input already closed");
        assert!(tx.send(Ok(Frame::data(data.into()))).await.is_ok(), "request body closed");
    }

    /// Ends the request body.
    pub fn close_input(&mut self) {
        self.tx = None;
    }

    /// Waits for the response head (status and content type).
    pub async fn head(&mut self) -> (u16, Option<String>) {
        if let Some(pending) = self.pending.take() {
            let response = tokio::time::timeout(WAIT, pending).await.expect("no response head in time").expect("join");
            let response = response.expect("response");
            self.status = response.status().as_u16();
            self.content_type = content_type(response.headers());
            self.response = Some(response);
        }
        (self.status, self.content_type.clone())
    }

    /// The next data frame of the response body; `None` at its end.
    pub async fn next_frame(&mut self) -> Option<Bytes> {
        self.head().await;
        let body = self.response.as_mut().expect("response").body_mut();
        loop {
            let frame = tokio::time::timeout(WAIT, body.frame()).await.expect("no response frame in time")?;
            if let Ok(data) = frame.expect("response body").into_data() {
                if !data.is_empty() {
                    return Some(data);
                }
            }
        }
    }

    /// The next frame, required to be exactly one JSON message ending in `\n` (etcd flushes
    /// every message on its own); returned normalized.
    pub async fn next_message(&mut self) -> Option<String> {
        let frame = self.next_frame().await?;
        let text = String::from_utf8_lossy(&frame).into_owned();
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "a response chunk is not exactly one message: {text:?}"
        );
        Some(normalize_line(&text, &[]))
    }
}

/// Bodies that are not a valid request, on unary paths and on the watch stream.
pub const MALFORMED_BODIES: &[&str] = &[
    r#"{"key":"YQ==","value":"!!notbase64!!"}"#,
    r#"{"key":5}"#,
    r#"{"key":"YQ==","lease":"abc"}"#,
    r#"{"key":"YQ==","prev_kv":"yes"}"#,
    r#"{"key":"YQ==","lease":1.5}"#,
    r#"[1,2,3]"#,
    r#"{"key" "YQ=="}"#,
    "not json",
    "\u{0}\u{1}\u{2}",
    r#"{"key":"YQ==",}"#,
    r#"{"key":"a\u00"}"#,
    r#"{"key":"YQ==","value":[1,2,}"#,
    "\u{feff}{\"key\":\"YQ==\"}",
    r#"{"key":"YQ==","lease":-x}"#,
];

/// Bodies etcd's gateway refuses in Go's words, with the message for a put: base64 Go's
/// `StdEncoding` refuses (unpadded, the URL-safe alphabet, padding cut short), integers that
/// are not (a fraction, a string that is no number, out of range: named as written), a wrong
/// JSON type (also for the whole body).
pub const GO_ERROR_BODIES: &[(&str, &str)] = &[
    (r#"{"key":"YQ","value":"YQ=="}"#, "illegal base64 data at input byte 0"),
    (r#"{"key":"_-8=","value":"YQ=="}"#, "illegal base64 data at input byte 0"),
    (r#"{"key":"YQ==","value":"YWI=YQ=="}"#, "illegal base64 data at input byte 4"),
    (r#"{"key":"YQ==","value":"YQ="}"#, "illegal base64 data at input byte 3"),
    (r#"{"key":"YQ==","lease":1.5}"#, "json: cannot unmarshal number 1.5 into Go value of type int64"),
    (r#"{"key":"YQ==","lease":"2.5"}"#, "json: cannot unmarshal number 2.5 into Go value of type int64"),
    (r#"{"key":"YQ==","lease":"99999999999999999999"}"#, "json: cannot unmarshal number 99999999999999999999 into Go value of type int64"),
    (r#"{"key":"YQ==","lease":"abc"}"#, "invalid character 'a' looking for beginning of value"),
    (r#"{"key":"YQ==","lease":"-"}"#, "invalid character ' ' in numeric literal"),
    (r#"{"key":"YQ==","lease":"7x"}"#, "invalid character 'x' after top-level value"),
    (r#"{"key":"YQ==","lease":true}"#, "json: cannot unmarshal bool into Go value of type int64"),
    (r#"{"key":5}"#, "json: cannot unmarshal number into Go value of type []uint8"),
    (r#"{"key":{"a":1}}"#, "json: cannot unmarshal object into Go value of type []uint8"),
    (r#"{"key":"YQ==","lease":-1e-09}"#, "json: cannot unmarshal number -1e-09 into Go value of type int64"),
    ("{\"key\":\"YQ==\",\n\"lease\":1.50}", "json: cannot unmarshal number 1.50 into Go value of type int64"),
    (r#"{"key":"YQ==","lease":99999999999999999999}"#, "json: cannot unmarshal number 99999999999999999999 into Go value of type int64"),
    ("2Z1enovYt", "json: cannot unmarshal number into Go value of type map[string]json.RawMessage"),
    ("true", "json: cannot unmarshal bool into Go value of type map[string]json.RawMessage"),
];

