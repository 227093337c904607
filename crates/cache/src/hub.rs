//! One cached prefix: its [`Store`] and [`History`] behind a lock, fed by the upstream watch
//! (reset / apply / progress) and read by clients (range, watchers), with a revision channel
//! that wakes watchers and readers waiting for the store to catch up.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use etcdgate_proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use etcdgate_proto::mvccpb::{Event, KeyValue};
use tokio::sync::watch;

use crate::history::{Batch, History, HistoryLimits};
use crate::keys::KeyRange;
use crate::store::Store;

#[derive(Debug)]
struct Cached {
    store: Store,
    history: History,
    /// The last header etcd sent the feed (cluster and member ids, raft term).
    header: ResponseHeader,
    /// Bumped by every reset: a watcher that saw another epoch must re-check its position.
    epoch: u64,
}

impl Cached {
    /// The events of one revision, into the store and the history.
    fn append(&mut self, revision: i64, events: Vec<Event>) {
        self.store.apply(revision, &events);
        self.history.push(revision, events);
    }
}

/// Events read for a watcher: the batches from its position on, at most up to a bound.
#[derive(Debug)]
pub enum Read {
    /// Revisions with events in the watcher's range (possibly none), and the hub's revision.
    Events { batches: Vec<(i64, Vec<Event>)>, next: i64, revision: i64 },
    /// The watcher's position is no longer in the history.
    Compacted(i64),
    /// The hub has not loaded the prefix yet.
    NotLoaded,
}

/// A cached prefix.
#[derive(Debug)]
pub struct Hub {
    keys: KeyRange,
    limits: HistoryLimits,
    cached: RwLock<Option<Cached>>,
    revision: watch::Sender<i64>,
}

impl Hub {
    pub fn new(keys: KeyRange, limits: HistoryLimits) -> Hub {
        Hub { keys, limits, cached: RwLock::new(None), revision: watch::Sender::new(0) }
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
    /// the history starts again from there, so watchers positioned before it are canceled.
    pub fn reset(&self, kvs: Vec<KeyValue>, header: ResponseHeader) {
        let revision = header.revision;
        let mut cached = self.write();
        let epoch = cached.as_ref().map_or(0, |c| c.epoch + 1);
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
        self.read().as_ref().map(|c| ResponseHeader { revision: c.store.revision(), ..c.header.clone() })
    }

    /// A header with etcd's ids and no revision (as etcd's compacted cancel has).
    pub(crate) fn bare_header(&self) -> ResponseHeader {
        self.read().as_ref().map(|c| c.header.clone()).unwrap_or_default()
    }

    /// Answers a Range inside the prefix from the store, if it is loaded and the request
    /// reads the current revision (`revision` 0 or the store's).
    pub fn range(&self, request: &RangeRequest) -> Option<RangeResponse> {
        let guard = self.read();
        let cached = guard.as_ref()?;
        let revision = cached.store.revision();
        if request.revision != 0 && request.revision != revision {
            return None;
        }
        let mut response = cached.store.range(request);
        response.header = Some(ResponseHeader { revision, ..cached.header.clone() });
        Some(response)
    }

    /// Waits until the store has reached `revision`; false if it has not within `timeout`.
    pub async fn wait_for(&self, revision: i64, timeout: Duration) -> bool {
        let mut updates = self.revision.subscribe();
        let reached = tokio::time::timeout(timeout, updates.wait_for(|current| *current >= revision)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Wakes on every change of the store's revision.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
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
        let mut next = from;
        let mut bytes = 0;
        for Batch { revision: batch_revision, events, .. } in batches {
            if bytes >= max_bytes {
                break;
            }
            let matching: Vec<Event> = events.iter().filter(|e| e.kv.as_ref().is_some_and(|kv| keys.contains(&kv.key))).cloned().collect();
            next = batch_revision + 1;
            if !matching.is_empty() {
                bytes += matching.iter().map(prost::Message::encoded_len).sum::<usize>();
                selected.push((*batch_revision, matching));
            }
        }
        if bytes < max_bytes {
            next = next.max(revision + 1);
        }
        Read::Events { batches: selected, next, revision }
    }

    /// Size of what is held: keys, history events, history bytes, oldest and newest
    /// revision of the history.
    pub fn stats(&self) -> Option<(usize, usize, usize, Option<(i64, i64)>)> {
        let guard = self.read();
        let cached = guard.as_ref()?;
        Some((cached.store.len(), cached.history.len(), cached.history.bytes(), cached.history.span()))
    }
}
