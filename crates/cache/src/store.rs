//! The key-values of one cached prefix at one revision, and etcd's Range evaluated on them
//! with every option etcd has (limit and `more`, `count`, sort order and target, keys_only,
//! count_only, min/max mod and create revision), in the order etcd applies them.
//!
//! One thing etcd's answer does not settle: the order of keys that tie on a sort target
//! other than the key (the same version, value, create or mod revision). etcd sorts with
//! Go's `sort.Sort`, whose order of equal elements depends on the Go release etcd was built
//! with once more than [`STABLE_SORT_MAX`] are sorted (a shell-sort pass before Go 1.19,
//! pattern-defeating quicksort after). Such a Range is left to etcd.

use std::collections::BTreeMap;

use etcdgate_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcdgate_proto::etcdserverpb::{RangeRequest, RangeResponse};
use etcdgate_proto::mvccpb::{event::EventType, Event, KeyValue};

use crate::keys::KeyRange;

/// Up to this many key-values, every Go release's `sort.Sort` is an insertion sort, which
/// keeps equal elements in the order they came (key order).
const STABLE_SORT_MAX: usize = 6;

/// Current key-values and the revision they are at.
#[derive(Debug, Default)]
pub struct Store {
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    revision: i64,
}

impl Store {
    pub fn new(kvs: Vec<KeyValue>, revision: i64) -> Store {
        Store { kvs: kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect(), revision }
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn len(&self) -> usize {
        self.kvs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kvs.is_empty()
    }

    /// Applies the events of one revision.
    pub fn apply(&mut self, revision: i64, events: &[Event]) {
        for event in events {
            let Some(kv) = &event.kv else { continue };
            if event.r#type == EventType::Delete as i32 {
                self.kvs.remove(&kv.key);
            } else {
                self.kvs.insert(kv.key.clone(), kv.clone());
            }
        }
        self.revision = self.revision.max(revision);
    }

    /// Everything up to `revision` is known to be applied (a progress notification).
    pub fn advance(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    /// Whether some key is attached to `lease`.
    pub fn holds_lease(&self, lease: i64) -> bool {
        self.kvs.values().any(|kv| kv.lease == lease)
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        self.kvs.get(key)
    }

    /// etcd's Range on this store (the caller checks that the range is in the cached prefix
    /// and that `request.revision` is 0 or this store's); `None` if etcd's answer depends on
    /// how it was built (see the module doc). The header is left empty.
    pub fn range(&self, request: &RangeRequest) -> Option<RangeResponse> {
        let range = KeyRange::new(&request.key, &request.range_end);
        evaluate(|| range.of(&self.kvs).map(|(_, kv)| kv), request)
    }

    /// etcd's Range on what this store held at an earlier revision, given `earlier`: for
    /// each key with events since, what it held then (`None`: it did not exist; see
    /// `History::earlier`). As [`Store::range`] otherwise.
    pub fn range_earlier(&self, request: &RangeRequest, earlier: &BTreeMap<Vec<u8>, Option<KeyValue>>) -> Option<RangeResponse> {
        let range = KeyRange::new(&request.key, &request.range_end);
        let unchanged = range.of(&self.kvs).filter(|(key, _)| !earlier.contains_key(*key)).map(|(_, kv)| kv);
        let mut kvs: Vec<&KeyValue> = unchanged.chain(range.of(earlier).filter_map(|(_, kv)| kv.as_ref())).collect();
        kvs.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        evaluate(|| kvs.iter().copied(), request)
    }
}

/// etcd's Range options applied to the key-values `selected` yields (in key order), in the
/// order etcd applies them; `None` for a sort whose order etcd leaves to its Go release.
fn evaluate<'a, I: Iterator<Item = &'a KeyValue>>(selected: impl Fn() -> I, request: &RangeRequest) -> Option<RangeResponse> {
    let count = selected().count() as i64;
    if request.count_only {
        return Some(RangeResponse { count, ..Default::default() });
    }
    let mut selected = selected();
    let sort_order = SortOrder::try_from(request.sort_order).unwrap_or(SortOrder::None);
    let sort_target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
    let filtered = request.min_mod_revision != 0
        || request.max_mod_revision != 0
        || request.min_create_revision != 0
        || request.max_create_revision != 0;
    // As etcd: without sorting or filters only limit + 1 keys are read ("more" is then
    // whether there was one more); otherwise everything, then sorted and cut.
    let limit = usize::try_from(request.limit).unwrap_or(0);
    let mut kvs: Vec<&KeyValue> =
        if limit > 0 && sort_order == SortOrder::None && !filtered { selected.by_ref().take(limit + 1).collect() } else { selected.collect() };
    kvs.retain(|kv| {
        (request.max_mod_revision == 0 || kv.mod_revision <= request.max_mod_revision)
            && (request.min_mod_revision == 0 || kv.mod_revision >= request.min_mod_revision)
            && (request.min_create_revision == 0 || kv.create_revision >= request.min_create_revision)
            && (request.max_create_revision == 0 || kv.create_revision <= request.max_create_revision)
    });
    let sort_order = if sort_target != SortTarget::Key && sort_order == SortOrder::None { SortOrder::Ascend } else { sort_order };
    if sort_order != SortOrder::None {
        let key = |kv: &KeyValue| -> (i64, Vec<u8>) {
            match sort_target {
                SortTarget::Key => (0, kv.key.clone()),
                SortTarget::Version => (kv.version, Vec::new()),
                SortTarget::Create => (kv.create_revision, Vec::new()),
                SortTarget::Mod => (kv.mod_revision, Vec::new()),
                SortTarget::Value => (0, kv.value.clone()),
            }
        };
        kvs.sort_by_cached_key(|kv| key(kv));
        if kvs.len() > STABLE_SORT_MAX && kvs.windows(2).any(|pair| key(pair[0]) == key(pair[1])) {
            return None;
        }
        if sort_order == SortOrder::Descend {
            // etcd sorts with the comparison reversed: equal keys keep their order.
            kvs.reverse();
            reverse_runs_of_equal(&mut kvs, |kv| key(kv));
        }
    }
    let more = limit > 0 && kvs.len() > limit;
    if more {
        kvs.truncate(limit);
    }
    let kvs = kvs
        .into_iter()
        .map(|kv| if request.keys_only { KeyValue { value: Vec::new(), ..kv.clone() } } else { kv.clone() })
        .collect();
    Some(RangeResponse { kvs, more, count, ..Default::default() })
}

/// After reversing a sorted list, puts each run of equal sort keys back in its original order.
fn reverse_runs_of_equal<T, K: PartialEq>(items: &mut [T], key: impl Fn(&T) -> K) {
    let mut start = 0;
    while start < items.len() {
        let run_key = key(&items[start]);
        let mut end = start + 1;
        while end < items.len() && key(&items[end]) == run_key {
            end += 1;
        }
        items[start..end].reverse();
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, create: i64, modified: i64, version: i64, value: &str) -> KeyValue {
        KeyValue { key: key.into(), create_revision: create, mod_revision: modified, version, value: value.into(), lease: 0 }
    }

    fn store() -> Store {
        Store::new(vec![kv("a", 2, 5, 2, "z"), kv("b", 3, 3, 1, "y"), kv("c", 4, 6, 2, "x")], 6)
    }

    fn range(store: &Store, request: &RangeRequest) -> RangeResponse {
        store.range(request).expect("answered")
    }

    fn keys(response: &RangeResponse) -> Vec<String> {
        response.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
    }

    #[test]
    fn ranges_limits_and_counts() {
        let s = store();
        let all = RangeRequest { key: b"a".to_vec(), range_end: b"\0".to_vec(), ..Default::default() };
        let r = range(&s, &all);
        assert_eq!((keys(&r), r.count, r.more), (vec!["a".into(), "b".into(), "c".into()], 3, false));
        let r = range(&s, &RangeRequest { limit: 2, ..all.clone() });
        assert_eq!((keys(&r), r.count, r.more), (vec!["a".into(), "b".into()], 3, true));
        let r = range(&s, &RangeRequest { count_only: true, ..all.clone() });
        assert_eq!((r.kvs.len(), r.count), (0, 3));
        let r = range(&s, &RangeRequest { keys_only: true, key: b"b".to_vec(), ..Default::default() });
        assert_eq!((keys(&r), r.kvs[0].value.len()), (vec!["b".into()], 0));
        let r = range(&s, &RangeRequest { key: b"c".to_vec(), range_end: b"a".to_vec(), ..Default::default() });
        assert_eq!((r.kvs.len(), r.count), (0, 0));
    }

    #[test]
    fn sorting_and_filters_like_etcd() {
        let s = store();
        let all = RangeRequest { key: b"a".to_vec(), range_end: b"d".to_vec(), ..Default::default() };
        let by = |target: SortTarget, order: SortOrder| {
            keys(&range(&s, &RangeRequest { sort_target: target as i32, sort_order: order as i32, ..all.clone() }))
        };
        assert_eq!(by(SortTarget::Value, SortOrder::None), ["c", "b", "a"], "a target other than key sorts ascending");
        assert_eq!(by(SortTarget::Key, SortOrder::Descend), ["c", "b", "a"]);
        assert_eq!(by(SortTarget::Mod, SortOrder::Descend), ["c", "a", "b"]);
        assert_eq!(by(SortTarget::Version, SortOrder::Ascend), ["b", "a", "c"]);
        assert_eq!(by(SortTarget::Version, SortOrder::Descend), ["a", "c", "b"], "ties keep key order");
        let r = range(&s, &RangeRequest { min_mod_revision: 5, limit: 1, ..all.clone() });
        assert_eq!((keys(&r), r.count, r.more), (vec!["a".into()], 3, true), "count is before filtering, as etcd's");
        let r = range(&s, &RangeRequest { max_create_revision: 3, min_create_revision: 3, ..all.clone() });
        assert_eq!(keys(&r), ["b"]);
    }

    #[test]
    fn ties_are_answered_only_where_every_go_release_sorts_them_alike() {
        let same_version = |n: i64| Store::new((0..n).map(|i| kv(&format!("k{i}"), 2, 2 + i, 1, "v")).collect(), 20);
        let by_version = |order: SortOrder| RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            sort_target: SortTarget::Version as i32,
            sort_order: order as i32,
            ..Default::default()
        };
        let six = same_version(6);
        assert_eq!(keys(&range(&six, &by_version(SortOrder::Ascend))), ["k0", "k1", "k2", "k3", "k4", "k5"]);
        assert_eq!(keys(&range(&six, &by_version(SortOrder::Descend))), ["k0", "k1", "k2", "k3", "k4", "k5"]);
        let seven = same_version(7);
        assert!(seven.range(&by_version(SortOrder::Descend)).is_none(), "seven ties: Go's order depends on its release");
        assert!(seven.range(&RangeRequest { count_only: true, ..by_version(SortOrder::Descend) }).is_some(), "nothing sorted");
        let by_mod = RangeRequest { sort_target: SortTarget::Mod as i32, ..by_version(SortOrder::Descend) };
        assert_eq!(keys(&range(&seven, &by_mod))[0], "k6", "no ties");
    }

    #[test]
    fn events_are_applied() {
        let mut s = store();
        let put = Event { r#type: EventType::Put as i32, kv: Some(kv("d", 7, 7, 1, "w")), prev_kv: None };
        let delete = Event { r#type: EventType::Delete as i32, kv: Some(KeyValue { key: b"a".to_vec(), mod_revision: 7, ..Default::default() }), prev_kv: None };
        s.apply(7, &[put, delete]);
        assert_eq!(s.revision(), 7);
        assert!(s.get(b"a").is_none());
        assert_eq!(s.get(b"d").unwrap().value, b"w");
        s.advance(9);
        assert_eq!(s.revision(), 9);
    }
}
