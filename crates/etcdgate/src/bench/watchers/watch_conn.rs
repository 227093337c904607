//! One client watch as the watcher benchmarks hold it, over either transport, read back as
//! `WatchResponse`s whichever it is:
//!
//! - HTTP/JSON, the way APISIX (lua-resty-etcd) watches: its own HTTP/1.1 connection, one
//!   `POST /v3/watch` whose body is the create request, and a chunked answer of one
//!   `{"result":{...}}` line per message, read for as long as the watch lives;
//! - gRPC: one `Watch` stream on a shared channel (HTTP/2 connection), carrying one create
//!   request. Its request side stays open while the watch lives, and is closed when the
//!   watch is dropped, so that the stream is reset (etcd keeps a half-closed watch stream,
//!   and hyper keeps sending a request body that never ends, with its connection).
//!
//! [`WatchConn::open_http`] / [`WatchConn::open_grpc`] return the open watch with its first
//! message (`created`, unless etcd refused or canceled the watch at once).

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use etcdgate_proto::etcdserverpb::{
    watch_client::WatchClient, watch_request::RequestUnion, WatchCreateRequest, WatchRequest, WatchResponse,
};
use futures::{future, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// How long opening a watch (connect, request, `created`) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// A JSON line longer than this is not a watch message the benchmarks produce.
const MAX_LINE_BYTES: usize = 4 << 20;

/// One line of etcd's HTTP/JSON watch stream.
#[derive(Deserialize)]
struct JsonLine {
    result: Option<WatchResponse>,
    error: Option<serde_json::Value>,
}

/// An open watch.
pub enum WatchConn {
    Http {
        body: Incoming,
        /// Bytes received after the last complete line.
        pending: Bytes,
        /// Drives the HTTP/1.1 connection; aborted with the watch.
        _connection: AbortOnDrop,
    },
    Grpc {
        stream: tonic::Streaming<WatchResponse>,
        /// Dropped with the watch: ends the request side.
        _close: oneshot::Sender<()>,
    },
}

/// A task aborted when this is dropped.
pub struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The HTTP body APISIX sends to watch `[key, range_end)` from `start_revision` (0: from now).
pub fn http_create_body(key: &[u8], range_end: &[u8], start_revision: i64) -> Bytes {
    let b64 = base64::engine::general_purpose::STANDARD;
    let start = if start_revision > 0 { format!(r#","start_revision":"{start_revision}""#) } else { String::new() };
    Bytes::from(format!(
        r#"{{"create_request":{{"key":"{}","range_end":"{}"{start}}}}}"#,
        b64.encode(key),
        b64.encode(range_end)
    ))
}

impl WatchConn {
    /// Connects to `addr` and sends `POST /v3/watch` with `body`; returns once the first
    /// message has arrived, with it.
    pub async fn open_http(addr: SocketAddr, body: Bytes) -> Result<(WatchConn, WatchResponse), String> {
        let open = async {
            let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
            stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake: {e}"))?;
            let connection = AbortOnDrop(tokio::spawn(async move {
                let _ = connection.await;
            }));
            let request = http::Request::post("/v3/watch")
                .header(http::header::HOST, addr.to_string())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body))
                .map_err(|e| format!("building request: {e}"))?;
            let response = sender.send_request(request).await.map_err(|e| format!("POST /v3/watch: {e}"))?;
            if response.status() != http::StatusCode::OK {
                let status = response.status();
                let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                return Err(format!("POST /v3/watch: HTTP {status}: {}", shown(&body)));
            }
            let mut conn = WatchConn::Http { body: response.into_body(), pending: Bytes::new(), _connection: connection };
            let first = conn.first().await?;
            Ok((conn, first))
        };
        tokio::time::timeout(OPEN_TIMEOUT, open).await.map_err(|_| format!("no first watch message within {OPEN_TIMEOUT:?}"))?
    }

    /// Opens a Watch stream on `client`'s channel with `create`; returns once the first
    /// message has arrived, with it.
    pub async fn open_grpc(
        mut client: WatchClient<Channel>,
        create: WatchCreateRequest,
    ) -> Result<(WatchConn, WatchResponse), String> {
        let open = async {
            let request = WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) };
            let (close, closed) = oneshot::channel::<()>();
            let requests = futures::stream::once(future::ready(request))
                .chain(futures::stream::once(closed).filter_map(|_| future::ready(None)));
            let stream = client.watch(requests).await.map_err(|s| format!("Watch: {:?}: {}", s.code(), s.message()))?;
            let mut conn = WatchConn::Grpc { stream: stream.into_inner(), _close: close };
            let first = conn.first().await?;
            Ok((conn, first))
        };
        tokio::time::timeout(OPEN_TIMEOUT, open).await.map_err(|_| format!("no first watch message within {OPEN_TIMEOUT:?}"))?
    }

    async fn first(&mut self) -> Result<WatchResponse, String> {
        self.next().await?.ok_or_else(|| "watch stream ended before its first message".to_string())
    }

    /// The next message; `None` when the stream ended cleanly.
    pub async fn next(&mut self) -> Result<Option<WatchResponse>, String> {
        match self {
            WatchConn::Grpc { stream, .. } => stream.message().await.map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message())),
            WatchConn::Http { body, pending, .. } => loop {
                if let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line = pending.split_to(end + 1);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return parse_line(&line).map(Some);
                }
                if pending.len() > MAX_LINE_BYTES {
                    return Err(format!("no end of line within {MAX_LINE_BYTES} bytes"));
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            *pending = if pending.is_empty() {
                                data
                            } else {
                                let mut joined = BytesMut::with_capacity(pending.len() + data.len());
                                joined.extend_from_slice(pending);
                                joined.extend_from_slice(&data);
                                joined.freeze()
                            };
                        }
                    }
                    Some(Err(e)) => return Err(format!("reading the watch body: {e}")),
                    None if pending.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                    None => return parse_line(&std::mem::take(pending)).map(Some),
                }
            },
        }
    }
}

/// The watch of an [`WatchConn::open_http`] / [`WatchConn::open_grpc`] whose first message
/// says `created` (and not canceled); an error naming what came instead otherwise.
pub fn expect_created(opened: Result<(WatchConn, WatchResponse), String>) -> Result<WatchConn, String> {
    let (conn, first) = opened?;
    if first.created && !first.canceled {
        Ok(conn)
    } else {
        Err(format!(
            "first watch message is not `created`: canceled {}, compact_revision {}, reason {:?}",
            first.canceled, first.compact_revision, first.cancel_reason
        ))
    }
}

fn parse_line(line: &[u8]) -> Result<WatchResponse, String> {
    let parsed: JsonLine = serde_json::from_slice(line).map_err(|e| format!("bad watch line ({e}): {}", shown(line)))?;
    match (parsed.result, parsed.error) {
        (_, Some(error)) => Err(format!("watch error: {error}")),
        (Some(result), None) => Ok(result),
        (None, None) => Err(format!("watch line without result: {}", shown(line))),
    }
}

fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_is_what_apisix_sends() {
        let body = http_create_body(b"/apisix/", b"/apisix0", 0);
        assert_eq!(&body[..], br#"{"create_request":{"key":"L2FwaXNpeC8=","range_end":"L2FwaXNpeDA="}}"#);
        let body = http_create_body(b"/apisix/", b"/apisix0", 42);
        assert!(body.ends_with(br#","start_revision":"42"}}"#), "{body:?}");
    }

    #[test]
    fn json_lines_parse_as_etcd_writes_them() {
        let line = br#"{"result":{"header":{"cluster_id":"1","member_id":"2","revision":"9","raft_term":"2"},"events":[{"kv":{"key":"L2FwaXNpeC9h","create_revision":"9","mod_revision":"9","version":"1","value":"MDAwMDAx"}}]}}"#;
        let response = parse_line(line).expect("valid line");
        assert_eq!(response.events.len(), 1);
        assert_eq!(response.events[0].kv.as_ref().map(|kv| kv.value.clone()), Some(b"000001".to_vec()));
        let compacted = br#"{"result":{"header":{"revision":"30"},"canceled":true,"compact_revision":"25"}}"#;
        assert_eq!(parse_line(compacted).expect("valid line").compact_revision, 25);
        assert!(parse_line(br#"{"error":{"grpc_code":14,"message":"unavailable"}}"#).is_err());
        assert!(parse_line(b"not json").is_err());
    }
}
