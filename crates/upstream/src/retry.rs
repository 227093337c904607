//! Retry rules: which failed calls may be sent again to another member.
//!
//! | failure | reads (Range, watches, Status, MemberList, TimeToLive, ...) | writes (Put, Txn, Compact, lease, auth, membership) |
//! | --- | --- | --- |
//! | not sent: connect refused / timed out, connection closed before the request was written | another member | another member |
//! | rejected by etcd before proposing: `no leader`, `rpc not supported for learner`, `not capable`, `too many requests` | another member | another member |
//! | transport failure after sending (reset, keep-alive timeout, `Unavailable` without an etcd message) | another member | the client gets the error (it may have been applied) |
//! | interrupted by the cluster: `leader changed`, `request timed out` (and its variants), `server stopped`, `timed out waiting for read index response` | another member | the client gets it (it may have been applied) |
//! | any other etcd answer (compacted, future revision, invalid argument, permission denied, lease not found, no space, ...) | the client gets it | the client gets it |
//!
//! So a write is never applied twice, and deterministic answers come back at once. When every
//! member has failed a call in a way that allows another try (down, cut, an election: `no
//! leader`, `leader changed` everywhere for a second or two), the members are tried again
//! after a pause (100 ms, doubling up to 1 s), within the retry budget — unless one refused
//! it as overloaded ([`is_overload`]): retrying would only add to the load. A call
//! refused with `too many requests` (etcd's apply loop is far behind its commits: the cluster
//! is overloaded, not just the member) waits before it goes to the next member: 10 ms,
//! doubling per refusal up to 200 ms ([`OverloadBackoff`]). A call is never sent to more
//! members than there are, and the client's deadline bounds all attempts and pauses.

use std::error::Error as StdError;
use std::time::Duration;

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
    /// etcd could not finish the request because of its raft state (leader changed, timed
    /// out): a read may be asked again; a write may have been applied.
    Interrupted,
    /// etcd answered with an error of its own: pass it to the client.
    Answer,
}

/// etcd's refusals that happen before a request is proposed (see [`Failure::Rejected`]).
const REJECTED_BEFORE_PROPOSING: &[&str] = &[
    "etcdserver: no leader",
    "etcdserver: rpc not supported for learner",
    "etcdserver: not capable",
    TOO_MANY_REQUESTS,
];

/// etcd's answers when raft interrupted a request (see [`Failure::Interrupted`]).
const INTERRUPTED: &[&str] = &[
    "etcdserver: leader changed",
    "etcdserver: request timed out",
    "etcdserver: request timed out, possibly due to previous leader failure",
    "etcdserver: request timed out, possibly due to connection lost",
    "etcdserver: request timed out, waiting for the applied index took too long",
    "etcdserver: server stopped",
    "etcdserver: timed out waiting for read index response",
];

/// etcd's refusal when it is overloaded.
const TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";
/// The pause after a call's first `too many requests`.
const FIRST_OVERLOAD_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between two members refusing with `too many requests`.
const MAX_OVERLOAD_PAUSE: Duration = Duration::from_millis(200);

impl Failure {
    /// Whether a request under `policy` that failed this way may go to another member.
    pub fn may_retry(self, policy: RetryPolicy) -> bool {
        matches!(
            (self, policy),
            (Failure::NotSent | Failure::Rejected, _) | (Failure::Transport | Failure::Interrupted, RetryPolicy::Read)
        )
    }


    /// Whether the failure says the member's connection is unusable for now (a refusal says
    /// something about its raft state, which the probes judge).
    pub fn member_unhealthy(self) -> bool {
        matches!(self, Failure::NotSent | Failure::Transport)
    }
}

/// The pauses of one call between members that refuse it as overloaded.
#[derive(Debug, Default)]
pub(crate) struct OverloadBackoff {
    refusals: u32,
}

impl OverloadBackoff {
    /// How long to wait before sending the call to the next member after it failed with
    /// `status`: nothing unless etcd said `too many requests`, then 10 ms, doubling with each
    /// such refusal of the call, up to 200 ms.
    pub(crate) fn pause_after(&mut self, status: &Status) -> Option<Duration> {
        if status.message() != TOO_MANY_REQUESTS {
            return None;
        }
        let pause = FIRST_OVERLOAD_PAUSE.saturating_mul(1 << self.refusals.min(16)).min(MAX_OVERLOAD_PAUSE);
        self.refusals = self.refusals.saturating_add(1);
        Some(pause)
    }
}

/// Whether etcd's answer says the cluster is electing a leader (`no leader`, or a request cut
/// short by raft).
pub fn during_election(status: &Status) -> bool {
    let msg = status.message();
    msg == "etcdserver: no leader" || INTERRUPTED.contains(&msg)
}

/// Whether etcd refused the call as overloaded (`too many requests`).
pub fn is_overload(status: &Status) -> bool {
    status.message() == TOO_MANY_REQUESTS
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
    if INTERRUPTED.contains(&msg) {
        return Failure::Interrupted;
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
    fn interrupted_requests_are_retried_for_reads_only() {
        for msg in INTERRUPTED {
            let failure = classify(&Status::unavailable(*msg));
            assert_eq!(failure, Failure::Interrupted, "{msg}");
            assert!(failure.may_retry(RetryPolicy::Read), "{msg}");
            assert!(!failure.may_retry(RetryPolicy::Write), "{msg}: a write may have been applied");
            assert!(during_election(&Status::unavailable(*msg)) && !failure.member_unhealthy());
        }
        for deterministic in ["etcdserver: mvcc: required revision has been compacted", "etcdserver: requested lease not found"] {
            let failure = classify(&Status::out_of_range(deterministic));
            assert_eq!(failure, Failure::Answer);
            assert!(!failure.may_retry(RetryPolicy::Read) && !during_election(&Status::out_of_range(deterministic)));
        }
    }

    #[test]
    fn too_many_requests_pauses_10_ms_doubling_up_to_200_ms() {
        let mut backoff = OverloadBackoff::default();
        let overloaded = Status::unavailable(TOO_MANY_REQUESTS);
        let pauses: Vec<u128> = (0..7).map(|_| backoff.pause_after(&overloaded).unwrap().as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 200, 200]);
        for _ in 0..100 {
            backoff.pause_after(&overloaded);
        }
        assert_eq!(backoff.pause_after(&overloaded), Some(MAX_OVERLOAD_PAUSE));
        let mut backoff = OverloadBackoff::default();
        for other in ["etcdserver: no leader", "etcdserver: rpc not supported for learner", "etcdserver: request timed out"] {
            assert_eq!(backoff.pause_after(&Status::unavailable(other)), None, "{other}: the next member at once");
        }
        assert_eq!(backoff.pause_after(&overloaded), Some(FIRST_OVERLOAD_PAUSE), "other failures do not count");
    }

    #[test]
    fn deterministic_answers_are_never_retried() {
        for msg in ["etcdserver: mvcc: required revision has been compacted", "etcdserver: mvcc: required revision is a future revision", "etcdserver: key is not provided", "etcdserver: permission denied"] {
            let status = Status::invalid_argument(msg);
            assert_eq!(classify(&status), Failure::Answer, "{msg}");
            assert!(!classify(&status).may_retry(RetryPolicy::Read) && !classify(&status).may_retry(RetryPolicy::Write));
            assert!(!during_election(&status));
        }
        assert!(during_election(&Status::unavailable("etcdserver: no leader")));
        assert!(!during_election(&Status::unavailable(TOO_MANY_REQUESTS)) && is_overload(&Status::unavailable(TOO_MANY_REQUESTS)));
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
