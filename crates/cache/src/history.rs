//! The event history of one cached prefix: every event after a revision, grouped by
//! revision (the events of one transaction stay together), each with its previous value,
//! bounded by a number of events and of bytes. When the bounds are reached the oldest
//! revisions go, and the history then starts later; it never has holes.

use std::collections::VecDeque;

use etcdgate_proto::mvccpb::Event;
use prost::Message;

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

/// The events of one revision.
#[derive(Debug)]
pub struct Batch {
    pub revision: i64,
    pub events: Vec<Event>,
    bytes: usize,
}

#[derive(Debug)]
pub struct History {
    batches: VecDeque<Batch>,
    /// Every event after this revision is here.
    complete_after: i64,
    events: usize,
    bytes: usize,
    limits: HistoryLimits,
}

impl History {
    /// An empty history of a prefix read at `revision`.
    pub fn new(revision: i64, limits: HistoryLimits) -> History {
        History { batches: VecDeque::new(), complete_after: revision, events: 0, bytes: 0, limits }
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
        let bytes = events.iter().map(Message::encoded_len).sum::<usize>();
        self.events += events.len();
        self.bytes += bytes;
        self.batches.push_back(Batch { revision, events, bytes });
        while self.batches.len() > 1 && (self.events > self.limits.max_events || self.bytes > self.limits.max_bytes) {
            let Some(oldest) = self.batches.pop_front() else { break };
            self.events -= oldest.events.len();
            self.bytes -= oldest.bytes;
            self.complete_after = oldest.revision;
        }
    }

    /// The batches from revision `from` on; `Err(compact_revision)` if some of them are gone
    /// (a watch from `from` must then be canceled with that `compact_revision`).
    pub fn since(&self, from: i64) -> Result<impl Iterator<Item = &Batch>, i64> {
        if from <= self.complete_after {
            return Err(self.complete_after + 1);
        }
        let start = self.batches.partition_point(|b| b.revision < from);
        Ok(self.batches.range(start..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdgate_proto::mvccpb::KeyValue;

    fn event(revision: i64) -> Event {
        Event { kv: Some(KeyValue { key: b"k".to_vec(), mod_revision: revision, ..Default::default() }), ..Default::default() }
    }

    #[test]
    fn bounded_by_events_and_starting_later_when_full() {
        let mut h = History::new(10, HistoryLimits { max_events: 3, max_bytes: 1 << 20 });
        assert_eq!(h.since(10).err(), Some(11), "before the start: compacted at the first revision held");
        assert_eq!(h.since(11).unwrap().count(), 0);
        h.push(11, vec![event(11), event(11)]);
        h.push(12, vec![event(12)]);
        assert_eq!(h.since(11).unwrap().map(|b| b.revision).collect::<Vec<_>>(), [11, 12]);
        h.push(13, vec![event(13)]);
        assert_eq!(h.complete_after(), 11, "revision 11 went as a whole");
        assert_eq!(h.since(11).err(), Some(12));
        assert_eq!(h.since(12).unwrap().map(|b| b.revision).collect::<Vec<_>>(), [12, 13]);
        assert_eq!(h.since(13).unwrap().count(), 1);
        assert_eq!(h.since(20).unwrap().count(), 0, "a future revision: nothing yet");
        assert_eq!((h.len(), h.span()), (2, Some((12, 13))));
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
