//! The router's side of the watch cache: which reads a hub answers, the barrier that makes a
//! cached read linearizable, and the feed that follows each cached prefix from etcd.
//!
//! - Auth: a client is served only what etcd would let it read. While etcd's auth is off
//!   (a read without credentials answered within [`PERMIT_AGE`]) that is everything; with
//!   credentials, or with etcdgate's own login (`--user`, see `etcdgate_upstream::login`), etcd is
//!   asked with the client's credentials for the hub's whole range, or else for the range
//!   asked for (see [`may_read`]): for serializable reads and watches a serializable question
//!   whose verdict holds for [`PERMIT_AGE`] (a member behind on auth changes answers as
//!   stale), for a linearizable read a linearizable one sent after the read arrived, beside
//!   its barrier read (etcd checks its own linearizable Ranges against the cluster's current
//!   auth state). A client etcd refuses is forwarded and gets etcd's own error. While auth
//!   is on, the feeds and barrier reads need that login.
//! - A Range wholly inside a cached prefix, at the current revision, is answered from the
//!   hub: a serializable one once the hub has reached what the client's connection has seen
//!   and every write into the prefix acknowledged through etcdgate (puts, deletes, txns,
//!   and lease revokes that delete keys it holds; read-your-writes, also across
//!   connections: an HTTP/1.1 client such as APISIX's Admin API may write on one and read
//!   on another), a linearizable one once the hub has reached the cluster's revision
//!   as a linearizable read of one key on a member tells it (one such read serves every
//!   request that arrived before it was sent). A hub that does not get there within
//!   [`CATCH_UP_WAIT`] (writes outside the prefix move the cluster's revision without
//!   events the hub would see; a stuck feed) lets the read go to etcd, and for
//!   [`MISSED_BACKOFF`] then linearizable reads, and reads that need more than a hub holds,
//!   go straight to etcd without waiting.
//! - A Range at an earlier revision is answered from the hub too, by rolling its store back
//!   through the history (see `Hub::range`), if the history holds every event of the
//!   range's keys since and etcd still reads that revision: a Range of one key at it, with
//!   etcdgate's credentials (serializable or linearizable as the client's; the linearizable
//!   one also tells the cluster's revision, in place of the barrier). A revision etcd
//!   compacted gets etcd's own error, as it would without the cache.
//! - A watch served by a hub is created once the hub holds those acknowledged writes too
//!   (waiting as a read does), so that it starts after them as it would on etcd; a hub still
//!   behind then serves it anyway, from after them (see `Watcher::create`).
//! - The feed: a linearizable Range of the prefix, then one watch from the next revision
//!   with prev_kv and progress notifications, relayed like a client's watch (it moves to
//!   another member on failure and resumes where it stopped). A watch that delivers nothing
//!   for [`STALL`] while its hub lacks a write etcd acknowledged through etcdgate (a member
//!   hung or cut off from its peers answers the health probes for a while yet) is stalled:
//!   its member becomes suspect and the watch moves at once. Watch progress *requests* are
//!   never used to move the hub: etcd 3.4/3.5 may answer them before events of the
//!   revision they name. If the watch is compacted (the gateway was cut off too long), the
//!   prefix is read again and the history starts over.
//! - Continuity: every [`CONTINUITY_CHECK`], and at once when a read waited for the hub in
//!   vain or a linearizable read found the cluster behind it, the feed compares the hub's
//!   revision with the cluster's (a barrier round begun after it looked): a cluster behind
//!   the hub was restored from a snapshot or rebuilt, and the prefix is read again (the hub
//!   then cancels every watch made before, see `Hub::reset`); meanwhile linearizable reads
//!   go to etcd. A cluster ahead of the hub may only have had
//!   writes elsewhere — or the watch's member may be silent with writes made past etcdgate:
//!   the feed asks that member for progress, and one that does not answer within
//!   [`PROGRESS_ANSWER_WAIT`] at the cluster's revision or later counts as stalled. (Its
//!   answer only proves the member alive and caught up; it never moves the hub.)

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcdgate_cache::{HistoryLimits, Hub, KeyRange};
use etcdgate_proto::etcdserverpb::{
    kv_client::KvClient, watch_request::RequestUnion, RangeRequest, RangeResponse, ResponseHeader, WatchCreateRequest, WatchRequest,
};
use etcdgate_upstream::{Pool, RetryPolicy, Target, Timing};
use futures::StreamExt;
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;

use crate::context::CallContext;
use etcdgate_upstream::login::{refused_for_auth, token_refused, Login};
use crate::resume::Stalled;
use crate::watch::{is_progress_answer, progress_request};

/// The end of etcd's refusal of a Range at a revision it has not reached.
const FUTURE_REVISION: &str = "required revision is a future revision";
/// How long etcd's answer to a read proves that the same credentials (or none) may read the
/// same keys from the cache.
const PERMIT_AGE: Duration = Duration::from_secs(1);
/// Bytes of credentials and ranges the verdicts remembered may hold; older ones are dropped
/// first (clients choose both).
const MAX_PERMIT_BYTES: usize = 1 << 20;
/// JSON answers remembered (different requests at the current revision).
const ENCODED_RESPONSES: usize = 8;
/// After a hub failed to reach in time what a read needed (writes outside the cached
/// prefixes move etcd's revision past any the hub sees; a stuck feed), linearizable reads
/// and reads needing more than a hub holds go straight to etcd for this long, so that such
/// a cluster pays the wait once per period, not per read.
const MISSED_BACKOFF: Duration = Duration::from_secs(1);
/// How long a cached read waits for the hub to reach the revision it needs.
const CATCH_UP_WAIT: Duration = Duration::from_millis(100);
/// Pause before the feed tries again after etcd failed it.
const FEED_RETRY: Duration = Duration::from_millis(200);
/// ... and after etcd refused its credentials (a new login, if any, is just as rare).
const REFUSED_RETRY: Duration = Duration::from_secs(1);
/// A feed refused this long (a new login did not help) abandons its hub: the hub's watchers
/// are canceled (their clients read again and watch anew, through to etcd) rather than
/// left waiting, and the prefix is read again once etcd lets the feed.
const ABANDON_AFTER: Duration = Duration::from_secs(3);
/// A feed silent this long while its hub lacks an acknowledged write is stalled on its
/// member (a follower applies a write the leader acknowledged within milliseconds) ...
const STALL: Duration = Duration::from_millis(300);
/// ... doubled for every move after which the feed still heard nothing, up to this factor.
const STALL_MAX_FACTOR: u32 = 16;
/// How often the feed looks for a stall.
const STALL_CHECK: Duration = Duration::from_millis(50);
/// How often the feed checks that etcd's revision has not gone below the hub's ...
const CONTINUITY_CHECK: Duration = Duration::from_secs(5);
/// ... waiting this long at most for etcd's answer.
const CONTINUITY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the watch's member may take to answer a progress request.
const PROGRESS_ANSWER_WAIT: Duration = Duration::from_secs(1);

/// What to cache.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Key prefixes to follow (`""` for the whole keyspace).
    pub prefixes: Vec<Vec<u8>>,
    pub limits: HistoryLimits,
    /// The request size limit, above which responses of watches asking for `fragment` are
    /// split (as etcd does with its `--max-request-bytes`).
    pub max_request_bytes: usize,
    /// etcdgate's own login (`--user`), to follow the prefixes while etcd's auth is on.
    pub login: Option<Arc<Login>>,
}

/// The cached prefixes, shared by every worker.
#[derive(Debug)]
pub struct Caches {
    hubs: Vec<Arc<Hub>>,
    /// Per hub (in the same order): etcd refused its feed's watch for its credentials, so
    /// the hub serves nothing until the feed follows again.
    refused: Vec<Arc<AtomicBool>>,
    barrier: Arc<Barrier>,
    login: Option<Arc<Login>>,
    permits: Permits,
    /// The last few JSON answers, newest first.
    encoded: Mutex<VecDeque<Encoded>>,
    /// When a hub last failed to reach a revision a read or watch needed in time.
    missed: Mutex<Option<Instant>>,
    /// Asks every feed to check its continuity now.
    doubt: Arc<Notify>,
    max_request_bytes: usize,
}

impl Caches {
    /// Starts following every prefix of `config` (on the current runtime, with `pool`).
    pub fn start(pool: Arc<Pool>, config: &CacheConfig) -> Arc<Caches> {
        let hubs: Vec<Arc<Hub>> = config.prefixes.iter().map(|p| Arc::new(Hub::new(KeyRange::prefix(p), config.limits))).collect();
        let barrier_key = hubs.first().map(|h| h.keys().request_key()).unwrap_or_else(|| vec![0]);
        let login = config.login.clone();
        let barrier = Arc::new(Barrier::new(barrier_key, login.clone()));
        let doubt = Arc::new(Notify::new());
        let refused: Vec<Arc<AtomicBool>> = hubs.iter().map(|_| Arc::default()).collect();
        for (hub, refused) in hubs.iter().zip(&refused) {
            let feed = Feed { pool: pool.clone(), hub: hub.clone(), barrier: barrier.clone(), doubt: doubt.clone(), login: login.clone(), refused: refused.clone() };
            tokio::spawn(feed.run());
        }
        Arc::new(Caches {
            hubs,
            refused,
            barrier,
            login,
            permits: Permits::default(),
            encoded: Mutex::new(VecDeque::new()),
            missed: Mutex::new(None),
            doubt,
            max_request_bytes: config.max_request_bytes,
        })
    }

    /// The hub holding every key of `[key, range_end)`, if any (and its feed follows etcd).
    pub fn hub_for(&self, key: &[u8], range_end: &[u8]) -> Option<&Arc<Hub>> {
        if key.is_empty() {
            return None;
        }
        let keys = KeyRange::new(key, range_end);
        let mut hubs = self.hubs.iter().zip(&self.refused);
        hubs.find(|(hub, refused)| hub.keys().covers(&keys) && !refused.load(Ordering::Acquire)).map(|(hub, _)| hub)
    }

    pub fn hubs(&self) -> &[Arc<Hub>] {
        &self.hubs
    }

    /// See [`CacheConfig::max_request_bytes`].
    pub fn max_request_bytes(&self) -> usize {
        self.max_request_bytes
    }

    /// Whether the cache may serve this client the keys `[key, range_end)` of `hub`: whether
    /// etcd would let it read them (see the module doc). Asks first about all of the hub's
    /// keys, which settles every range of a client allowed them all (APISIX's user and its
    /// prefix) with one question.
    pub async fn admits(&self, pool: &Arc<Pool>, ctx: &CallContext, hub: &Hub, key: &[u8], range_end: &[u8]) -> bool {
        if self.credential_free(ctx) {
            return self.auth_off(pool).await;
        }
        let all = hub.keys();
        self.permits.check(pool, ctx, &all.request_key(), &all.end).await || self.permits.check(pool, ctx, key, range_end).await
    }

    /// Whether etcd lets this client read the keys `[key, range_end)` of `hub` now, as a
    /// linearizable question sent after `since` tells (for a linearizable read). Asks first
    /// about all of the hub's keys, as [`Caches::admits`] does.
    async fn admits_now(&self, pool: &Arc<Pool>, ctx: &CallContext, hub: &Hub, key: &[u8], range_end: &[u8], since: Instant) -> bool {
        let all = hub.keys();
        self.permits.check_current(pool, ctx, &all.request_key(), &all.end, since).await
            || self.permits.check_current(pool, ctx, key, range_end, since).await
    }

    /// Whether neither the client nor etcdgate sends credentials: then the barrier's reads
    /// tell whether etcd's auth is off.
    fn credential_free(&self, ctx: &CallContext) -> bool {
        self.login.is_none() && !ctx.has_credentials()
    }

    /// Whether etcd answered the barrier's last read without credentials (auth is off),
    /// within [`PERMIT_AGE`]; asks etcd if it did not read lately.
    async fn auth_off(&self, pool: &Arc<Pool>) -> bool {
        match self.barrier.last_answer() {
            Some((answered, age)) if age < PERMIT_AGE => answered,
            _ => self.barrier.cluster_revision(pool).await.is_some(),
        }
    }

    /// Answers `request` from a hub if one holds its keys at the revision it must read (see
    /// the module doc); `None`: ask etcd.
    pub async fn range(&self, pool: &Arc<Pool>, ctx: &CallContext, request: &RangeRequest) -> Option<RangeResponse> {
        let response = self.ready_hub(pool, ctx, request).await?.range(request);
        crate::metrics::cache_read(response.is_some());
        response
    }

    /// [`Caches::range`], as the JSON etcd's HTTP gateway would send: the same request at the
    /// same revision is encoded once (APISIX instances all read the same whole prefix).
    pub async fn range_json(&self, pool: &Arc<Pool>, ctx: &CallContext, request: &RangeRequest) -> Option<(Bytes, i64)> {
        let hub = self.ready_hub(pool, ctx, request).await?;
        let epoch = hub.epoch();
        let header = hub.header()?;
        let remembered =
            lock(&self.encoded).iter().find(|e| e.request == *request && e.header == header && e.epoch == epoch).map(|e| e.json.clone());
        if let Some(json) = remembered {
            crate::metrics::cache_read(true);
            return Some((json, header.revision));
        }
        let response = hub.range(request);
        crate::metrics::cache_read(response.is_some());
        let response = response?;
        let json = Bytes::from(serde_json::to_vec(&response).ok()?);
        let mut encoded = lock(&self.encoded);
        if encoded.len() == ENCODED_RESPONSES {
            encoded.pop_back();
        }
        let header = response.header.unwrap_or_default();
        let revision = header.revision;
        encoded.push_front(Encoded { request: request.clone(), header, epoch, json: json.clone() });
        Some((json, revision))
    }

    /// Notes writes etcd acknowledged at `revision` into the hubs holding their keys: reads
    /// and new watches of a hub wait until it has them, whoever wrote them, on whichever
    /// connection.
    pub fn expect(&self, written: &[KeyRange], revision: i64) {
        for keys in written {
            for hub in self.hubs.iter().filter(|hub| hub.keys().covers(keys)) {
                hub.expect(revision);
            }
        }
    }

    /// Notes that etcd acknowledged revoking `lease` at `revision`: hubs holding keys
    /// attached to it expect their deletes (see [`Caches::expect`]).
    pub fn expect_lease_revoked(&self, lease: i64, revision: i64) {
        for hub in &self.hubs {
            hub.expect_lease_revoked(lease, revision);
        }
    }

    /// Waits (as a read would) until `hub` holds every write acknowledged through etcdgate
    /// into its keys, so that a watch created now starts after them, as on etcd. A hub still
    /// behind then serves the watch anyway, from after them (see `Watcher::create`).
    pub async fn catch_up(&self, hub: &Hub) {
        self.reaches(hub, hub.expected()).await;
    }

    /// Whether `hub` has reached `needed`, waiting for it at most [`CATCH_UP_WAIT`] — not at
    /// all within [`MISSED_BACKOFF`] of a wait that failed: a hub that did not catch up then
    /// is not waited for again on every read.
    async fn reaches(&self, hub: &Hub, needed: i64) -> bool {
        if hub.revision().is_some_and(|revision| revision >= needed) {
            return true;
        }
        if self.missed_recently() {
            return false;
        }
        let reached = hub.wait_for(needed, CATCH_UP_WAIT).await;
        if !reached {
            *lock(&self.missed) = Some(Instant::now());
            // Writes elsewhere, or a feed stalled on its member: the feeds check.
            self.doubt.notify_waiters();
        }
        reached
    }

    fn missed_recently(&self) -> bool {
        lock(&self.missed).is_some_and(|at| at.elapsed() < MISSED_BACKOFF)
    }

    /// The hub that may answer `request` now (see the module doc), once it has reached the
    /// revision the request must see; `None`: ask etcd.
    async fn ready_hub(&self, pool: &Arc<Pool>, ctx: &CallContext, request: &RangeRequest) -> Option<&Arc<Hub>> {
        let hub = self.hub_for(&request.key, &request.range_end)?;
        hub.revision()?;
        // A Range at a revision of its own: the history must hold every event of its keys
        // since, and etcd must still read that revision (one it compacted gets etcd's error).
        let at = request.revision;
        if at != 0 && !hub.rolls_back_to(at, &KeyRange::new(&request.key, &request.range_end)) {
            return None;
        }
        let needed = if request.serializable {
            let admitted = self.admits(pool, ctx, hub, &request.key, &request.range_end);
            let readable = async { at == 0 || self.barrier.reads_revision(pool, at, false).await.is_some() };
            if tokio::join!(admitted, readable) != (true, true) {
                return None;
            }
            ctx.seen.get().max(hub.expected()).max(at)
        } else {
            if self.missed_recently() {
                return None;
            }
            let held = hub.revision()?;
            // The cluster's revision, learned after the read arrived; for a Range at a
            // revision, by the linearizable read that asks etcd whether it reads it.
            let cluster = async {
                match at {
                    0 => self.barrier.cluster_revision(pool).await,
                    at => self.barrier.reads_revision(pool, at, true).await,
                }
            };
            let cluster = if self.credential_free(ctx) {
                // Without credentials on either side, the barrier's read proves auth off.
                cluster.await?
            } else {
                let since = Instant::now();
                let admitted = self.admits_now(pool, ctx, hub, &request.key, &request.range_end, since);
                match tokio::join!(admitted, cluster) {
                    (true, cluster) => cluster?,
                    (false, _) => return None,
                }
            };
            if cluster < held {
                // The cluster went back (restored): what connections saw is gone, and the
                // feed reads the prefix again.
                crate::context::history_restarted();
                self.doubt.notify_waiters();
                return None;
            }
            cluster
        };
        if !self.reaches(hub, needed).await {
            crate::metrics::cache_read(false);
            return None;
        }
        Some(hub)
    }
}

/// A cached Range answer encoded as JSON, for the request and the header it was made at
/// (in its hub's epoch: a cluster restored from a snapshot reuses revisions).
#[derive(Debug)]
struct Encoded {
    request: RangeRequest,
    header: ResponseHeader,
    epoch: u64,
    json: Bytes,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// etcd's recent verdicts on whether some credentials (or none) may read some keys: for
/// serializable reads and watches, one read of etcd per credentials and range per
/// [`PERMIT_AGE`], shared by every request meanwhile; for linearizable reads, a linearizable
/// question asked after the request arrived (etcd checks a linearizable Range against the
/// cluster's current auth state), shared by every request that arrived before it was sent.
#[derive(Debug, Default)]
struct Permits(Mutex<Remembered>);

#[derive(Debug, Default)]
struct Remembered {
    permits: HashMap<PermitKey, Permit>,
    /// What the keys of `permits` hold, in bytes.
    bytes: usize,
}

/// Credentials, key, range end.
type PermitKey = (Vec<(&'static str, Vec<u8>)>, Vec<u8>, Vec<u8>);

fn permit_key_bytes((credentials, key, range_end): &PermitKey) -> usize {
    credentials.iter().map(|(name, value)| name.len() + value.len()).sum::<usize>() + key.len() + range_end.len()
}

#[derive(Clone, Debug)]
struct Permit {
    asked: Instant,
    /// Asked with a linearizable read: its answer is the cluster's current state.
    current: bool,
    /// Whether etcd let the credentials read.
    granted: Arc<tokio::sync::OnceCell<bool>>,
}

impl Permit {
    fn in_flight(&self) -> bool {
        !self.granted.initialized()
    }

    async fn granted(&self, pool: &Arc<Pool>, ctx: &CallContext, (key, range_end): (&[u8], &[u8])) -> bool {
        *self.granted.get_or_init(|| may_read(pool, ctx, key, range_end, self.current)).await
    }
}

impl Permits {
    /// Whether etcd lets `ctx`'s credentials read `[key, range_end)`, as it said within
    /// [`PERMIT_AGE`].
    async fn check(&self, pool: &Arc<Pool>, ctx: &CallContext, key: &[u8], range_end: &[u8]) -> bool {
        let permit = self.permit(ctx, key, range_end, |permit| permit.asked.elapsed() < PERMIT_AGE, false);
        permit.granted(pool, ctx, (key, range_end)).await
    }

    /// Whether etcd lets `ctx`'s credentials read `[key, range_end)`, as a linearizable
    /// question asked after `since` says.
    async fn check_current(&self, pool: &Arc<Pool>, ctx: &CallContext, key: &[u8], range_end: &[u8], since: Instant) -> bool {
        let fresh = |permit: &Permit| permit.current && permit.asked >= since;
        loop {
            let permit = self.permit(ctx, key, range_end, |permit| fresh(permit) || permit.in_flight(), true);
            let granted = permit.granted(pool, ctx, (key, range_end)).await;
            if fresh(&permit) {
                return granted;
            }
            // A question asked before this request was in flight; the next one is asked after.
        }
    }

    /// The remembered permit of these credentials and keys if it is `usable`, else a new one
    /// (linearizable if `current`), remembered in its place.
    fn permit(&self, ctx: &CallContext, key: &[u8], range_end: &[u8], usable: impl Fn(&Permit) -> bool, current: bool) -> Permit {
        let mut remembered = lock(&self.0);
        let permit_key = (ctx.credentials(), key.to_vec(), range_end.to_vec());
        if let Some(permit) = remembered.permits.get(&permit_key).filter(|permit| usable(permit)) {
            return permit.clone();
        }
        let bytes = permit_key_bytes(&permit_key);
        if remembered.bytes + bytes > MAX_PERMIT_BYTES {
            remembered.permits.retain(|_, permit| permit.asked.elapsed() < PERMIT_AGE);
            remembered.bytes = remembered.permits.keys().map(permit_key_bytes).sum();
            if remembered.bytes + bytes > MAX_PERMIT_BYTES {
                remembered.permits.clear();
                remembered.bytes = 0;
            }
        }
        let permit = Permit { asked: Instant::now(), current, granted: Arc::default() };
        // A permit of the same key is replaced: its bytes stay counted.
        if remembered.permits.insert(permit_key, permit.clone()).is_none() {
            remembered.bytes += bytes;
        }
        permit
    }
}

/// Asks etcd whether the client's credentials may read `[key, range_end)`: a Range of it
/// (linearizable if `current`) at a revision far in the future. etcd checks the permission
/// as for any Range (and any watch) of it, and only then refuses the revision — at once,
/// without walking the keys of the range (which even a `limit 1` read does, to count them).
async fn may_read(pool: &Arc<Pool>, ctx: &CallContext, key: &[u8], range_end: &[u8], current: bool) -> bool {
    let request = RangeRequest { key: key.to_vec(), range_end: range_end.to_vec(), revision: i64::MAX, serializable: !current, ..Default::default() };
    let answer = pool
        .call(&Target::Any, RetryPolicy::Read, Timing::Unmeasured, |connection| {
            let request = ctx.request(request.clone());
            async move { KvClient::new(connection).range(request).await }
        })
        .await;
    let granted = match answer {
        Ok(_) => true,
        Err(status) => status.code() == tonic::Code::OutOfRange && status.message().ends_with(FUTURE_REVISION),
    };
    crate::metrics::permit_asked(granted);
    granted
}

/// Learns the cluster's current revision for linearizable cached reads: one read of one key
/// on a member per round, one round at a time; a caller waits for a round that started
/// after it asked. The first caller waiting for the next round starts it, on its own
/// worker thread and over that worker's pool (its own member connections): an unloaded
/// read pays no hop to another thread, and under load one round serves every read that
/// arrived during the last.
#[derive(Debug)]
struct Barrier {
    /// The key read (the first cached prefix's first key).
    key: Vec<u8>,
    /// etcdgate's own, if it has one; otherwise the reads carry no credentials.
    login: Option<Arc<Login>>,
    /// Rounds started so far.
    started: AtomicU64,
    /// The last finished round and the revision it learned (`None`: the read failed).
    done: watch::Sender<(u64, Option<i64>)>,
    /// When the last round finished, and whether etcd answered it.
    last: Mutex<Option<(bool, Instant)>>,
}

impl Barrier {
    fn new(key: Vec<u8>, login: Option<Arc<Login>>) -> Barrier {
        Barrier { key, login, started: AtomicU64::new(0), done: watch::Sender::new((0, None)), last: Mutex::new(None) }
    }

    /// Whether the last round got an answer, and how long ago it finished.
    fn last_answer(&self) -> Option<(bool, Duration)> {
        let last = *lock(&self.last);
        last.map(|(answered, at)| (answered, at.elapsed()))
    }

    /// The revision a round started after the call learned; the round goes over `pool`, the
    /// caller's worker's.
    async fn cluster_revision(self: &Arc<Self>, pool: &Arc<Pool>) -> Option<i64> {
        let round = self.started.load(Ordering::Acquire) + 1;
        let mut done = self.done.subscribe();
        // The round before ours must finish first; then whoever gets there first starts ours.
        done.wait_for(|(finished, _)| *finished + 1 >= round).await.ok()?;
        if self.started.compare_exchange(round - 1, round, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            // A task of its own: the round finishes even if this caller goes away.
            tokio::spawn(self.clone().run_round(pool.clone(), round));
        }
        let finished = done.wait_for(|(finished, _)| *finished >= round).await.ok()?;
        finished.1
    }

    async fn run_round(self: Arc<Self>, pool: Arc<Pool>, round: u64) {
        let revision = self.read_key(&pool, RangeRequest { key: self.key.clone(), count_only: true, ..Default::default() }).await;
        crate::metrics::barrier_round();
        *lock(&self.last) = Some((revision.is_some(), Instant::now()));
        self.done.send_replace((round, revision));
    }

    /// Whether etcd reads `revision` (it is not compacted, and not in the future), as a
    /// linearizable or serializable Range of the barrier key at it tells; if so, etcd's
    /// revision then (for a linearizable question, the cluster's).
    async fn reads_revision(&self, pool: &Arc<Pool>, revision: i64, linearizable: bool) -> Option<i64> {
        let request = RangeRequest { key: self.key.clone(), revision, count_only: true, serializable: !linearizable, ..Default::default() };
        self.read_key(pool, request).await
    }

    /// Reads the barrier key with etcdgate's credentials; the revision etcd answered at.
    async fn read_key(&self, pool: &Arc<Pool>, request: RangeRequest) -> Option<i64> {
        let token = token(&self.login, pool).await;
        let ctx = CallContext::with_token(token.as_deref());
        let answer = pool
            .call(&Target::Any, RetryPolicy::Read, Timing::Measured, |connection| {
                let request = ctx.request(request.clone());
                async move { KvClient::new(connection).range(request).await }
            })
            .await;
        if let (Err(status), Some(login)) = (&answer, &self.login) {
            if token_refused(status) {
                // Not waited for: the readers waiting for this answer go to etcd.
                let (login, pool) = (login.clone(), pool.clone());
                tokio::spawn(async move { login.renew(&pool, token.as_deref()).await });
            }
        }
        answer.ok().and_then(|response| response.into_inner().header.map(|h| h.revision))
    }
}

/// etcdgate's token, if it has a login.
async fn token(login: &Option<Arc<Login>>, pool: &Arc<Pool>) -> Option<String> {
    match login {
        Some(login) => login.token(pool).await,
        None => None,
    }
}

fn report_held(hub: &Hub) {
    if let Some(stats) = hub.stats() {
        crate::metrics::cache_held(&String::from_utf8_lossy(&hub.keys().start), stats.keys, stats.events, stats.bytes, stats.span);
    }
}

/// The hub's revision and the cluster's, learned by a barrier round begun after the hub's
/// was read (so a cluster that has not gone back is at least there); `None` when the hub
/// is not loaded or etcd does not answer in time.
async fn revisions(pool: &Arc<Pool>, hub: &Hub, barrier: &Arc<Barrier>) -> Option<(i64, i64)> {
    let held = hub.revision()?;
    let cluster = tokio::time::timeout(CONTINUITY_CHECK_TIMEOUT, barrier.cluster_revision(pool)).await.ok()??;
    Some((held, cluster))
}

/// What follows one prefix from etcd into its hub.
struct Feed {
    pool: Arc<Pool>,
    hub: Arc<Hub>,
    barrier: Arc<Barrier>,
    doubt: Arc<Notify>,
    login: Option<Arc<Login>>,
    /// See [`Caches::refused`].
    refused: Arc<AtomicBool>,
}

impl Feed {
    /// etcd refused the feed's read or watch for its credentials (`token`): the hub serves
    /// nothing until the feed follows again, with a new token if etcdgate has a login and
    /// one may help (`relogin`). Returns how long to wait before trying again: not long
    /// with a new token.
    async fn refused(&self, token: Option<&str>, why: &str, relogin: bool) -> Duration {
        self.refused.store(true, Ordering::Release);
        let Some(login) = &self.login else {
            tracing::error!(why, "etcd refused to let the cache follow its prefix (is auth on? give etcdgate --user)");
            return REFUSED_RETRY;
        };
        if !relogin {
            tracing::error!(why, "etcd refused etcdgate's user (--user) the cached prefix (grant it read permission)");
            return REFUSED_RETRY;
        }
        tracing::warn!(why, "etcd refused the cached prefix's credentials; logging in again");
        login.renew(&self.pool, token).await;
        if login.token(&self.pool).await.as_deref() != token {
            FEED_RETRY
        } else {
            REFUSED_RETRY
        }
    }

    /// Follows the prefix for as long as the process runs.
    async fn run(self) {
        let Feed { pool, hub, barrier, doubt, .. } = &self;
        let keys = hub.keys().clone();
        let mut reload = true;
        // Since when etcd has refused the feed, and whether the hub was abandoned since.
        let mut refused_since: Option<(Instant, bool)> = None;
        loop {
            if !self.refused.load(Ordering::Acquire) {
                refused_since = None;
            } else if let (since, abandoned @ false) = refused_since.get_or_insert((Instant::now(), false)) {
                if since.elapsed() >= ABANDON_AFTER {
                    tracing::warn!(prefix = %String::from_utf8_lossy(&keys.start), "the cache cannot follow its prefix; canceling the watches it serves");
                    hub.abandon();
                    *abandoned = true;
                    reload = true;
                }
            }
            let token = token(&self.login, pool).await;
            let ctx = CallContext::with_token(token.as_deref());
            let mut wait = FEED_RETRY;
            if reload {
                let request = RangeRequest { key: keys.request_key(), range_end: keys.end.clone(), ..Default::default() };
                let loaded = pool
                    .call(&Target::Any, RetryPolicy::Read, Timing::Unmeasured, |connection| {
                        let request = ctx.request(request.clone());
                        async move { KvClient::new(connection).max_decoding_message_size(usize::MAX).range(request).await }
                    })
                    .await;
                match loaded {
                    Ok(response) => {
                        let response = response.into_inner();
                        let header = response.header.unwrap_or_default();
                        tracing::info!(prefix = %String::from_utf8_lossy(&keys.start), keys = response.kvs.len(), revision = header.revision, "cached prefix loaded");
                        crate::metrics::cache_loaded();
                        let epoch = hub.epoch();
                        hub.reset(response.kvs, header);
                        if hub.went_back_since(epoch) {
                            crate::context::history_restarted();
                        }
                        report_held(hub);
                        self.refused.store(false, Ordering::Release);
                        reload = false;
                    }
                    Err(status) => {
                        tracing::warn!(error = %status.message(), "reading a cached prefix failed; trying again");
                        if refused_for_auth(&status) {
                            wait = self.refused(token.as_deref(), status.message(), token_refused(&status)).await;
                        }
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
            }
            let Some(revision) = hub.revision() else { continue };
            let create = WatchCreateRequest {
                key: keys.request_key(),
                range_end: keys.end.clone(),
                start_revision: revision + 1,
                prev_kv: true,
                progress_notify: true,
                ..Default::default()
            };
            let (requests, input) = mpsc::channel(1);
            let _ = requests.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await;
            let stalled = Stalled::default();
            let input = ReceiverStream::new(input).boxed();
            match crate::watch::watch_reporting_stalls(pool.clone(), ctx, input, stalled.clone()).await {
                Ok(mut responses) => {
                    crate::metrics::upstream_watches(1);
                    let mut silence = Silence::new();
                    // A progress request sent to the watch's member: the cluster's revision then,
                    // and when it was sent.
                    let mut asked: Option<(i64, Instant)> = None;
                    let mut ask_again = false;
                    let mut checks = tokio::time::interval(STALL_CHECK);
                    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut continuity = tokio::time::interval(CONTINUITY_CHECK);
                    continuity.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        let response = tokio::select! {
                            response = responses.next() => response,
                            _ = async { tokio::select! { _ = continuity.tick() => {}, () = doubt.notified() => {} } } => {
                                match revisions(pool, hub, barrier).await {
                                    Some((held, cluster)) if cluster < held => {
                                        tracing::warn!(
                                            revision = held,
                                            cluster,
                                            "etcd's revision is below the cached prefix's (restored from a snapshot?); reading it again"
                                        );
                                        reload = true;
                                        break;
                                    }
                                    Some((held, cluster)) if cluster > held && asked.is_none() && requests.try_send(progress_request()).is_ok() => {
                                        asked = Some((cluster, Instant::now()));
                                    }
                                    _ => {}
                                }
                                continue;
                            }
                            _ = checks.tick() => {
                                if std::mem::take(&mut ask_again) && asked.is_some() {
                                    let _ = requests.try_send(progress_request());
                                }
                                let unanswered = asked.is_some_and(|(_, at)| at.elapsed() >= PROGRESS_ANSWER_WAIT);
                                if silence.stalled(hub) || unanswered {
                                    tracing::warn!(
                                        revision = hub.revision(),
                                        expected = hub.expected(),
                                        unanswered,
                                        "cached prefix's watch is silent: a write etcd acknowledged has not come, or its member did not answer a progress request at the cluster's revision; moving it"
                                    );
                                    crate::metrics::feed_stalled();
                                    stalled.report();
                                    asked = None;
                                }
                                continue;
                            }
                        };
                        let Some(response) = response else { break };
                        let progress_answer = matches!(&response, Ok(r) if is_progress_answer(r));
                        // An answer to a progress request is no sign of life: a member cut off
                        // from its peers answers at once, at a revision it no longer leaves.
                        if !progress_answer {
                            silence.heard();
                        }
                        match response {
                            Ok(response) if progress_answer => {
                                // Proves the member alive and caught up; never moves the hub
                                // (etcd 3.4/3.5 may answer ahead of events).
                                let revision = response.header.map_or(0, |h| h.revision);
                                match asked {
                                    Some((cluster, _)) if revision >= cluster => asked = None,
                                    // A follower may apply a committed write a heartbeat later:
                                    // ask again at the next check, until the wait is over.
                                    Some(_) => ask_again = true,
                                    None => {}
                                }
                            }
                            Ok(response) if response.canceled => {
                                if response.compact_revision > 0 {
                                    tracing::warn!(
                                        compact_revision = response.compact_revision,
                                        "cached prefix's watch compacted; reading it again"
                                    );
                                    reload = true;
                                } else {
                                    // Refused (its token expired or went old, and a member
                                    // it moved to checked it again; etcd gives any refusal of
                                    // a watch as "permission denied", so a new login may help).
                                    wait = self.refused(token.as_deref(), &response.cancel_reason, true).await;
                                }
                                break;
                            }
                            Ok(response) if response.created => self.refused.store(false, Ordering::Release),
                            Ok(response) if response.events.is_empty() => hub.progress(response.header.unwrap_or_default()),
                            Ok(response) => {
                                crate::metrics::cache_events_in(response.events.len());
                                hub.apply(response.events, response.header.unwrap_or_default());
                                report_held(hub);
                            }
                            Err(status) => {
                                if refused_for_auth(&status) {
                                    wait = self.refused(token.as_deref(), status.message(), token_refused(&status)).await;
                                }
                                tracing::warn!(error = %status.message(), "cached prefix's watch failed; resuming it");
                                break;
                            }
                        }
                    }
                    crate::metrics::upstream_watches(-1);
                }
                Err(status) => {
                    if refused_for_auth(&status) {
                        wait = self.refused(token.as_deref(), status.message(), token_refused(&status)).await;
                    }
                    tracing::warn!(error = %status.message(), "opening the cached prefix's watch failed")
                }
            }
            drop(requests);
            tokio::time::sleep(wait).await;
        }
    }
}

/// How long a feed has been silent while its hub lacked an acknowledged write.
struct Silence {
    /// When the feed last heard from etcd (or was last reported stalled).
    quiet_since: Instant,
    /// Since when (as the checks saw it) the hub has lacked an acknowledged write.
    behind_since: Option<Instant>,
    /// Stalls reported since the feed last heard from etcd.
    reported: u32,
}

impl Silence {
    fn new() -> Silence {
        Silence { quiet_since: Instant::now(), behind_since: None, reported: 0 }
    }

    fn heard(&mut self) {
        self.quiet_since = Instant::now();
        self.reported = 0;
    }

    /// Whether the feed has been silent, and the hub behind, long enough to call it stalled
    /// (see [`STALL`]); counts afresh from a stall it reports.
    fn stalled(&mut self, hub: &Hub) -> bool {
        if hub.revision().is_none_or(|revision| revision >= hub.expected()) {
            self.behind_since = None;
            return false;
        }
        let now = Instant::now();
        let behind_since = *self.behind_since.get_or_insert(now);
        let wait = STALL * (1 << self.reported.min(STALL_MAX_FACTOR.ilog2()));
        if now.duration_since(behind_since.max(self.quiet_since)) < wait {
            return false;
        }
        self.quiet_since = now;
        self.reported += 1;
        true
    }
}
