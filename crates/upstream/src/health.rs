//! Member states: what etcdgate believes about each etcd member, and the evidence for it.
//!
//! Every member of the pool has one [`MemberHealth`], shared by all worker pools. It is moved
//! only by observations, each carrying its evidence:
//!
//! | observation | from | moves the member to |
//! | --- | --- | --- |
//! | Status answered, `isLearner` | active probe | **learner** |
//! | Status answered, leader 0 or an `etcdserver: no leader` error | active probe | **leaderless** |
//! | Status answered, raft term below the majority's term | active probe | **lagging** |
//! | Status answered, applied index more than `lag_threshold` behind the best member | active probe | **lagging** |
//! | Status answered, none of the above, within half the probe deadline | active probe | **healthy** |
//! | Status answered, none of the above, but slower than half the probe deadline (or after it: a probe left open on a hung member) | active probe | **suspect** |
//! | no answer within the probe deadline | active probe | **hung** |
//! | connect refused / reset, connection closed | active probe | **down** |
//! | a call failed with `NotSent` (see [`crate::classify`]) | passive, `Pool::call` | **down** |
//! | a call failed with `Transport` (sent, then reset or closed: ambiguous) on a healthy or suspect member | passive, `Pool::call` | **suspect** |
//! | a call failed because a timeout passed (keep-alive ping, connect) | passive, `Pool::call` | **hung** |
//! | MemberList lists it as learner | member list sync | **learner** |
//! | MemberList lists it as voter while it was a learner (promoted) | member list sync | **new** (the next probe decides) |
//! | MemberList no longer lists it | member list sync | **removed** (final until it is listed again) |
//!
//! **new** is where every member starts (configured or discovered) until its first probe.
//! Only **healthy** members are in rotation; calls fall back to the others, in the order
//! suspect, lagging, leaderless, new, down, hung, only when no member is healthy. Learners and
//! removed members never get client traffic. A learner stays a learner until a probe or the
//! member list says otherwise; a removed member ignores probes.
//!
//! **suspect** is the state of soft evidence: the member still answers, but slowly, or one
//! call was cut after it was sent. It is re-probed at once (and back to back while it stays
//! suspect): a prompt answer makes it healthy again, hard evidence (refused, no answer in time)
//! down or hung as from any other state. Calls and streams already open on a suspect member
//! stay there ([`State::keeps_open_calls`]); only new calls avoid it. Soft evidence moves only
//! a healthy (or suspect) member: one that is already out of rotation has nothing to lose.
//!
//! Every change of state logs one line (`warn` when the member leaves rotation, `info`
//! otherwise) with the evidence and how long the member was in its previous state. Evidence
//! that changes without a change of state is recorded silently.
//!
//! Probes of a member that keeps failing back off (250 ms doubling to 30 s, see
//! [`MemberHealth::next_probe_in`]); a member that answers is probed every probe interval, so
//! a member passing probes again is back in rotation within one interval.
//!
//! Everything here is pure logic: time enters only through `Instant::now()` for the log line
//! and the age of the last report.

use std::fmt;
use std::time::{Duration, Instant};

use etcdgate_proto::etcdserverpb::StatusResponse;

use crate::retry::Failure;

/// Shortest wait before re-probing a member whose probe failed.
pub const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait before re-probing a member that keeps failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What etcdgate believes about one member. Only [`State::Healthy`] is in rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Known (from `--endpoints` or MemberList) but not probed yet.
    New = 0,
    /// Answers Status, has a leader, keeps up with the others: in rotation.
    Healthy = 1,
    /// Answers, but soft evidence counts against it (a slow probe answer, a call cut after
    /// it was sent): a fallback only, re-probed at once.
    Suspect = 2,
    /// Refuses or resets connections.
    Down = 3,
    /// Accepts connections but answers nothing in time (SIGSTOP, overload, black hole).
    Hung = 4,
    /// Answers, but has no leader (partitioned from a quorum, or the cluster lost quorum).
    Leaderless = 5,
    /// Answers, but its raft term or applied index trails the rest of the cluster.
    Lagging = 6,
    /// A raft learner: tracked, never given client traffic.
    Learner = 7,
    /// No longer in MemberList.
    Removed = 8,
}

impl State {
    /// Whether calls are balanced onto the member.
    pub fn in_rotation(self) -> bool {
        self == State::Healthy
    }

    /// Whether calls and streams already open on the member stay there: healthy, or suspect
    /// (soft evidence only). When a member stops keeping open calls, its open reads are
    /// failed over and its streams moved.
    pub fn keeps_open_calls(self) -> bool {
        matches!(self, State::Healthy | State::Suspect)
    }

    /// Order among the members a call may fall back to when none is healthy (lower first);
    /// `None` for members that never get client traffic (learners, removed members).
    pub fn fallback_rank(self) -> Option<u8> {
        match self {
            State::Healthy => Some(0),
            // Still answers, and serves everything a healthy member does.
            State::Suspect => Some(1),
            State::Lagging => Some(2),
            State::Leaderless => Some(3),
            State::New => Some(4),
            // A down member fails fast (and provably unsent); a hung one costs a deadline.
            State::Down => Some(5),
            State::Hung => Some(6),
            State::Learner | State::Removed => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::New => "new",
            State::Healthy => "healthy",
            State::Suspect => "suspect",
            State::Down => "down",
            State::Hung => "hung",
            State::Leaderless => "leaderless",
            State::Lagging => "lagging",
            State::Learner => "learner",
            State::Removed => "removed",
        }
    }

    pub(crate) fn from_u8(value: u8) -> State {
        match value {
            1 => State::Healthy,
            2 => State::Suspect,
            3 => State::Down,
            4 => State::Hung,
            5 => State::Leaderless,
            6 => State::Lagging,
            7 => State::Learner,
            8 => State::Removed,
            _ => State::New,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parts of a Maintenance.Status answer the state machine looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusReport {
    pub member_id: u64,
    pub leader: u64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub is_learner: bool,
    pub errors: Vec<String>,
    /// How long the member took to answer.
    pub answered_in: Duration,
}

impl StatusReport {
    pub fn from_response(response: &StatusResponse, answered_in: Duration) -> StatusReport {
        StatusReport {
            member_id: response.header.as_ref().map(|h| h.member_id).unwrap_or_default(),
            leader: response.leader,
            raft_term: response.raft_term,
            raft_index: response.raft_index,
            raft_applied_index: response.raft_applied_index,
            is_learner: response.is_learner,
            errors: response.errors.clone(),
            answered_in,
        }
    }

    /// The applied index (etcd before 3.4 reported only the raft index).
    pub fn applied(&self) -> u64 {
        if self.raft_applied_index != 0 {
            self.raft_applied_index
        } else {
            self.raft_index
        }
    }

    /// Evidence that the member has no leader, if it says so.
    fn no_leader(&self) -> Option<String> {
        if let Some(error) = self.errors.iter().find(|e| e.contains("no leader")) {
            return Some(format!("Status error: {error}"));
        }
        (self.leader == 0).then(|| format!("Status reports no leader (term {})", self.raft_term))
    }
}

/// What the rest of the cluster looks like, to judge one member's report against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reference {
    /// Highest applied index any voter reported.
    pub best_applied: u64,
    /// Highest raft term that a quorum of the voters has reached (None without a quorum of
    /// reports).
    pub majority_term: Option<u64>,
}

impl Reference {
    /// From the recent Status reports of the members; `voters` is how many voting members the
    /// cluster has (learners' reports are ignored).
    pub fn from_reports<'a>(reports: impl IntoIterator<Item = &'a StatusReport>, voters: usize) -> Reference {
        let mut terms = Vec::new();
        let mut best_applied = 0;
        for report in reports.into_iter().filter(|r| !r.is_learner) {
            terms.push(report.raft_term);
            best_applied = best_applied.max(report.applied());
        }
        let quorum = voters.max(terms.len()) / 2 + 1;
        terms.sort_unstable_by(|a, b| b.cmp(a));
        Reference { best_applied, majority_term: terms.get(quorum - 1).copied() }
    }
}

/// The limits a Status answer is judged by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A member whose applied index trails the best member's by more than this is lagging.
    pub lag_threshold: u64,
    /// An answer slower than this (half the probe deadline) makes the member suspect.
    pub slow_answer: Duration,
}

/// Why a probe got no Status answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeFailure {
    /// No answer within the probe deadline.
    TimedOut(Duration),
    /// Connection refused, reset or closed.
    Unreachable(String),
    /// The member answered Status with an error.
    Error(String),
}

/// One change of state, as logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub evidence: String,
    /// How long the member was in `from`.
    pub after: Duration,
}

/// One member's state and the evidence for it.
#[derive(Debug)]
pub struct MemberHealth {
    url: String,
    state: State,
    evidence: String,
    since: Instant,
    /// Consecutive probes without an answer.
    failures: u32,
    last_report: Option<(Instant, StatusReport)>,
}

impl MemberHealth {
    /// A member that was not probed yet.
    pub fn new(url: impl Into<String>, evidence: impl Into<String>) -> MemberHealth {
        MemberHealth {
            url: url.into(),
            state: State::New,
            evidence: evidence.into(),
            since: Instant::now(),
            failures: 0,
            last_report: None,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn evidence(&self) -> &str {
        &self.evidence
    }

    /// When the member entered its state.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Consecutive probes without an answer.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The last Status answer, if it is at most `max_age` old.
    pub fn recent_report(&self, max_age: Duration) -> Option<&StatusReport> {
        self.last_report.as_ref().filter(|(at, _)| at.elapsed() <= max_age).map(|(_, report)| report)
    }

    /// How long to wait before the next probe: none for a suspect member, the probe interval
    /// while the member answers, otherwise 250 ms doubling per failed probe up to 30 s.
    pub fn next_probe_in(&self, interval: Duration) -> Duration {
        if self.state == State::Suspect {
            return Duration::ZERO;
        }
        if self.failures == 0 {
            return interval;
        }
        MIN_BACKOFF.saturating_mul(1u32 << (self.failures - 1).min(10)).min(MAX_BACKOFF)
    }

    /// A probe got a Status answer; `reference` describes the rest of the cluster.
    pub fn probe_answered(&mut self, report: StatusReport, reference: &Reference, limits: Limits) -> Option<Transition> {
        self.failures = 0;
        self.last_report = Some((Instant::now(), report.clone()));
        if self.state == State::Removed {
            return None;
        }
        let (state, evidence) = judge(&report, reference, limits);
        self.set(state, evidence)
    }

    /// A probe got no Status answer.
    pub fn probe_failed(&mut self, failure: ProbeFailure) -> Option<Transition> {
        if matches!(&failure, ProbeFailure::Error(message) if message.contains("no leader")) {
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        if matches!(self.state, State::Removed | State::Learner) {
            return None;
        }
        let (state, evidence) = match failure {
            ProbeFailure::TimedOut(deadline) => (State::Hung, format!("no Status answer within {deadline:?}")),
            ProbeFailure::Unreachable(message) => (State::Down, format!("probe: {message}")),
            ProbeFailure::Error(message) if message.contains("no leader") => {
                (State::Leaderless, format!("Status error: {message}"))
            }
            ProbeFailure::Error(message) => (State::Down, format!("Status error: {message}")),
        };
        self.set(state, evidence)
    }

    /// A client call on the member failed this way (`Pool::call`'s passive signal). A timeout
    /// (keep-alive ping, connect) makes the member hung and a call never sent (refused) down,
    /// from healthy, suspect, lagging, leaderless or new; a call cut after it was sent is soft
    /// evidence and makes only a healthy member suspect.
    pub fn call_failed(&mut self, failure: Failure, message: &str) -> Option<Transition> {
        if !failure.member_unhealthy() || !matches!(self.state.fallback_rank(), Some(0..=4)) {
            return None;
        }
        let lower = message.to_ascii_lowercase();
        if lower.contains("timed out") || lower.contains("keep-alive") || lower.contains("keepalive") {
            return self.set(State::Hung, format!("call failed: {message}"));
        }
        match (failure, self.state) {
            (Failure::NotSent, _) => self.set(State::Down, format!("call failed: {message}")),
            (_, State::Healthy | State::Suspect) => self.set(State::Suspect, format!("call failed after it was sent: {message}")),
            _ => None,
        }
    }

    /// A stream on the member went silent while it had something to deliver (a cached
    /// prefix's watch behind a write etcd acknowledged elsewhere): soft evidence, as a call
    /// cut after it was sent — a healthy member becomes suspect (re-probed at once).
    pub fn stream_stalled(&mut self, evidence: String) -> Option<Transition> {
        match self.state {
            State::Healthy | State::Suspect => self.set(State::Suspect, evidence),
            _ => None,
        }
    }

    /// The member list names the member (as learner or voter).
    pub fn listed(&mut self, is_learner: bool) -> Option<Transition> {
        match (self.state, is_learner) {
            (State::Learner, true) => None,
            (_, true) => self.set(State::Learner, "MemberList lists it as learner".into()),
            (State::Removed, false) => self.set(State::New, "listed by MemberList again".into()),
            (State::Learner, false) => self.set(State::New, "MemberList lists it as voter (promoted)".into()),
            _ => None,
        }
    }

    /// The member list no longer names the member.
    pub fn unlisted(&mut self, evidence: String) -> Option<Transition> {
        self.set(State::Removed, evidence)
    }

    fn set(&mut self, to: State, evidence: String) -> Option<Transition> {
        let from = self.state;
        self.evidence = evidence;
        if from == to {
            return None;
        }
        let after = self.since.elapsed();
        self.state = to;
        self.since = Instant::now();
        let after_ms = after.as_millis() as u64;
        if from.in_rotation() || matches!(to, State::Down | State::Hung | State::Removed) {
            tracing::warn!(member = %self.url, %from, %to, after_ms, evidence = %self.evidence, "member state changed");
        } else {
            tracing::info!(member = %self.url, %from, %to, after_ms, evidence = %self.evidence, "member state changed");
        }
        crate::metrics::state_changed(&self.url, from, to);
        Some(Transition { from, to, evidence: self.evidence.clone(), after })
    }
}

/// The state a Status answer puts a member in, with its evidence.
pub fn judge(report: &StatusReport, reference: &Reference, limits: Limits) -> (State, String) {
    if report.is_learner {
        return (State::Learner, "Status reports isLearner".into());
    }
    if let Some(evidence) = report.no_leader() {
        return (State::Leaderless, evidence);
    }
    if let Some(term) = reference.majority_term.filter(|&term| report.raft_term < term) {
        return (State::Lagging, format!("raft term {} below the majority's term {term}", report.raft_term));
    }
    let behind = reference.best_applied.saturating_sub(report.applied());
    let lag_threshold = limits.lag_threshold;
    if behind > lag_threshold {
        return (
            State::Lagging,
            format!(
                "applied index {} trails the best member's {} by {behind} (> {lag_threshold})",
                report.applied(),
                reference.best_applied
            ),
        );
    }
    if report.answered_in > limits.slow_answer {
        return (
            State::Suspect,
            format!(
                "Status answered in {} ms (> {} ms, half the probe deadline)",
                report.answered_in.as_millis(),
                limits.slow_answer.as_millis()
            ),
        );
    }
    (
        State::Healthy,
        format!("Status ok: leader {:x}, term {}, applied index {}", report.leader, report.raft_term, report.applied()),
    )
}

/// A member as MemberList reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub id: u64,
    pub name: String,
    /// Its first plain-HTTP client URL, normalized; `None` while it has not started (a member
    /// just added) or serves only TLS.
    pub client_url: Option<String>,
    pub is_learner: bool,
}

/// A member the pool knows, as member list sync sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    pub url: String,
    /// 0 until the member answered a probe or was matched with the member list.
    pub id: u64,
    pub removed: bool,
}

/// What member list sync does to the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncAction {
    /// `known[index]` is listed member `id`.
    Listed { index: usize, id: u64, is_learner: bool },
    /// `known[index]` (member `id`) is no longer listed.
    Unlisted { index: usize, id: u64 },
    /// A listed member the pool does not know yet.
    Add { url: String, id: u64, is_learner: bool },
}

/// Matches the members the pool knows with a MemberList answer.
///
/// A listed member is matched by member ID, else by client URL with a known member that no
/// listed ID claimed (its ID is not known yet, or a member re-added at the same URL). Listed
/// members without a match join (when they have a client URL). Known members with an ID that
/// is not listed any more are removed; known members whose ID is still unknown (never answered) are left
/// alone: they may be a listed member under another URL, which a probe will tell.
pub fn plan_sync(known: &[Known], listed: &[Listed]) -> Vec<SyncAction> {
    let mut matched = vec![false; known.len()];
    let mut matches: Vec<Option<usize>> = listed
        .iter()
        .map(|member| {
            let index = known.iter().enumerate().position(|(i, k)| !matched[i] && !k.removed && k.id == member.id)?;
            matched[index] = true;
            Some(index)
        })
        .collect();
    // Second pass: by URL, among the known members no listed ID claimed.
    for (member, found) in listed.iter().zip(matches.iter_mut()) {
        let Some(url) = member.client_url.as_deref() else { continue };
        if found.is_none() {
            *found = known.iter().enumerate().position(|(i, k)| !matched[i] && k.url == url);
            if let Some(index) = *found {
                matched[index] = true;
            }
        }
    }
    let mut actions = Vec::new();
    for (member, found) in listed.iter().zip(matches) {
        match (found, &member.client_url) {
            (Some(index), _) => actions.push(SyncAction::Listed { index, id: member.id, is_learner: member.is_learner }),
            (None, Some(url)) => actions.push(SyncAction::Add { url: url.clone(), id: member.id, is_learner: member.is_learner }),
            (None, None) => {}
        }
    }
    for (index, k) in known.iter().enumerate() {
        if !matched[index] && !k.removed && k.id != 0 {
            actions.push(SyncAction::Unlisted { index, id: k.id });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { lag_threshold: 1000, slow_answer: Duration::from_millis(500) };

    fn report(id: u64, leader: u64, term: u64, applied: u64) -> StatusReport {
        StatusReport { member_id: id, leader, raft_term: term, raft_applied_index: applied, ..Default::default() }
    }

    fn healthy(url: &str) -> MemberHealth {
        let mut member = MemberHealth::new(url, "test");
        member.probe_answered(report(1, 1, 2, 10), &Reference::default(), LIMITS);
        assert_eq!(member.state(), State::Healthy);
        member
    }

    #[test]
    fn members_start_new_and_a_good_answer_makes_them_healthy() {
        let mut member = MemberHealth::new("http://m0", "from --endpoints");
        assert_eq!(member.state(), State::New);
        assert!(!member.state().in_rotation());
        let t = member.probe_answered(report(1, 1, 2, 10), &Reference::default(), LIMITS).unwrap();
        assert_eq!((t.from, t.to), (State::New, State::Healthy));
        assert!(t.evidence.contains("leader 1, term 2, applied index 10"), "{}", t.evidence);
        assert!(member.state().in_rotation());
        assert_eq!(member.probe_answered(report(1, 1, 2, 11), &Reference::default(), LIMITS), None, "no change, no transition");
        assert!(member.evidence().contains("applied index 11"), "evidence is still updated");
    }

    #[test]
    fn refused_timed_out_and_failed_calls_take_a_member_out() {
        let mut member = healthy("http://m0");
        let t = member.probe_failed(ProbeFailure::Unreachable("connect: Connection refused".into())).unwrap();
        assert_eq!(t.to, State::Down);
        assert_eq!(t.evidence, "probe: connect: Connection refused");

        let mut member = healthy("http://m0");
        let t = member.probe_failed(ProbeFailure::TimedOut(Duration::from_secs(1))).unwrap();
        assert_eq!((t.to, t.evidence.as_str()), (State::Hung, "no Status answer within 1s"));

        let mut member = healthy("http://m0");
        let t = member.call_failed(Failure::NotSent, "etcdgate: not sent to member: connect: refused").unwrap();
        assert_eq!(t.to, State::Down);
        let mut member = healthy("http://m0");
        let t = member.call_failed(Failure::Transport, "etcdgate: member connection failed: keep-alive timed out").unwrap();
        assert_eq!(t.to, State::Hung);
        let mut member = healthy("http://m0");
        assert_eq!(member.call_failed(Failure::Answer, "etcdserver: request timed out"), None, "etcd's own answers say nothing");
        assert_eq!(member.state(), State::Healthy);
    }

    #[test]
    fn a_failed_call_does_not_move_a_learner_removed_or_already_failed_member() {
        let mut member = healthy("http://m0");
        member.probe_failed(ProbeFailure::TimedOut(Duration::from_secs(1)));
        assert_eq!(member.call_failed(Failure::NotSent, "connect: refused"), None, "hung stays hung");
        let mut learner = MemberHealth::new("http://m3", "test");
        learner.listed(true);
        assert_eq!(learner.call_failed(Failure::Transport, "reset"), None);
        assert_eq!(learner.probe_failed(ProbeFailure::Unreachable("refused".into())), None);
        assert_eq!(learner.state(), State::Learner);
    }

    fn answered_in(millis: u64) -> StatusReport {
        StatusReport { answered_in: Duration::from_millis(millis), ..report(1, 1, 2, 10) }
    }

    #[test]
    fn a_slow_probe_answer_makes_a_member_suspect_until_a_prompt_one() {
        let interval = Duration::from_millis(500);
        let mut member = healthy("http://m0");
        assert_eq!(member.probe_answered(answered_in(500), &Reference::default(), LIMITS), None, "exactly half is prompt");
        let t = member.probe_answered(answered_in(600), &Reference::default(), LIMITS).unwrap();
        assert_eq!((t.from, t.to), (State::Healthy, State::Suspect));
        assert_eq!(t.evidence, "Status answered in 600 ms (> 500 ms, half the probe deadline)");
        assert!(!member.state().in_rotation() && member.state().keeps_open_calls());
        assert_eq!(member.next_probe_in(interval), Duration::ZERO, "re-probed at once");
        assert_eq!(member.probe_answered(answered_in(700), &Reference::default(), LIMITS), None, "still suspect");
        let t = member.probe_answered(answered_in(3), &Reference::default(), LIMITS).unwrap();
        assert_eq!((t.from, t.to), (State::Suspect, State::Healthy));
        assert_eq!(member.next_probe_in(interval), interval);

        // A probe left open on a hung member answers late: suspect, not healthy at once.
        member.probe_failed(ProbeFailure::TimedOut(Duration::from_secs(1)));
        let t = member.probe_answered(answered_in(5000), &Reference::default(), LIMITS).unwrap();
        assert_eq!((t.from, t.to), (State::Hung, State::Suspect));
        // Hard evidence wins as from any state.
        assert_eq!(member.probe_failed(ProbeFailure::TimedOut(Duration::from_secs(1))).unwrap().to, State::Hung);
        member.probe_answered(answered_in(600), &Reference::default(), LIMITS);
        assert_eq!(member.probe_failed(ProbeFailure::Unreachable("refused".into())).unwrap().to, State::Down);
        // A harder verdict of the same answer comes first.
        let slow_leaderless = StatusReport { answered_in: Duration::from_millis(900), ..report(1, 0, 3, 10) };
        assert_eq!(member.probe_answered(slow_leaderless, &Reference::default(), LIMITS).unwrap().to, State::Leaderless);
    }

    #[test]
    fn a_call_cut_after_it_was_sent_makes_only_a_healthy_member_suspect() {
        let reset = "etcdgate: member connection failed: connection reset";
        let mut member = healthy("http://m0");
        let t = member.call_failed(Failure::Transport, reset).unwrap();
        assert_eq!((t.from, t.to), (State::Healthy, State::Suspect));
        assert_eq!(t.evidence, format!("call failed after it was sent: {reset}"));
        assert_eq!(member.call_failed(Failure::Transport, reset), None, "stays suspect");
        assert_eq!(member.probe_answered(report(1, 1, 2, 10), &Reference::default(), LIMITS).unwrap().to, State::Healthy);

        // Hard evidence from a suspect member: refused, or a timeout.
        member.call_failed(Failure::Transport, reset);
        let t = member.call_failed(Failure::NotSent, "etcdgate: not sent to member: connect: refused").unwrap();
        assert_eq!((t.from, t.to), (State::Suspect, State::Down));
        let mut member = healthy("http://m0");
        member.call_failed(Failure::Transport, reset);
        let t = member.call_failed(Failure::Transport, "etcdgate: member connection failed: keep-alive timed out").unwrap();
        assert_eq!((t.from, t.to), (State::Suspect, State::Hung));

        // A member already out of rotation learns nothing from a cut call: the probes judge it.
        let mut member = healthy("http://m0");
        member.probe_answered(report(1, 0, 3, 10), &Reference::default(), LIMITS);
        assert_eq!(member.call_failed(Failure::Transport, reset), None);
        assert_eq!(member.state(), State::Leaderless);
        assert_eq!(member.call_failed(Failure::NotSent, "connect: refused").unwrap().to, State::Down);
    }

    #[test]
    fn no_leader_makes_a_member_leaderless() {
        let mut member = healthy("http://m0");
        let t = member.probe_answered(report(1, 0, 3, 10), &Reference::default(), LIMITS).unwrap();
        assert_eq!((t.to, t.evidence.as_str()), (State::Leaderless, "Status reports no leader (term 3)"));
        let mut member = healthy("http://m0");
        let mut r = report(1, 2, 3, 10);
        r.errors.push("etcdserver: no leader".into());
        assert_eq!(member.probe_answered(r, &Reference::default(), LIMITS).unwrap().to, State::Leaderless);
        let mut member = healthy("http://m0");
        let t = member.probe_failed(ProbeFailure::Error("etcdserver: no leader".into())).unwrap();
        assert_eq!(t.to, State::Leaderless);
        assert_eq!(member.failures(), 0, "a leaderless member answers: probed at the normal interval");
        assert_eq!(member.probe_answered(report(1, 2, 3, 10), &Reference::default(), LIMITS).unwrap().to, State::Healthy);
    }

    #[test]
    fn a_member_behind_on_applied_index_or_term_is_lagging() {
        let reports = [report(1, 1, 5, 5000), report(2, 1, 5, 4990), report(3, 1, 4, 3000)];
        let reference = Reference::from_reports(&reports, 3);
        assert_eq!(reference, Reference { best_applied: 5000, majority_term: Some(5) });

        let mut member = healthy("http://m2");
        let t = member.probe_answered(report(3, 1, 5, 3999), &reference, LIMITS).unwrap();
        assert_eq!(t.to, State::Lagging);
        assert_eq!(t.evidence, "applied index 3999 trails the best member's 5000 by 1001 (> 1000)");
        assert_eq!(member.probe_answered(report(3, 1, 5, 4000), &reference, LIMITS).unwrap().to, State::Healthy, "exactly the threshold is fine");

        let t = member.probe_answered(report(3, 1, 4, 5000), &reference, LIMITS).unwrap();
        assert_eq!((t.to, t.evidence.as_str()), (State::Lagging, "raft term 4 below the majority's term 5"));
    }

    #[test]
    fn the_majority_term_needs_a_quorum_and_ignores_a_lone_high_term() {
        // A partitioned member campaigning alone has the highest term: the majority's is lower.
        let reports = [report(1, 1, 5, 10), report(2, 1, 5, 10), report(3, 0, 9, 10)];
        assert_eq!(Reference::from_reports(&reports, 3).majority_term, Some(5));
        // Two reports of five voters: no quorum, no term rule.
        assert_eq!(Reference::from_reports(&reports[..2], 5).majority_term, None);
        let mut learner = report(4, 1, 9, 99_999);
        learner.is_learner = true;
        let with_learner = [report(1, 1, 5, 10), learner];
        assert_eq!(Reference::from_reports(&with_learner, 1), Reference { best_applied: 10, majority_term: Some(5) });
    }

    #[test]
    fn learners_by_status_or_member_list_and_promotion() {
        let mut member = healthy("http://m3");
        let mut r = report(4, 1, 2, 10);
        r.is_learner = true;
        let t = member.probe_answered(r.clone(), &Reference::default(), LIMITS).unwrap();
        assert_eq!((t.to, t.evidence.as_str()), (State::Learner, "Status reports isLearner"));
        assert_eq!(member.listed(true), None);
        assert_eq!(member.probe_answered(r, &Reference::default(), LIMITS), None);
        // Promoted: the member list says voter, the next probe decides.
        assert_eq!(member.listed(false).unwrap().to, State::New);
        assert_eq!(member.probe_answered(report(4, 1, 2, 10), &Reference::default(), LIMITS).unwrap().to, State::Healthy);

        let mut member = MemberHealth::new("http://m4", "discovered");
        assert_eq!(member.listed(true).unwrap().evidence, "MemberList lists it as learner");
        // A probe that says it is no longer a learner is fresher than the member list.
        assert_eq!(member.probe_answered(report(5, 1, 2, 10), &Reference::default(), LIMITS).unwrap().to, State::Healthy);
    }

    #[test]
    fn removed_members_ignore_probes_until_listed_again() {
        let mut member = healthy("http://m0");
        let t = member.unlisted("member 1 no longer in MemberList".into()).unwrap();
        assert_eq!((t.from, t.to), (State::Healthy, State::Removed));
        assert_eq!(member.probe_answered(report(1, 1, 2, 10), &Reference::default(), LIMITS), None);
        assert_eq!(member.probe_failed(ProbeFailure::Unreachable("x".into())), None);
        assert_eq!(member.call_failed(Failure::NotSent, "x"), None);
        assert_eq!(member.state(), State::Removed);
        assert_eq!(member.listed(false).unwrap().to, State::New);
    }

    #[test]
    fn failing_members_are_probed_with_exponential_backoff() {
        let interval = Duration::from_millis(500);
        let mut member = healthy("http://m0");
        assert_eq!(member.next_probe_in(interval), interval);
        let mut delays = Vec::new();
        for _ in 0..10 {
            member.probe_failed(ProbeFailure::Unreachable("refused".into()));
            delays.push(member.next_probe_in(interval).as_millis());
        }
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        for _ in 0..100 {
            member.probe_failed(ProbeFailure::TimedOut(Duration::from_secs(1)));
        }
        assert_eq!(member.next_probe_in(interval), MAX_BACKOFF);
        member.probe_answered(report(1, 1, 2, 10), &Reference::default(), LIMITS);
        assert_eq!(member.next_probe_in(interval), interval, "one answer resets the backoff");
        assert_eq!(member.state(), State::Healthy);
    }

    #[test]
    fn fallback_order_and_rotation() {
        let mut states = [State::Hung, State::Down, State::New, State::Leaderless, State::Lagging, State::Suspect, State::Healthy];
        states.sort_by_key(|s| s.fallback_rank());
        assert_eq!(
            states,
            [State::Healthy, State::Suspect, State::Lagging, State::Leaderless, State::New, State::Down, State::Hung]
        );
        assert_eq!(State::Learner.fallback_rank(), None);
        assert_eq!(State::Removed.fallback_rank(), None);
        assert!(State::Healthy.in_rotation() && !State::Suspect.in_rotation());
        let keeping: Vec<State> = (0..=8).map(State::from_u8).filter(|s| s.keeps_open_calls()).collect();
        assert_eq!(keeping, [State::Healthy, State::Suspect]);
        for value in 0..9u8 {
            assert_eq!(State::from_u8(value) as u8, value);
        }
    }

    fn known(url: &str, id: u64) -> Known {
        Known { url: url.into(), id, removed: false }
    }

    fn listed(id: u64, url: Option<&str>, is_learner: bool) -> Listed {
        Listed { id, name: format!("m{id}"), client_url: url.map(Into::into), is_learner }
    }

    #[test]
    fn member_list_sync_matches_by_id_then_url_and_adds_and_removes() {
        let known_members = [known("http://a", 1), known("http://b", 0), known("http://c", 3), known("http://d", 0)];
        let list = [
            listed(1, Some("http://advertised-a"), false), // matched by id, URL of --endpoints kept
            listed(2, Some("http://b"), false),            // matched by URL (id unknown yet)
            listed(4, Some("http://e"), true),             // new learner
            listed(5, None, false),                        // added, not started: skipped
        ];
        assert_eq!(
            plan_sync(&known_members, &list),
            [
                SyncAction::Listed { index: 0, id: 1, is_learner: false },
                SyncAction::Listed { index: 1, id: 2, is_learner: false },
                SyncAction::Add { url: "http://e".into(), id: 4, is_learner: true },
                // c (id 3) is gone; d never answered and is left alone.
                SyncAction::Unlisted { index: 2, id: 3 },
            ]
        );
    }

    #[test]
    fn a_member_re_added_at_the_same_url_is_matched_by_url() {
        let known_members = [Known { url: "http://a".into(), id: 1, removed: true }, known("http://b", 2)];
        assert_eq!(
            plan_sync(&known_members, &[listed(7, Some("http://a"), false), listed(2, Some("http://b"), false)]),
            [SyncAction::Listed { index: 0, id: 7, is_learner: false }, SyncAction::Listed { index: 1, id: 2, is_learner: false }]
        );
        // Member 1 is gone and member 7 now serves its URL: the URL is kept, with the new ID.
        assert_eq!(
            plan_sync(&[known("http://a", 1)], &[listed(7, Some("http://a"), false)]),
            [SyncAction::Listed { index: 0, id: 7, is_learner: false }]
        );
    }
}
