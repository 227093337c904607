//! Writing a lean connection's response: the head as hyper writes it for a connection it
//! closes afterwards, then the body with `Content-Length` or chunked, every frame sent in
//! one write of its own as soon as it comes (a watch's messages reach the client one by
//! one), until the body ends or the client goes away. While a watch waits for its next
//! message, all this keeps is the body and one frame in flight.

use std::future::Future;
use std::io::{IoSlice, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{header, StatusCode};
use http_body::Body as _;

use super::socket::SharedSocket;

/// How the connection's exchange ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The whole response was sent.
    Answered,
    /// The client went away, the socket failed, or the response body failed.
    Broken,
}

/// How a response body is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// None may be sent (204, 304, 1xx).
    NoBody,
    Length,
    Chunked,
}

/// Writes `response` until its body ends or the client goes away.
pub fn write_response(socket: &SharedSocket, response: Response) -> ResponseSender<'_> {
    let (head, body, framing) = encode_response(response);
    ResponseSender {
        socket,
        body,
        chunked: framing == Framing::Chunked,
        outgoing: Some(Outgoing::frame(Bytes::from(head), false)),
        body_ended: framing == Framing::NoBody,
    }
}

/// The response's head, its body and how to send it.
fn encode_response(response: Response) -> (Vec<u8>, Body, Framing) {
    let (parts, body) = response.into_parts();
    let may_have_body = !(parts.status.is_informational() || matches!(parts.status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED));
    let length = body.size_hint().exact();
    let framing = match length {
        _ if !may_have_body => Framing::NoBody,
        Some(_) => Framing::Length,
        None => Framing::Chunked,
    };
    (encode_head(&parts, framing, length), body, framing)
}

/// The status line and headers as hyper writes them for a connection it closes after the
/// response: the response's own headers in order, `connection: close`, the framing
/// header, then `date`.
fn encode_head(parts: &http::response::Parts, framing: Framing, length: Option<u64>) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("<none>").as_bytes());
    head.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if matches!(*name, header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONNECTION) {
            continue;
        }
        has_date |= *name == header::DATE;
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n");
    match (framing, length) {
        (Framing::Length, Some(length)) => head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes()),
        (Framing::Chunked, _) => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !has_date {
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Sends the head, then the body frame by frame: a frame is written whole before the next
/// is asked for. Resolves when all has been sent, or as soon as the client is gone.
pub struct ResponseSender<'a> {
    socket: &'a SharedSocket,
    body: Body,
    chunked: bool,
    /// The head or the frame being written.
    outgoing: Option<Outgoing>,
    body_ended: bool,
}

impl Future for ResponseSender<'_> {
    type Output = Ending;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ending> {
        let this = &mut *self;
        loop {
            if this.socket.poll_client_gone(cx).is_ready() {
                return Poll::Ready(Ending::Broken);
            }
            if let Some(outgoing) = &mut this.outgoing {
                while !outgoing.is_written() {
                    match ready!(this.socket.poll_write_vectored(cx, &outgoing.unwritten())) {
                        Ok(0) | Err(_) => return Poll::Ready(Ending::Broken),
                        Ok(n) => outgoing.written += n,
                    }
                }
                this.outgoing = None;
            }
            if this.body_ended {
                return Poll::Ready(Ending::Answered);
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                None => {
                    this.body_ended = true;
                    this.outgoing = this.chunked.then(Outgoing::last_chunk);
                }
                Some(Ok(frame)) => {
                    if let Some(data) = frame.into_data().ok().filter(|data| !data.is_empty()) {
                        this.outgoing = Some(Outgoing::frame(data, this.chunked));
                    }
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "response body failed; closing the connection");
                    return Poll::Ready(Ending::Broken);
                }
            }
        }
    }
}

/// One frame on the wire (or the head): its chunk size line (if chunked), its data, its
/// chunk end.
struct Outgoing {
    size_line: [u8; 20],
    size_line_len: u8,
    data: Bytes,
    chunk_end: &'static [u8],
    /// Bytes of the three parts written so far.
    written: usize,
}

impl Outgoing {
    fn frame(data: Bytes, chunked: bool) -> Outgoing {
        let mut outgoing = Outgoing { size_line: [0; 20], size_line_len: 0, data, chunk_end: b"", written: 0 };
        if chunked {
            let mut rest = &mut outgoing.size_line[..];
            // 16 hex digits and CRLF always fit.
            let _ = write!(rest, "{:X}\r\n", outgoing.data.len());
            let free = rest.len();
            outgoing.size_line_len = (outgoing.size_line.len() - free) as u8;
            outgoing.chunk_end = b"\r\n";
        }
        outgoing
    }

    fn last_chunk() -> Outgoing {
        Outgoing { size_line: [0; 20], size_line_len: 0, data: Bytes::new(), chunk_end: b"0\r\n\r\n", written: 0 }
    }

    fn parts(&self) -> [&[u8]; 3] {
        [&self.size_line[..usize::from(self.size_line_len)], &self.data, self.chunk_end]
    }

    fn is_written(&self) -> bool {
        self.written >= self.parts().iter().map(|part| part.len()).sum()
    }

    /// What is left to write, as slices for one vectored write.
    fn unwritten(&self) -> [IoSlice<'_>; 3] {
        let mut skip = self.written;
        self.parts().map(|part| {
            let n = skip.min(part.len());
            skip -= n;
            IoSlice::new(&part[n..])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_written_as_hyper_writes_them() {
        let response = http::Response::builder().header("content-type", "application/json").body(()).unwrap();
        let (parts, ()) = response.into_parts();
        let head = String::from_utf8(encode_head(&parts, Framing::Chunked, None)).unwrap();
        assert!(head
            .starts_with("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ntransfer-encoding: chunked\r\ndate: "));
        assert!(head.ends_with(" GMT\r\n\r\n"), "{head}");
        let head = String::from_utf8(encode_head(&parts, Framing::Length, Some(7))).unwrap();
        assert!(head.contains("connection: close\r\ncontent-length: 7\r\ndate: "), "{head}");
    }

    #[test]
    fn frames_are_chunks_written_across_partial_writes() {
        let mut outgoing = Outgoing::frame(Bytes::from_static(b"{\"result\":{}}\n"), true);
        let whole: Vec<u8> = outgoing.unwritten().iter().flat_map(|slice| slice.to_vec()).collect();
        assert_eq!(whole, b"E\r\n{\"result\":{}}\n\r\n");
        outgoing.written = 5;
        let rest: Vec<u8> = outgoing.unwritten().iter().flat_map(|slice| slice.to_vec()).collect();
        assert_eq!(rest, &whole[5..]);
        assert!(!outgoing.is_written());
        outgoing.written = whole.len();
        assert!(outgoing.is_written());
        let plain = Outgoing::frame(Bytes::from_static(b"abc"), false);
        assert_eq!(plain.unwritten().iter().flat_map(|slice| slice.to_vec()).collect::<Vec<u8>>(), b"abc");
    }
}
