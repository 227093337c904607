//! The lean HTTP/1.1 watch path (a connection whose first request is `POST /v3/watch`),
//! seen through raw sockets: its answers are hyper's byte for byte (bar `connection: close`
//! and the date), it reads request bodies in every framing a client may use, it refuses bad
//! heads with JSON errors, and a client that leaves takes its watch with it. Every other
//! connection still goes to hyper. (`lean_watch_cached.rs` runs it all again with the
//! whole keyspace served from the watch cache.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{b64, Pair, WAIT};
use etcdgate_proto::etcdserverpb::{kv_client::KvClient, RangeRequest};
use etcdgate_testkit::EtcdVersion;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

/// A raw HTTP/1.1 client connection.
struct Raw {
    tcp: TcpStream,
    /// Received and not yet taken.
    received: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        Raw { tcp, received: Vec::new() }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.tcp.write_all(bytes.as_ref()).await.expect("send");
    }

    /// Reads more; false at the end of the connection.
    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut buf)).await.expect("nothing received in time").unwrap_or(0);
        self.received.extend_from_slice(&buf[..n]);
        n > 0
    }

    /// Takes the first `n` received bytes, reading until there are that many.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.received.len() < n {
            assert!(self.fill().await, "connection ended early: {:?}", String::from_utf8_lossy(&self.received));
        }
        self.received.drain(..n).collect()
    }

    /// Takes everything up to and including `end`.
    async fn take_through(&mut self, end: &[u8]) -> Vec<u8> {
        loop {
            if let Some(at) = self.received.windows(end.len()).position(|w| w == end) {
                return self.take(at + end.len()).await;
            }
            assert!(self.fill().await, "connection ended before {end:?}: {:?}", String::from_utf8_lossy(&self.received));
        }
    }

    /// The next response head, as text.
    async fn head(&mut self) -> String {
        String::from_utf8(self.take_through(b"\r\n\r\n").await).expect("head is text")
    }

    /// The next chunk of a chunked body exactly as sent (size line, data, CRLF), or `None`
    /// at the last chunk.
    async fn chunk(&mut self) -> Option<String> {
        let size_line = String::from_utf8(self.take_through(b"\r\n").await).expect("size line");
        let size = usize::from_str_radix(size_line.trim_end(), 16).unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
        if size == 0 {
            assert_eq!(self.take(2).await, b"\r\n", "no CRLF after the last chunk");
            return None;
        }
        let rest = String::from_utf8(self.take(size + 2).await).expect("chunk is text");
        assert!(rest.ends_with("\r\n"), "chunk not ended by CRLF: {rest:?}");
        Some(size_line + &rest)
    }

    /// A whole answer with a `content-length` body: its head and its body.
    async fn answer(&mut self) -> (String, String) {
        let head = self.head().await;
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no content-length in {head:?}"));
        let body = String::from_utf8(self.take(length).await).expect("body is text");
        (head, body)
    }

    /// Whether the server ends the connection (rather than sending more).
    async fn closed_by_server(&mut self) -> bool {
        !self.fill().await && self.received.is_empty()
    }
}

/// A POST head with a `Content-Length` body.
fn post(path: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: etcdgate\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

fn create_watch(key: &str, start_revision: i64) -> String {
    json!({"create_request": {"key": b64(key), "start_revision": start_revision.to_string()}}).to_string()
}

/// A response head with its date masked.
fn masked_date(head: &str) -> String {
    head.split_inclusive("\r\n").map(|line| if line.starts_with("date: ") { "date: <masked>\r\n" } else { line }).collect()
}

async fn put(p: &Pair, key: &str, value: &str) -> i64 {
    let reply = p.side(common::Which::Gateway).post("/v3/kv/put", json!({"key": b64(key), "value": b64(value)}).to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.raw());
    reply.json()["header"]["revision"].as_str().expect("revision").parse().expect("revision number")
}

/// Expects the 200 head of a watch and its `created` message.
async fn expect_created(raw: &mut Raw) {
    let head = raw.head().await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let created = raw.chunk().await.expect("created message");
    assert!(created.contains(r#""created":true"#), "{created}");
}

/// The sum of a metric's samples on a `/metrics` page served at `addr`.
async fn metric(addr: SocketAddr, name: &str) -> u64 {
    let mut raw = Raw::connect(addr).await;
    raw.send("GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n").await;
    while raw.fill().await {}
    let page = String::from_utf8_lossy(&raw.received).into_owned();
    let samples: Vec<f64> = page
        .lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter(|rest| rest.starts_with([' ', '{']))
        .filter_map(|rest| rest.rsplit(' ').next()?.trim().parse().ok())
        .collect();
    assert!(!samples.is_empty(), "no {name} in the metrics of {addr}");
    samples.iter().sum::<f64>() as u64
}

/// The watches open behind the gateway: etcd's watchers, or, when the gateway serves the
/// whole keyspace from its cache, its hub watches.
async fn open_watches(p: &Pair) -> u64 {
    if common::cache_everything() {
        metric(p.gateway_addr, "etcdgate_cache_watchers").await
    } else {
        let member = p.upstream.client_url(0);
        metric(member.trim_start_matches("http://").parse().expect("member address"), "etcd_debugging_mvcc_watcher_total").await
    }
}

/// Polls until [`open_watches`] is `expected` (a watch left behind fails the test after
/// [`WAIT`]).
async fn wait_for_open_watches(p: &Pair, expected: u64) {
    let wait = async {
        while open_watches(p).await != expected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(WAIT, wait).await.is_err() {
        panic!("{} watches open, expected {expected}", open_watches(p).await);
    }
}

/// A watch on a fresh connection (lean) and the same watch as the second request of a
/// keep-alive connection (hyper): the same head (bar `connection: close`) and the same
/// chunks, byte for byte, for history and for a live event.
#[tokio::test]
async fn lean_answers_are_hypers() {
    let p = Pair::start(EtcdVersion::V3_5).await;
    let first = put(&p, "w", "1").await;
    put(&p, "w", "2").await;
    // A linearizable read: with the cache on, its barrier waits until the cache has the puts
    // (else a watch created first may say the cache's older revision in its `created`).
    let read = p.side(common::Which::Gateway).post("/v3/kv/range", json!({"key": b64("w")}).to_string()).await;
    assert_eq!(read.status, 200, "{}", read.raw());
    let watch = post("/v3/watch", &create_watch("w", first));

    let mut lean = Raw::connect(p.gateway_addr).await;
    lean.send(&watch).await;
    let lean_head = lean.head().await;

    let mut hyper = Raw::connect(p.gateway_addr).await;
    hyper.send(post("/v3/kv/range", &json!({"key": b64("w")}).to_string())).await;
    let (range_head, _) = hyper.answer().await;
    assert!(!range_head.contains("connection: close"), "{range_head}");
    hyper.send(&watch).await;
    let hyper_head = hyper.head().await;

    assert!(lean_head.contains("\r\nconnection: close\r\n"), "{lean_head}");
    assert_eq!(masked_date(&lean_head.replace("connection: close\r\n", "")), masked_date(&hyper_head));
    let history = [lean.chunk().await, lean.chunk().await];
    assert_eq!(history, [hyper.chunk().await, hyper.chunk().await]);
    assert!(history[1].as_deref().is_some_and(|chunk| chunk.contains(r#""events""#)), "{history:?}");
    put(&p, "w", "3").await;
    let live = lean.chunk().await;
    assert_eq!(live, hyper.chunk().await);
    assert!(live.is_some_and(|chunk| chunk.ends_with("}\n\r\n")), "one message per chunk");
}

/// `/v3beta/watch` and `/v3alpha/watch` with a query string; a chunked body; `Expect:
/// 100-continue`; a request sent a few bytes per TCP write.
#[tokio::test]
async fn lean_reads_every_request_framing() {
    let p = Pair::start(EtcdVersion::V3_5).await;
    let revision = put(&p, "k", "1").await;
    let watch = create_watch("k", revision);

    for path in ["/v3beta/watch?a=b", "/v3alpha/watch"] {
        let mut raw = Raw::connect(p.gateway_addr).await;
        raw.send(post(path, &watch)).await;
        expect_created(&mut raw).await;
        assert!(raw.chunk().await.is_some_and(|chunk| chunk.contains(r#""events""#)), "{path}");
    }

    let mut chunked = Raw::connect(p.gateway_addr).await;
    chunked.send("POST /v3/watch HTTP/1.1\r\nHost: etcdgate\r\nTransfer-Encoding: chunked\r\n\r\n").await;
    let (start, end) = watch.split_at(10);
    chunked.send(format!("{:x};ext=1\r\n{start}\r\n", start.len())).await;
    chunked.send(format!("{:X}\r\n{end}\r\n", end.len())).await;
    chunked.send("0\r\n\r\n").await;
    expect_created(&mut chunked).await;
    assert!(chunked.chunk().await.is_some_and(|chunk| chunk.contains(r#""events""#)));

    let mut continued = Raw::connect(p.gateway_addr).await;
    let head = format!("POST /v3/watch HTTP/1.1\r\nHost: etcdgate\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", watch.len());
    continued.send(head).await;
    assert_eq!(continued.take_through(b"\r\n\r\n").await, b"HTTP/1.1 100 Continue\r\n\r\n");
    continued.send(&watch).await;
    expect_created(&mut continued).await;

    let mut trickled = Raw::connect(p.gateway_addr).await;
    for piece in post("/v3/watch", &watch).as_bytes().chunks(3) {
        trickled.send(piece).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    expect_created(&mut trickled).await;
    assert!(trickled.chunk().await.is_some_and(|chunk| chunk.contains(r#""events""#)));
}

/// A malformed head, an oversize head and a bad chunk size get a JSON error (then the
/// connection ends); the gateway goes on serving.
#[tokio::test]
async fn lean_refuses_bad_requests_with_json() {
    let p = Pair::start(EtcdVersion::V3_5).await;
    let json_error = |head: &str, body: &str, status: &str, code: Code| {
        assert!(head.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{head}{body}");
        assert!(head.contains("content-type: application/json\r\n"), "{head}");
        let error: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
        assert_eq!(error["code"], code as i32, "{body}");
        assert_eq!(error["error"], error["message"], "{body}");
    };

    let mut malformed = Raw::connect(p.gateway_addr).await;
    malformed.send("POST /v3/watch HTTP/1.1\r\nHost: etcdgate\r\nno colon here\r\n\r\n").await;
    let (head, body) = malformed.answer().await;
    json_error(&head, &body, "400 Bad Request", Code::InvalidArgument);
    assert!(malformed.closed_by_server().await);

    let mut oversize = Raw::connect(p.gateway_addr).await;
    oversize.send(format!("POST /v3/watch HTTP/1.1\r\nHost: etcdgate\r\nX-Big: {}\r\n\r\n", "x".repeat(20_000))).await;
    let (head, body) = oversize.answer().await;
    json_error(&head, &body, "431 Request Header Fields Too Large", Code::ResourceExhausted);

    let mut bad_chunk = Raw::connect(p.gateway_addr).await;
    bad_chunk.send("POST /v3/watch HTTP/1.1\r\nHost: etcdgate\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n").await;
    let (head, body) = bad_chunk.answer().await;
    json_error(&head, &body, "400 Bad Request", Code::InvalidArgument);

    let revision = put(&p, "after", "1").await;
    let mut watch = Raw::connect(p.gateway_addr).await;
    watch.send(post("/v3/watch", &create_watch("after", revision))).await;
    expect_created(&mut watch).await;
}

/// A client closing its watch connection, whether its body was complete or still open (a
/// chunked body never ended), makes the watch go away upstream.
#[tokio::test]
async fn closed_clients_leave_no_watch_behind() {
    let p = Pair::start(EtcdVersion::V3_5).await;
    let before = open_watches(&p).await;
    let mut complete = Raw::connect(p.gateway_addr).await;
    complete.send(post("/v3/watch", &create_watch("c", 0))).await;
    expect_created(&mut complete).await;
    let mut open_body = Raw::connect(p.gateway_addr).await;
    let watch = create_watch("o", 0);
    open_body
        .send(format!("POST /v3/watch HTTP/1.1\r\nHost: etcdgate\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{watch}\r\n", watch.len()))
        .await;
    expect_created(&mut open_body).await;
    wait_for_open_watches(&p, before + 2).await;

    drop(complete);
    wait_for_open_watches(&p, before + 1).await;
    drop(open_body);
    wait_for_open_watches(&p, before).await;
}

/// Requests that are not an HTTP/1.1 watch opening a connection go to hyper: a range (the
/// connection kept alive for a second request) and gRPC.
#[tokio::test]
async fn other_connections_go_to_hyper() {
    let p = Pair::start(EtcdVersion::V3_5).await;
    put(&p, "r", "1").await;
    let mut raw = Raw::connect(p.gateway_addr).await;
    for _ in 0..2 {
        raw.send(post("/v3/kv/range", &json!({"key": b64("r")}).to_string())).await;
        let (head, body) = raw.answer().await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && !head.contains("connection: close"), "{head}");
        assert!(body.contains(r#""count":"1""#), "{body}");
    }
    let mut kv = KvClient::new(common::channel(&p.gateway_url()));
    let response = kv.range(RangeRequest { key: b"r".to_vec(), ..Default::default() }).await.expect("gRPC range");
    assert_eq!(response.into_inner().count, 1);
}
