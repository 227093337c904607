//! What a client's call carries besides its message: auth token, `hasleader`, its deadline,
//! and the member it asked for. Built from gRPC metadata or HTTP headers, applied to the
//! request etcdgate sends upstream.

use std::time::Duration;

use http::HeaderMap;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::Request;

/// Metadata keys passed through to etcd unchanged.
const FORWARDED_KEYS: &[&str] = &["token", "authorization", "hasleader"];
/// Names the member a maintenance call should reach (client URL or hex member ID).
pub const MEMBER_KEY: &str = "etcdgate-member";

#[derive(Clone, Debug, Default)]
pub struct CallContext {
    forwarded: Vec<(&'static str, AsciiMetadataValue)>,
    pub timeout: Option<Duration>,
    pub member: Option<String>,
}

impl CallContext {
    pub fn from_grpc(metadata: &MetadataMap) -> CallContext {
        let forwarded = FORWARDED_KEYS
            .iter()
            .filter_map(|key| metadata.get(*key).map(|value| (*key, value.clone())))
            .collect();
        CallContext {
            forwarded,
            timeout: metadata.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout),
            member: metadata.get(MEMBER_KEY).and_then(|v| v.to_str().ok()).map(str::to_string),
        }
    }

    /// etcd's gateway passes the HTTP `Authorization` header (the raw token) to etcd as
    /// `authorization` metadata; etcd accepts the token under that key.
    pub fn from_http(headers: &HeaderMap) -> CallContext {
        let mut forwarded = Vec::new();
        for key in FORWARDED_KEYS {
            if let Some(value) = headers.get(*key).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
                forwarded.push((*key, value));
            }
        }
        CallContext {
            forwarded,
            timeout: None,
            member: headers.get(MEMBER_KEY).and_then(|v| v.to_str().ok()).map(str::to_string),
        }
    }

    /// Builds the upstream request for `message` with this call's metadata and deadline.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        for (key, value) in &self.forwarded {
            metadata.insert(*key, value.clone());
        }
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        request
    }
}

/// Parses gRPC's `grpc-timeout` header (`<up to 8 digits><H|M|S|m|u|n>`).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_garbage_is_ignored() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    #[test]
    fn auth_and_hasleader_are_forwarded_others_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "tok.123".parse().unwrap());
        headers.insert("hasleader", "true".parse().unwrap());
        headers.insert("cookie", "x".parse().unwrap());
        let request = CallContext::from_http(&headers).request(());
        assert_eq!(request.metadata().get("authorization").unwrap(), "tok.123");
        assert_eq!(request.metadata().get("hasleader").unwrap(), "true");
        assert!(request.metadata().get("cookie").is_none());
    }
}
