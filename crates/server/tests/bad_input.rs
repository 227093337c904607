//! Bad input over HTTP: every malformed, oversize, empty or stalled request gets etcd's own
//! error or a 4xx/5xx with a JSON body (never plain text, never a hang past etcdgate's body
//! timeout), other clients are served meanwhile, and nothing reaches the cluster.

mod common;

use std::time::Duration;

use common::{b64, HttpReply, Pair, Which, GO_ERROR_BODIES, MALFORMED_BODIES, WAIT};
use etcdgate_server::ServerConfig;
use etcdgate_testkit::EtcdVersion;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

/// Asserts etcdgate answered as etcd does: the same answer where etcd accepts the body (it
/// ignores what it does not know), else the same status and code.
fn same_status_and_code(p: &Pair, what: &str, etcd: &HttpReply, gateway: &HttpReply) {
    if etcd.status == 200 {
        return common::assert_same(p.version, what, &etcd.normalized(), &gateway.normalized());
    }
    assert_eq!(etcd.status, gateway.status, "{} {what}: etcd {} vs etcdgate {}", p.version, etcd.raw(), gateway.raw());
    let code = serde_json::from_slice::<Value>(&etcd.body).ok().and_then(|v| v["code"].as_i64()).unwrap_or(2);
    gateway.assert_json_error(etcd.status, Code::from_i32(code as i32));
}

/// [`same_status_and_code`], and the same message: Go's words for JSON that does not parse,
/// base64 and numbers Go refuses, values of the wrong type.
fn same_error(p: &Pair, what: &str, etcd: &HttpReply, gateway: &HttpReply) {
    same_status_and_code(p, what, etcd, gateway);
    let message = |reply: &HttpReply| serde_json::from_slice::<Value>(&reply.body).unwrap_or_default()["error"].clone();
    assert_eq!(message(gateway), message(etcd), "{} {what}: etcd {} vs etcdgate {}", p.version, etcd.raw(), gateway.raw());
}

#[tokio::test]
async fn malformed_unary_bodies() {
    Pair::each_version(|p| async move {
        p.http("/v3/kv/put", json!({"key": b64("a"), "value": b64("1")}).to_string()).await;
        let before = p.revision(Which::Gateway).await;
        // Every body is bad for a put: nothing may be written.
        for body in MALFORMED_BODIES {
            let [etcd, gateway] = p.post_both("/v3/kv/put", *body).await;
            same_error(&p, &format!("POST /v3/kv/put {body:?}"), &etcd, &gateway);
        }
        assert_eq!(p.revision(Which::Gateway).await, before, "a malformed request was applied");
        // Range and delete ignore the fields they do not have (however bad their values):
        // both sides accept the same ones.
        for path in ["/v3/kv/range", "/v3/kv/deleterange"] {
            for body in MALFORMED_BODIES {
                let [etcd, gateway] = p.post_both(path, *body).await;
                same_error(&p, &format!("POST {path} {body:?}"), &etcd, &gateway);
            }
        }
        // Base64 and integers etcd refuses are refused with etcd's words (range and delete
        // ignore `value` and `lease`).
        let error = |reply: &HttpReply| serde_json::from_slice::<Value>(&reply.body).ok().map(|v| v["error"].clone());
        for path in ["/v3/kv/put", "/v3/kv/range", "/v3/kv/deleterange"] {
            for (body, message) in GO_ERROR_BODIES {
                let [etcd, gateway] = p.post_both(path, *body).await;
                same_error(&p, &format!("POST {path} {body:?}"), &etcd, &gateway);
                if path == "/v3/kv/put" {
                    assert_eq!(error(&gateway), Some(json!(message)), "{} POST {path} {body:?}", p.version);
                }
            }
        }
        // A value of the wrong JSON type for a message, repeated, bool or string field.
        for (path, body) in [
            ("/v3/kv/range", "5"),
            ("/v3/kv/txn", r#"{"compare":5}"#),
            ("/v3/kv/txn", r#"{"success":{}}"#),
            ("/v3/kv/txn", r#"{"success":[true]}"#),
            ("/v3/kv/txn", r#"{"success":[{"request_range":{"key":"YQ==","keys_only":"yes"}}]}"#),
            ("/v3/kv/range", r#"{"key":"YQ==","keys_only":[1]}"#),
            ("/v3/kv/range", r#"{"key":"YQ==","serializable":1.5}"#),
            ("/v3/auth/role/add", r#"{"name":5}"#),
        ] {
            let [etcd, gateway] = p.post_both(path, body).await;
            same_error(&p, &format!("POST {path} {body:?}"), &etcd, &gateway);
        }
        // Bytes that are not UTF-8: Go reads them as U+FFFD inside strings (an unknown field
        // is still ignored, a name is still looked up) and refuses them outside strings.
        for (path, body) in [
            ("/v3/kv/range", &b"{\"key\":\"YQ==\",\"fa\xe7lure\":1}"[..]),
            ("/v3/auth/user/get", b"{\"name\":\"n\xffme\"}"),
            ("/v3/kv/put", b"{\"key\":\"YQ==\",\xcf}"),
            ("/v3/kv/put", b"{\"key\":\"YQ==\",\n\"k\x97ys\""),
            ("/v3/kv/put", b"{\"key\":5, \"value\" \"YQ==\"}"),
            ("/v3/watch", b"{\"create_request\":{\"key\":\"YQ==\",\xcf}}"),
        ] {
            let [etcd, gateway] = p.post_both(path, bytes::Bytes::from_static(body)).await;
            same_error(&p, &format!("POST {path} {}", String::from_utf8_lossy(body)), &etcd, &gateway);
        }
        // A quoted integer may have spaces around it, as etcd reads it.
        p.http("/v3/kv/put", r#"{"key":"YQ==","value":"YQ==","lease":" 7 "}"#).await;
        p.http("/v3/kv/range", r#"{"key":"YQ==","limit":" 1"}"#).await;
        // Truncated JSON has etcd's own words, and an empty body, or `null`, is the empty
        // message.
        for path in ["/v3/kv/put", "/v3/kv/range", "/v3/kv/deleterange", "/v3/lease/leases"] {
            p.http(path, r#"{"key":"YQ=="#).await;
            p.http(path, "").await;
            p.http(path, "null").await;
        }
        assert_eq!(p.revision(Which::Gateway).await, p.revision(Which::Etcd).await);
    })
    .await;
}

#[tokio::test]
async fn malformed_watch_bodies() {
    Pair::each_version(|p| async move {
        for body in MALFORMED_BODIES.iter().map(|b| b.replace(r#""key""#, r#""create_request":{"key""#)) {
            let [etcd, gateway] = p.post_both("/v3/watch", body.clone()).await;
            same_error(&p, &format!("POST /v3/watch {body:?}"), &etcd, &gateway);
        }
        p.http("/v3/watch", r#"{"create_request":{"key":"YQ=="#).await;
    })
    .await;
}

/// A 5 MiB body: past etcdgate's body limit (twice the gRPC limit), which etcd's gateway
/// reads whole and then refuses at its gRPC limit. Both say 429 / ResourceExhausted.
#[tokio::test]
async fn oversize_bodies() {
    Pair::each_version(|p| async move {
        let before = p.revision(Which::Gateway).await;
        let huge = b64("x".repeat(5 * 1024 * 1024));
        let put = json!({"key": b64("big"), "value": huge}).to_string();
        let [etcd, gateway] = p.post_both("/v3/kv/put", put).await;
        same_status_and_code(&p, "5 MiB put", &etcd, &gateway);
        let watch = json!({"create_request": {"key": huge}}).to_string();
        let [etcd, gateway] = p.post_both("/v3/watch", watch).await;
        // A stream's error line: etcd's message is grpc's, etcdgate's names its own limit.
        let without_message = |reply: &HttpReply| {
            let mut value: Value = serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", reply.raw()));
            value["error"]["message"] = Value::Null;
            (reply.status, reply.content_type.clone(), value.to_string(), reply.body.ends_with(b"\n"))
        };
        assert_eq!(without_message(&etcd), without_message(&gateway), "{}: {} vs {}", p.version, etcd.raw(), gateway.raw());
        assert_eq!(p.revision(Which::Gateway).await, before, "an oversize request was applied");
    })
    .await;
}

/// Sends a request head promising a 100-byte body and only `sent` of it, then stalls.
async fn stalled_request(addr: std::net::SocketAddr, path: &str, sent: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.expect("write head");
    tcp.write_all(sent.as_bytes()).await.expect("write body start");
    tcp
}

/// The whole answer on a raw connection (head and a Content-Length body), within [`WAIT`].
async fn read_answer(tcp: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse::<usize>().unwrap()));
                if length.is_some_and(|length| body.len() >= length) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.expect("no answer to a stalled request");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A client that promises 100 bytes, sends 10 and stalls gets a JSON 400 once the body
/// timeout passes; meanwhile other clients are served; nothing is written.
#[tokio::test]
async fn stalled_bodies_time_out() {
    for version in EtcdVersion::all() {
        let config = ServerConfig { http_body_timeout: Duration::from_secs(1), ..ServerConfig::default() };
        let p = Pair::start_with(version, config).await;
        let before = p.revision(Which::Gateway).await;
        let mut stalled = Vec::new();
        for path in ["/v3/kv/put", "/v3/kv/range", "/v3/watch", "/v3/lease/keepalive"] {
            let sent = if path == "/v3/watch" { r#"{"create_r"# } else { r#"{"key":"YQ"# };
            stalled.push((path, stalled_request(p.gateway_addr, path, sent).await));
        }
        // Others are served while those wait.
        let gateway = p.side(Which::Gateway);
        let reply = gateway.post("/v3/kv/range", json!({"key": b64("a")}).to_string()).await;
        assert_eq!(reply.status, 200, "{}", reply.raw());
        for (path, mut tcp) in stalled {
            let answer = read_answer(&mut tcp).await;
            let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
            assert!(head.starts_with("HTTP/1.1 400 "), "{version} {path}: {answer}");
            assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{version} {path}: {answer}");
            let error: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{version} {path}: not JSON ({e}): {answer}"));
            assert_eq!(error["code"], Code::InvalidArgument as i32, "{version} {path}: {answer}");
        }
        assert_eq!(p.revision(Which::Gateway).await, before, "a stalled request was applied");
    }
}

/// An empty watch body can never create a watch: etcd's gateway hangs until the client
/// leaves; etcdgate answers 400 at once. An empty keepalive body ends at once on both.
#[tokio::test]
async fn empty_stream_bodies() {
    Pair::each_version(|p| async move {
        let reply = p.side(Which::Gateway).post("/v3/watch", "").await;
        reply.assert_json_error(400, Code::InvalidArgument);
        p.http("/v3/lease/keepalive", "").await;
    })
    .await;
}
