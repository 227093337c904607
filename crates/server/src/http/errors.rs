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
/// (`unexpected EOF`) is the error whatever else is wrong; then Go's base64 and number errors
/// without serde's position, a value of the wrong JSON type.
pub fn decode_error(code: Code, error: &serde_json::Error, body: &[u8]) -> Status {
    match first_value(body) {
        FirstValue::Invalid(go_message) => return Status::new(code, go_message),
        FirstValue::CutOff => return Status::new(code, "unexpected EOF"),
        FirstValue::Whole => {}
    }
    if error.is_eof() {
        return Status::new(code, "unexpected EOF");
    }
    let message = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    if let Some(without_position) = message.strip_suffix(&position) {
        if etcdgate_proto::go_json::is_go_message(without_position) {
            return Status::new(code, without_position);
        }
        if let Some(go_message) = etcdgate_proto::go_json::go_type_error(without_position) {
            return Status::new(code, go_message);
        }
    }
    Status::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

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
