//! The lean HTTP/1.1 path for long-lived watch connections (`POST /v3/watch`, which APISIX
//! opens once per watch and never ends): one request per connection, answered by the same
//! router as every other request, keeping for the connection's life only what the watch
//! needs — no read or write buffers (hyper keeps ~24 KiB per connection). This module owns
//! reading the request head, handing the router a request whose body comes straight from
//! the socket, writing the response as hyper writes it (plus `connection: close`), and
//! dropping the response as soon as the client goes away.

pub mod chunked;
mod request_body;
mod response;
mod socket;

use std::future::Future;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::Status;
use tower::ServiceExt;

use super::errors::ErrorStyle;
use crate::context::SeenRevision;
use chunked::ChunkedDecoder;
use request_body::{Framing, SocketBody};
use response::{write_response, Ending};
use socket::SharedSocket;

/// Most bytes of a request head.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields of a request (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Most bytes read at a time while the head is incomplete.
const HEAD_READ_PIECE: usize = 2048;
/// How long a finished connection waits for the client to close first, so that a client
/// still sending does not get a reset that would destroy the answer it has not read yet.
const LINGER: Duration = Duration::from_secs(1);
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the lean path needs to serve a connection; one per listener, cloned per connection.
#[derive(Clone)]
pub struct LeanServer {
    app: Router,
    errors: Arc<ErrorStyle>,
}

impl LeanServer {
    pub fn new(app: Router, errors: Arc<ErrorStyle>) -> LeanServer {
        LeanServer { app, errors }
    }

    /// Serves the one request on `stream`, of which `received` has been read already; the
    /// head must be complete by `head_deadline` (else the connection is dropped).
    pub fn serve(&self, stream: TcpStream, received: Vec<u8>, head_deadline: Instant, seen: SeenRevision) -> impl Future<Output = ()> + '_ {
        let socket = Arc::new(SharedSocket::new(stream));
        // Only the response's writing lives long (a watch's, forever): what comes before it
        // is boxed, so that the connection's task keeps just what writing needs.
        let responding = Box::pin(self.respond(socket.clone(), received, head_deadline, seen));
        async move {
            let answered = match responding.await {
                Some(response) => write_response(&socket, response).await == Ending::Answered,
                None => false,
            };
            if answered {
                socket.shutdown_write();
                let _ = Box::pin(tokio::time::timeout(LINGER, socket.client_gone())).await;
            }
            socket.shutdown();
        }
    }

    /// Reads the request and has the router answer it; `None` if the client went away first.
    async fn respond(&self, socket: Arc<SharedSocket>, received: Vec<u8>, head_deadline: Instant, seen: SeenRevision) -> Option<Response> {
        let head = match tokio::time::timeout_at(head_deadline, read_head(&socket, received)).await {
            Err(_) | Ok(Err(HeadError::Closed)) => return None,
            Ok(Err(HeadError::Rejected(rejection))) => {
                socket.request_body_done();
                return Some(rejection.response(&self.errors));
            }
            Ok(Ok(head)) => head,
        };
        if head.expects_continue && socket.write_all(&mut [IoSlice::new(CONTINUE)]).await.is_err() {
            return None;
        }
        let body = SocketBody::new(socket, head.body_start, head.framing);
        let mut request = http::Request::from_parts(head.parts, Body::new(body));
        request.extensions_mut().insert(seen);
        match self.app.clone().oneshot(super::rewrite_legacy_prefix(request)).await {
            Ok(response) => Some(response),
            Err(never) => match never {},
        }
    }
}

/// A request head, parsed.
struct Head {
    parts: http::request::Parts,
    framing: Framing,
    expects_continue: bool,
    /// Body bytes that arrived with the head.
    body_start: Bytes,
}

enum HeadError {
    /// The client closed the connection (or it failed) before the head was complete.
    Closed,
    Rejected(Rejection),
}

/// A request head that cannot be served: answered with a JSON error, then the connection ends.
struct Rejection {
    status: StatusCode,
    message: String,
}

impl Rejection {
    fn bad(what: impl std::fmt::Display) -> Rejection {
        Rejection { status: StatusCode::BAD_REQUEST, message: format!("etcdgate: bad HTTP request: {what}") }
    }

    fn too_large(what: &str) -> Rejection {
        Rejection { status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, message: format!("etcdgate: HTTP request head: {what}") }
    }

    fn response(&self, errors: &ErrorStyle) -> Response {
        let status = match self.status {
            StatusCode::BAD_REQUEST => Status::invalid_argument(&self.message),
            _ => Status::resource_exhausted(&self.message),
        };
        let mut response = errors.response(&status);
        *response.status_mut() = self.status;
        response
    }
}

/// Reads until `received` holds a whole request head (at most [`MAX_HEAD_BYTES`]).
async fn read_head(socket: &SharedSocket, mut received: Vec<u8>) -> Result<Head, HeadError> {
    loop {
        if let Some(head) = parse_head(&received).map_err(HeadError::Rejected)? {
            return Ok(head);
        }
        if received.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::Rejected(Rejection::too_large(&format!("larger than {MAX_HEAD_BYTES} bytes"))));
        }
        let start = received.len();
        received.resize(start + HEAD_READ_PIECE.min(MAX_HEAD_BYTES - start), 0);
        match socket.read(&mut received[start..]).await {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(n) => received.truncate(start + n),
        }
    }
}

/// The head at the start of `received`, if it is complete.
fn parse_head(received: &[u8]) -> Result<Option<Head>, Rejection> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    let length = match parsed.parse(received) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(length)) => length,
        Err(httparse::Error::TooManyHeaders) => return Err(Rejection::too_large(&format!("more than {MAX_HEADERS} header fields"))),
        Err(error) => return Err(Rejection::bad(error)),
    };
    if parsed.version != Some(1) {
        return Err(Rejection::bad("not HTTP/1.1"));
    }
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes()).map_err(Rejection::bad)?;
    let uri = Uri::try_from(parsed.path.unwrap_or_default()).map_err(Rejection::bad)?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(Rejection::bad)?;
        headers.append(name, HeaderValue::from_bytes(field.value).map_err(Rejection::bad)?);
    }
    let framing = framing(&headers)?;
    let expects_continue = !matches!(framing, Framing::Length(0))
        && headers.get(header::EXPECT).is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (mut parts, ()) =
        http::Request::builder().method(method).uri(uri).version(Version::HTTP_11).body(()).map_err(Rejection::bad)?.into_parts();
    parts.headers = headers;
    Ok(Some(Head { parts, framing, expects_continue, body_start: Bytes::copy_from_slice(&received[length..]) }))
}

/// How the body is delimited: chunked (as the last transfer coding), `Content-Length`, or
/// empty. Both together, another transfer coding, or lengths that disagree are refused (as
/// they could smuggle a second request past a proxy in front).
fn framing(headers: &HeaderMap) -> Result<Framing, Rejection> {
    let codings = headers.get_all(header::TRANSFER_ENCODING);
    let lengths = headers.get_all(header::CONTENT_LENGTH);
    if let Some(last) = codings.iter().next_back() {
        if lengths.iter().next().is_some() {
            return Err(Rejection::bad("both Transfer-Encoding and Content-Length"));
        }
        let last_coding = last.as_bytes().rsplit(|&b| b == b',').next().unwrap_or_default();
        if !last_coding.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(Rejection::bad("Transfer-Encoding without chunked last"));
        }
        return Ok(Framing::Chunked(ChunkedDecoder::default()));
    }
    let mut length = None;
    for value in lengths.iter().flat_map(|value| value.as_bytes().split(|&b| b == b',')) {
        let value = value.trim_ascii();
        let parsed = std::str::from_utf8(value)
            .ok()
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u64>().ok())
            .ok_or_else(|| Rejection::bad("invalid Content-Length"))?;
        if length.is_some_and(|length| length != parsed) {
            return Err(Rejection::bad("conflicting Content-Length values"));
        }
        length = Some(parsed);
    }
    Ok(Framing::Length(length.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(text: &str) -> Result<Option<Head>, Rejection> {
        parse_head(text.as_bytes())
    }

    #[test]
    fn heads_are_parsed_with_their_framing() {
        let head = head_of("POST /v3/watch?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-Continue\r\n\r\n{}")
            .ok()
            .flatten()
            .unwrap();
        assert_eq!((head.parts.method, head.parts.uri.to_string()), (Method::POST, "/v3/watch?x=1".to_string()));
        assert!(matches!(head.framing, Framing::Length(4)));
        assert!(head.expects_continue);
        assert_eq!(head.body_start, "{}");
        let head = head_of("POST /v3/watch HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n").ok().flatten().unwrap();
        assert!(matches!(head.framing, Framing::Chunked(_)));
        assert!(head_of("POST /v3/watch HTTP/1.1\r\nHost: a\r\n").ok().unwrap().is_none());
    }

    #[test]
    fn bad_heads_are_rejected() {
        for bad in [
            "POST /v3/watch HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /v3/watch HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            "POST /v3/watch HTTP/1.1\r\nContent-Length: -4\r\n\r\n",
            "POST /v3/watch HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST /v3/watch HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert_eq!(head_of(bad).err().map(|r| r.status), Some(StatusCode::BAD_REQUEST), "{bad:?}");
        }
        let many = format!("POST /v3/watch HTTP/1.1\r\n{}\r\n", "a: b\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(head_of(&many).err().map(|r| r.status), Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    }
}
