//! Streaming responses over HTTP as etcd's gateway writes them: chunked, one compact
//! `{"result":{...}}` line per message, each flushed on its own (APISIX splits its reads on
//! newlines and mis-attributes events when two messages share one read), and a final
//! `{"error":{...}}` chunk (without a newline, as etcd writes it) if the call fails midway.
//!
//! Such a response is marked [`MessageStream`]. The lean path writes every body frame on its
//! own anyway; for hyper, which gathers what is ready into one write, the body is made to
//! yield after every message ([`flush_each_message`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::StatusCode;
use serde::Serialize;
use tonic::Status;

use super::errors::{json_response, stream_error_line};

#[derive(Serialize)]
struct ResultChunk<'a, T> {
    result: &'a T,
}

/// Marks a response whose body frames are messages, each to reach the client in a write of
/// its own.
#[derive(Clone, Copy, Debug)]
pub struct MessageStream;

/// Turns a stream of responses into a chunked JSON response.
pub fn respond<T, S>(responses: S) -> Response
where
    T: Serialize + Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
{
    let lines = responses
        .scan(false, |failed, item| {
            if *failed {
                return futures::future::ready(None);
            }
            let line = match item {
                Ok(message) => {
                    let mut line = serde_json::to_vec(&ResultChunk { result: &message }).unwrap_or_default();
                    line.push(b'\n');
                    line
                }
                Err(status) => {
                    *failed = true;
                    stream_error_line(&status)
                }
            };
            futures::future::ready(Some(Ok::<_, std::convert::Infallible>(Bytes::from(line))))
        })
        .boxed();
    let mut response = json_response(StatusCode::OK, Vec::new());
    *response.body_mut() = Body::from_stream(lines);
    response.extensions_mut().insert(MessageStream);
    response
}

/// For hyper: a [`MessageStream`] response's body yields after every message, so that hyper
/// writes and flushes each before it asks for the next. Other responses pass unchanged.
pub fn flush_each_message(response: Response) -> Response {
    if response.extensions().get::<MessageStream>().is_none() {
        return response;
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::from_stream(FlushEach { inner: body.into_data_stream(), yield_next: false }))
}

/// Returns `Pending` once after every item so that hyper writes and flushes each chunk
/// before it asks for the next one.
struct FlushEach<S> {
    inner: S,
    yield_next: bool,
}

impl<S: Stream + Unpin> Stream for FlushEach<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.yield_next {
            self.yield_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let item = self.inner.poll_next_unpin(cx);
        if matches!(item, Poll::Ready(Some(_))) {
            self.yield_next = true;
        }
        item
    }
}
