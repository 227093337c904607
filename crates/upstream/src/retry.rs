//! Retry rules: which failed calls may be sent again to another member.
//!
//! | failure | reads (Range, watches, Status, MemberList, TimeToLive, ...) | writes (Put, Txn, Compact, lease, auth, membership) |
//! | --- | --- | --- |
//! | not sent: connect refused / timed out, connection closed before the request was written | another member | another member |
//! | rejected by etcd before proposing: `no leader`, `rpc not supported for learner`, `not capable`, `too many requests` | another member | another member |
//! | transport failure after sending (reset, keep-alive timeout, `Unavailable` without an etcd message) | another member | the client gets the error (it may have been applied) |
//! | any other etcd answer (`request timed out`, `leader changed`, compacted, invalid argument, permission denied, ...) | the client gets it | the client gets it |
//!
//! So a write is never applied twice, and deterministic answers come back at once. The
//! client's deadline bounds all attempts.

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
    /// etcd refused the request before proposing it to raft (so it was not applied), for a
    /// reason another member may not have: no leader, learner, not capable, too many requests.
    Rejected,
    /// etcd answered with an error of its own: pass it to the client.
    Answer,
}

/// etcd's refusals that happen before a request is proposed (see [`Failure::Rejected`]).
const REJECTED_BEFORE_PROPOSING: &[&str] = &[
    "etcdserver: no leader",
    "etcdserver: rpc not supported for learner",
    "etcdserver: not capable",
    "etcdserver: too many requests",
];

impl Failure {
    /// Whether a request under `policy` that failed this way may go to another member.
    pub fn may_retry(self, policy: RetryPolicy) -> bool {
        matches!(
            (self, policy),
            (Failure::NotSent | Failure::Rejected, _) | (Failure::Transport, RetryPolicy::Read)
        )
    }

    /// Whether the failure says the member's connection is unusable for now (a refusal says
    /// something about its raft state, which the probes judge).
    pub fn member_unhealthy(self) -> bool {
        matches!(self, Failure::NotSent | Failure::Transport)
    }
}

/// Sorts a failed call's status into [`Failure`].
pub fn classify(status: &Status) -> Failure {
    let msg = status.message();
    if msg.starts_with(NOT_SENT) {
        return Failure::NotSent;
    }
    if REJECTED_BEFORE_PROPOSING.contains(&msg) {
        return Failure::Rejected;
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
    fn refusals_before_proposing_are_retried_for_reads_and_writes() {
        for msg in REJECTED_BEFORE_PROPOSING {
            let failure = classify(&Status::unavailable(*msg));
            assert_eq!(failure, Failure::Rejected);
            assert!(failure.may_retry(RetryPolicy::Write) && failure.may_retry(RetryPolicy::Read));
            assert!(!failure.member_unhealthy(), "the probes judge raft state, not one refusal");
        }
    }

    #[test]
    fn etcd_answers_are_never_retried() {
        for msg in ["etcdserver: request timed out", "etcdserver: leader changed", "etcdserver: server stopped"] {
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
