//! One client watch served by a [`Hub`]: a position in the hub's history (the next revision
//! the client has not been sent), read forward at the client's own pace. Nothing is buffered
//! per watcher; one that falls behind the history's start is canceled with etcd's
//! `compact_revision`, as is every one created before the cluster's revision went back (a
//! restore from a snapshot: what it was sent belongs to a history that is gone) or before
//! its hub was abandoned (etcd refused its feed). Responses look like etcd's: one per revision when live, catch-ups
//! grouped, filters and prev_kv applied, progress notifications every ten minutes (etcd's
//! default) when asked for, and — for a watch created with `fragment` — a response larger
//! than the request size limit split into fragments as etcd splits it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcdgate_proto::etcdserverpb::watch_create_request::FilterType;
use etcdgate_proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchResponse};
use etcdgate_proto::mvccpb::event::EventType;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::hub::{Hub, Read};
use crate::keys::KeyRange;
use crate::reply::WatchReply;

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
    /// For a watch created with `fragment`: the size above which a response is split.
    fragment_above: Option<usize>,
    /// Fragments of a split response not sent yet.
    fragments: VecDeque<WatchResponse>,
    updates: watch::Receiver<i64>,
    /// The hub's epoch when the watch was created.
    epoch: u64,
    /// The revision of its `created` answer (see [`Watcher::create`]).
    created_at: i64,
}

impl Watcher {
    /// A watch for `create` with ID `id`, and its `created` response; `None` when the hub
    /// cannot serve it: keys outside the prefix, the prefix not loaded yet, or a start
    /// revision from which an event of its keys has left the history, or below 0 (etcd must
    /// answer that one: it may still have the events, or it says compacted, with its own
    /// compaction revision).
    /// `max_request_bytes` is the server's request size limit, which etcd also uses to split
    /// the responses of watches created with `fragment`.
    pub fn create(hub: &Arc<Hub>, id: i64, create: &WatchCreateRequest, max_request_bytes: usize) -> Option<(Watcher, WatchResponse)> {
        let keys = KeyRange::new(&create.key, &create.range_end);
        if create.key.is_empty() || keys.is_empty() || create.start_revision < 0 || !hub.keys().covers(&keys) {
            return None;
        }
        let epoch = hub.epoch();
        let updates = hub.subscribe();
        let header = hub.header()?;
        // Now is the hub's revision, or the last write into its keys etcd acknowledged
        // through etcdgate if the hub has not received it yet: etcd acknowledged it before
        // this watch was made, so a watch from now must not get it.
        let now = header.revision.max(hub.expected());
        let header = ResponseHeader { revision: now, ..header };
        let next = if create.start_revision > 0 { create.start_revision } else { now + 1 };
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
            fragment_above: create.fragment.then_some(max_request_bytes),
            fragments: VecDeque::new(),
            updates,
            epoch,
            created_at: now,
        };
        Some((watcher, WatchResponse { header: Some(header), watch_id: id, created: true, ..Default::default() }))
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    /// The hub this watch reads.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// An answer to a progress request: the hub's revision, if this watcher has been sent
    /// everything up to it (etcd answers only when all watches of a stream are synced) — or
    /// its `created` answer's, while the hub has not reached that.
    pub fn progress(&self) -> Option<WatchResponse> {
        let header = self.hub.header()?;
        let synced = self.next > header.revision;
        let header = ResponseHeader { revision: header.revision.max(self.created_at), ..header };
        synced.then(|| WatchResponse { header: Some(header), watch_id: self.id, ..Default::default() })
    }

    /// The next response for the client: events, a progress notification, or the cancel of
    /// a watcher that fell out of the history (after which the watcher is done).
    pub async fn next(&mut self) -> WatchReply {
        if let Some(fragment) = self.fragments.pop_front() {
            return fragment.into();
        }
        let response = self.next_whole().await;
        match self.fragment_above {
            Some(limit) => {
                self.fragments = fragment(response.into_message(), limit);
                self.fragments.pop_front().unwrap_or_default().into()
            }
            None => response,
        }
    }

    async fn next_whole(&mut self) -> WatchReply {
        let mut progress_due = Instant::now() + PROGRESS_NOTIFY_INTERVAL;
        loop {
            // Nothing to read before the hub passes this watcher's position (a reset that
            // moved it back cannot have lost events this watcher still needs either).
            let revision = *self.updates.borrow_and_update();
            let read = if self.hub.cancels_watchers_of(self.epoch) {
                // The new history (if any) starts after the revision the hub read the prefix at.
                Some(Read::Compacted(self.hub.revision().unwrap_or(revision) + 1))
            } else {
                (revision >= self.next).then(|| self.hub.read_since(self.next, &self.keys, MAX_RESPONSE_BYTES))
            };
            match read {
                Some(Read::Compacted(compact_revision)) => {
                    return WatchResponse {
                        header: Some(ResponseHeader { revision: 0, ..self.hub.bare_header() }),
                        watch_id: self.id,
                        canceled: true,
                        compact_revision,
                        ..Default::default()
                    }
                    .into();
                }
                None | Some(Read::NotLoaded) => {}
                Some(Read::Events { batches, whole, next, revision }) => {
                    self.next = next;
                    // Live, etcd's header is the event's revision; a catch-up's the current one.
                    let header_revision = match batches.as_slice() {
                        [single] => single.revision,
                        _ => revision,
                    };
                    let header = ResponseHeader { revision: header_revision, ..self.hub.bare_header() };
                    if whole && !self.no_put && !self.no_delete && !batches.is_empty() {
                        return WatchReply::shared(header, self.id, batches, self.prev_kv);
                    }
                    let events: Vec<_> = batches
                        .iter()
                        .flat_map(|batch| batch.events.iter())
                        .filter(|e| {
                            let delete = e.r#type == EventType::Delete as i32;
                            self.keys.contains_event(e) && !(delete && self.no_delete || !delete && self.no_put)
                        })
                        .map(|e| {
                            let mut e = e.clone();
                            if !self.prev_kv {
                                e.prev_kv = None;
                            }
                            e
                        })
                        .collect();
                    if !events.is_empty() {
                        return WatchResponse { header: Some(header), watch_id: self.id, events, ..Default::default() }.into();
                    }
                }
            }
            if !self.progress_notify {
                self.wait_for_hub().await;
                continue;
            }
            // Boxed: the timer is only paid for by watches that asked for progress.
            let progress_timer = Box::pin(tokio::time::sleep_until(progress_due));
            tokio::select! {
                () = self.wait_for_hub() => {}
                () = progress_timer => {
                    progress_due = Instant::now() + PROGRESS_NOTIFY_INTERVAL;
                    if let Some(progress) = self.progress() {
                        return progress.into();
                    }
                }
            }
        }
    }
}

impl Watcher {
    /// Waits for the hub's revision to change (forever once the hub is gone).
    async fn wait_for_hub(&mut self) {
        if self.updates.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// etcd's split of a watch response: unless it is under `limit` bytes or has one event, as
/// many events per fragment as keep it under `limit` (at least one), every fragment but the
/// last marked `fragment`.
fn fragment(response: WatchResponse, limit: usize) -> VecDeque<WatchResponse> {
    use prost::Message;
    if response.encoded_len() < limit || response.events.len() < 2 {
        return VecDeque::from([response]);
    }
    let mut fragments = VecDeque::new();
    let empty = WatchResponse { events: Vec::new(), fragment: true, ..response.clone() };
    let mut current = empty.clone();
    for event in response.events {
        current.events.push(event);
        if current.events.len() > 1 && current.encoded_len() >= limit {
            let last = current.events.pop();
            fragments.push_back(std::mem::replace(&mut current, empty.clone()));
            current.events.extend(last);
        }
    }
    current.fragment = false;
    fragments.push_back(current);
    fragments
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdgate_proto::mvccpb::{Event, KeyValue};

    #[test]
    fn large_responses_are_split_like_etcds() {
        let event = |i: u8| Event { kv: Some(KeyValue { key: vec![i], value: vec![0; 100], ..Default::default() }), ..Default::default() };
        let response = WatchResponse { watch_id: 3, events: (0..10).map(event).collect(), ..Default::default() };
        let fragments = fragment(response.clone(), 350);
        let sizes: Vec<usize> = fragments.iter().map(|f| f.events.len()).collect();
        assert_eq!(sizes, [3, 3, 3, 1], "as many events as stay under the limit");
        assert!(fragments.iter().all(|f| prost::Message::encoded_len(f) < 350));
        assert!(fragments.iter().take(3).all(|f| f.fragment) && !fragments[3].fragment, "all but the last marked");
        assert!(fragments.iter().all(|f| f.watch_id == 3));
        assert_eq!(fragment(response.clone(), 1 << 20).len(), 1, "small enough: whole");
        let one = WatchResponse { events: vec![event(1)], ..Default::default() };
        assert_eq!(fragment(one, 10).len(), 1, "a single event is never split");
    }

    /// A watch from now made after etcd acknowledged a write the hub has not received yet
    /// starts after that write, as it would on etcd.
    #[tokio::test]
    async fn a_watch_from_now_starts_after_writes_acknowledged_before_it() {
        use crate::history::HistoryLimits;
        use etcdgate_proto::mvccpb::event::EventType;
        let hub = Arc::new(Hub::new(KeyRange::prefix(b"/a/"), HistoryLimits::default()));
        hub.reset(Vec::new(), ResponseHeader { revision: 10, ..Default::default() });
        hub.expect(12);
        let create = WatchCreateRequest { key: b"/a/".to_vec(), range_end: b"/a0".to_vec(), progress_notify: true, ..Default::default() };
        let (mut watcher, created) = Watcher::create(&hub, 1, &create, 1 << 20).unwrap();
        assert_eq!(created.header.map(|h| h.revision), Some(12), "created at the acknowledged write");
        assert_eq!(watcher.progress().and_then(|p| p.header).map(|h| h.revision), Some(12), "progress never goes below it");
        for revision in [11, 12, 13] {
            let kv = KeyValue { key: b"/a/k".to_vec(), mod_revision: revision, ..Default::default() };
            let header = ResponseHeader { revision, ..Default::default() };
            hub.apply(vec![Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: None }], header);
        }
        let sent = watcher.next().await.into_message();
        let revisions: Vec<i64> = sent.events.iter().filter_map(|e| e.kv.as_ref()).map(|kv| kv.mod_revision).collect();
        assert_eq!(revisions, [13], "{sent:?}");
    }
}
