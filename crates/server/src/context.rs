//! What a client's call carries besides its message: auth token, `hasleader`, its deadline,
//! the member it asked for, and the highest revision its connection has been shown. Built
//! from gRPC metadata or HTTP headers (and the connection's [`SeenRevision`], which the
//! accept loop puts in every request's extensions), applied to the request etcdgate sends
//! upstream.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcdgate_proto::etcdserverpb::ResponseHeader;
use http::{Extensions, HeaderMap};
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tonic::Request;

/// Metadata keys passed through to etcd unchanged.
const FORWARDED_KEYS: &[&str] = &["token", "authorization", "hasleader"];
/// Names the member a maintenance call should reach (client URL or hex member ID).
pub const MEMBER_KEY: &str = "etcdgate-member";

/// Bumped when etcd's revision was found below one etcdgate had seen (the cluster was
/// restored from a snapshot or rebuilt): the revisions connections saw before belong to a
/// history that is gone.
static HISTORY: AtomicU64 = AtomicU64::new(0);

/// Notes that etcd's revisions went back (see [`HISTORY`]): every connection's
/// [`SeenRevision`] starts again from 0.
pub fn history_restarted() {
    HISTORY.fetch_add(1, Ordering::AcqRel);
}

/// The highest `header.revision` one client connection has been shown. Every revision a
/// member reports is committed, so the cluster never really goes below it (unless it is
/// restored from a snapshot, see [`history_restarted`]): answers from a member that has not
/// applied that far yet are asked again elsewhere (reads) or carry this revision instead of
/// the member's (stream messages), so that the client never sees its revisions go backwards
/// when it is moved between members.
#[derive(Clone, Debug, Default)]
pub struct SeenRevision(Arc<Seen>);

#[derive(Debug, Default)]
struct Seen {
    revision: AtomicI64,
    /// The [`HISTORY`] `revision` belongs to.
    history: AtomicU64,
}

impl SeenRevision {
    /// The revision, forgotten first if it belongs to a history that is gone.
    fn current(&self) -> &AtomicI64 {
        let history = HISTORY.load(Ordering::Acquire);
        if self.0.history.load(Ordering::Acquire) != history {
            self.0.revision.store(0, Ordering::Release);
            self.0.history.store(history, Ordering::Release);
        }
        &self.0.revision
    }

    pub fn get(&self) -> i64 {
        self.current().load(Ordering::Acquire)
    }

    /// Records that the client has been shown `revision`.
    pub fn saw(&self, revision: i64) {
        self.current().fetch_max(revision, Ordering::AcqRel);
    }

    /// For a stream message: lifts `header.revision` to what the client has already seen (the
    /// cluster is at least there) and records it. A header without a revision (etcd 3.4's compacted
    /// cancel) is left as etcd sent it.
    pub fn lift(&self, header: &mut Option<ResponseHeader>) {
        if let Some(header) = header.as_mut().filter(|header| header.revision > 0) {
            let seen = self.current().fetch_max(header.revision, Ordering::AcqRel);
            header.revision = header.revision.max(seen);
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct CallContext {
    forwarded: Vec<(&'static str, AsciiMetadataValue)>,
    /// From the client's `grpc-timeout`: bounds the call with all its retries.
    pub deadline: Option<Instant>,
    pub member: Option<String>,
    /// The client connection's; a call without one (internal calls) gets its own.
    pub seen: SeenRevision,
}

/// Whether forwarded metadata `key` carries the client's credentials (`token`,
/// `authorization`), rather than `hasleader`.
fn is_credential(key: &str) -> bool {
    key != "hasleader"
}

fn seen_revision(extensions: &Extensions) -> SeenRevision {
    extensions.get::<SeenRevision>().cloned().unwrap_or_default()
}

impl CallContext {
    pub fn from_grpc<T>(request: &Request<T>) -> CallContext {
        let metadata = request.metadata();
        let forwarded = FORWARDED_KEYS.iter().filter_map(|key| metadata.get(*key).map(|value| (*key, value.clone()))).collect();
        CallContext {
            forwarded,
            deadline: metadata
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_grpc_timeout)
                .and_then(|timeout| Instant::now().checked_add(timeout)),
            member: metadata.get(MEMBER_KEY).and_then(|v| v.to_str().ok()).map(str::to_string),
            seen: seen_revision(request.extensions()),
        }
    }

    /// etcd's gateway passes the HTTP `Authorization` header (the raw token) to etcd as
    /// `authorization` metadata; etcd accepts the token under that key.
    pub fn from_http(headers: &HeaderMap, extensions: &Extensions) -> CallContext {
        let mut forwarded = Vec::new();
        for key in FORWARDED_KEYS {
            if let Some(value) = headers.get(*key).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
                forwarded.push((*key, value));
            }
        }
        CallContext {
            forwarded,
            deadline: None,
            member: headers.get(MEMBER_KEY).and_then(|v| v.to_str().ok()).map(str::to_string),
            seen: seen_revision(extensions),
        }
    }

    /// An internal call's context, sending etcdgate's own `token` (see `etcdgate_upstream::login`).
    pub fn with_token(token: Option<&str>) -> CallContext {
        let forwarded = token.and_then(|token| token.parse().ok()).map(|value| vec![("token", value)]).unwrap_or_default();
        CallContext { forwarded, ..CallContext::default() }
    }

    /// Whether the client sent a token (it then gets etcd's own permission checks).
    pub fn has_credentials(&self) -> bool {
        self.forwarded.iter().any(|(key, _)| is_credential(key))
    }

    /// The client's credentials as sent (empty without any): what etcd's permission checks
    /// look at.
    pub fn credentials(&self) -> Vec<(&'static str, Vec<u8>)> {
        self.metadata().into_iter().filter(|(key, _)| is_credential(key)).collect()
    }

    /// The same call without the client's credentials (`hasleader` kept).
    pub fn without_credentials(&self) -> CallContext {
        let forwarded = self.forwarded.iter().filter(|(key, _)| !is_credential(key)).cloned().collect();
        CallContext { forwarded, ..self.clone() }
    }

    /// All the metadata this call passes on to etcd.
    pub fn metadata(&self) -> Vec<(&'static str, Vec<u8>)> {
        self.forwarded.iter().map(|(key, value)| (*key, value.as_bytes().to_vec())).collect()
    }

    /// Builds the upstream request for `message` with this call's metadata and what is left
    /// of its deadline.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        for (key, value) in &self.forwarded {
            metadata.insert(*key, value.clone());
        }
        if let Some(deadline) = self.deadline {
            request.set_timeout(deadline.saturating_duration_since(Instant::now()));
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
        let request = CallContext::from_http(&headers, &Extensions::new()).request(());
        assert_eq!(request.metadata().get("authorization").unwrap(), "tok.123");
        assert_eq!(request.metadata().get("hasleader").unwrap(), "true");
        assert!(request.metadata().get("cookie").is_none());
    }

    #[test]
    fn stream_headers_never_go_below_what_the_connection_saw() {
        let seen = SeenRevision::default();
        let header = |revision| Some(ResponseHeader { revision, ..Default::default() });
        let mut ahead = header(10);
        seen.lift(&mut ahead);
        assert_eq!(ahead.unwrap().revision, 10);
        let mut behind = header(7);
        seen.lift(&mut behind);
        assert_eq!(behind.unwrap().revision, 10, "a member behind: the revision already shown");
        seen.saw(12);
        assert_eq!(seen.get(), 12);
        let mut none = None;
        seen.lift(&mut none);
        assert!(none.is_none());
        let mut empty = header(0);
        seen.lift(&mut empty);
        assert_eq!(empty.unwrap().revision, 0, "etcd 3.4's compacted cancel has an empty header: kept");
    }
}
