//! What one cell's log says: throughput, errors and delivered watch events per time bucket;
//! client-visible errors by call and by cause; throughput before and during the fault; the
//! delay from sending a put to the delivery of its event to each watcher (p50/p99, by when
//! the put was sent; puts that failed are left out); the longest watch stall; events a
//! watcher never got.
//!
//! A watch *stall* is the time a watcher waited with something to deliver: at each delivery
//! to it (and at the end), the time since the oldest write that was acknowledged to the
//! writer but not yet delivered to this watcher was acknowledged. With a write every 20 ms,
//! anything much above that is a watcher that stopped hearing from etcd while writes went
//! on. (When the writer itself is stuck, nothing is acknowledged and nothing is pending:
//! that shows as put errors and a gap in deliveries, not as a stall.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use super::workload::{CallKind, Log};

/// Watchers stalled longer than this are counted as stalled.
pub const STALL_THRESHOLD: Duration = Duration::from_secs(1);
/// Length of the steady window before the fault that "before" figures come from (shorter if
/// the readers and the writer started later than that).
pub const BEFORE_WINDOW: Duration = Duration::from_secs(5);

/// When things happened in a cell, since its start.
#[derive(Clone, Copy, Debug)]
pub struct Phases {
    /// When the readers and the writer started.
    pub load_start: Duration,
    pub fault_at: Duration,
    /// When recovery began (restart, SIGCONT, heal).
    pub recover_at: Duration,
    /// When the readers and the writer stopped.
    pub load_end: Duration,
    /// When the watchers stopped.
    pub end: Duration,
}

impl Phases {
    fn before_from(&self) -> Duration {
        self.fault_at.saturating_sub(BEFORE_WINDOW).max(self.load_start).min(self.fault_at)
    }
}

/// Counts per time bucket.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub bucket: Duration,
    /// Successful reads and writes that finished in the bucket.
    pub ok: Vec<u32>,
    /// Failed calls (watches included) that finished in the bucket.
    pub errors: Vec<u32>,
    /// Watch events delivered in the bucket (all watchers).
    pub events: Vec<u32>,
}

impl Timeline {
    /// A count of one bucket as a rate per second.
    pub fn per_second(&self, count: u32) -> f64 {
        f64::from(count) / self.bucket.as_secs_f64()
    }
}

/// p50 and p99 of a set of delays.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Delays {
    pub count: usize,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

impl Delays {
    fn of(mut delays: Vec<Duration>) -> Delays {
        delays.sort_unstable();
        let at = |q: f64| (!delays.is_empty()).then(|| delays[((q * delays.len() as f64).ceil() as usize).clamp(1, delays.len()) - 1]);
        Delays { count: delays.len(), p50: at(0.50), p99: at(0.99) }
    }
}

/// Everything reported about one cell (besides the victim's traffic).
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    pub timeline: Timeline,
    /// Client-visible errors from the fault's start on, by call kind.
    pub errors: BTreeMap<CallKind, u64>,
    /// The same by cause, then by call kind.
    pub causes: BTreeMap<String, BTreeMap<CallKind, u64>>,
    /// Errors before the fault (not in `errors`), by cause.
    pub causes_before: BTreeMap<String, u64>,
    /// Successful reads and writes per second in the steady window before the fault.
    pub rps_before: f64,
    /// ... during the fault, on average...
    pub rps_fault: f64,
    /// ... and in its worst whole second.
    pub rps_fault_min: f64,
    /// Put-to-delivery delays of puts sent before the fault (steady window) and during it.
    pub delay_before: Delays,
    pub delay_fault: Delays,
    pub longest_stall: Duration,
    pub stalled_watchers: usize,
    pub watchers: usize,
    /// Acknowledged writes some watcher never received (summed over watchers).
    pub missing_events: usize,
    /// Puts of the reference writer (straight to the leader) that failed.
    pub reference_write_failures: u64,
}

impl Analysis {
    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn errors_of(&self, kinds: &[CallKind]) -> u64 {
        kinds.iter().filter_map(|k| self.errors.get(k)).sum()
    }
}

pub fn analyse(log: &Log, phases: Phases, bucket: Duration, watchers: usize) -> Analysis {
    let bucket = bucket.max(Duration::from_millis(1));
    let buckets = (phases.end.as_nanos() / bucket.as_nanos()) as usize + 1;
    let index = |t: Duration| ((t.as_nanos() / bucket.as_nanos()) as usize).min(buckets - 1);
    let mut timeline = Timeline { bucket, ok: vec![0; buckets], errors: vec![0; buckets], events: vec![0; buckets] };
    let mut analysis = Analysis { watchers, reference_write_failures: log.reference_failures, ..Analysis::default() };

    for call in &log.calls {
        match &call.error {
            None if call.kind.is_unary() => timeline.ok[index(call.finished)] += 1,
            None => {}
            Some(message) => {
                timeline.errors[index(call.finished)] += 1;
                if call.finished < phases.fault_at {
                    *analysis.causes_before.entry(cause(message)).or_default() += 1;
                    continue;
                }
                *analysis.errors.entry(call.kind).or_default() += 1;
                *analysis.causes.entry(cause(message)).or_default().entry(call.kind).or_default() += 1;
            }
        }
    }
    let mut delivered: HashSet<(usize, i64)> = HashSet::new();
    let mut first_arrivals = Vec::new();
    for arrival in &log.arrivals {
        if delivered.insert((arrival.watcher, arrival.revision)) {
            timeline.events[index(arrival.at)] += 1;
            first_arrivals.push(*arrival);
        }
    }

    let ok_between = |from: Duration, to: Duration| -> f64 {
        let count = log.calls.iter().filter(|c| c.kind.is_unary() && c.error.is_none() && c.finished >= from && c.finished < to).count();
        count as f64 / (to.saturating_sub(from)).as_secs_f64().max(1e-9)
    };
    analysis.rps_before = ok_between(phases.before_from(), phases.fault_at);
    analysis.rps_fault = ok_between(phases.fault_at, phases.recover_at);
    let per_second = (Duration::from_secs(1).as_nanos() / bucket.as_nanos()).max(1) as usize;
    let (first, last) = (index(phases.fault_at), index(phases.recover_at));
    analysis.rps_fault_min = (first..last.saturating_sub(per_second - 1).max(first))
        .map(|b| timeline.ok[b..b + per_second].iter().sum::<u32>() as f64 * 1e9 / (per_second as f64 * bucket.as_nanos() as f64))
        .reduce(f64::min)
        .unwrap_or(analysis.rps_fault);

    let sent: HashMap<i64, Duration> = log.acks.iter().map(|a| (a.revision, a.sent)).collect();
    let (mut before, mut during) = (Vec::new(), Vec::new());
    for arrival in &first_arrivals {
        let Some(&sent_at) = sent.get(&arrival.revision) else { continue };
        let delay = arrival.at.saturating_sub(sent_at);
        if sent_at >= phases.before_from() && sent_at < phases.fault_at {
            before.push(delay);
        } else if sent_at >= phases.fault_at && sent_at < phases.recover_at {
            during.push(delay);
        }
    }
    analysis.delay_before = Delays::of(before);
    analysis.delay_fault = Delays::of(during);

    let mut acks: Vec<(i64, Duration)> = log.acks.iter().map(|a| (a.revision, a.at)).collect();
    acks.sort_unstable();
    for watcher in 0..watchers {
        let mut arrivals: Vec<(Duration, i64)> =
            first_arrivals.iter().filter(|a| a.watcher == watcher).map(|a| (a.at, a.revision)).collect();
        arrivals.sort_unstable();
        let stall = longest_stall(&arrivals, &acks, phases.end);
        analysis.longest_stall = analysis.longest_stall.max(stall);
        if stall > STALL_THRESHOLD {
            analysis.stalled_watchers += 1;
        }
        analysis.missing_events += sent.keys().filter(|&&revision| !delivered.contains(&(watcher, revision))).count();
    }
    analysis.timeline = timeline;
    analysis
}

/// The longest time a watcher had an acknowledged write pending: at each of its deliveries
/// (`(time, revision)`, by time) and at `end`, the time since the earliest acknowledgement of
/// a write above the highest revision it had received. `acks` are `(revision, time)`, by
/// revision.
fn longest_stall(arrivals: &[(Duration, i64)], acks: &[(i64, Duration)], end: Duration) -> Duration {
    // earliest_from[i]: the earliest acknowledgement among acks[i..] (two writers may be
    // acknowledged out of revision order).
    let mut earliest_from = vec![Duration::MAX; acks.len() + 1];
    for i in (0..acks.len()).rev() {
        earliest_from[i] = earliest_from[i + 1].min(acks[i].1);
    }
    let mut highest = i64::MIN;
    let mut longest = Duration::ZERO;
    let checkpoints = arrivals.iter().map(|&(at, revision)| (at, Some(revision))).chain([(end, None)]);
    for (at, revision) in checkpoints {
        let oldest_pending = earliest_from[acks.partition_point(|&(r, _)| r <= highest)];
        if oldest_pending < at {
            longest = longest.max(at - oldest_pending);
        }
        if let Some(revision) = revision {
            highest = highest.max(revision);
        }
    }
    longest
}

/// A short, stable name for what went wrong, so that errors can be counted by cause.
pub fn cause(message: &str) -> String {
    let lower = message.to_ascii_lowercase();
    if let Some(at) = message.find("etcdserver: ") {
        let rest = &message[at..];
        return rest.split([',', '"', '}', '\n']).next().unwrap_or(rest).trim().to_string();
    }
    let named = [
        ("timed out after", "client timeout"),
        ("refused", "connection refused"),
        ("reset", "connection reset"),
        ("broken pipe", "connection reset"),
        ("stream ended", "stream ended"),
        ("stream broke", "stream broke"),
        ("connection closed", "connection closed"),
        ("watch canceled", "watch canceled"),
    ];
    if let Some((_, name)) = named.iter().find(|(needle, _)| lower.contains(needle)) {
        return name.to_string();
    }
    if let Some(status) = message.strip_prefix("HTTP ").and_then(|rest| rest.split_whitespace().next()) {
        return format!("HTTP {status}");
    }
    if let Some(status) = message.strip_prefix("gRPC ") {
        // The code and the first part of the message (what follows is the error's sources).
        let mut parts = status.splitn(3, ": ");
        let code = parts.next().unwrap_or_default();
        let text: String = parts.next().unwrap_or_default().chars().take(60).collect();
        return format!("gRPC {code}: {text}");
    }
    message.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::super::workload::{Ack, Arrival, CallRecord};
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn call(kind: CallKind, finished: u64, error: Option<&str>) -> CallRecord {
        CallRecord { kind, endpoint: 0, started: ms(finished.saturating_sub(5)), finished: ms(finished), error: error.map(str::to_string) }
    }

    #[test]
    fn causes_are_short_and_stable() {
        assert_eq!(cause("gRPC Unavailable: etcdserver: no leader"), "etcdserver: no leader");
        assert_eq!(cause("HTTP 500 Internal Server Error: {\"error\":\"etcdserver: request timed out\",\"code\":14}"), "etcdserver: request timed out");
        assert_eq!(cause("timed out after 5s"), "client timeout");
        assert_eq!(cause("gRPC Unavailable: tcp connect error: Connection refused (os error 111)"), "connection refused");
        assert_eq!(cause("open: client error (SendRequest): connection reset by peer"), "connection reset");
        assert_eq!(cause("HTTP 503 Service Unavailable: oops"), "HTTP 503");
        assert_eq!(cause("gRPC Internal: h2 protocol error: frame too big"), "gRPC Internal: h2 protocol error");
        assert_eq!(cause("stream ended"), "stream ended");
    }

    #[test]
    fn delays_take_nearest_rank_quantiles() {
        let delays = Delays::of((1..=100).map(ms).collect());
        assert_eq!((delays.count, delays.p50, delays.p99), (100, Some(ms(50)), Some(ms(99))));
        assert_eq!(Delays::of(vec![]), Delays::default());
        assert_eq!(Delays::of(vec![ms(7)]).p99, Some(ms(7)));
    }

    #[test]
    fn a_stall_counts_from_the_first_write_it_missed() {
        let acks = [(1, ms(100)), (2, ms(200)), (3, ms(300)), (4, ms(400))];
        // Delivered promptly, then revision 3 (acknowledged at 300 ms) and 4 only at 900 ms.
        assert_eq!(longest_stall(&[(ms(110), 1), (ms(210), 2), (ms(900), 3), (ms(900), 4)], &acks, ms(1000)), ms(600));
        // Events delivered before their write was acknowledged; nothing written afterwards:
        // nothing pending, however long the wait until the end.
        assert_eq!(longest_stall(&[(ms(99), 1), (ms(199), 2), (ms(299), 3), (ms(399), 4)], &acks, ms(5000)), ms(0));
        assert_eq!(longest_stall(&[(ms(101), 1), (ms(201), 2), (ms(301), 3), (ms(401), 4)], &acks, ms(5000)), ms(1));
        // Never delivered anything.
        assert_eq!(longest_stall(&[], &acks, ms(1000)), ms(900));
        // Stopped after revision 2: pending from 300 ms to the end.
        assert_eq!(longest_stall(&[(ms(110), 1), (ms(210), 2)], &acks, ms(1000)), ms(700));
        // Revision 6 acknowledged before 5: pending from 500 ms.
        let acks = [(1, ms(100)), (5, ms(520)), (6, ms(500))];
        assert_eq!(longest_stall(&[(ms(110), 1), (ms(800), 5), (ms(800), 6)], &acks, ms(1000)), ms(300));
        assert_eq!(longest_stall(&[], &[], ms(1000)), Duration::ZERO);
    }

    #[test]
    fn a_cell_is_read_off_its_log() {
        let mut log = Log::default();
        // 10 s before the fault at 10 s: 2 calls per 100 ms; none during it; a few errors.
        for t in (0..10_000).step_by(100) {
            log.calls.push(call(CallKind::GrpcRange, t + 50, None));
            log.calls.push(call(CallKind::HttpRange, t + 60, None));
        }
        log.calls.push(call(CallKind::GrpcRange, 10_500, Some("timed out after 5s")));
        log.calls.push(call(CallKind::Put, 3_000, Some("gRPC Unavailable: etcdserver: leader changed")));
        log.calls.push(call(CallKind::Watch, 10_600, Some("stream ended")));
        log.calls.push(call(CallKind::Watch, 10_700, None));
        for (i, t) in (1000..20_000).step_by(1000).enumerate() {
            let revision = 10 + i as i64;
            log.acks.push(Ack { revision, sent: ms(t - 2), at: ms(t) });
            // Watcher 0 gets everything 10 ms late; watcher 1 nothing after the fault.
            log.arrivals.push(Arrival { watcher: 0, revision, at: ms(t + 10) });
            if t < 10_000 {
                log.arrivals.push(Arrival { watcher: 1, revision, at: ms(t + 30) });
            }
        }
        let phases = Phases { load_start: ms(0), fault_at: ms(10_000), recover_at: ms(15_000), load_end: ms(20_000), end: ms(20_000) };
        let a = analyse(&log, phases, ms(250), 2);
        assert_eq!(a.total_errors(), 2);
        assert_eq!(a.errors_of(&[CallKind::Watch]), 1);
        assert_eq!(a.causes["client timeout"][&CallKind::GrpcRange], 1);
        assert!((a.rps_before - 20.0).abs() < 1e-9, "{}", a.rps_before);
        assert_eq!((a.rps_fault, a.rps_fault_min), (0.0, 0.0));
        assert_eq!(a.delay_before.p50, Some(ms(12)));
        assert_eq!(a.delay_before.p99, Some(ms(32)));
        assert_eq!((a.delay_fault.count, a.delay_fault.p99), (5, Some(ms(12))));
        // Watcher 1: from the write at 10 s to the end at 20 s.
        assert_eq!((a.longest_stall, a.stalled_watchers, a.missing_events), (ms(10_000), 1, 10));
        assert_eq!(a.timeline.ok.len(), 81);
        assert_eq!(a.timeline.ok[0], 4);
        assert_eq!(a.timeline.per_second(a.timeline.ok[0]), 16.0);
        assert_eq!(a.causes_before["etcdserver: leader changed"], 1);
        assert_eq!(a.timeline.errors.iter().sum::<u32>(), 3);
        assert_eq!(a.timeline.events.iter().sum::<u32>(), 19 + 9);
    }
}
