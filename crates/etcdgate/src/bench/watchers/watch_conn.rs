//! One client watch as the watcher benchmarks hold it, over either transport, read back as
//! `WatchResponse`s whichever it is:
//!
//! - HTTP/JSON, the way APISIX (lua-resty-etcd) watches: its own HTTP/1.1 connection, one
//!   `POST /v3/watch` whose body is the create request, and a chunked answer of one
//!   `{"result":{...}}` line per message, read for as long as the watch lives. The request is
//!   written and the answer read straight on the socket by the watcher's own task (a hyper
//!   client would add a connection task and a channel per watch: with thousands of watchers
//!   on a 2-core machine the load generator's CPU competes with what it measures);
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
use etcdgate_server::chunked::{ChunkedDecoder, Decoded};
use futures::{future, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
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
        socket: TcpStream,
        /// Bytes read and not decoded yet.
        raw: BytesMut,
        decoder: ChunkedDecoder,
        /// Decoded body bytes after the last complete line.
        body: BytesMut,
        /// The last chunk has come.
        ended: bool,
    },
    Grpc {
        stream: tonic::Streaming<WatchResponse>,
        /// Dropped with the watch: ends the request side.
        _close: oneshot::Sender<()>,
    },
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
            let mut socket = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
            socket.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
            let mut request = format!(
                "POST /v3/watch HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            request.extend_from_slice(&body);
            socket.write_all(&request).await.map_err(|e| format!("POST /v3/watch: {e}"))?;
            let mut raw = BytesMut::with_capacity(4096);
            let (status, chunked, head_len) = loop {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(&raw).map_err(|e| format!("POST /v3/watch: bad answer head: {e}"))? {
                    httparse::Status::Complete(len) => {
                        let chunked = response.headers.iter().any(|h| {
                            h.name.eq_ignore_ascii_case("transfer-encoding") && h.value.eq_ignore_ascii_case(b"chunked")
                        });
                        break (response.code.unwrap_or(0), chunked, len);
                    }
                    httparse::Status::Partial => read_more(&mut socket, &mut raw).await?,
                }
            };
            let _ = raw.split_to(head_len);
            if status != 200 || !chunked {
                // An error answer: whatever arrives within a moment is its body.
                let _ = tokio::time::timeout(Duration::from_millis(200), read_more(&mut socket, &mut raw)).await;
                return Err(format!("POST /v3/watch: HTTP {status}: {}", shown(&raw)));
            }
            let mut conn =
                WatchConn::Http { socket, raw, decoder: ChunkedDecoder::default(), body: BytesMut::new(), ended: false };
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
            WatchConn::Http { socket, raw, decoder, body, ended } => loop {
                if let Some(end) = body.iter().position(|&b| b == b'\n') {
                    let line = body.split_to(end + 1);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return parse_line(&line).map(Some);
                }
                if body.len() > MAX_LINE_BYTES {
                    return Err(format!("no end of line within {MAX_LINE_BYTES} bytes"));
                }
                if *ended && body.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                if *ended {
                    return parse_line(&std::mem::take(body)).map(Some);
                }
                if raw.is_empty() {
                    read_more(socket, raw).await?;
                }
                let mut input = raw.split().freeze();
                loop {
                    match decoder.decode(&mut input).map_err(|e| format!("bad chunked answer: {e}"))? {
                        Decoded::Data(data) => body.extend_from_slice(&data),
                        Decoded::NeedMore => break,
                        Decoded::End => {
                            *ended = true;
                            break;
                        }
                    }
                }
            },
        }
    }
}

/// Reads what the socket has into `raw`; an error at the end of the stream.
async fn read_more(socket: &mut TcpStream, raw: &mut BytesMut) -> Result<(), String> {
    if raw.capacity() - raw.len() < 1024 {
        raw.reserve(4096);
    }
    match socket.read_buf(raw).await {
        Ok(0) => Err("connection closed mid-answer".to_string()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("reading the watch: {e}")),
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
