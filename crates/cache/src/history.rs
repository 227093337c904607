//! The event history of one cached prefix: every event after a revision, grouped by
//! revision (the events of one transaction stay together), each with its previous value,
//! bounded by a number of events and of bytes. When the bounds are reached the oldest
//! revisions go, and the history then starts later; it never has holes.
//!
//! For each key whose events went, the history remembers the revision of the last one that
//! went (a bounded map), so that a watch positioned before the start is canceled only if an
//! event *of its keys* is gone — where etcd cancels every watch behind its compaction.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::keys::KeyRange;
use crate::reply::Batch;

use etcdgate_proto::mvccpb::{event::EventType, Event, KeyValue};

/// Bounds of one prefix's history.
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits { max_events: 100_000, max_bytes: 64 << 20 }
    }
}

/// Keys remembered with the revision of their last event that went, at most.
const MAX_GONE_KEYS: usize = 100_000;

#[derive(Debug)]
pub struct History {
    batches: VecDeque<Arc<Batch>>,
    /// Every event after this revision is here.
    complete_after: i64,
    /// Per key, the revision of its last event that went, for events after `gone_since`.
    gone: BTreeMap<Vec<u8>, i64>,
    /// `gone` knows every event that went after this revision.
    gone_since: i64,
    events: usize,
    bytes: usize,
    limits: HistoryLimits,
}

impl History {
    /// An empty history of a prefix read at `revision`.
    pub fn new(revision: i64, limits: HistoryLimits) -> History {
        History {
            batches: VecDeque::new(),
            complete_after: revision,
            gone: BTreeMap::new(),
            gone_since: revision,
            events: 0,
            bytes: 0,
            limits,
        }
    }

    /// Every event after this revision is in the history; a watch may start at this + 1.
    pub fn complete_after(&self) -> i64 {
        self.complete_after
    }

    pub fn len(&self) -> usize {
        self.events
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Oldest and newest revision held, if any.
    pub fn span(&self) -> Option<(i64, i64)> {
        Some((self.batches.front()?.revision, self.batches.back()?.revision))
    }

    /// Adds the events of `revision`, newer than everything held, dropping the oldest
    /// revisions beyond the limits (the newest revision always stays).
    pub fn push(&mut self, revision: i64, events: Vec<Event>) {
        let batch = Batch::new(revision, events);
        self.events += batch.events.len();
        self.bytes += batch.bytes;
        self.batches.push_back(Arc::new(batch));
        while self.batches.len() > 1 && (self.events > self.limits.max_events || self.bytes > self.limits.max_bytes) {
            let Some(oldest) = self.batches.pop_front() else { break };
            self.events -= oldest.events.len();
            self.bytes -= oldest.bytes;
            self.complete_after = oldest.revision;
            if self.gone.len() >= MAX_GONE_KEYS {
                self.gone.clear();
                self.gone_since = oldest.revision;
            } else {
                for kv in oldest.events.iter().filter_map(|e| e.kv.as_ref()) {
                    self.gone.insert(kv.key.clone(), oldest.revision);
                }
            }
        }
    }

    /// The batches from revision `from` on that may hold events of `keys`; `Err(compact_revision)`
    /// if an event of `keys` from `from` on is gone (a watch from `from` must then be canceled
    /// with that `compact_revision`).
    pub fn since(&self, from: i64, keys: &KeyRange) -> Result<impl Iterator<Item = &Arc<Batch>>, i64> {
        let from = if from <= self.complete_after {
            let lost = from <= self.gone_since || keys.of(&self.gone).any(|(_, revision)| *revision >= from);
            if lost {
                return Err(self.complete_after + 1);
            }
            self.complete_after + 1
        } else {
            from
        };
        let start = self.batches.partition_point(|b| b.revision < from);
        Ok(self.batches.range(start..))
    }

    /// What each key of `keys` with events after `revision` held at `revision` (`None`: it
    /// did not exist), undone from the first such event: its previous value, or nothing
    /// before a create. `None` if the history cannot tell: an event of those keys after
    /// `revision` has gone, or lacks its previous value.
    pub fn earlier(&self, revision: i64, keys: &KeyRange) -> Option<BTreeMap<Vec<u8>, Option<KeyValue>>> {
        let mut earlier = BTreeMap::new();
        for batch in self.since(revision + 1, keys).ok()? {
            for event in &batch.events {
                let Some(kv) = event.kv.as_ref().filter(|kv| keys.contains(&kv.key)) else { continue };
                if earlier.contains_key(&kv.key) {
                    continue;
                }
                let created = event.r#type == EventType::Put as i32 && kv.version == 1;
                let held = if created { None } else { Some(event.prev_kv.clone()?) };
                earlier.insert(kv.key.clone(), held);
            }
        }
        Some(earlier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(revision: i64) -> Event {
        keyed(b"k", revision)
    }

    fn keyed(key: &[u8], revision: i64) -> Event {
        Event { kv: Some(KeyValue { key: key.to_vec(), mod_revision: revision, ..Default::default() }), ..Default::default() }
    }

    fn all() -> KeyRange {
        KeyRange::prefix(b"")
    }

    #[test]
    fn bounded_by_events_and_starting_later_when_full() {
        let mut h = History::new(10, HistoryLimits { max_events: 3, max_bytes: 1 << 20 });
        assert_eq!(h.since_all(10).err(), Some(11), "before the start: compacted at the first revision held");
        assert_eq!(h.since_all(11).unwrap().count(), 0);
        h.push(11, vec![event(11), event(11)]);
        h.push(12, vec![event(12)]);
        assert_eq!(h.since_all(11).unwrap().map(|b| b.revision).collect::<Vec<_>>(), [11, 12]);
        h.push(13, vec![event(13)]);
        assert_eq!(h.complete_after(), 11, "revision 11 went as a whole");
        assert_eq!(h.since_all(11).err(), Some(12));
        assert_eq!(h.since_all(12).unwrap().map(|b| b.revision).collect::<Vec<_>>(), [12, 13]);
        assert_eq!(h.since_all(13).unwrap().count(), 1);
        assert_eq!(h.since_all(20).unwrap().count(), 0, "a future revision: nothing yet");
        assert_eq!((h.len(), h.span()), (2, Some((12, 13))));
    }

    impl History {
        fn since_all(&self, from: i64) -> Result<impl Iterator<Item = &Arc<Batch>>, i64> {
            self.since(from, &all())
        }
    }

    #[test]
    fn a_watch_behind_the_start_goes_on_if_none_of_its_events_went() {
        let mut h = History::new(10, HistoryLimits { max_events: 2, max_bytes: 1 << 20 });
        h.push(11, vec![keyed(b"a", 11)]);
        h.push(12, vec![keyed(b"b", 12)]);
        h.push(13, vec![keyed(b"b", 13)]);
        assert_eq!(h.complete_after(), 11);
        let b = KeyRange::new(b"b", b"");
        assert_eq!(h.since(11, &b).unwrap().map(|x| x.revision).collect::<Vec<_>>(), [12, 13], "only a's event went");
        assert_eq!(h.since(11, &KeyRange::new(b"a", b"")).err(), Some(12));
        assert_eq!(h.since(10, &b).err(), Some(12), "before the history ever started: unknown");
    }

    #[test]
    fn bounded_by_bytes_but_never_empty() {
        let mut h = History::new(0, HistoryLimits { max_events: 100, max_bytes: 1 });
        h.push(1, vec![event(1)]);
        h.push(2, vec![event(2)]);
        assert_eq!(h.span(), Some((2, 2)));
        assert_eq!(h.complete_after(), 1);
    }
}
