//! Reading HTTP request bodies safely: bounded in size, bounded in time for unary calls (a
//! client that stops mid-body gets an error instead of holding a task forever), and decoded
//! as one JSON message or as a stream of concatenated JSON messages, as etcd's gateway does.

use std::borrow::Cow;
use std::time::Duration;

use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use etcdgate_proto::go_json::coerce_utf8;
use etcdgate_proto::go_scanner::{first_value, FirstValue};
use futures::Stream;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tonic::{Code, Status};

use super::errors::decode_error;

/// Reads a whole body of at most `limit` bytes within `timeout`.
pub async fn read_all(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, Status> {
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(timed_out(timeout)),
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(limit)),
        Ok(Err(error)) => Err(Status::invalid_argument(format!("etcdgate: reading request body: {error}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// A body (or a stream's first message) that did not arrive within `timeout`.
pub fn timed_out(timeout: Duration) -> Status {
    Status::invalid_argument(format!("etcdgate: request body not received within {}s", timeout.as_secs()))
}

fn too_large(limit: usize) -> Status {
    Status::resource_exhausted(format!("etcdgate: request body larger than the limit of {limit} bytes"))
}

/// Decodes the first JSON value of a unary body; an empty body is the empty message and
/// anything after the first value is ignored, as in etcd's gateway.
pub fn decode_one<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    decode_first(body).or_else(|error| match as_go_reads(body) {
        Some(coerced) => decode_first(&coerced).map_err(|error| decode_error(Code::InvalidArgument, &error, &coerced)),
        None => Err(decode_error(Code::InvalidArgument, &error, body)),
    })
}

/// The first JSON value of `body` as a message (see [`decode_without_nulls`]).
fn decode_first<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, serde_json::Error> {
    match serde_json::Deserializer::from_slice(body).into_iter::<T>().next() {
        Some(Ok(message)) => Ok(message),
        Some(Err(error)) => match decode_without_nulls(body) {
            Ok(Some((message, _))) => Ok(message),
            Ok(None) => Err(error),
            Err(without_nulls) => Err(without_nulls),
        },
        None => Ok(T::default()),
    }
}

/// `body` with its bytes that are not UTF-8 read as U+FFFD, as Go's decoder reads them inside
/// strings (serde refuses them), for a body serde refused; `None` if there are none, or if the
/// first value is not JSON anyway (one of them outside a string is a syntax error, which
/// [`decode_error`] words with the byte itself, as Go does).
fn as_go_reads(body: &[u8]) -> Option<Vec<u8>> {
    match coerce_utf8(body) {
        Cow::Owned(coerced) if !matches!(first_value(body), FirstValue::Invalid(_)) => Some(coerced),
        _ => None,
    }
}

/// etcd's gateway (Go's jsonpb) reads a field given as `null` as not set, and a message given
/// as `null` as the empty one; pbjson refuses both. So a message that failed to decode is
/// tried once more with its `null` members removed (or as `{}`).
/// Returns the message and the length of the JSON value it was read from; `Ok(None)` if
/// there is no `null` to remove; the parse error if `body` does not start with a whole JSON
/// value, or why the message without its `null`s is refused (what etcd refuses it for).
fn decode_without_nulls<T: DeserializeOwned>(body: &[u8]) -> Result<Option<(T, usize)>, serde_json::Error> {
    fn strip(value: &mut Value) -> bool {
        match value {
            Value::Object(map) => {
                let before = map.len();
                map.retain(|_, v| !v.is_null());
                let mut stripped = map.len() != before;
                for v in map.values_mut() {
                    stripped |= strip(v);
                }
                stripped
            }
            Value::Array(items) => items.iter_mut().fold(false, |stripped, v| strip(v) | stripped),
            _ => false,
        }
    }
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    let Some(mut value) = values.next().transpose()? else { return Ok(None) };
    let used = values.byte_offset();
    if value.is_null() {
        value = Value::Object(serde_json::Map::new());
    } else if !strip(&mut value) {
        return Ok(None);
    }
    T::deserialize(value).map(|message| Some((message, used)))
}

/// Splits a streaming request body into JSON messages as they arrive. A message may span
/// several reads; at most `limit` bytes of one message are buffered. Decode errors are
/// reported as etcd reports them on streams (`Unknown`).
pub fn decode_stream<T: DeserializeOwned + Send + 'static>(body: Body, limit: usize) -> impl Stream<Item = Result<T, Status>> + Send {
    struct State {
        body: Body,
        buffer: BytesMut,
        ended: bool,
        failed: bool,
    }
    let state = State { body, buffer: BytesMut::new(), ended: false, failed: false };
    futures::stream::unfold(state, move |mut state| async move {
        if state.failed {
            return None;
        }
        loop {
            let start = state.buffer.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(state.buffer.len());
            state.buffer.advance(start);
            if !state.buffer.is_empty() {
                let mut values = serde_json::Deserializer::from_slice(&state.buffer).into_iter::<T>();
                match values.next() {
                    Some(Ok(message)) => {
                        let used = values.byte_offset();
                        state.buffer.advance(used);
                        return Some((Ok(message), state));
                    }
                    // A message cut off by the end of what has arrived so far may still complete
                    // (Go's decoder reads the whole value before it decodes any of it).
                    Some(Err(error)) if state.ended || !(error.is_eof() || first_value(&state.buffer) == FirstValue::CutOff) => match decode_without_nulls(&state.buffer) {
                        Ok(Some((message, used))) => {
                            state.buffer.advance(used);
                            return Some((Ok(message), state));
                        }
                        Err(incomplete) if incomplete.is_eof() && !state.ended => {}
                        refused => {
                            if let Some(coerced) = as_go_reads(&state.buffer) {
                                state.buffer = BytesMut::from(&coerced[..]);
                                continue;
                            }
                            state.failed = true;
                            let error = refused.err().unwrap_or(error);
                            return Some((Err(decode_error(Code::Unknown, &error, &state.buffer)), state));
                        }
                    },
                    _ => {}
                }
            }
            if state.ended {
                return None;
            }
            match state.body.frame().await {
                None => state.ended = true,
                Some(Err(_)) => return None,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        state.buffer.extend_from_slice(&data);
                        if state.buffer.len() > limit {
                            state.failed = true;
                            return Some((Err(too_large(limit)), state));
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdgate_proto::etcdserverpb::{RangeRequest, WatchRequest};
    use futures::StreamExt;

    #[test]
    fn unary_bodies_decode_like_the_gateway() {
        let empty: RangeRequest = decode_one(b"  ").unwrap();
        assert_eq!(empty, RangeRequest::default());
        let both_cases: RangeRequest = decode_one(br#"{"key":"YQ==","rangeEnd":"Yg==","keys_only":true,"x":1} trailing"#).unwrap();
        assert_eq!(both_cases.key, b"a");
        assert_eq!(both_cases.range_end, b"b");
        assert!(both_cases.keys_only);
        let truncated = decode_one::<RangeRequest>(br#"{"key":"YQ=="#).unwrap_err();
        assert_eq!((truncated.code(), truncated.message()), (Code::InvalidArgument, "unexpected EOF"));
        assert_eq!(decode_one::<RangeRequest>(br#"{"key":5}"#).unwrap_err().code(), Code::InvalidArgument);
        let numbers: RangeRequest = decode_one(br#"{"key":"YQ==","limit":5,"revision":"7","sort_order":"DESCEND","sort_target":2}"#).unwrap();
        let nulls: RangeRequest = decode_one(br#"{"key":"YQ==","limit":null,"revision":null}"#).unwrap();
        assert_eq!((nulls.key.as_slice(), nulls.limit), (&b"a"[..], 0));
        assert_eq!((numbers.limit, numbers.revision, numbers.sort_order, numbers.sort_target), (5, 7, 2, 2));
        assert_eq!(decode_one::<RangeRequest>(b"null").unwrap(), RangeRequest::default());
        // Base64 as Go's StdEncoding reads it, refused with Go's message and no position.
        for (body, message) in [
            (r#"{"key":"YQ"}"#, "illegal base64 data at input byte 0"),
            (r#"{"key":"YQ=","range_end":"AA=="}"#, "illegal base64 data at input byte 3"),
            (r#"{"key":"_-8="}"#, "illegal base64 data at input byte 0"),
        ] {
            let refused = decode_one::<RangeRequest>(body.as_bytes()).unwrap_err();
            assert_eq!((refused.code(), refused.message()), (Code::InvalidArgument, message), "{body}");
        }
        // A `null` is not what is wrong with a body (etcd reads it as unset): the error is.
        let refused = decode_one::<RangeRequest>(br#"{"range_end":null,"key":"YQ"}"#).unwrap_err();
        assert_eq!(refused.message(), "illegal base64 data at input byte 0");
    }

    #[tokio::test]
    async fn streams_split_messages_across_reads() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(br#"{"create_request":{"key":"YQ"#)),
            Ok(Bytes::from_static(br#"=="}} {"progress_request":{}}"#)),
            Ok(Bytes::from_static(b"\n{\"cancel_request\":{\"watch_id\":\"3\"}}")),
        ];
        let body = Body::from_stream(futures::stream::iter(chunks));
        let messages: Vec<_> = decode_stream::<WatchRequest>(body, 1 << 20).collect().await;
        assert_eq!(messages.len(), 3);
        assert!(messages.iter().all(Result::is_ok));
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(br#"{"create_request":{"key":"YQ==","start_revision":null,"#)),
            Ok(Bytes::from_static(br#""prev_kv":true}}"#)),
        ];
        let body = Body::from_stream(futures::stream::iter(chunks));
        let messages: Vec<_> = decode_stream::<WatchRequest>(body, 1 << 20).collect().await;
        assert_eq!(messages.len(), 1);
        assert!(messages[0].is_ok(), "{messages:?}");
    }

    #[tokio::test]
    async fn stream_garbage_ends_the_stream_with_an_error() {
        let body = Body::from(r#"{"create_request":{"key":"YQ=="}} {oops"#);
        let messages: Vec<_> = decode_stream::<WatchRequest>(body, 1 << 20).collect().await;
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1].as_ref().unwrap_err().code(), Code::Unknown);
        let huge = Body::from(format!("{{\"create_request\":{{\"key\":\"{}\"", "A".repeat(100)));
        let messages: Vec<_> = decode_stream::<WatchRequest>(huge, 64).collect().await;
        assert_eq!(messages[0].as_ref().unwrap_err().code(), Code::ResourceExhausted);
    }
}
