//! Key ranges as etcd spells them: `key` alone is one key; `key` with `range_end` is
//! `[key, range_end)`; a `range_end` of a single zero byte means "every key from `key` on"
//! (and `key` = `range_end` = `"\0"` the whole keyspace).

use etcdgate_proto::mvccpb::Event;

/// `[start, end)` in etcd's spelling (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
}

/// The first key after every key that starts with `prefix` (`"\0"`: none, to the end).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl KeyRange {
    pub fn new(start: &[u8], end: &[u8]) -> KeyRange {
        KeyRange { start: start.to_vec(), end: end.to_vec() }
    }

    /// Every key that starts with `prefix` (`""`: the whole keyspace, which etcd spells
    /// `"\0"`..`"\0"`; see [`KeyRange::request_key`]).
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        KeyRange { start: prefix.to_vec(), end: prefix_end(prefix) }
    }

    /// `start` as a request's `key` (an empty start is the whole keyspace's `"\0"`).
    pub fn request_key(&self) -> Vec<u8> {
        if self.start.is_empty() {
            vec![0]
        } else {
            self.start.clone()
        }
    }

    /// Whether the range ends at or before its start, so holds no key (etcd refuses to watch
    /// it: `mvcc: watcher range is empty`).
    pub fn is_empty(&self) -> bool {
        !self.is_single_key() && !self.open_ended() && self.start >= self.end
    }

    fn is_single_key(&self) -> bool {
        self.end.is_empty()
    }

    fn open_ended(&self) -> bool {
        self.end == [0]
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        if self.is_single_key() {
            return key == self.start.as_slice();
        }
        key >= self.start.as_slice() && (self.open_ended() || key < self.end.as_slice())
    }

    /// Whether `event`'s key is in this range.
    pub fn contains_event(&self, event: &Event) -> bool {
        event.kv.as_ref().is_some_and(|kv| self.contains(&kv.key))
    }

    /// Whether every key of `other` is in this range.
    pub fn covers(&self, other: &KeyRange) -> bool {
        if other.is_single_key() {
            return self.contains(&other.start);
        }
        if other.start < self.start {
            return false;
        }
        if self.open_ended() {
            return true;
        }
        !other.open_ended() && other.end <= self.end
    }

    /// The keys of `keys` (a sorted map) in this range.
    pub fn of<'a, V>(&self, keys: &'a std::collections::BTreeMap<Vec<u8>, V>) -> Box<dyn DoubleEndedIterator<Item = (&'a Vec<u8>, &'a V)> + 'a> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        if self.is_single_key() {
            return Box::new(keys.get_key_value(&self.start).into_iter());
        }
        if !self.open_ended() && self.end <= self.start {
            return Box::new(std::iter::empty());
        }
        let end = if self.open_ended() { Unbounded } else { Excluded(self.end.clone()) };
        Box::new(keys.range((Included(self.start.clone()), end)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_coverage() {
        assert_eq!(prefix_end(b"/apisix"), b"/apisiy");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        let apisix = KeyRange::prefix(b"/apisix");
        assert!(apisix.covers(&KeyRange::new(b"/apisix", b"/apisiy")), "APISIX's full read");
        assert!(apisix.covers(&KeyRange::new(b"/apisix/", b"/apisix0")), "APISIX's watch");
        assert!(apisix.covers(&KeyRange::new(b"/apisix/routes/1", b"")));
        assert!(!apisix.covers(&KeyRange::new(b"/apisix", b"\0")));
        assert!(!apisix.covers(&KeyRange::new(b"/apis", b"/apisix0")));
        assert!(!apisix.covers(&KeyRange::new(b"/other", b"")));
        let all = KeyRange::prefix(b"");
        assert!(all.covers(&KeyRange::new(b"\0", b"\0")));
        assert!(all.covers(&KeyRange::new(b"a", b"\0")));
        assert!(all.contains(b"anything"));
        assert!(!KeyRange::new(b"b", b"a").contains(b"b"));
    }
}
