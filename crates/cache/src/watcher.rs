//! One client watch served by a [`Hub`]: a position in the hub's history (the next revision
//! the client has not been sent), read forward at the client's own pace. Nothing is buffered
//! per watcher; one that falls behind the history's start is canceled with etcd's
//! `compact_revision`. Responses look like etcd's: one per revision when live, catch-ups
//! grouped, filters and prev_kv applied, progress notifications every ten minutes (etcd's
//! default) when asked for.

use std::sync::Arc;
use std::time::Duration;

use etcdgate_proto::etcdserverpb::watch_create_request::FilterType;
use etcdgate_proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchResponse};
use etcdgate_proto::mvccpb::event::EventType;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::hub::{Hub, Read};
use crate::keys::KeyRange;

/// About how many bytes of events one response carries (whole revisions; a single revision
/// larger than this still goes in one response).
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// etcd's default `--experimental-watch-progress-notify-interval`.
const PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);

/// A watch served from a hub.
#[derive(Debug)]
pub struct Watcher {
    hub: Arc<Hub>,
    id: i64,
    keys: KeyRange,
    /// The next revision the client has not been sent.
    next: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    updates: watch::Receiver<i64>,
}

impl Watcher {
    /// A watch for `create` with ID `id`, and its `created` response; `None` when the hub
    /// cannot serve it: keys outside the prefix, the prefix not loaded yet, or a start
    /// revision from which an event of its keys has left the history (etcd must answer that
    /// one: it may still have the events, or it says compacted).
    pub fn create(hub: &Arc<Hub>, id: i64, create: &WatchCreateRequest) -> Option<(Watcher, WatchResponse)> {
        let keys = KeyRange::new(&create.key, &create.range_end);
        if create.key.is_empty() || !hub.keys().covers(&keys) {
            return None;
        }
        let updates = hub.subscribe();
        let header = hub.header()?;
        let next = if create.start_revision > 0 { create.start_revision } else { header.revision + 1 };
        if !hub.serves_from(next, &keys) {
            return None;
        }
        let filters = |filter: FilterType| create.filters.contains(&(filter as i32));
        let watcher = Watcher {
            hub: hub.clone(),
            id,
            keys,
            next,
            no_put: filters(FilterType::Noput),
            no_delete: filters(FilterType::Nodelete),
            prev_kv: create.prev_kv,
            progress_notify: create.progress_notify,
            updates,
        };
        Some((watcher, WatchResponse { header: Some(header), watch_id: id, created: true, ..Default::default() }))
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    /// The next revision the client has not been sent.
    pub fn next_revision(&self) -> i64 {
        self.next
    }

    /// An answer to a progress request: the hub's revision, if this watcher has been sent
    /// everything up to it (etcd answers only when all watches of a stream are synced).
    pub fn progress(&self) -> Option<WatchResponse> {
        let header = self.hub.header()?;
        (self.next > header.revision).then(|| WatchResponse { header: Some(header), watch_id: self.id, ..Default::default() })
    }

    /// The next response for the client: events, a progress notification, or the cancel of
    /// a watcher that fell out of the history (after which the watcher is done).
    pub async fn next(&mut self) -> WatchResponse {
        let mut progress_due = Instant::now() + PROGRESS_NOTIFY_INTERVAL;
        loop {
            self.updates.borrow_and_update();
            match self.hub.read_since(self.next, &self.keys, MAX_RESPONSE_BYTES) {
                Read::Compacted(compact_revision) => {
                    return WatchResponse {
                        header: Some(ResponseHeader { revision: 0, ..self.hub.bare_header() }),
                        watch_id: self.id,
                        canceled: true,
                        compact_revision,
                        ..Default::default()
                    };
                }
                Read::NotLoaded => {}
                Read::Events { batches, next, revision } => {
                    self.next = next;
                    let single = batches.len() == 1;
                    let last = batches.last().map(|(revision, _)| *revision);
                    let events: Vec<_> = batches
                        .into_iter()
                        .flat_map(|(_, events)| events)
                        .filter(|e| {
                            let delete = e.r#type == EventType::Delete as i32;
                            !(delete && self.no_delete || !delete && self.no_put)
                        })
                        .map(|mut e| {
                            if !self.prev_kv {
                                e.prev_kv = None;
                            }
                            e
                        })
                        .collect();
                    if !events.is_empty() {
                        // Live, etcd's header is the event's revision; a catch-up's the current one.
                        let header_revision = if single { last.unwrap_or(revision) } else { revision };
                        let header = ResponseHeader { revision: header_revision, ..self.hub.bare_header() };
                        return WatchResponse { header: Some(header), watch_id: self.id, events, ..Default::default() };
                    }
                }
            }
            tokio::select! {
                changed = self.updates.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                () = tokio::time::sleep_until(progress_due), if self.progress_notify => {
                    progress_due = Instant::now() + PROGRESS_NOTIFY_INTERVAL;
                    if let Some(progress) = self.progress() {
                        return progress;
                    }
                }
            }
        }
    }
}
