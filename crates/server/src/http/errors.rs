//! Error bodies exactly as etcd's HTTP gateway writes them. Unary errors are
//! `{"error":msg,"code":N,"message":msg}` (etcd 3.5; 3.4 puts `message` before `code`), with
//! grpc-gateway's mapping from gRPC code to HTTP status; errors of a stream are a final
//! `{"error":{"grpc_code":..,"http_code":..,"message":..,"http_status":..}}` chunk, with no
//! `\n` after it.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::response::{IntoResponse, Response};
use etcdgate_proto::go_scanner::{first_value, FirstValue};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;
use tonic::{Code, Status};

/// Which etcd's error layout to copy: the one of the cluster behind the gateway.
#[derive(Debug, Default)]
pub struct ErrorStyle {
    etcd_3_4: AtomicBool,
}

impl ErrorStyle {
    /// Records the cluster's version (`3.4.23`, `3.5.1`, ...).
    pub fn set_cluster_version(&self, version: &str) {
        self.etcd_3_4.store(version.starts_with("3.4."), Ordering::Relaxed);
    }

    /// A unary error response.
    pub fn response(&self, status: &Status) -> Response {
        let message = status.message();
        let code = status.code() as i32;
        let body = if self.etcd_3_4.load(Ordering::Relaxed) {
            serde_json::to_vec(&V34 { error: message, message, code })
        } else {
            serde_json::to_vec(&V35 { error: message, code, message })
        }
        .unwrap_or_default();
        json_response(self.http_status(status.code()), body)
    }

    /// A streaming call that failed before its first message: etcd's gateway answers with
    /// the error's HTTP status and the stream's error line (not the unary error body).
    pub fn stream_response(&self, status: &Status) -> Response {
        let http = self.http_status(status.code());
        json_response(http, error_line(status, http))
    }

    /// The HTTP status for a gRPC code: etcd 3.4's older grpc-gateway answers
    /// `FailedPrecondition` with 412, 3.5's with 400.
    pub fn http_status(&self, code: Code) -> StatusCode {
        if code == Code::FailedPrecondition && self.etcd_3_4.load(Ordering::Relaxed) {
            return StatusCode::PRECONDITION_FAILED;
        }
        http_status(code)
    }
}

#[derive(Serialize)]
struct V35<'a> {
    error: &'a str,
    code: i32,
    message: &'a str,
}

#[derive(Serialize)]
struct V34<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

#[derive(Serialize)]
struct StreamError<'a> {
    grpc_code: i32,
    http_code: u16,
    message: &'a str,
    http_status: &'a str,
}

#[derive(Serialize)]
struct StreamErrorChunk<'a> {
    error: StreamError<'a>,
}

/// The line a stream ends with when its call fails after it started.
pub fn stream_error_line(status: &Status) -> Vec<u8> {
    error_line(status, http_status(status.code()))
}

fn error_line(status: &Status, http: StatusCode) -> Vec<u8> {
    let chunk = StreamErrorChunk {
        error: StreamError {
            grpc_code: status.code() as i32,
            http_code: http.as_u16(),
            message: status.message(),
            http_status: http.canonical_reason().unwrap_or(""),
        },
    };
    // grpc-gateway writes the error chunk without the `\n` that follows each result.
    serde_json::to_vec(&chunk).unwrap_or_default()
}

/// grpc-gateway v1's HTTPStatusFromCode, as etcd 3.5 uses it (see [`ErrorStyle::http_status`]
/// for 3.4).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub fn json_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut response = (status, body.into()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Turns a JSON decoding failure of `body` into the status etcd's gateway would report, in
/// Go's words where the cause is the same. Go's decoder scans the whole first value before it
/// decodes any of it, so a syntax error (worded as Go's scanner words it) or a value cut off
/// (`unexpected EOF`) is the error whatever else is wrong; a number, string or bool where
/// the message's object belongs is a type error, however serde read it; then Go's base64 and
/// number errors without serde's position, with a number as it was written; a value of the
/// wrong JSON type.
pub fn decode_error(code: Code, error: &serde_json::Error, body: &[u8]) -> Status {
    match first_value(body) {
        FirstValue::Invalid(go_message) => return Status::new(code, go_message),
        FirstValue::CutOff => return Status::new(code, "unexpected EOF"),
        FirstValue::Whole => {}
    }
    if error.is_eof() {
        return Status::new(code, "unexpected EOF");
    }
    let top_level = match body.iter().find(|c| !c.is_ascii_whitespace()) {
        Some(b'-' | b'0'..=b'9') => Some("number"),
        Some(b'"') => Some("string"),
        Some(b't' | b'f') => Some("bool"),
        _ => None,
    };
    if let Some(kind) = top_level {
        return Status::new(code, format!("json: cannot unmarshal {kind} into Go value of type map[string]json.RawMessage"));
    }
    let message = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    if let Some(without_position) = message.strip_suffix(&position) {
        if let Some(go_message) = number_as_written(without_position, body, error) {
            return Status::new(code, go_message);
        }
        if etcdgate_proto::go_json::is_go_message(without_position) {
            return Status::new(code, without_position);
        }
        if let Some(go_message) = etcdgate_proto::go_json::go_type_error(without_position) {
            return Status::new(code, go_message);
        }
    }
    Status::new(code, message)
}

/// Go names a number it cannot store as it was written (`1e-09`, `99999999999999999999`);
/// serde hands over a float, written back differently (`0.000000001`, `100000000000000000000`).
/// So `message`'s number is replaced by the literal that ends where serde's `error` is, if it
/// is that number.
fn number_as_written(message: &str, body: &[u8], error: &serde_json::Error) -> Option<String> {
    let (number, go_type) = message.strip_prefix("json: cannot unmarshal number ")?.split_once(" into Go value of type ")?;
    let line_start = match error.line() {
        1 => 0,
        line => body.iter().enumerate().filter(|(_, c)| **c == b'\n').nth(line - 2)?.0 + 1,
    };
    let end = (line_start + error.column()).min(body.len());
    let is_literal = |c: &u8| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E');
    let start = body[..end].iter().rposition(|c| !is_literal(c)).map_or(0, |at| at + 1);
    let literal = std::str::from_utf8(&body[start..end]).ok()?;
    let same = literal.parse::<f64>().ok()? == number.parse::<f64>().ok()?;
    same.then(|| format!("json: cannot unmarshal number {literal} into Go value of type {go_type}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages of etcd 3.5.1's gateway for the same bodies.
    #[test]
    fn numbers_and_top_level_values_are_named_as_go_names_them() {
        let error = |body: &str| {
            let failed = serde_json::from_str::<etcdgate_proto::etcdserverpb::PutRequest>(body).unwrap_err();
            decode_error(Code::InvalidArgument, &failed, body.as_bytes()).message().to_string()
        };
        assert_eq!(error(r#"{"TTL": "5", "lease": -1e-09}"#), "json: cannot unmarshal number -1e-09 into Go value of type int64");
        assert_eq!(error("{\"key\":\"YQ==\",\n \"lease\":1.50}"), "json: cannot unmarshal number 1.50 into Go value of type int64");
        assert_eq!(error(r#"{"lease":99999999999999999999}"#), "json: cannot unmarshal number 99999999999999999999 into Go value of type int64");
        assert_eq!(error("2Z1enovYt"), "json: cannot unmarshal number into Go value of type map[string]json.RawMessage");
        assert_eq!(error("1e999{"), "json: cannot unmarshal number into Go value of type map[string]json.RawMessage");
        assert_eq!(error(r#""a""#), "json: cannot unmarshal string into Go value of type map[string]json.RawMessage");
    }

    #[test]
    fn status_mapping_follows_grpc_gateway() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::OutOfRange), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(http_status(Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn stream_errors_are_one_json_line() {
        let line = stream_error_line(&Status::cancelled("context canceled"));
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"error\":{\"grpc_code\":1,\"http_code\":408,\"message\":\"context canceled\",\"http_status\":\"Request Timeout\"}}"
        );
    }
}
