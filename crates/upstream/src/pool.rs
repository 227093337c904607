//! The member pool: the etcd members, the state each is in, and which one gets a call.
//!
//! A *family* of pools (one made by [`Pool::new`], the others by [`Pool::sibling`], one per
//! worker thread) shares one list of members and one state per member (see
//! [`crate::health`]), kept up to date by one background prober (see `probe.rs`) started by
//! `Pool::new` on its runtime and stopped when the last pool of the family is dropped. Each
//! pool has its own HTTP/2 connection to each member, made on first use, on the pool's own
//! thread; members that join the family later (member list sync) get theirs the same way.
//!
//! Balancing: a call to [`Target::Any`] goes to the cheaper of two healthy voters picked at
//! random, by peak-EWMA latency × open calls (see [`crate::balance`]), then to the other
//! healthy ones; only when none is healthy does it fall back to the others (suspect, lagging,
//! leaderless, not yet probed, down, hung, in that order), so a call always has somewhere to
//! go. Learners and removed members never get client traffic. A call that fails with
//! `NotSent` or `Transport` takes its member out of rotation at once (down, or suspect when the
//! call was cut after it was sent) and has it re-probed; a read still open on a member when
//! the member stops keeping open calls (a probe found it hung, leaderless, ...; not merely
//! suspect) is abandoned and failed over. A write is never abandoned: it may have reached the
//! member, so it waits for its answer. After etcd's `too many requests` the next member is
//! tried after a short pause (see [`crate::retry`]). A read its member is slow to answer is
//! also sent to the next healthy member, and the first answer wins (see [`crate::hedge`]).
//! A read that two members failed in transit while serving it, and that were then found
//! down, is not sent to a third (see [`CUT_TWICE`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Duration;

use etcdgate_proto::etcdserverpb::{maintenance_client::MaintenanceClient, StatusRequest};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tonic::Status;

use crate::balance::{p2c_order, Load, Timing};
use crate::connection::{ConnectOptions, MemberConnection};
use crate::hedge;
use crate::health::{
    plan_sync, Known, Limits, Listed, MemberHealth, ProbeFailure, Reference, State, StatusReport, SyncAction, Transition,
};
use crate::retry::{classify, during_election, is_overload, Failure, OverloadBackoff, RetryPolicy};
use crate::tls::MemberTls;

/// Connection, probe and member-state settings, shared by a pool family.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    /// TCP connect timeout for every member connection.
    pub connect_timeout: Duration,
    /// How often each member gets a Maintenance.Status probe while it answers.
    pub probe_interval: Duration,
    /// A probe without an answer after this long makes the member hung; one answered after
    /// half of it makes the member suspect.
    pub probe_timeout: Duration,
    /// How often MemberList is read to find members that joined or left.
    pub member_sync_interval: Duration,
    /// A member whose raft applied index trails the best member's by more than this is lagging.
    pub lag_threshold: u64,
    /// HTTP/2 keep-alive ping interval on client connections, while a call is open. Not
    /// shorter than etcd's `--grpc-keepalive-min-time` (default 5 s): etcd closes a connection
    /// that pings more often while it sends nothing (measured: a quiet watch on a connection
    /// pinging every 1 s is cut after 4 s, on 3.4 and 3.5). Hung members are found by the
    /// probes' deadline instead; see `connection.rs`.
    pub keepalive_interval: Duration,
    /// A keep-alive ping without an answer after this long closes the connection.
    pub keepalive_timeout: Duration,
    /// A failed call is tried on another member only while less than this has passed since
    /// it began (a client's own deadline, when it sends one, bounds the whole call as well).
    pub retry_budget: Duration,
    /// For `https://` members (endpoints given, or found in the member list).
    pub tls: Option<MemberTls>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            connect_timeout: Duration::from_secs(2),
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_secs(1),
            member_sync_interval: Duration::from_secs(30),
            lag_threshold: 1000,
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(1),
            retry_budget: Duration::from_secs(10),
            tls: None,
        }
    }
}

impl PoolOptions {
    fn client_connection(&self) -> ConnectOptions {
        ConnectOptions {
            connect_timeout: self.connect_timeout,
            tls: self.tls.clone(),
            keepalive_interval: Some(self.keepalive_interval),
            keepalive_timeout: self.keepalive_timeout,
        }
    }

    /// Probe connections do without keep-alive: a probe's own deadline says when a member is
    /// hung, and the probe is left open so that a member that was only paused answers it the
    /// moment it runs again.
    pub(crate) fn probe_connection(&self) -> ConnectOptions {
        ConnectOptions { tls: self.tls.clone(), ..ConnectOptions::plain(self.connect_timeout) }
    }
}

/// Pause before trying every member again after all failed a call that may be retried.
const FIRST_ROUND_PAUSE: Duration = Duration::from_millis(100);
/// The longest such pause.
const MAX_ROUND_PAUSE: Duration = Duration::from_secs(1);
/// The start of the error of a read that two members failed in transit (connection lost or
/// reset) while serving it, both found down right after (their connections refused: the
/// process is gone, not merely the network), and that is therefore not sent to another.
/// Two members dying under the same request is more likely the request's doing than chance
/// — etcd has panicked on requests that passed its checks — and a third attempt could take
/// the cluster's last quorum member with it.
pub const CUT_TWICE: &str = "etcdgate: two etcd members failed while serving this request";
/// How long the members that failed a read in transit may take to be found down (they are
/// re-probed at once; a crashed member refuses the connection).
const CONFIRM_DOWN: Duration = Duration::from_millis(500);

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits until `state()` no longer keeps open calls (out of rotation, and not merely
/// suspect); `left` is notified whenever that happens.
async fn until_left(left: &Notify, state: impl Fn() -> State) {
    loop {
        let notified = left.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !state().keeps_open_calls() {
            return;
        }
        notified.await;
    }
}

/// One member as the whole family sees it: URL, ID, state. Connections are per pool.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) url: String,
    /// From `--endpoints` (wins over a duplicate found through MemberList).
    configured: bool,
    /// 0 until a probe or the member list tells.
    id: AtomicU64,
    /// `health.state()`, readable without the lock.
    state: AtomicU8,
    health: Mutex<MemberHealth>,
    /// Calls open on the member and its latency estimate, for balancing.
    pub(crate) load: Load,
    /// `etcdgate_member_requests_total` of the member.
    requests: Counter,
    /// Woken when the member stops keeping open calls (see [`State::keeps_open_calls`]).
    left: Notify,
    /// The same, one per pool (so that a call's wait is registered on its own thread's).
    left_listeners: Mutex<Vec<Weak<Notify>>>,
    /// Wakes the member's probe loop (a call failed on it, or succeeded while it was out).
    pub(crate) wake: Notify,
    /// The family's: woken on every change of state of any member.
    changed: Arc<Notify>,
}

impl Entry {
    fn new(url: String, configured: bool, id: u64, evidence: &str, changed: Arc<Notify>) -> Entry {
        Entry {
            health: Mutex::new(MemberHealth::new(url.clone(), evidence)),
            load: Load::default(),
            requests: crate::metrics::member_requests(&url),
            url,
            configured,
            id: AtomicU64::new(id),
            state: AtomicU8::new(State::New as u8),
            left: Notify::new(),
            left_listeners: Mutex::new(Vec::new()),
            wake: Notify::new(),
            changed,
        }
    }

    /// A `Notify` woken whenever the member stops keeping open calls.
    fn left_listener(&self) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        let mut listeners = lock(&self.left_listeners);
        listeners.retain(|l| l.strong_count() > 0);
        listeners.push(Arc::downgrade(&notify));
        notify
    }

    pub(crate) fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn id(&self) -> u64 {
        self.id.load(Ordering::Relaxed)
    }

    fn evidence(&self) -> String {
        lock(&self.health).evidence().to_string()
    }

    pub(crate) fn next_probe_in(&self, interval: Duration) -> Duration {
        lock(&self.health).next_probe_in(interval)
    }

    /// Runs one observation through the member's state machine. When the member starts or
    /// stops keeping open calls, its latency estimate starts over.
    fn update(&self, observe: impl FnOnce(&mut MemberHealth) -> Option<Transition>) -> Option<Transition> {
        let mut health = lock(&self.health);
        let transition = observe(&mut health);
        if let Some(t) = &transition {
            self.state.store(t.to as u8, Ordering::Release);
            drop(health);
            if t.from.keeps_open_calls() != t.to.keeps_open_calls() {
                self.load.start_over();
            }
            if t.from.keeps_open_calls() && !t.to.keeps_open_calls() {
                self.left.notify_waiters();
                for listener in lock(&self.left_listeners).iter().filter_map(Weak::upgrade) {
                    listener.notify_waiters();
                }
            }
            self.changed.notify_waiters();
        }
        transition
    }

    /// Resolves once the member no longer keeps open calls (at once if it does not).
    pub(crate) async fn left_rotation(&self) {
        until_left(&self.left, || self.state()).await
    }

    /// Passive signal: a client call failed this way.
    fn call_failed(&self, failure: Failure, message: &str) {
        if self.update(|h| h.call_failed(failure, message)).is_some() {
            self.wake.notify_one();
        }
    }

    /// Passive signal: a stream on the member stalled (see [`MemberHealth::stream_stalled`]).
    pub(crate) fn stream_stalled(&self, evidence: String) {
        if self.update(|h| h.stream_stalled(evidence)).is_some() {
            self.wake.notify_one();
        }
    }

    /// Passive signal: a client call succeeded. A member thought down or hung is re-probed now.
    fn call_succeeded(&self) {
        if matches!(self.state(), State::Down | State::Hung) {
            self.wake.notify_one();
        }
    }
}

/// What a pool family shares: the options and the members with their states.
#[derive(Debug)]
pub(crate) struct Family {
    pub(crate) options: PoolOptions,
    entries: Mutex<Vec<Arc<Entry>>>,
    /// Bumped whenever a member joins or is removed (pools then rebuild their member lists).
    version: AtomicU64,
    /// Woken on every change of state of any member.
    pub(crate) changed: Arc<Notify>,
    /// The set of members changed: the prober starts and stops probe loops.
    pub(crate) membership: Notify,
    /// Read MemberList now.
    pub(crate) resync: Notify,
    /// The raft leader the probes last heard of (member id, 0: none) and the term they heard
    /// it in: writes go to it first.
    leader: Mutex<(u64, u64)>,
}

impl Family {
    fn new(urls: Vec<String>, options: PoolOptions) -> Family {
        let changed = Arc::new(Notify::new());
        let entries = urls
            .into_iter()
            .map(|url| Arc::new(Entry::new(url, true, 0, "from --endpoints, not probed yet", changed.clone())))
            .collect();
        Family {
            options,
            entries: Mutex::new(entries),
            version: AtomicU64::new(1),
            changed,
            membership: Notify::new(),
            resync: Notify::new(),
            leader: Mutex::new((0, 0)),
        }
    }

    /// The member id of the raft leader as the probes last heard it.
    fn leader_id(&self) -> u64 {
        lock(&self.leader).0
    }

    pub(crate) fn entries(&self) -> Vec<Arc<Entry>> {
        lock(&self.entries).clone()
    }

    fn membership_changed(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
        self.membership.notify_one();
    }

    /// Reports older than this do not count when judging other members.
    fn report_max_age(&self) -> Duration {
        self.options.probe_interval * 3 + self.options.probe_timeout
    }

    /// A probe of `entry` got a Status answer; one within the probe deadline is also a
    /// latency sample.
    pub(crate) fn probe_answered(&self, entry: &Arc<Entry>, report: StatusReport) {
        let entries = self.entries();
        if report.member_id != 0 && entry.id() != report.member_id {
            entry.id.store(report.member_id, Ordering::Relaxed);
            self.drop_duplicates(entry, report.member_id, &entries);
        }
        let max_age = self.report_max_age();
        let others: Vec<StatusReport> = entries
            .iter()
            .filter(|e| !Arc::ptr_eq(e, entry) && e.state() != State::Removed)
            .filter_map(|e| lock(&e.health).recent_report(max_age).cloned())
            .collect();
        let voters = entries.iter().filter(|e| !matches!(e.state(), State::Learner | State::Removed)).count();
        let reference = Reference::from_reports(others.iter().chain([&report]), voters);
        let limits = Limits { lag_threshold: self.options.lag_threshold, slow_answer: self.options.probe_timeout / 2 };
        let answered_in = report.answered_in;
        if report.leader != 0 && !report.is_learner {
            let mut leader = lock(&self.leader);
            if report.raft_term >= leader.1 {
                *leader = (report.leader, report.raft_term);
            }
        }
        entry.update(|h| h.probe_answered(report, &reference, limits));
        if answered_in <= self.options.probe_timeout {
            entry.load.observe(answered_in);
        }
    }

    /// A probe of `entry` got no Status answer.
    pub(crate) fn probe_failed(&self, entry: &Entry, failure: ProbeFailure) {
        entry.update(|h| h.probe_failed(failure));
    }

    /// Two URLs that reach the same member: the one from `--endpoints` (else the older) stays.
    fn drop_duplicates(&self, entry: &Arc<Entry>, id: u64, entries: &[Arc<Entry>]) {
        for other in entries.iter().filter(|e| !Arc::ptr_eq(e, entry) && e.id() == id && e.state() != State::Removed) {
            let entry_first = entries.iter().position(|e| Arc::ptr_eq(e, entry)) < entries.iter().position(|e| Arc::ptr_eq(e, other));
            let (keep, drop) = if entry.configured && !other.configured || entry_first && entry.configured == other.configured {
                (entry, other)
            } else {
                (other, entry)
            };
            drop.update(|h| h.unlisted(format!("same member ({id:x}) as {}", keep.url)));
            self.membership_changed();
        }
    }

    /// The client URL of a listed member to reach it by: an `https://` one when TLS to
    /// members is configured (never falling back to plain HTTP if there is one), else a
    /// `http://` one.
    fn reachable_url(&self, advertised: &[String]) -> Option<String> {
        let valid: Vec<String> =
            advertised.iter().map(|u| normalize_url(u)).filter(|u| MemberConnection::new(u, Duration::from_secs(1)).is_ok()).collect();
        let with_scheme = |scheme: &str| valid.iter().find(|u| u.starts_with(scheme)).cloned();
        match self.options.tls {
            Some(_) => with_scheme("https://").or_else(|| with_scheme("http://")),
            None => with_scheme("http://"),
        }
    }

    /// Brings the member list in line with a MemberList answer.
    pub(crate) fn apply_member_list(&self, members: &[etcdgate_proto::etcdserverpb::Member]) {
        let listed: Vec<Listed> = members
            .iter()
            .map(|m| Listed {
                id: m.id,
                name: m.name.clone(),
                client_url: self.reachable_url(&m.client_ur_ls),
                is_learner: m.is_learner,
            })
            .collect();
        let mut entries = lock(&self.entries);
        let known: Vec<Known> =
            entries.iter().map(|e| Known { url: e.url.clone(), id: e.id(), removed: e.state() == State::Removed }).collect();
        let mut changed = false;
        for action in plan_sync(&known, &listed) {
            match action {
                SyncAction::Listed { index, id, is_learner } => {
                    let entry = &entries[index];
                    entry.id.store(id, Ordering::Relaxed);
                    if let Some(t) = entry.update(|h| h.listed(is_learner)) {
                        changed |= t.from == State::Removed;
                    }
                }
                SyncAction::Unlisted { index, id } => {
                    entries[index].update(|h| h.unlisted(format!("member {id:x} is no longer in MemberList")));
                    changed = true;
                }
                SyncAction::Add { url, id, is_learner } => {
                    let name = listed.iter().find(|l| l.id == id).map_or("", |l| l.name.as_str());
                    tracing::info!(member = %url, id = %format!("{id:x}"), name, is_learner, "member found in MemberList");
                    let entry = Arc::new(Entry::new(url, false, id, "listed by MemberList, not probed yet", self.changed.clone()));
                    if is_learner {
                        entry.update(|h| h.listed(true));
                    }
                    entries.push(entry);
                    changed = true;
                }
            }
        }
        drop(entries);
        if changed {
            self.membership_changed();
        }
    }
}

/// What the pools of a family hold; dropping the last one stops the prober.
#[derive(Debug)]
struct Shared {
    family: Arc<Family>,
    prober: Option<AbortHandle>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(prober) = &self.prober {
            prober.abort();
        }
    }
}

/// One etcd member: its client URL, this pool's connection to it, and its shared state.
#[derive(Debug)]
pub struct Member {
    entry: Arc<Entry>,
    connection: MemberConnection,
    /// This pool's wake-up for when the member leaves rotation.
    left: Arc<Notify>,
}

impl Member {
    pub fn url(&self) -> &str {
        &self.entry.url
    }

    /// This pool's connection to the member, for tonic clients.
    pub fn connection(&self) -> MemberConnection {
        self.connection.clone()
    }

    /// The member's state, shared by the whole pool family.
    pub fn state(&self) -> State {
        self.entry.state()
    }

    /// The member ID, 0 while it is unknown (the member never answered).
    pub fn id(&self) -> u64 {
        self.entry.id()
    }

    /// Resolves once the member no longer keeps open calls (at once if it does not).
    async fn left_rotation(&self) {
        until_left(&self.left, || self.state()).await
    }

    /// Makes `call` on this member's connection and [runs](Member::run) it. The call's future is
    /// boxed: a tonic call's is kilobytes, a hedge holds two, and unboxed they would make every
    /// future above this one as large, copied at each step of every call.
    fn attempt<'a, T: 'a, F, Fut>(&'a self, policy: RetryPolicy, timing: Timing, call: &mut F) -> impl Future<Output = Attempt<T>> + 'a
    where
        F: FnMut(MemberConnection) -> Fut,
        Fut: Future<Output = Result<T, Status>> + 'a,
    {
        self.run(policy, timing, Box::pin(call(self.connection())))
    }

    /// Runs `future`, a call made on this member's connection; a read still open when the
    /// member stops keeping open calls is abandoned (the `bool` of the error then says so). A
    /// measured call counts as open on the member while it runs, and its latency is a sample
    /// once the member answers (etcd's own errors included; failures and abandoned calls are
    /// not answers).
    async fn run<T>(&self, policy: RetryPolicy, timing: Timing, future: impl Future<Output = Result<T, Status>>) -> Attempt<T> {
        self.entry.requests.inc();
        let in_flight = (timing == Timing::Measured).then(|| self.entry.load.start());
        let result = if policy != RetryPolicy::Read || !self.state().keeps_open_calls() {
            future.await.map_err(|status| (status, false))
        } else {
            tokio::select! {
                biased;
                result = future => result.map_err(|status| (status, false)),
                () = self.left_rotation() => Err((
                    Status::unavailable(format!("etcdgate: member {} left rotation: {}", self.url(), self.entry.evidence())),
                    true,
                )),
            }
        };
        if let (Some(in_flight), true) = (in_flight, settles(&result)) {
            in_flight.answered();
        }
        result
    }
}

/// A call's outcome on one member: an error carries whether the call was abandoned because
/// the member left rotation.
type Attempt<T> = Result<T, (Status, bool)>;

/// Whether an attempt settles the call: a success, or an error etcd gave on purpose (an
/// answer of the member's; any other failure leaves the call to another member, if its
/// policy allows).
fn settles<T>(attempt: &Attempt<T>) -> bool {
    match attempt {
        Ok(_) => true,
        Err((status, abandoned)) => !abandoned && classify(status) == Failure::Answer,
    }
}

/// Which member a call must reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Any member; fails over according to the retry policy.
    Any,
    /// The current raft leader (membership changes, promote, move-leader).
    Leader,
    /// A member chosen by the client, by client URL or hex member ID. This may be a learner
    /// or a member out of rotation: the client asked for it.
    Named(String),
}

/// This pool's members (with its own connections), rebuilt when the family's list changes.
#[derive(Debug)]
struct Local {
    version: u64,
    members: Arc<[Arc<Member>]>,
}

/// The members behind the gateway, as one worker thread uses them.
#[derive(Debug)]
pub struct Pool {
    shared: Arc<Shared>,
    local: RwLock<Local>,
    hedges: hedge::Budget,
}

/// Accepts `host:port` as well as `http://host:port`.
pub(crate) fn normalize_url(raw: &str) -> String {
    let raw = raw.trim().trim_end_matches('/');
    if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    }
}

impl Pool {
    /// Builds the pool family's first pool and starts its prober (Status probes of every
    /// member, member list sync) on the current tokio runtime, which must exist. Connections
    /// are made on first use.
    pub fn new(endpoints: &[String], options: PoolOptions) -> Result<Pool, String> {
        let family = Arc::new(Family::new(Self::endpoint_urls(endpoints, &options)?, options));
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the member pool must be created on a tokio runtime".to_string())?;
        let prober = runtime.spawn(crate::probe::run(family.clone())).abort_handle();
        Ok(Pool::with_shared(Arc::new(Shared { family, prober: Some(prober) })))
    }

    /// A pool whose member states change only by hand (unit tests).
    #[cfg(test)]
    pub(crate) fn unprobed(endpoints: &[String], options: PoolOptions) -> Result<Pool, String> {
        let family = Arc::new(Family::new(Self::endpoint_urls(endpoints, &options)?, options));
        Ok(Pool::with_shared(Arc::new(Shared { family, prober: None })))
    }

    fn endpoint_urls(endpoints: &[String], options: &PoolOptions) -> Result<Vec<String>, String> {
        let mut urls: Vec<String> = Vec::new();
        for raw in endpoints.iter().filter(|e| !e.trim().is_empty()) {
            let url = normalize_url(raw);
            if url.starts_with("https://") && options.tls.is_none() {
                return Err(format!("endpoint {url}: an https:// member needs TLS settings (--cacert, --cert, --key)"));
            }
            MemberConnection::new(&url, Duration::from_secs(1))?;
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
        if urls.is_empty() {
            return Err("no etcd endpoints given".into());
        }
        Ok(urls)
    }

    fn with_shared(shared: Arc<Shared>) -> Pool {
        Pool { shared, local: RwLock::new(Local { version: 0, members: Arc::new([]) }), hedges: hedge::Budget::default() }
    }

    /// A pool of the same family with its own connections (one pool per worker thread): it
    /// shares the members, their states and the prober.
    pub fn sibling(&self) -> Pool {
        Pool::with_shared(self.shared.clone())
    }

    pub fn options(&self) -> &PoolOptions {
        &self.shared.family.options
    }

    fn family(&self) -> &Family {
        &self.shared.family
    }

    /// This pool's members other than removed ones, in the family's order.
    fn local(&self) -> Arc<[Arc<Member>]> {
        let family = self.family();
        let version = family.version.load(Ordering::Acquire);
        {
            let local = self.local.read().unwrap_or_else(PoisonError::into_inner);
            if local.version == version {
                return local.members.clone();
            }
        }
        let mut local = self.local.write().unwrap_or_else(PoisonError::into_inner);
        let version = family.version.load(Ordering::Acquire);
        if local.version == version {
            return local.members.clone();
        }
        let connect = family.options.client_connection();
        let members: Vec<Arc<Member>> = family
            .entries()
            .into_iter()
            .filter(|entry| entry.state() != State::Removed)
            .filter_map(|entry| {
                if let Some(member) = local.members.iter().find(|m| Arc::ptr_eq(&m.entry, &entry)) {
                    return Some(member.clone());
                }
                let connection = MemberConnection::for_member(&entry.url, connect.clone(), entry.clone()).ok()?;
                Some(Arc::new(Member { left: entry.left_listener(), entry, connection }))
            })
            .collect();
        *local = Local { version, members: members.into() };
        local.members.clone()
    }

    /// The members client traffic may go to, best first: healthy voters, then the other
    /// voters in fallback order. Learners and removed members are left out (see
    /// [`Pool::member_states`] for every member).
    pub fn members(&self) -> Vec<Arc<Member>> {
        let mut members: Vec<Arc<Member>> =
            self.local().iter().filter(|m| m.state().fallback_rank().is_some()).cloned().collect();
        members.sort_by_key(|m| m.state().fallback_rank());
        members
    }

    /// Every member the family knows, removed ones included: client URL, member ID (0 if
    /// unknown), state, and the evidence for that state.
    pub fn member_states(&self) -> Vec<(String, u64, State, String)> {
        self.family()
            .entries()
            .iter()
            .map(|entry| {
                let health = lock(&entry.health);
                (entry.url.clone(), entry.id(), health.state(), health.evidence().to_string())
            })
            .collect()
    }

    /// How many members are down now, having gone down at or after `instant`.
    pub fn gone_down_since(&self, instant: std::time::Instant) -> usize {
        self.family()
            .entries()
            .iter()
            .filter(|entry| {
                let health = lock(&entry.health);
                health.state() == State::Down && health.since() >= instant
            })
            .count()
    }

    /// A connection of its own to the member at client URL `url`, outside the pool's rotation
    /// and state, with the pool's TLS settings and no keep-alive pings (inspections, which
    /// must reach each member, whatever the pool thinks of it).
    pub fn direct_connection(&self, url: &str) -> Result<MemberConnection, String> {
        MemberConnection::with_options(&normalize_url(url), self.options().probe_connection())
    }

    /// Reads MemberList now instead of at the next sync interval (after a membership change).
    pub fn resync_members(&self) {
        self.family().resync.notify_one();
    }

    /// Members in the order a call to [`Target::Any`] should try them: healthy ones by power
    /// of two choices (see [`p2c_order`]), then the others in fallback order; never learners
    /// or removed members.
    fn candidates(&self) -> Vec<Arc<Member>> {
        let members = self.local();
        let healthy: Vec<Arc<Member>> = members.iter().filter(|m| m.state().in_rotation()).cloned().collect();
        let mut order = p2c_order(healthy, |m| m.entry.load.cost());
        if order.len() < members.len() {
            let mut rest: Vec<(u8, Arc<Member>)> = members
                .iter()
                .filter_map(|m| match m.state() {
                    State::Healthy => None,
                    state => state.fallback_rank().map(|rank| (rank, m.clone())),
                })
                .collect();
            rest.sort_by_key(|(rank, _)| *rank);
            order.extend(rest.into_iter().map(|(_, m)| m));
        }
        order
    }

    /// [`Pool::candidates`] for a write: the raft leader first when it is in rotation. etcd
    /// proposes every write on the leader; sent to a follower it takes one more hop, and it
    /// waits on that follower, which may be the one that hangs.
    fn write_candidates(&self, mut candidates: Vec<Arc<Member>>) -> Vec<Arc<Member>> {
        let leader = self.family().leader_id();
        if leader == 0 {
            return candidates;
        }
        let position = candidates.iter().position(|m| m.entry.id() == leader && m.state().in_rotation());
        if let Some(position) = position {
            candidates[..=position].rotate_right(1);
        }
        candidates
    }

    /// [`Pool::candidates`]; when no member is healthy but some are not probed yet (start-up, a
    /// member just found), waits up to a probe deadline for their first probes rather than
    /// send a call to a member that may turn out to be a learner.
    async fn balanced(&self) -> Vec<Arc<Member>> {
        let candidates = self.candidates();
        if candidates.first().is_some_and(|m| m.state().in_rotation()) || !candidates.iter().any(|m| m.state() == State::New)
        {
            return candidates;
        }
        let deadline = Instant::now() + self.family().options.probe_timeout;
        self.until_states(deadline, || {
            let members = self.local();
            members.iter().any(|m| m.state().in_rotation()) || !members.iter().any(|m| m.state() == State::New)
        })
        .await;
        self.candidates()
    }

    /// Waits until `holds` (a condition on member states) is true, looking again at every
    /// state change, or until `deadline`; whether it held.
    async fn until_states(&self, deadline: Instant, holds: impl Fn() -> bool) -> bool {
        loop {
            let changed = self.family().changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if holds() {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// Runs `call` on a member chosen for `target`, failing over as `policy` allows; `timing`
    /// says whether the call's latency measures its member (see [`Timing`]).
    pub async fn call<T, F, Fut>(&self, target: &Target, policy: RetryPolicy, timing: Timing, mut call: F) -> Result<T, Status>
    where
        F: FnMut(MemberConnection) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let give_up_at = Instant::now() + self.options().retry_budget;
        let hedged = policy == RetryPolicy::Read && timing == Timing::Measured && *target == Target::Any;
        if hedged {
            self.hedges.deposit();
        }
        let mut last_error = None;
        // The members that failed in transit while serving this call, each once.
        let mut cut_by: Vec<Arc<Member>> = Vec::new();
        let mut overload = OverloadBackoff::default();
        let mut round_pause = FIRST_ROUND_PAUSE;
        loop {
            let members = match target {
                Target::Any if policy == RetryPolicy::Write => Ok(self.write_candidates(self.balanced().await)),
                Target::Any => Ok(self.balanced().await),
                Target::Leader => self.leader().await.map(|leader| vec![leader]),
                Target::Named(name) => self.named(name).await.map(|member| vec![member]),
            };
            // Whether some member refused the call as overloaded (not waited out: retrying
            // would add to the load).
            let mut overloaded = false;
            match members {
                Ok(members) => {
                    let mut pause = None;
                    let mut next = 0;
                    while next < members.len() {
                        if last_error.is_some() && Instant::now() + pause.unwrap_or_default() >= give_up_at {
                            tracing::debug!(budget = ?self.options().retry_budget, "retry budget spent");
                            break;
                        }
                        if let Some(pause) = pause.take() {
                            tokio::time::sleep(pause).await;
                        }
                        let member = &members[next];
                        next += 1;
                        let attempts = if hedged {
                            self.hedged(member, timing, give_up_at, &mut call).await
                        } else {
                            [Some((member.clone(), member.attempt(policy, timing, &mut call).await)), None]
                        };
                        for (member, attempt) in attempts.into_iter().flatten() {
                            match attempt {
                                Ok(value) => {
                                    member.entry.call_succeeded();
                                    if *target == Target::Leader {
                                        // Leader-routed calls are membership changes (and move-leader).
                                        self.resync_members();
                                    }
                                    return Ok(value);
                                }
                                Err((status, abandoned)) => {
                                    let failure = if abandoned { Failure::Transport } else { classify(&status) };
                                    if !abandoned && failure.member_unhealthy() {
                                        member.entry.call_failed(failure, status.message());
                                    }
                                    if !failure.may_retry(policy) {
                                        return Err(status);
                                    }
                                    if !abandoned && failure == Failure::Transport && !cut_by.iter().any(|m| Arc::ptr_eq(m, &member)) {
                                        cut_by.push(member.clone());
                                        if cut_by.len() >= 2 && self.found_down(&cut_by, 2).await {
                                            tracing::warn!(member = %member.url(), error = %status.message(), "{CUT_TWICE}; not sent to another");
                                            return Err(Status::unavailable(format!("{CUT_TWICE}; not sent to another: {}", status.message())));
                                        }
                                    }
                                    tracing::debug!(member = %member.url(), error = %status.message(), "failing over");
                                    crate::metrics::failed_over(member.url());
                                    pause = overload.pause_after(&status);
                                    overloaded |= is_overload(&status);
                                    last_error = Some(status);
                                }
                            }
                        }
                    }
                }
                // No leader to send a leader-only call to: an election, most likely.
                Err(status) if *target == Target::Leader && during_election(&status) => last_error = Some(status),
                Err(status) => return Err(status),
            }
            // Every member failed the call in a way that allows another try (down, cut, an
            // election, ...): try them again a little later, within the budget.
            if overloaded || Instant::now() + round_pause >= give_up_at {
                break;
            }
            tokio::time::sleep(round_pause).await;
            round_pause = (round_pause * 2).min(MAX_ROUND_PAUSE);
        }
        Err(last_error.unwrap_or_else(|| Status::unavailable("etcdgate: no etcd member available")))
    }

    /// Runs a read on `first`; if `first` has not answered within the hedge delay and both
    /// budgets allow (hedges, and the retry budget ending at `give_up_at`), on a healthy
    /// partner as well (see [`crate::hedge`]) — the first other member healthy then, or, if
    /// none is, the first to become healthy (a read stuck on a fallback member during an
    /// election goes to the new leader's side as soon as the probes see it). Returns the
    /// attempts that finished, in order, with their members: an attempt that settles the
    /// call ends the race (the other call is dropped); one that fails waits for the other.
    async fn hedged<T, F, Fut>(
        &self,
        first: &Arc<Member>,
        timing: Timing,
        give_up_at: Instant,
        call: &mut F,
    ) -> [Option<(Arc<Member>, Attempt<T>)>; 2]
    where
        F: FnMut(MemberConnection) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let first_run = first.attempt(RetryPolicy::Read, timing, call);
        tokio::pin!(first_run);
        tokio::select! {
            biased;
            attempt = &mut first_run => return [Some((first.clone(), attempt)), None],
            () = tokio::time::sleep(hedge::delay(first.entry.load.estimate())) => {}
        }
        let partner = loop {
            let changed = self.family().changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let healthy = self.candidates().into_iter().find(|m| m.state().in_rotation() && !Arc::ptr_eq(m, first));
            if let Some(partner) = healthy {
                break partner;
            }
            tokio::select! {
                biased;
                attempt = &mut first_run => return [Some((first.clone(), attempt)), None],
                () = changed => {}
                () = tokio::time::sleep_until(give_up_at) => return [Some((first.clone(), first_run.await)), None],
            }
        };
        if Instant::now() >= give_up_at || !self.hedges.withdraw() {
            return [Some((first.clone(), first_run.await)), None];
        }
        crate::metrics::hedged(first.url());
        let partner_run = partner.attempt(RetryPolicy::Read, timing, call);
        tokio::pin!(partner_run);
        let (winner, attempt) = tokio::select! {
            attempt = &mut first_run => (first.clone(), attempt),
            attempt = &mut partner_run => (partner.clone(), attempt),
        };
        let by_partner = Arc::ptr_eq(&winner, &partner);
        if settles(&attempt) {
            if by_partner {
                // The dropped call gives no sample; it took at least this long.
                first.entry.load.observe(started.elapsed());
            }
            return [Some((winner, attempt)), None];
        }
        let other = if by_partner { (first.clone(), first_run.await) } else { (partner.clone(), partner_run.await) };
        [Some((winner, attempt)), Some(other)]
    }

    /// Whether at least `count` of `members` are found down within [`CONFIRM_DOWN`].
    async fn found_down(&self, members: &[Arc<Member>], count: usize) -> bool {
        let down = || members.iter().filter(|member| member.state() == State::Down).count() >= count;
        self.until_states(Instant::now() + CONFIRM_DOWN, down).await
    }

    /// Asks the members that `ask` picks for their status now (within a probe deadline).
    async fn statuses(&self, ask: impl Fn(State) -> bool) -> Vec<(Arc<Member>, StatusReport)> {
        let timeout = self.options().probe_timeout;
        let members: Vec<Arc<Member>> = self.local().iter().filter(|m| ask(m.state())).cloned().collect();
        let probes = members.into_iter().map(|member| async move {
            let mut client = MaintenanceClient::new(member.connection());
            let asked = Instant::now();
            let response = tokio::time::timeout(timeout, client.status(StatusRequest {})).await.ok()?.ok()?;
            Some((member, StatusReport::from_response(response.get_ref(), asked.elapsed())))
        });
        futures::future::join_all(probes).await.into_iter().flatten().collect()
    }

    /// The member that is currently raft leader, asked of the voters now: first those not
    /// known to be down or hung (so that a hung member costs no deadline), then those. A
    /// learner never qualifies.
    pub async fn leader(&self) -> Result<Arc<Member>, Status> {
        let find = |statuses: Vec<(Arc<Member>, StatusReport)>| {
            statuses
                .into_iter()
                .filter(|(_, report)| !report.is_learner && report.leader != 0 && report.member_id == report.leader)
                .max_by_key(|(_, report)| report.raft_term)
                .map(|(member, _)| member)
        };
        let responsive = |state: State| !matches!(state, State::Learner | State::Down | State::Hung);
        if let Some(leader) = find(self.statuses(responsive).await) {
            return Ok(leader);
        }
        find(self.statuses(|state| matches!(state, State::Down | State::Hung)).await)
            .ok_or_else(|| Status::unavailable("etcdserver: no leader"))
    }

    /// The member a client named, by client URL (`http://127.0.0.1:2379` or `127.0.0.1:2379`)
    /// or by member ID in hex as etcdctl prints it.
    pub async fn named(&self, name: &str) -> Result<Arc<Member>, Status> {
        let url = normalize_url(name);
        let members = self.local();
        if let Some(member) = members.iter().find(|m| m.url() == url) {
            return Ok(member.clone());
        }
        let wanted = u64::from_str_radix(name.trim_start_matches("0x"), 16)
            .map_err(|_| Status::invalid_argument(format!("etcdgate: unknown member {name:?}")))?;
        if let Some(member) = members.iter().find(|m| m.id() == wanted) {
            return Ok(member.clone());
        }
        self.statuses(|_| true)
            .await
            .into_iter()
            .find(|(_, report)| report.member_id == wanted)
            .map(|(member, _)| member)
            .ok_or_else(|| Status::not_found(format!("etcdgate: member {name} is not reachable through this gateway")))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicUsize;

    use etcdgate_proto::etcdserverpb::Member as ListedMember;
    use futures::FutureExt;

    use super::*;

    fn report(id: u64, leader: u64, learner: bool) -> StatusReport {
        StatusReport { member_id: id, leader, raft_term: 2, raft_applied_index: 10, is_learner: learner, ..Default::default() }
    }

    fn pool(n: u16) -> Pool {
        pool_at(&(1..=n).collect::<Vec<u16>>())
    }

    /// A pool of members on these (unused) ports; tests that read the process-wide metrics
    /// use ports of their own.
    fn pool_at(ports: &[u16]) -> Pool {
        let endpoints: Vec<String> = ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        Pool::unprobed(&endpoints, PoolOptions::default()).unwrap()
    }

    fn entry(pool: &Pool, port: u16) -> Arc<Entry> {
        let url = format!("http://127.0.0.1:{port}");
        pool.family().entries().into_iter().find(|e| e.url == url).unwrap()
    }

    fn make_healthy(pool: &Pool, port: u16) {
        pool.family().probe_answered(&entry(pool, port), report(u64::from(port), 1, false));
    }

    fn first_urls(pool: &Pool, calls: usize) -> Vec<String> {
        (0..calls).map(|_| pool.candidates()[0].url().to_string()).collect()
    }

    /// How often each member (by port) comes first in `picks` calls' orders.
    fn first_counts(pool: &Pool, picks: usize) -> BTreeMap<u16, usize> {
        let mut counts: BTreeMap<u16, usize> = pool.local().iter().map(|m| (port(m.url()), 0)).collect();
        for url in first_urls(pool, picks) {
            *counts.entry(port(&url)).or_default() += 1;
        }
        counts
    }

    fn port(url: &str) -> u16 {
        url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)
    }

    /// A call that member 1 never answers and member 2 answers at once.
    async fn hang_on_1(connection: MemberConnection) -> Result<&'static str, Status> {
        if connection.url() == "http://127.0.0.1:1" {
            std::future::pending().await
        } else {
            Ok("from 2")
        }
    }

    /// Latency samples that make the member at `port` look that slow to balancing.
    fn answers_in(pool: &Pool, port: u16, latency: Duration) {
        entry(pool, port).load.observe(latency);
    }

    #[test]
    fn urls_are_normalized_and_empty_lists_refused() {
        assert_eq!(normalize_url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(normalize_url(" http://127.0.0.1:2379/ "), "http://127.0.0.1:2379");
        assert!(Pool::new(&[], PoolOptions::default()).is_err());
        assert!(Pool::new(&["127.0.0.1:2379".into()], PoolOptions::default()).is_err(), "needs a runtime");
        let duplicates = Pool::unprobed(&["127.0.0.1:1".into(), "http://127.0.0.1:1".into()], PoolOptions::default()).unwrap();
        assert_eq!(duplicates.member_states().len(), 1);
    }

    #[tokio::test]
    async fn writes_go_to_the_leader_first_while_it_is_in_rotation() {
        let pool = pool(3);
        // Every member says member 2 leads, in term 3.
        for port in 1..=3 {
            let report = StatusReport { raft_term: 3, ..report(u64::from(port), 2, false) };
            pool.family().probe_answered(&entry(&pool, port), report);
        }
        for _ in 0..50 {
            let order = pool.write_candidates(pool.candidates());
            assert_eq!(port(order[0].url()), 2, "the leader first");
            assert_eq!(order.len(), 3, "the others stay as fallbacks");
        }
        // A report from an older term does not move the leader back.
        let stale = StatusReport { raft_term: 2, ..report(1, 1, false) };
        pool.family().probe_answered(&entry(&pool, 1), stale);
        assert_eq!(pool.family().leader_id(), 2);
        // A leader out of rotation leaves the balanced order alone.
        entry(&pool, 2).update(|h| h.unlisted("gone".into()));
        assert!(pool.local().iter().all(|m| m.state() != State::Healthy || port(m.url()) != 2));
        let firsts: std::collections::BTreeSet<u16> =
            (0..100).map(|_| port(pool.write_candidates(pool.candidates())[0].url())).collect();
        assert!(!firsts.contains(&2), "{firsts:?}");
    }

    #[tokio::test]
    async fn healthy_members_share_the_calls_and_the_rest_are_only_a_fallback() {
        let pool = pool(3);
        for port in 1..=3 {
            make_healthy(&pool, port);
        }
        let firsts = first_counts(&pool, 300);
        assert!(firsts.values().all(|&n| n > 50), "equal members share the calls: {firsts:?}");

        pool.family().probe_failed(&entry(&pool, 2), ProbeFailure::TimedOut(Duration::from_secs(1)));
        let firsts = first_counts(&pool, 300);
        assert_eq!(firsts[&2], 0, "{firsts:?}");
        assert!(firsts[&1] > 50 && firsts[&3] > 50, "split over the healthy ones: {firsts:?}");
        let order: Vec<String> = pool.candidates().iter().map(|m| m.url().to_string()).collect();
        assert_eq!(order.len(), 3);
        assert_eq!(order[2], "http://127.0.0.1:2", "out of rotation, still there as the last resort");

        // Nothing healthy: fallback order is suspect, lagging, leaderless, new, down, hung.
        pool.family().probe_failed(&entry(&pool, 1), ProbeFailure::Unreachable("refused".into()));
        pool.family().probe_answered(&entry(&pool, 3), report(3, 0, false));
        let order: Vec<State> = pool.candidates().iter().map(|m| m.state()).collect();
        assert_eq!(order, [State::Leaderless, State::Down, State::Hung]);
        let slow = StatusReport { answered_in: Duration::from_millis(600), ..report(1, 1, false) };
        pool.family().probe_answered(&entry(&pool, 1), slow);
        let order: Vec<State> = pool.candidates().iter().map(|m| m.state()).collect();
        assert_eq!(order, [State::Suspect, State::Leaderless, State::Hung]);

        // A sibling shares the states, with its own connections.
        let sibling = pool.sibling();
        assert_eq!(sibling.candidates()[0].url(), "http://127.0.0.1:1");
        make_healthy(&pool, 2);
        assert_eq!(sibling.candidates()[0].url(), "http://127.0.0.1:2");
        assert!(!Arc::ptr_eq(&sibling.local()[0], &pool.local()[0]));
    }

    #[tokio::test]
    async fn learners_and_removed_members_never_get_client_traffic() {
        let pool = pool(3);
        make_healthy(&pool, 1);
        make_healthy(&pool, 2);
        pool.family().probe_answered(&entry(&pool, 3), report(3, 1, true));
        assert_eq!(entry(&pool, 3).state(), State::Learner);
        for _ in 0..100 {
            assert!(pool.candidates().iter().all(|m| m.url() != "http://127.0.0.1:3"));
        }
        assert_eq!(pool.members().len(), 2, "members() leaves learners out");
        // Even with every voter down, the learner is not a fallback.
        for port in [1, 2] {
            pool.family().probe_failed(&entry(&pool, port), ProbeFailure::Unreachable("refused".into()));
        }
        assert!(pool.candidates().iter().all(|m| m.state() != State::Learner));
        // Named calls reach it: the client asked for that member.
        assert_eq!(pool.named("127.0.0.1:3").await.unwrap().state(), State::Learner);
        assert_eq!(pool.named("3").await.unwrap().url(), "http://127.0.0.1:3", "by hex member ID");

        // MemberList without member 2: removed, and gone from every pool's list.
        let listed = |id: u64, learner: bool| ListedMember {
            id,
            name: format!("m{id}"),
            client_ur_ls: vec![format!("http://127.0.0.1:{id}")],
            is_learner: learner,
            ..Default::default()
        };
        pool.family().apply_member_list(&[listed(1, false), listed(3, true)]);
        assert_eq!(entry(&pool, 2).state(), State::Removed);
        assert_eq!(pool.local().len(), 2);
        assert!(pool.candidates().iter().all(|m| m.url() == "http://127.0.0.1:1"));
        let states = pool.member_states();
        assert_eq!(states.len(), 3);
        assert_eq!(states[1].2, State::Removed);
        assert_eq!(states[1].3, "member 2 is no longer in MemberList");
    }

    #[tokio::test]
    async fn new_members_join_every_pool_of_the_family_once_healthy() {
        let pool = pool(1);
        let sibling = pool.sibling();
        make_healthy(&pool, 1);
        let listed = |id: u64| ListedMember {
            id,
            name: format!("m{id}"),
            client_ur_ls: vec![format!("http://127.0.0.1:{id}")],
            ..Default::default()
        };
        pool.family().apply_member_list(&[listed(1), listed(4)]);
        assert_eq!(sibling.local().len(), 2, "the sibling sees the new member");
        assert_eq!(entry(&pool, 4).state(), State::New);
        assert!(first_urls(&sibling, 4).iter().all(|u| u == "http://127.0.0.1:1"), "not before its first probe");
        make_healthy(&pool, 4);
        let firsts = first_counts(&sibling, 100);
        assert!(firsts[&4] > 0, "then in rotation: {firsts:?}");
    }

    #[tokio::test]
    async fn a_failed_call_takes_its_member_out_and_reads_fail_over() {
        let pool = pool(2);
        make_healthy(&pool, 1);
        make_healthy(&pool, 2);
        answers_in(&pool, 2, Duration::from_secs(1));
        let (port1_calls, port2_calls) = (AtomicUsize::new(0), AtomicUsize::new(0));
        for _ in 0..4 {
            let answer = pool
                .call(&Target::Any, RetryPolicy::Read, Timing::Measured, |connection| {
                    let first = connection.url() == "http://127.0.0.1:1";
                    if first { &port1_calls } else { &port2_calls }.fetch_add(1, Ordering::Relaxed);
                    async move {
                        if first {
                            Err(Status::unavailable(format!("{}connect: Connection refused", crate::connection::NOT_SENT)))
                        } else {
                            Ok(7)
                        }
                    }
                })
                .await;
            assert_eq!(answer.unwrap(), 7);
        }
        assert_eq!(port1_calls.load(Ordering::Relaxed), 1, "out of rotation after its first failure");
        assert_eq!(entry(&pool, 1).state(), State::Down);
        assert!(entry(&pool, 1).evidence().starts_with("call failed: "));
    }

    #[tokio::test]
    async fn a_read_two_members_die_serving_is_not_sent_to_a_third() {
        let pool = pool(3);
        // Member 3 is only a fallback (not probed yet): the healthy two are tried first.
        let third_calls = &AtomicUsize::new(0);
        let read = |cut_on: &'static [&'static str], dies: bool| {
            let pool = &pool;
            pool.call(&Target::Any, RetryPolicy::Read, Timing::Measured, move |connection| {
                let url = connection.url().to_string();
                if url == "http://127.0.0.1:3" {
                    third_calls.fetch_add(1, Ordering::Relaxed);
                }
                let cut = cut_on.contains(&url.as_str());
                if cut && dies {
                    // As the re-probe finds a member whose process is gone.
                    entry(pool, port(&url)).call_failed(Failure::NotSent, "connect: Connection refused");
                }
                async move {
                    match cut {
                        true => Err(Status::unavailable("error reading a body from connection: connection reset")),
                        false => Ok(url),
                    }
                }
            })
        };
        let both = &["http://127.0.0.1:1", "http://127.0.0.1:2"];
        // Cut by two members that are still there (the network, say): the read goes on.
        make_healthy(&pool, 1);
        make_healthy(&pool, 2);
        assert_eq!(read(both, false).await.unwrap(), "http://127.0.0.1:3");
        // Cut by two members that died: not sent to a third.
        make_healthy(&pool, 1);
        make_healthy(&pool, 2);
        third_calls.store(0, Ordering::Relaxed);
        let cut_twice = read(both, true).await.unwrap_err();
        assert!(cut_twice.message().starts_with(CUT_TWICE), "{}", cut_twice.message());
        assert_eq!(third_calls.load(Ordering::Relaxed), 0, "the read went on to a third member");
        // One member dying is a member failing, not the request: the read fails over.
        make_healthy(&pool, 1);
        make_healthy(&pool, 2);
        assert_ne!(read(&["http://127.0.0.1:1"], true).await.unwrap(), "http://127.0.0.1:1");
    }

    #[tokio::test]
    async fn a_read_open_on_a_member_that_leaves_rotation_fails_over_and_a_write_waits() {
        let pool = Arc::new(pool(2));
        make_healthy(&pool, 1);
        make_healthy(&pool, 2);
        // Member 2 looks slow, so that member 1 is tried first.
        answers_in(&pool, 2, Duration::from_secs(1));
        let read = tokio::spawn({
            let pool = pool.clone();
            async move { pool.call(&Target::Any, RetryPolicy::Read, Timing::Measured, hang_on_1).await }
        });
        tokio::task::yield_now().await;
        let write = tokio::spawn({
            let pool = pool.clone();
            async move { pool.call(&Target::Any, RetryPolicy::Write, Timing::Measured, hang_on_1).await }
        });
        tokio::task::yield_now().await;
        assert!(!read.is_finished() && !write.is_finished());
        pool.family().probe_failed(&entry(&pool, 1), ProbeFailure::TimedOut(Duration::from_secs(1)));
        assert_eq!(read.await.unwrap().unwrap(), "from 2", "the read moved to member 2");
        tokio::task::yield_now().await;
        assert!(!write.is_finished(), "a write that may have reached member 1 is not sent twice");
        write.abort();
    }

    #[tokio::test]
    async fn a_read_its_member_leaves_unanswered_is_hedged_and_a_write_is_not() {
        let pool = Arc::new(pool(2));
        make_healthy(&pool, 1);
        make_healthy(&pool, 2);
        // Member 2 looks slower, so that member 1 is tried first.
        answers_in(&pool, 2, Duration::from_millis(5));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let noted = |calls: Arc<Mutex<Vec<String>>>| {
            move |connection: MemberConnection| {
                lock(&calls).push(connection.url());
                hang_on_1(connection)
            }
        };
        let read = pool.call(&Target::Any, RetryPolicy::Read, Timing::Measured, noted(calls.clone())).await;
        assert_eq!(read.unwrap(), "from 2");
        assert_eq!(*lock(&calls), ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert_eq!(entry(&pool, 1).state(), State::Healthy, "a slow answer is not evidence against the member");
        assert!(entry(&pool, 1).load.estimate().unwrap() >= hedge::delay(None), "the dropped call counts as slow");

        lock(&calls).clear();
        let write = tokio::spawn({
            let (pool, calls) = (pool.clone(), calls.clone());
            async move { pool.call(&Target::Any, RetryPolicy::Write, Timing::Measured, noted(calls)).await }
        });
        tokio::time::sleep(hedge::delay(None) * 4).await;
        assert!(!write.is_finished(), "a write that may have reached member 1 is not sent twice");
        assert_eq!(*lock(&calls), ["http://127.0.0.1:1"]);
        write.abort();
    }

    #[tokio::test]
    async fn a_read_stuck_on_a_fallback_member_is_hedged_once_another_is_healthy() {
        let pool = Arc::new(pool(2));
        for port in 1..=2 {
            pool.family().probe_failed(&entry(&pool, port), ProbeFailure::Error("etcdserver: no leader".into()));
        }
        assert!(pool.candidates().iter().all(|m| m.state() == State::Leaderless));
        let read = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.call(&Target::Any, RetryPolicy::Read, Timing::Measured, hang_on_1).await
            }
        });
        tokio::time::sleep(hedge::delay(None) * 4).await;
        assert!(!read.is_finished(), "no healthy member to hedge to yet");
        make_healthy(&pool, 2);
        assert_eq!(read.await.unwrap().unwrap(), "from 2", "hedged as soon as member 2 is healthy");
    }

    #[tokio::test]
    async fn a_discovered_duplicate_of_a_configured_endpoint_is_dropped() {
        let pool = pool(1);
        let listed = ListedMember { id: 9, name: "m".into(), client_ur_ls: vec!["http://127.0.0.2:1".into()], ..Default::default() };
        pool.family().apply_member_list(&[listed]);
        assert_eq!(pool.local().len(), 2, "id of 127.0.0.1:1 unknown yet: the advertised URL joins");
        pool.family().probe_answered(&entry(&pool, 1), report(9, 9, false));
        let states = pool.member_states();
        assert_eq!(states[0].2, State::Healthy);
        assert_eq!((states[1].2, states[1].3.as_str()), (State::Removed, "same member (9) as http://127.0.0.1:1"));
        assert_eq!(pool.local().len(), 1);
    }

    #[tokio::test]
    async fn no_member_is_tried_after_the_retry_budget_is_spent() {
        let options = PoolOptions { retry_budget: Duration::from_millis(20), ..PoolOptions::default() };
        let endpoints: Vec<String> = (1..=2).map(|port| format!("127.0.0.1:{port}")).collect();
        let pool = Pool::unprobed(&endpoints, options).unwrap();
        make_healthy(&pool, 1);
        make_healthy(&pool, 2);
        let attempts = AtomicUsize::new(0);
        let answer = pool
            .call(&Target::Any, RetryPolicy::Read, Timing::Measured, |_| {
                attempts.fetch_add(1, Ordering::Relaxed);
                async {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    Err::<(), _>(Status::unavailable(format!("{}connect: Connection refused", crate::connection::NOT_SENT)))
                }
            })
            .await;
        assert!(answer.is_err());
        assert_eq!(attempts.load(Ordering::Relaxed), 1, "the first attempt outlasted the budget: no second member");
    }

    #[tokio::test]
    async fn reads_wait_out_an_election_and_writes_get_its_answer() {
        let pool = pool(2);
        make_healthy(&pool, 1);
        make_healthy(&pool, 2);
        let attempts = AtomicUsize::new(0);
        let electing = |attempts: &AtomicUsize| {
            let n = attempts.fetch_add(1, Ordering::Relaxed);
            async move {
                match n {
                    0 => Err(Status::unavailable("etcdserver: leader changed")),
                    1 => Err(Status::unavailable(format!("{}connect: Connection refused", crate::connection::NOT_SENT))),
                    _ => Ok(n),
                }
            }
        };
        let read = pool.call(&Target::Any, RetryPolicy::Read, Timing::Measured, |_| electing(&attempts)).await;
        assert_eq!(read.unwrap(), 2, "one member interrupted, the other down: a second round");
        make_healthy(&pool, 1);
        make_healthy(&pool, 2);
        attempts.store(0, Ordering::Relaxed);
        let write = pool.call(&Target::Any, RetryPolicy::Write, Timing::Measured, |_| electing(&attempts)).await;
        assert_eq!(write.unwrap_err().message(), "etcdserver: leader changed", "a write may have been applied");
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn the_first_calls_wait_for_the_first_probes() {
        let pool = Arc::new(pool(2));
        let call = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.call(&Target::Any, RetryPolicy::Read, Timing::Measured, |c| async move { Ok::<_, Status>(c.url()) })
                    .await
                    .unwrap()
            }
        });
        tokio::task::yield_now().await;
        assert!(!call.is_finished(), "no member probed yet");
        pool.family().probe_answered(&entry(&pool, 2), report(2, 2, false));
        assert_eq!(call.await.unwrap(), "http://127.0.0.1:2");
    }

    #[tokio::test]
    async fn a_slow_member_and_a_busy_member_get_less_traffic() {
        let pool = pool(3);
        for port in 1..=3 {
            make_healthy(&pool, port);
            answers_in(&pool, port, Duration::from_millis(1));
        }
        // One slow answer: member 1 loses every pair it is in.
        answers_in(&pool, 1, Duration::from_millis(50));
        let firsts = first_counts(&pool, 600);
        assert_eq!(firsts[&1], 0, "{firsts:?}");
        assert!(firsts[&2] > 100 && firsts[&3] > 100, "{firsts:?}");
        assert_eq!(first_counts(&pool.sibling(), 600)[&1], 0, "every worker's pool sees the same load");
        // Slow, but less so than member 3 is now: member 1 beats it, member 2 beats both.
        answers_in(&pool, 3, Duration::from_millis(200));
        let firsts = first_counts(&pool, 600);
        assert!(firsts[&2] > firsts[&1] && firsts[&1] > 0 && firsts[&3] == 0, "{firsts:?}");

        // Equally fast, but five calls open on member 2.
        let pool = pool_at(&[11, 12, 13]);
        for port in 11..=13 {
            make_healthy(&pool, port);
            answers_in(&pool, port, Duration::from_millis(1));
        }
        let busy = entry(&pool, 12);
        let open: Vec<_> = (0..5).map(|_| busy.load.start()).collect();
        let firsts = first_counts(&pool, 600);
        assert_eq!(firsts[&12], 0, "{firsts:?}");
        drop(open);
        let firsts = first_counts(&pool, 600);
        assert!(firsts[&12] > 100, "its calls answered, it gets its share again: {firsts:?}");
    }

    #[tokio::test]
    async fn measured_calls_count_as_open_and_give_samples_streams_do_not() {
        let pool = Arc::new(pool_at(&[21]));
        make_healthy(&pool, 21);
        let member = entry(&pool, 21);
        let requests_before = member.requests.get();
        let pending = |timing: Timing| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.call(&Target::Any, RetryPolicy::Read, timing, |_| std::future::pending::<Result<(), Status>>()).await
            })
        };
        let unary = pending(Timing::Measured);
        let stream = pending(Timing::Unmeasured);
        tokio::task::yield_now().await;
        assert_eq!(member.load.outstanding(), 1, "the stream's open is not counted");
        unary.abort();
        stream.abort();
        let _ = (unary.await, stream.await);
        assert_eq!(member.load.outstanding(), 0, "a call dropped by its client is no longer open");
        assert_eq!(member.requests.get() - requests_before, 2, "both were sent to the member");

        let estimate = member.load.estimate();
        let slow_answer = |_| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, Status>(())
        };
        pool.call(&Target::Any, RetryPolicy::Read, Timing::Unmeasured, slow_answer).await.unwrap();
        assert_eq!(member.load.estimate(), estimate, "an unmeasured call gives no sample");
        pool.call(&Target::Any, RetryPolicy::Read, Timing::Measured, slow_answer).await.unwrap();
        assert!(member.load.estimate() >= Some(Duration::from_millis(20)), "a measured one does (a peak replaces)");
        let refused = |_| async { Err::<(), _>(Status::unavailable("etcdserver: rpc not supported for learner")) };
        let estimate = member.load.estimate();
        pool.call(&Target::Any, RetryPolicy::Read, Timing::Measured, refused).await.unwrap_err();
        assert_eq!(member.load.estimate(), estimate, "a refusal is not an answer");
    }

    #[tokio::test]
    async fn a_suspect_member_is_only_a_fallback_and_keeps_its_open_reads() {
        let pool = Arc::new(pool(2));
        make_healthy(&pool, 1);
        make_healthy(&pool, 2);
        answers_in(&pool, 2, Duration::from_secs(1));
        let read = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.call(&Target::Any, RetryPolicy::Read, Timing::Measured, hang_on_1).await
            }
        });
        tokio::task::yield_now().await;
        let suspect = entry(&pool, 1);
        suspect.call_failed(Failure::Transport, "etcdgate: member connection failed: connection reset");
        assert_eq!(suspect.state(), State::Suspect);
        assert!(suspect.wake.notified().now_or_never().is_some(), "re-probed at once");
        let order: Vec<String> = pool.candidates().iter().map(|m| m.url().to_string()).collect();
        assert_eq!(order, ["http://127.0.0.1:2", "http://127.0.0.1:1"], "a fallback, though member 2 looks slower");
        tokio::task::yield_now().await;
        assert!(!read.is_finished(), "a read open on a suspect member stays there");
        pool.family().probe_failed(&suspect, ProbeFailure::TimedOut(Duration::from_secs(1)));
        assert_eq!(read.await.unwrap().unwrap(), "from 2", "hard evidence moves it");
    }

    #[tokio::test]
    async fn too_many_requests_goes_to_each_member_once() {
        let pool = pool(3);
        for port in 1..=3 {
            make_healthy(&pool, port);
        }
        let attempts = Mutex::new(Vec::new());
        let overloaded = pool
            .call(&Target::Any, RetryPolicy::Write, Timing::Measured, |connection| {
                lock(&attempts).push(connection.url());
                async { Err::<(), _>(Status::unavailable("etcdserver: too many requests")) }
            })
            .await
            .unwrap_err();
        assert_eq!(overloaded.message(), "etcdserver: too many requests");
        let mut attempts = lock(&attempts).clone();
        attempts.sort();
        assert_eq!(attempts, ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"]);
        assert!(pool.candidates().iter().all(|m| m.state() == State::Healthy), "a refusal says nothing about health");
    }
}
