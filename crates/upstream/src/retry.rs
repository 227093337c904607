//! Retry rules: which failed calls may be sent again to another member.
//!
//! Reads, watches and status calls fail over on any transport failure or `Unavailable`.
//! Writes fail over only when the request provably never reached a member (the connection
//! could not be made), so a write is never applied twice. Everything else — and every
//! answer etcd gave deliberately (`etcdserver: ...`, compacted, permission denied, ...) —
//! goes back to the client unchanged.

use std::error::Error as StdError;

use tonic::{Code, Status};

use crate::connection::NOT_SENT;

/// How a request may be retried on another member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Idempotent: reads, watches, status, member list. Any transport failure fails over.
    Read,
    /// Not idempotent: only retried when the request never left etcdgate.
    Write,
}

/// What a failed call tells us about the member and the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made: the member is down and the request was never sent.
    NotSent,
    /// The member failed in transit or reported itself unavailable: it may have seen the request.
    Transport,
    /// etcd answered with an error of its own: pass it to the client.
    Answer,
}

impl Failure {
    /// Whether a request under `policy` that failed this way may go to another member.
    pub fn may_retry(self, policy: RetryPolicy) -> bool {
        matches!((self, policy), (Failure::NotSent, _) | (Failure::Transport, RetryPolicy::Read))
    }

    /// Whether the failure says the member itself is unusable for now.
    pub fn member_unhealthy(self) -> bool {
        self != Failure::Answer
    }
}

/// Sorts a failed call's status into [`Failure`].
pub fn classify(status: &Status) -> Failure {
    let msg = status.message();
    if msg.starts_with(NOT_SENT) {
        return Failure::NotSent;
    }
    if msg.starts_with("etcdserver: ") || msg.starts_with("mvcc: ") || msg.starts_with("auth: ") {
        return Failure::Answer;
    }
    match status.code() {
        Code::Unavailable => Failure::Transport,
        // h2 / hyper failures surface as Unknown or Internal with a transport source.
        Code::Unknown | Code::Internal if status.source().is_some() => Failure::Transport,
        _ => Failure::Answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_answers_are_never_retried() {
        for msg in ["etcdserver: request timed out", "etcdserver: no leader", "etcdserver: leader changed"] {
            let status = Status::unavailable(msg);
            assert_eq!(classify(&status), Failure::Answer);
            assert!(!classify(&status).may_retry(RetryPolicy::Write));
        }
        let compacted = Status::out_of_range("etcdserver: mvcc: required revision has been compacted");
        assert!(!classify(&compacted).may_retry(RetryPolicy::Read));
    }

    #[test]
    fn connect_errors_retry_writes_transport_errors_only_reads() {
        let refused = Status::unavailable(format!("{NOT_SENT}connect to 127.0.0.1:1: Connection refused"));
        assert_eq!(classify(&refused), Failure::NotSent);
        assert!(classify(&refused).may_retry(RetryPolicy::Write));
        let reset = Status::unavailable("error trying to connect: connection reset");
        assert_eq!(classify(&reset), Failure::Transport);
        assert!(classify(&reset).may_retry(RetryPolicy::Read));
        assert!(!classify(&reset).may_retry(RetryPolicy::Write));
    }
}
