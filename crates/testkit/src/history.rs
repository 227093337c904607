//! etcd's recorded history, and the checks of what clients saw against it.
//!
//! [`History::read`] asks one member directly for every event between two revisions (a watch
//! of the whole key space from the first, read until the event at the last arrives). The
//! checks compare client records with it:
//!
//! - [`check_watch`]: a watch got exactly the events of its range from its start revision, in
//!   order, no gap, no duplicate, nothing etcd did not record; a watch that ended early (a
//!   cancel, an error) must hold a gap-free prefix of them.
//! - [`check_writes`]: every write was applied at most once (its value carries its sequence
//!   number), and every acknowledged write exactly once, at the revision it was acknowledged
//!   with; every event in the writer's range comes from one of its writes.
//! - [`check_revisions`]: the header revisions one client saw never went backwards.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use anyhow::{bail, Context};
use etcdgate_proto::etcdserverpb::{watch_client::WatchClient, watch_request::RequestUnion, WatchCreateRequest, WatchRequest};
use etcdgate_proto::mvccpb;
use tokio_stream::wrappers::ReceiverStream;

use crate::grpc::endpoint;
use crate::workload::schema::seq_of;

/// Longest time [`History::read`] waits for the member's answer.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest watch message accepted (etcd sends a catch-up batch as one message).
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Put,
    Delete,
}

/// One event: what etcd recorded at `revision` for `key` (`value` is empty for a delete).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Event {
    pub revision: i64,
    pub key: Vec<u8>,
    pub kind: EventKind,
    pub value: Vec<u8>,
}

impl Event {
    /// From etcd's wire form; `None` for an event without a key-value (never sent by etcd).
    pub fn from_proto(event: &mvccpb::Event) -> Option<Event> {
        let kv = event.kv.as_ref()?;
        let kind = if event.r#type == mvccpb::event::EventType::Delete as i32 { EventKind::Delete } else { EventKind::Put };
        Some(Event { revision: kv.mod_revision, key: kv.key.clone(), kind, value: kv.value.clone() })
    }

    fn id(&self) -> (i64, &[u8]) {
        (self.revision, &self.key)
    }
}

/// The header of one response a client got: its revision, and the member that answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub revision: i64,
    pub member_id: u64,
}

impl Header {
    /// From etcd's wire form (a missing header reads as zeros).
    pub fn from_proto(header: Option<&etcdgate_proto::etcdserverpb::ResponseHeader>) -> Header {
        header.map_or(Header { revision: 0, member_id: 0 }, |h| Header { revision: h.revision, member_id: h.member_id })
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (member {:x})", self.revision, self.member_id)
    }
}

/// Whether `key` is in etcd's range `[start, end)` (`end` empty: just `start`; `end` = `\0`:
/// everything from `start` on).
pub fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        _ => key >= start && key < end,
    }
}

/// Every event etcd recorded from `from_revision` to `to_revision`, in revision order.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub from_revision: i64,
    pub to_revision: i64,
    pub events: Vec<Event>,
}

impl History {
    /// Reads the events of revisions `from_revision..=to_revision` from the member at
    /// `member_url` directly. They must not be compacted yet.
    pub async fn read(member_url: &str, from_revision: i64, to_revision: i64) -> anyhow::Result<History> {
        let mut history = History { from_revision, to_revision, events: Vec::new() };
        if to_revision < from_revision {
            return Ok(history);
        }
        let channel = endpoint(member_url, READ_TIMEOUT)?.connect().await.with_context(|| format!("connect {member_url}"))?;
        let mut watch = WatchClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let (requests, receiver) = tokio::sync::mpsc::channel(1);
        // The whole key space: every revision has at least one event in it, so the event at
        // `to_revision` arrives and marks the end.
        let create = WatchCreateRequest { key: vec![0], range_end: vec![0], start_revision: from_revision, ..Default::default() };
        requests.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await?;
        let read = async {
            let mut responses = watch.watch(ReceiverStream::new(receiver)).await?.into_inner();
            while let Some(response) = responses.message().await? {
                if response.canceled {
                    bail!("history watch from revision {from_revision} cancelled: {:?} (compact revision {})", response.cancel_reason, response.compact_revision);
                }
                // A revision's events (a transaction's) come in one message.
                let mut reached_end = false;
                for event in response.events.iter().filter_map(Event::from_proto) {
                    reached_end |= event.revision >= to_revision;
                    if event.revision <= to_revision {
                        history.events.push(event);
                    }
                }
                if reached_end {
                    return Ok(());
                }
            }
            bail!("history watch ended before revision {to_revision}")
        };
        tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .map_err(|_| anyhow::anyhow!("history up to revision {to_revision} not read within {READ_TIMEOUT:?}"))?
            .with_context(|| format!("read history {from_revision}..={to_revision} from {member_url}"))?;
        drop(requests);
        Ok(history)
    }

    /// The events of keys in `[key, range_end)` at `from_revision` or later, in order.
    pub fn range<'a>(&'a self, key: &'a [u8], range_end: &'a [u8], from_revision: i64) -> impl Iterator<Item = &'a Event> + 'a {
        self.events.iter().filter(move |e| e.revision >= from_revision && in_range(&e.key, key, range_end))
    }
}

/// Something a client saw that etcd's history contradicts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A watch lacks events of its range that etcd recorded (`count` of them; the first one
    /// at `first_revision` on `first_key`).
    MissingEvents { client: String, count: usize, first_revision: i64, first_key: String },
    /// A watch got the same event twice.
    DuplicateEvent { client: String, revision: i64, key: String },
    /// A watch got an event after one that etcd recorded later.
    OutOfOrder { client: String, revision: i64, after_revision: i64 },
    /// A watch got an event etcd did not record for its range from its start revision (or
    /// recorded differently).
    UnknownEvent { client: String, revision: i64, key: String },
    /// A client saw a header revision lower than one it had seen before (`from` is the
    /// highest before, `to` the lower one; each with the member that answered).
    RevisionWentBack { client: String, from: Header, to: Header },
    /// One write shows up more than once in etcd's history.
    AppliedTwice { seq: u64, revisions: Vec<i64> },
    /// A write was acknowledged but etcd has no record of it.
    AcknowledgedButMissing { seq: u64, revision: i64 },
    /// A write was acknowledged with another revision than etcd recorded for it.
    WrongRevision { seq: u64, acknowledged: i64, recorded: i64 },
    /// An event in the writer's range that no write of the writer explains.
    UnexplainedEvent { revision: i64, key: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::MissingEvents { client, count, first_revision, first_key } => {
                write!(f, "{client}: {count} event(s) missing, the first at revision {first_revision} ({first_key})")
            }
            Problem::DuplicateEvent { client, revision, key } => write!(f, "{client}: event at revision {revision} ({key}) received twice"),
            Problem::OutOfOrder { client, revision, after_revision } => {
                write!(f, "{client}: event at revision {revision} received after the one at {after_revision}")
            }
            Problem::UnknownEvent { client, revision, key } => {
                write!(f, "{client}: event at revision {revision} ({key}) is not in etcd's history of its range")
            }
            Problem::RevisionWentBack { client, from, to } => {
                write!(f, "{client}: header revision went back from {from} to {to}")
            }
            Problem::AppliedTwice { seq, revisions } => write!(f, "write {seq} applied more than once, at revisions {revisions:?}"),
            Problem::AcknowledgedButMissing { seq, revision } => {
                write!(f, "write {seq} acknowledged at revision {revision} but not in etcd's history")
            }
            Problem::WrongRevision { seq, acknowledged, recorded } => {
                write!(f, "write {seq} acknowledged at revision {acknowledged}, recorded at {recorded}")
            }
            Problem::UnexplainedEvent { revision, key } => write!(f, "event at revision {revision} ({key}) comes from no write of the writer"),
        }
    }
}

fn printable(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// What one watch received from `start_revision` on, until it ended or the run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSegment {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub start_revision: i64,
    pub events: Vec<Event>,
    /// Still open when the run ended: it must then hold every event of its range up to the
    /// history's end. One that ended early (cancel, error) must hold a prefix of them.
    pub open_at_end: bool,
}

/// Checks one watch against the history; returns its problems and how many received events
/// matched etcd's record.
pub fn check_watch(history: &History, client: &str, watch: &WatchSegment) -> (Vec<Problem>, usize) {
    let expected: Vec<&Event> = history.range(&watch.key, &watch.range_end, watch.start_revision).collect();
    let position: HashMap<(i64, &[u8]), usize> = expected.iter().enumerate().map(|(i, e)| (e.id(), i)).collect();
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    let mut furthest: Option<usize> = None;
    let mut matched = 0;
    for event in &watch.events {
        let key = printable(&event.key);
        let Some(&i) = position.get(&event.id()).filter(|&&i| *expected[i] == *event) else {
            problems.push(Problem::UnknownEvent { client: client.to_string(), revision: event.revision, key });
            continue;
        };
        if !seen.insert(i) {
            problems.push(Problem::DuplicateEvent { client: client.to_string(), revision: event.revision, key });
            continue;
        }
        if let Some(before) = furthest.filter(|&f| i < f) {
            problems.push(Problem::OutOfOrder { client: client.to_string(), revision: event.revision, after_revision: expected[before].revision });
        }
        furthest = furthest.max(Some(i));
        matched += 1;
    }
    let due = if watch.open_at_end { expected.len() } else { furthest.map_or(0, |f| f + 1) };
    let missing: Vec<&&Event> = expected[..due].iter().enumerate().filter(|(i, _)| !seen.contains(i)).map(|(_, e)| e).collect();
    if let Some(first) = missing.first() {
        problems.push(Problem::MissingEvents {
            client: client.to_string(),
            count: missing.len(),
            first_revision: first.revision,
            first_key: printable(&first.key),
        });
    }
    (problems, matched)
}

/// Checks that `headers` (one client's response headers, in the order it got them) never
/// go back in revision; reports the first time they do.
pub fn check_revisions(client: &str, headers: &[Header]) -> Option<Problem> {
    let mut highest: Option<Header> = None;
    for &header in headers {
        match highest {
            Some(before) if header.revision < before.revision => {
                return Some(Problem::RevisionWentBack { client: client.to_string(), from: before, to: header });
            }
            _ => highest = Some(header),
        }
    }
    None
}

/// One write the writer issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// A put whose value carries `seq` (see [`crate::workload::schema::value`]).
    Put { key: Vec<u8>, value: Vec<u8> },
    /// A delete of one key. The writer deletes a key at most once and never puts it again,
    /// so a delete event on that key can only come from this write.
    Delete { key: Vec<u8> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Acknowledged at `revision`; `deleted` keys for a delete (0 or 1).
    Ok { revision: i64, deleted: i64 },
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub seq: u64,
    pub op: WriteOp,
    pub outcome: WriteOutcome,
}

/// What [`check_writes`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteCheck {
    pub problems: Vec<Problem>,
    pub ok: usize,
    pub failed: usize,
    /// Writes that returned an error but were applied (once): allowed, etcd does it too.
    pub failed_but_applied: usize,
}

/// Checks the writer's writes against the history of its range `[key, range_end)`.
pub fn check_writes(history: &History, key: &[u8], range_end: &[u8], writes: &[Write]) -> WriteCheck {
    let mut puts: HashMap<u64, Vec<&Event>> = HashMap::new();
    let mut deletes: HashMap<&[u8], Vec<&Event>> = HashMap::new();
    let mut explained: HashSet<(i64, &[u8])> = HashSet::new();
    for event in history.range(key, range_end, history.from_revision) {
        match event.kind {
            EventKind::Put => {
                if let Some(seq) = seq_of(&event.value) {
                    puts.entry(seq).or_default().push(event);
                }
            }
            EventKind::Delete => deletes.entry(&event.key).or_default().push(event),
        }
    }
    let mut check = WriteCheck::default();
    for write in writes {
        let applied: Vec<&Event> = match &write.op {
            WriteOp::Put { key, value } => {
                puts.get(&write.seq).into_iter().flatten().filter(|e| e.key == *key && e.value == *value).copied().collect()
            }
            WriteOp::Delete { key } => deletes.get(key.as_slice()).cloned().unwrap_or_default(),
        };
        explained.extend(applied.iter().map(|e| e.id()));
        let revisions: Vec<i64> = applied.iter().map(|e| e.revision).collect();
        if revisions.len() > 1 {
            check.problems.push(Problem::AppliedTwice { seq: write.seq, revisions: revisions.clone() });
        }
        match &write.outcome {
            WriteOutcome::Ok { revision, deleted } => {
                check.ok += 1;
                let expect_event = !matches!(write.op, WriteOp::Delete { .. }) || *deleted > 0;
                match revisions.first() {
                    None if expect_event => check.problems.push(Problem::AcknowledgedButMissing { seq: write.seq, revision: *revision }),
                    Some(&recorded) if !expect_event || recorded != *revision => {
                        check.problems.push(Problem::WrongRevision { seq: write.seq, acknowledged: *revision, recorded })
                    }
                    _ => {}
                }
            }
            WriteOutcome::Failed(_) => {
                check.failed += 1;
                if !revisions.is_empty() {
                    check.failed_but_applied += 1;
                }
            }
        }
    }
    for event in history.range(key, range_end, history.from_revision) {
        if !explained.contains(&event.id()) {
            check.problems.push(Problem::UnexplainedEvent { revision: event.revision, key: printable(&event.key) });
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::schema::value;

    fn put(revision: i64, key: &str, seq: u64) -> Event {
        Event { revision, key: key.as_bytes().to_vec(), kind: EventKind::Put, value: value("routes", 1, seq) }
    }

    fn delete(revision: i64, key: &str) -> Event {
        Event { revision, key: key.as_bytes().to_vec(), kind: EventKind::Delete, value: Vec::new() }
    }

    /// Revisions 10..=15 under /apisix/, plus one event outside it.
    fn history() -> History {
        History {
            from_revision: 10,
            to_revision: 16,
            events: vec![
                put(10, "/apisix/routes/1", 1),
                put(11, "/apisix/routes/2", 2),
                put(12, "/apisix/services/1", 3),
                delete(13, "/apisix/routes/1"),
                put(14, "/apisix/routes/2", 5),
                put(15, "/other", 6),
                put(16, "/apisix/routes/3", 7),
            ],
        }
    }

    fn watch(events: Vec<Event>, start_revision: i64, open_at_end: bool) -> WatchSegment {
        WatchSegment { key: b"/apisix/routes/".to_vec(), range_end: b"/apisix/routes0".to_vec(), start_revision, events, open_at_end }
    }

    fn routes_from(revision: i64) -> Vec<Event> {
        history().range(b"/apisix/routes/", b"/apisix/routes0", revision).cloned().collect()
    }

    #[test]
    fn a_complete_watch_passes() {
        let (problems, matched) = check_watch(&history(), "w", &watch(routes_from(11), 11, true));
        assert_eq!(problems, vec![]);
        assert_eq!(matched, 4);
    }

    #[test]
    fn a_gap_is_reported() {
        let mut events = routes_from(10);
        events.remove(1);
        let (problems, _) = check_watch(&history(), "w", &watch(events, 10, true));
        assert_eq!(problems, vec![Problem::MissingEvents { client: "w".into(), count: 1, first_revision: 11, first_key: "/apisix/routes/2".into() }]);
    }

    #[test]
    fn missing_events_at_the_end_count_only_for_watches_open_at_the_end() {
        let mut events = routes_from(10);
        events.truncate(2);
        let (problems, _) = check_watch(&history(), "w", &watch(events.clone(), 10, true));
        assert!(matches!(&problems[..], [Problem::MissingEvents { count: 3, first_revision: 13, .. }]), "{problems:?}");
        let (problems, _) = check_watch(&history(), "w", &watch(events, 10, false));
        assert_eq!(problems, vec![], "a cancelled watch holds a prefix");
    }

    #[test]
    fn a_duplicate_is_reported() {
        let mut events = routes_from(10);
        events.insert(2, events[1].clone());
        let (problems, matched) = check_watch(&history(), "w", &watch(events, 10, true));
        assert_eq!(problems, vec![Problem::DuplicateEvent { client: "w".into(), revision: 11, key: "/apisix/routes/2".into() }]);
        assert_eq!(matched, 5);
    }

    #[test]
    fn reordering_is_reported() {
        let mut events = routes_from(10);
        events.swap(1, 2);
        let (problems, _) = check_watch(&history(), "w", &watch(events, 10, true));
        assert_eq!(problems, vec![Problem::OutOfOrder { client: "w".into(), revision: 11, after_revision: 13 }]);
    }

    #[test]
    fn events_etcd_did_not_record_are_reported() {
        let mut events = routes_from(11);
        // Before the start revision, outside the range, and a changed value.
        events.insert(0, put(10, "/apisix/routes/1", 1));
        events.push(put(12, "/apisix/services/1", 3));
        events.push(put(14, "/apisix/routes/2", 99));
        let (problems, matched) = check_watch(&history(), "w", &watch(events, 11, true));
        let unknown: Vec<i64> = problems
            .iter()
            .map(|p| match p {
                Problem::UnknownEvent { revision, .. } => *revision,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(unknown, vec![10, 12, 14]);
        assert_eq!(matched, 4);
    }

    #[test]
    fn revisions_going_back_are_reported() {
        let headers = |revisions: &[i64]| -> Vec<Header> {
            revisions.iter().enumerate().map(|(i, &revision)| Header { revision, member_id: i as u64 }).collect()
        };
        assert_eq!(check_revisions("c", &headers(&[1, 2, 2, 5, 9])), None);
        assert_eq!(
            check_revisions("c", &headers(&[1, 5, 4, 6])),
            Some(Problem::RevisionWentBack {
                client: "c".into(),
                from: Header { revision: 5, member_id: 1 },
                to: Header { revision: 4, member_id: 2 }
            })
        );
    }

    fn put_op(key: &str, seq: u64) -> WriteOp {
        WriteOp::Put { key: key.as_bytes().to_vec(), value: value("routes", 1, seq) }
    }

    fn ok(revision: i64) -> WriteOutcome {
        WriteOutcome::Ok { revision, deleted: 0 }
    }

    fn writes() -> Vec<Write> {
        vec![
            Write { seq: 1, op: put_op("/apisix/routes/1", 1), outcome: ok(10) },
            Write { seq: 2, op: put_op("/apisix/routes/2", 2), outcome: ok(11) },
            Write { seq: 3, op: put_op("/apisix/services/1", 3), outcome: WriteOutcome::Failed("timeout".into()) },
            Write { seq: 4, op: WriteOp::Delete { key: b"/apisix/routes/1".to_vec() }, outcome: WriteOutcome::Ok { revision: 13, deleted: 1 } },
            Write { seq: 5, op: put_op("/apisix/routes/2", 5), outcome: ok(14) },
            Write { seq: 6, op: put_op("/apisix/routes/4", 6), outcome: WriteOutcome::Failed("refused".into()) },
            Write { seq: 7, op: put_op("/apisix/routes/3", 7), outcome: ok(16) },
        ]
    }

    #[test]
    fn writes_that_match_the_history_pass() {
        let check = check_writes(&history(), b"/apisix/", b"/apisix0", &writes());
        assert_eq!(check, WriteCheck { problems: vec![], ok: 5, failed: 2, failed_but_applied: 1 });
    }

    #[test]
    fn a_write_applied_twice_is_reported() {
        let mut history = history();
        history.events.push(put(17, "/apisix/routes/2", 5));
        history.to_revision = 17;
        let check = check_writes(&history, b"/apisix/", b"/apisix0", &writes());
        assert_eq!(check.problems, vec![Problem::AppliedTwice { seq: 5, revisions: vec![14, 17] }]);
    }

    #[test]
    fn a_failed_write_applied_twice_is_reported() {
        let mut history = history();
        history.events.push(put(17, "/apisix/services/1", 3));
        let check = check_writes(&history, b"/apisix/", b"/apisix0", &writes());
        assert_eq!(check.problems, vec![Problem::AppliedTwice { seq: 3, revisions: vec![12, 17] }]);
    }

    #[test]
    fn lost_and_misplaced_acknowledged_writes_are_reported() {
        let mut history = history();
        history.events.retain(|e| e.revision != 11);
        let mut writes = writes();
        writes[4].outcome = ok(15);
        let check = check_writes(&history, b"/apisix/", b"/apisix0", &writes);
        assert_eq!(
            check.problems,
            vec![Problem::AcknowledgedButMissing { seq: 2, revision: 11 }, Problem::WrongRevision { seq: 5, acknowledged: 15, recorded: 14 }]
        );
    }

    #[test]
    fn events_no_write_explains_are_reported() {
        let mut history = history();
        history.events.push(put(17, "/apisix/routes/9", 42));
        history.events.push(delete(18, "/apisix/routes/3"));
        let check = check_writes(&history, b"/apisix/", b"/apisix0", &writes());
        assert_eq!(
            check.problems,
            vec![
                Problem::UnexplainedEvent { revision: 17, key: "/apisix/routes/9".into() },
                Problem::UnexplainedEvent { revision: 18, key: "/apisix/routes/3".into() }
            ]
        );
    }

    #[test]
    fn ranges_follow_etcd() {
        assert!(in_range(b"a", b"a", b""));
        assert!(!in_range(b"ab", b"a", b""));
        assert!(in_range(b"zzz", b"a", b"\0"));
        assert!(in_range(b"/apisix/x", b"/apisix/", b"/apisix0"));
        assert!(!in_range(b"/apisix0", b"/apisix/", b"/apisix0"));
    }
}
