//! One cached prefix: its [`Store`] and [`History`] behind a lock, fed by the upstream watch
//! (reset / apply / progress) and read by clients (range, watchers), with a revision channel
//! that wakes watchers and readers waiting for the store to catch up.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use etcdgate_proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use etcdgate_proto::mvccpb::{Event, KeyValue};
use tokio::runtime::RuntimeFlavor;
use tokio::sync::watch;

use crate::history::{History, HistoryLimits};
use crate::keys::KeyRange;
use crate::reply::Batch;
use crate::store::Store;

#[derive(Debug)]
struct Cached {
    store: Store,
    history: History,
    /// The last header etcd sent the feed (cluster and member ids, raft term).
    header: ResponseHeader,
    /// Bumped by every reset.
    epoch: u64,
}

impl Cached {
    /// The events of one revision, into the store and the history.
    fn append(&mut self, revision: i64, events: Vec<Event>) {
        self.store.apply(revision, &events);
        self.history.push(revision, events);
    }
}

/// Events read for a watcher: the revisions from its position on, at most up to a bound.
#[derive(Debug)]
pub enum Read {
    /// Revisions with events in the watcher's range (possibly none); `whole` if every event
    /// of them is in the range; the next revision to read and the hub's revision.
    Events { batches: Vec<Arc<Batch>>, whole: bool, next: i64, revision: i64 },
    /// The watcher's position is no longer in the history.
    Compacted(i64),
    /// The hub has not loaded the prefix yet.
    NotLoaded,
}

thread_local! {
    /// Per hub (by address), this thread's relay of its revision: the hub's receiver it
    /// follows and the sender this thread's watchers subscribe to.
    static RELAYS: RefCell<HashMap<usize, RelayEnds>> = RefCell::default();
}

/// A relay's two ends: the hub's receiver it follows, the sender its thread's watchers use.
type RelayEnds = (watch::Receiver<i64>, watch::Sender<i64>);

/// Passes the hub's revision on to this thread's receivers until there are none left (or
/// the hub is gone); runs on the thread that started it (a single-threaded runtime).
async fn relay(key: usize, mut upstream: watch::Receiver<i64>, local: watch::Sender<i64>) {
    loop {
        tokio::select! {
            changed = upstream.changed() => {
                if changed.is_err() {
                    break;
                }
                local.send_replace(*upstream.borrow_and_update());
            }
            () = local.closed() => {
                // No await between this check and the removal: no receiver can come between.
                if local.receiver_count() == 0 {
                    break;
                }
            }
        }
    }
    RELAYS.with(|relays| {
        let mut relays = relays.borrow_mut();
        if relays.get(&key).is_some_and(|(_, current)| current.same_channel(&local)) {
            relays.remove(&key);
        }
    });
}

/// Size of what a hub holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubStats {
    /// Keys in the store.
    pub keys: usize,
    /// Events in the history, and their bytes.
    pub events: usize,
    pub bytes: usize,
    /// Oldest and newest revision of the history.
    pub span: Option<(i64, i64)>,
}

/// A cached prefix.
#[derive(Debug)]
pub struct Hub {
    keys: KeyRange,
    limits: HistoryLimits,
    cached: RwLock<Option<Cached>>,
    revision: watch::Sender<i64>,
    /// The highest revision known to carry an event of these keys (a write into them that
    /// etcd acknowledged): the store reaches it once the upstream watch delivers that event.
    expected: AtomicI64,
    /// The epoch of the last reset that found etcd's revision below the store's (0: none):
    /// the cluster was restored from a snapshot or rebuilt, and what watchers of earlier
    /// epochs were sent belongs to a history that is gone.
    went_back: AtomicU64,
    /// The epoch after the last [`Hub::abandon`] (0: none): watchers of earlier epochs are
    /// canceled.
    abandoned: AtomicU64,
}

impl Hub {
    pub fn new(keys: KeyRange, limits: HistoryLimits) -> Hub {
        Hub {
            keys,
            limits,
            cached: RwLock::new(None),
            revision: watch::Sender::new(0),
            expected: AtomicI64::new(0),
            went_back: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
        }
    }

    /// The keys this hub holds.
    pub fn keys(&self) -> &KeyRange {
        &self.keys
    }

    fn read(&self) -> RwLockReadGuard<'_, Option<Cached>> {
        self.cached.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Option<Cached>> {
        self.cached.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads the prefix as a Range read it (at `header.revision`), replacing what was held:
    /// the history starts again from there, so watchers positioned before it are canceled —
    /// and, if the cluster's revision went back (restored from a snapshot, rebuilt), every
    /// watcher created before.
    pub fn reset(&self, kvs: Vec<KeyValue>, header: ResponseHeader) {
        let revision = header.revision;
        let mut cached = self.write();
        let epoch = cached.as_ref().map_or(0, |c| c.epoch + 1);
        if cached.as_ref().is_some_and(|c| c.store.revision() > revision) {
            // Writes expected at revisions of the old history will not come.
            self.expected.store(0, Ordering::Release);
            self.went_back.store(epoch, Ordering::Release);
        }
        *cached = Some(Cached { store: Store::new(kvs, revision), history: History::new(revision, self.limits), header, epoch });
        drop(cached);
        self.revision.send_replace(revision);
    }

    /// Applies a watch response's events (several revisions possibly); events at or before
    /// the store's revision (a resumed watch repeating itself) are skipped. The store moves to
    /// the last event's revision only: an events response's header revision does not promise
    /// that every event up to it was sent (etcd cuts long catch-ups into several responses).
    pub fn apply(&self, events: Vec<Event>, header: ResponseHeader) {
        let mut guard = self.write();
        let Some(cached) = guard.as_mut() else { return };
        let mut batch: Vec<Event> = Vec::new();
        let mut batch_revision = 0;
        for event in events {
            let revision = event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
            if revision <= cached.store.revision() {
                continue;
            }
            if revision != batch_revision && !batch.is_empty() {
                cached.append(batch_revision, std::mem::take(&mut batch));
            }
            batch_revision = revision;
            batch.push(event);
        }
        if !batch.is_empty() {
            cached.append(batch_revision, batch);
        }
        cached.header = ResponseHeader { revision: 0, ..header };
        let revision = cached.store.revision();
        drop(guard);
        self.revision.send_replace(revision);
    }

    /// etcd says every event up to `header.revision` has been sent (a progress notification).
    pub fn progress(&self, header: ResponseHeader) {
        let mut guard = self.write();
        let Some(cached) = guard.as_mut() else { return };
        cached.store.advance(header.revision);
        cached.header = ResponseHeader { revision: 0, ..header };
        let revision = cached.store.revision();
        drop(guard);
        self.revision.send_replace(revision);
    }

    /// Bumped by every [`Hub::reset`] (0 before the first).
    pub fn epoch(&self) -> u64 {
        self.read().as_ref().map_or(0, |c| c.epoch)
    }

    /// Whether the cluster's revision went back (see [`Hub::reset`]) after epoch `epoch`.
    pub fn went_back_since(&self, epoch: u64) -> bool {
        self.went_back.load(Ordering::Acquire) > epoch
    }

    /// The feed can no longer follow etcd (etcd refuses it the prefix): every watcher is
    /// canceled with `compact_revision` (its client then reads again and watches anew,
    /// elsewhere: the hub must not serve until the prefix is read again, see
    /// [`Hub::reset`]), rather than left waiting for events that will not come.
    pub fn abandon(&self) {
        self.abandoned.fetch_max(self.epoch() + 1, Ordering::AcqRel);
        self.revision.send_modify(|_| {});
    }

    /// Whether watchers made in epoch `epoch` are to be canceled: the cluster went back, or
    /// the hub was abandoned, since.
    pub fn cancels_watchers_of(&self, epoch: u64) -> bool {
        self.went_back_since(epoch) || self.abandoned.load(Ordering::Acquire) > epoch
    }

    /// The store's revision; `None` until the prefix is loaded.
    pub fn revision(&self) -> Option<i64> {
        self.read().as_ref().map(|c| c.store.revision())
    }

    /// Whether a watch of `keys` from revision `from` can be served: the prefix is loaded and
    /// no event of `keys` from `from` on has left the history.
    pub fn serves_from(&self, from: i64, keys: &KeyRange) -> bool {
        self.read().as_ref().is_some_and(|c| c.history.since(from, keys).is_ok())
    }

    /// A response header at the store's revision, with etcd's ids.
    pub fn header(&self) -> Option<ResponseHeader> {
        self.read().as_ref().map(|c| ResponseHeader { revision: c.store.revision(), ..c.header })
    }

    /// A header with etcd's ids and no revision (as etcd's compacted cancel has).
    pub(crate) fn bare_header(&self) -> ResponseHeader {
        self.read().as_ref().map(|c| c.header).unwrap_or_default()
    }

    /// Answers a Range inside the prefix from the store, if it is loaded and the request
    /// reads the current revision (`revision` 0 or the store's) or an earlier one the
    /// history can roll the store back to (see [`Hub::rolls_back_to`]). The header is at the
    /// store's revision, as etcd's is at its current one whatever revision was read.
    pub fn range(&self, request: &RangeRequest) -> Option<RangeResponse> {
        let guard = self.read();
        let cached = guard.as_ref()?;
        let revision = cached.store.revision();
        let mut response = if request.revision == 0 || request.revision == revision {
            cached.store.range(request)?
        } else if (1..revision).contains(&request.revision) {
            let earlier = cached.history.earlier(request.revision, &KeyRange::new(&request.key, &request.range_end))?;
            cached.store.range_earlier(request, &earlier)?
        } else {
            return None;
        };
        response.header = Some(ResponseHeader { revision, ..cached.header });
        Some(response)
    }

    /// Whether [`Hub::range`] can answer a Range of `keys` at `revision` (positive) once the
    /// store has reached it: every event of those keys after it is in the history.
    pub fn rolls_back_to(&self, revision: i64, keys: &KeyRange) -> bool {
        revision > 0 && self.read().as_ref().is_some_and(|c| c.history.since(revision + 1, keys).is_ok())
    }

    /// Notes that etcd acknowledged a write into these keys at `revision`.
    pub fn expect(&self, revision: i64) {
        self.expected.fetch_max(revision, Ordering::AcqRel);
    }

    /// Notes that etcd acknowledged revoking `lease` at `revision`, which deleted the keys
    /// attached to it: expected here if this hub holds one of them, or may be about to (it
    /// lacks a write it expects, which may attach one).
    pub fn expect_lease_revoked(&self, lease: i64, revision: i64) {
        let attached = self.read().as_ref().is_some_and(|c| c.store.holds_lease(lease) || c.store.revision() < self.expected());
        if attached {
            self.expect(revision);
        }
    }

    /// The highest revision [`Hub::expect`] was told of (0: none).
    pub fn expected(&self) -> i64 {
        self.expected.load(Ordering::Acquire)
    }

    /// Waits until the store has reached `revision`; false if it has not within `timeout`.
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> bool {
        let mut updates = self.revision.subscribe();
        let reached = tokio::time::timeout(timeout, updates.wait_for(|current| *current >= revision)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Wakes on every change of the store's revision. On a single-threaded runtime (each of
    /// the server's workers has one) the receivers of one thread share a relay task: the
    /// hub wakes that one task, which wakes the thread's watchers locally — waking thousands
    /// of tasks of another thread one by one costs a system call each and breaks up the
    /// batching of their writes.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        let single_threaded = tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread);
        if !single_threaded {
            return self.revision.subscribe();
        }
        let key = self as *const Hub as usize;
        RELAYS.with(|relays| {
            let mut relays = relays.borrow_mut();
            // A relay whose hub went (and whose address came back) is replaced.
            if let Some(local) = relays.get(&key).filter(|(upstream, _)| upstream.has_changed().is_ok()).map(|(_, local)| local) {
                return local.subscribe();
            }
            let upstream = self.revision.subscribe();
            let local = watch::Sender::new(*upstream.borrow());
            relays.insert(key, (upstream.clone(), local.clone()));
            tokio::spawn(relay(key, upstream, local.clone()));
            local.subscribe()
        })
    }

    /// Events in `keys` from revision `from` on, up to about `max_bytes` (whole revisions).
    pub fn read_since(&self, from: i64, keys: &KeyRange, max_bytes: usize) -> Read {
        let guard = self.read();
        let Some(cached) = guard.as_ref() else { return Read::NotLoaded };
        let batches = match cached.history.since(from, keys) {
            Ok(batches) => batches,
            Err(compact_revision) => return Read::Compacted(compact_revision),
        };
        let revision = cached.store.revision();
        let mut selected = Vec::new();
        let mut whole = true;
        let mut next = from;
        let mut bytes = 0;
        for batch in batches {
            if bytes >= max_bytes {
                break;
            }
            next = batch.revision + 1;
            let matching = batch.events.iter().filter(|e| keys.contains_event(e)).count();
            if matching == 0 {
                continue;
            }
            if matching == batch.events.len() {
                bytes += batch.bytes;
            } else {
                whole = false;
                bytes += batch.events.iter().filter(|e| keys.contains_event(e)).map(prost::Message::encoded_len).sum::<usize>();
            }
            selected.push(batch.clone());
        }
        if bytes < max_bytes {
            next = next.max(revision + 1);
        }
        Read::Events { batches: selected, whole, next, revision }
    }

    /// Size of what is held; `None` until the prefix is loaded.
    pub fn stats(&self) -> Option<HubStats> {
        let guard = self.read();
        let cached = guard.as_ref()?;
        Some(HubStats {
            keys: cached.store.len(),
            events: cached.history.len(),
            bytes: cached.history.bytes(),
            span: cached.history.span(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(revision: i64) -> ResponseHeader {
        ResponseHeader { revision, ..Default::default() }
    }

    #[test]
    fn expected_writes_survive_a_resync_but_not_a_cluster_gone_back() {
        let hub = Hub::new(KeyRange::prefix(b"/a/"), HistoryLimits::default());
        hub.reset(Vec::new(), header(10));
        hub.expect(12);
        hub.reset(Vec::new(), header(11));
        assert_eq!(hub.expected(), 12, "a re-read after a compaction: the write's event still comes");
        hub.reset(Vec::new(), header(3));
        assert_eq!(hub.expected(), 0, "a restored cluster: revisions of the old history will not come");
    }

    #[tokio::test]
    async fn watchers_made_before_the_cluster_went_back_are_canceled() {
        use crate::watcher::Watcher;
        use etcdgate_proto::etcdserverpb::WatchCreateRequest;
        let hub = Arc::new(Hub::new(KeyRange::prefix(b"/a/"), HistoryLimits::default()));
        hub.reset(Vec::new(), header(20));
        hub.reset(Vec::new(), header(25));
        assert!(!hub.went_back_since(0), "a re-read at a later revision is not a cluster gone back");
        let create = WatchCreateRequest { key: b"/a/".to_vec(), range_end: b"/a0".to_vec(), ..Default::default() };
        let (mut before, _) = Watcher::create(&hub, 1, &create, 1 << 20).unwrap();
        hub.reset(Vec::new(), header(4));
        let (mut after, _) = Watcher::create(&hub, 2, &create, 1 << 20).unwrap();
        let canceled = before.next().await.into_message();
        assert!(canceled.canceled && canceled.compact_revision == 5, "{canceled:?}");
        let waiting = tokio::time::timeout(Duration::from_millis(50), after.next()).await;
        assert!(waiting.is_err(), "a watch made after the reset follows the new history");
    }

    #[tokio::test]
    async fn an_abandoned_hub_cancels_its_watchers_until_read_again() {
        use crate::watcher::Watcher;
        use etcdgate_proto::etcdserverpb::WatchCreateRequest;
        let hub = Arc::new(Hub::new(KeyRange::prefix(b"/a/"), HistoryLimits::default()));
        hub.reset(Vec::new(), header(20));
        let create = WatchCreateRequest { key: b"/a/".to_vec(), range_end: b"/a0".to_vec(), ..Default::default() };
        let (mut before, _) = Watcher::create(&hub, 1, &create, 1 << 20).unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), before.next()).await;
        assert!(waiting.is_err(), "nothing to send yet");
        hub.abandon();
        let canceled = before.next().await.into_message();
        assert!(canceled.canceled && canceled.compact_revision == 21, "{canceled:?}");
        hub.reset(Vec::new(), header(30));
        assert!(!hub.went_back_since(0), "abandoned is not gone back");
        let (mut after, _) = Watcher::create(&hub, 2, &create, 1 << 20).unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), after.next()).await;
        assert!(waiting.is_err(), "a watch made after the prefix was read again is served");
    }

    /// Applies random puts, deletes and multi-key revisions to a hub as etcd's watch would
    /// send them (with prev_kv), and checks every Range at every earlier revision against
    /// a store of that revision's key-values.
    #[test]
    fn ranges_at_earlier_revisions_roll_the_store_back() {
        use etcdgate_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
        use etcdgate_proto::mvccpb::event::EventType;
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut below = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let hub = Hub::new(KeyRange::prefix(b"/a/"), HistoryLimits::default());
        let key = |i: u64| format!("/a/{i}").into_bytes();
        let mut state: std::collections::BTreeMap<Vec<u8>, KeyValue> = (0..4)
            .map(|i| (key(i), KeyValue { key: key(i), value: b"v".to_vec(), create_revision: 2, mod_revision: 2, version: 1, lease: 0 }))
            .collect();
        hub.reset(state.values().cloned().collect(), header(2));
        let mut states = vec![(2, state.clone())];
        for revision in 3..60 {
            let mut events = Vec::new();
            for _ in 0..1 + below(3) {
                let k = key(below(8));
                if events.iter().any(|e: &Event| e.kv.as_ref().is_some_and(|kv| kv.key == k)) {
                    continue;
                }
                let prev_kv = state.get(&k).cloned();
                if below(4) == 0 {
                    let Some(prev_kv) = prev_kv else { continue };
                    state.remove(&k);
                    let kv = KeyValue { key: k, mod_revision: revision, ..Default::default() };
                    events.push(Event { r#type: EventType::Delete as i32, kv: Some(kv), prev_kv: Some(prev_kv) });
                } else {
                    let (create_revision, version) = prev_kv.as_ref().map_or((revision, 1), |p| (p.create_revision, p.version + 1));
                    let value = format!("{}", below(5)).into_bytes();
                    let kv = KeyValue { key: k.clone(), value, create_revision, mod_revision: revision, version, lease: below(2) as i64 };
                    state.insert(k, kv.clone());
                    events.push(Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv });
                }
            }
            if !events.is_empty() {
                hub.apply(events, header(revision));
                states.push((revision, state.clone()));
            }
        }
        let ranges: [(&[u8], &[u8]); 4] = [(b"/a/", b"/a0"), (b"/a/3", b""), (b"/a/2", b"/a/6"), (b"/a/9", b"")];
        let mut checked = 0;
        for (revision, kvs) in &states {
            let store = Store::new(kvs.values().cloned().collect(), *revision);
            for (key, range_end) in ranges {
                for option in 0..6 {
                    let mut request = RangeRequest { key: key.to_vec(), range_end: range_end.to_vec(), revision: *revision, ..Default::default() };
                    match option {
                        1 => request.limit = 2,
                        2 => (request.sort_order, request.sort_target) = (SortOrder::Descend as i32, SortTarget::Mod as i32),
                        3 => (request.keys_only, request.min_mod_revision) = (true, revision - 5),
                        4 => request.count_only = true,
                        5 => (request.max_create_revision, request.limit) = (revision - 3, 1),
                        _ => {}
                    }
                    let from_hub = hub.range(&request);
                    if let Some(from_hub) = &from_hub {
                        assert_eq!(from_hub.header.map(|h| h.revision), hub.revision(), "the header is at the store's revision");
                        checked += 1;
                    }
                    let from_hub = from_hub.map(|r| RangeResponse { header: None, ..r });
                    assert_eq!(from_hub, store.range(&request), "at {revision}: {request:?}");
                }
            }
        }
        assert!(checked > 400, "{checked}");
        assert!(hub.range(&RangeRequest { key: b"/a/1".to_vec(), revision: 1, ..Default::default() }).is_none(), "before the load");
        assert!(!hub.rolls_back_to(1, &KeyRange::new(b"/a/1", b"")));
        let ahead = hub.revision().unwrap() + 1;
        assert!(hub.range(&RangeRequest { key: b"/a/1".to_vec(), revision: ahead, ..Default::default() }).is_none(), "not there yet");
    }

    #[test]
    fn ranges_at_revisions_the_history_no_longer_holds_are_not_answered() {
        use etcdgate_proto::mvccpb::event::EventType;
        let hub = Hub::new(KeyRange::prefix(b"/a/"), HistoryLimits { max_events: 2, max_bytes: 1 << 20 });
        hub.reset(Vec::new(), header(1));
        let put = |key: &[u8], revision: i64| {
            let kv = KeyValue { key: key.to_vec(), value: b"v".to_vec(), create_revision: revision, mod_revision: revision, version: 1, lease: 0 };
            Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: None }
        };
        for (revision, key) in [(2, b"/a/x"), (3, b"/a/y"), (4, b"/a/y")] {
            hub.apply(vec![put(key, revision)], header(revision));
        }
        let at = |key: &[u8], revision: i64| RangeRequest { key: key.to_vec(), revision, ..Default::default() };
        assert!(hub.range(&at(b"/a/x", 1)).is_none(), "/a/x's event at 2 left the history");
        assert!(!hub.rolls_back_to(1, &KeyRange::new(b"/a/x", b"")));
        assert_eq!(hub.range(&at(b"/a/x", 2)).map(|r| r.count), Some(1), "no event of /a/x after 2");
        assert_eq!(hub.range(&at(b"/a/y", 2)).map(|r| r.count), Some(0), "/a/y's events are all held");
        let modified = Event { prev_kv: None, ..put(b"/a/y", 5) };
        let modified = Event { kv: modified.kv.map(|kv| KeyValue { version: 2, ..kv }), ..modified };
        hub.apply(vec![modified], header(5));
        assert!(hub.range(&at(b"/a/y", 4)).is_none(), "an update without its previous value cannot be undone");
    }

    #[test]
    fn a_revoked_lease_is_expected_where_its_keys_are() {
        let hub = Hub::new(KeyRange::prefix(b"/a/"), HistoryLimits::default());
        let leased = KeyValue { key: b"/a/x".to_vec(), lease: 7, mod_revision: 5, ..Default::default() };
        hub.reset(vec![leased], header(5));
        hub.expect_lease_revoked(8, 6);
        assert_eq!(hub.expected(), 0, "no key of lease 8 here");
        hub.expect_lease_revoked(7, 6);
        assert_eq!(hub.expected(), 6);
        hub.expect_lease_revoked(8, 7);
        assert_eq!(hub.expected(), 7, "behind an expected write, which may have attached a key to lease 8");
    }
}
