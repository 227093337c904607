//! Balancing over the healthy members: power of two choices (P2C) over a peak-EWMA cost, as
//! linkerd and finagle balance.
//!
//! Every member has one [`Load`], shared by the whole pool family (all worker threads see
//! the same numbers; atomics only, no lock): the calls open on it, and a latency estimate.
//! The estimate is a *peak* EWMA: a sample above it replaces it at once, a sample below pulls
//! it down with a weight that grows with the time since the previous sample (time constant
//! [`DECAY`], linkerd's default) — so one slow answer steers traffic away at once, and the
//! member wins it back gradually as it answers fast again. Samples come from the member's
//! probe answers and from calls that measure it ([`Timing::Measured`]). A member's estimate
//! starts over whenever it starts or stops keeping open calls (see
//! [`crate::State::keeps_open_calls`]): a call that lived through an outage measured the
//! outage, which the state machine already acts on.
//!
//! A member's cost is `estimate × (open calls + 1)`. A call picks two distinct healthy members
//! at random and tries the cheaper first (see [`p2c_order`]).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Time constant of the estimate's decay towards lower samples.
pub const DECAY: Duration = Duration::from_secs(10);
/// The estimate of a member without a sample yet (a member gets one with its first probe
/// answer, before it can be healthy).
const DEFAULT_LATENCY_US: f32 = 1000.0;
/// Smallest estimate kept, so that a stored estimate is never 0 (which means "no sample").
const MIN_LATENCY_US: f32 = 1.0;

/// Whether a call's time to answer says how busy its member is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// The answer comes as soon as the member has done the work (Range, Put, Txn, ...): the
    /// call counts as open on its member while it runs, and its latency is a sample.
    Measured,
    /// The answer waits for something other than the member: a stream's first message (Watch,
    /// LeaseKeepAlive, Snapshot, Observe), a lock or an election (Lock, Campaign); or it is
    /// slow by design (Authenticate's password hash, Hash and HashKV of the whole store).
    /// Neither counted nor timed, nor hedged.
    Unmeasured,
}

/// One member's load, shared by every pool of the family.
#[derive(Debug, Default)]
pub(crate) struct Load {
    /// Measured calls open on the member.
    outstanding: AtomicU32,
    /// The estimate as `f32` microseconds in the high half (0: no sample yet) and the time of
    /// its last sample in the low half, as milliseconds since [`epoch`] (wrapping: after 49
    /// days without a sample only that one sample's weight is off).
    estimate: AtomicU64,
    /// Bumped when the estimate starts over: calls begun before do not give a sample.
    period: AtomicU32,
}

/// The instant sample times count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis_since_epoch(now: Instant) -> u32 {
    // Truncation is the documented wrap-around.
    now.saturating_duration_since(epoch()).as_millis() as u32
}

fn pack(estimate_us: f32, at_ms: u32) -> u64 {
    (u64::from(estimate_us.to_bits()) << 32) | u64::from(at_ms)
}

fn unpack(word: u64) -> (Option<f32>, u32) {
    let estimate = f32::from_bits((word >> 32) as u32);
    ((estimate > 0.0).then_some(estimate), word as u32)
}

impl Load {
    /// What a call to the member is expected to cost: estimate (µs) × (open calls + 1).
    pub(crate) fn cost(&self) -> f64 {
        let estimate = unpack(self.estimate.load(Ordering::Relaxed)).0.unwrap_or(DEFAULT_LATENCY_US);
        f64::from(estimate) * (f64::from(self.outstanding.load(Ordering::Relaxed)) + 1.0)
    }

    /// The latency estimate, `None` before the first sample.
    pub(crate) fn estimate(&self) -> Option<Duration> {
        unpack(self.estimate.load(Ordering::Relaxed)).0.map(|us| Duration::from_secs_f64(f64::from(us) / 1e6))
    }

    /// Measured calls open on the member.
    #[cfg(test)]
    pub(crate) fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// One latency sample, taken now.
    pub(crate) fn observe(&self, sample: Duration) {
        self.observe_at(sample, Instant::now());
    }

    /// One latency sample taken at `now`: a peak replaces the estimate, a lower sample pulls
    /// it down by `1 - e^(-elapsed / DECAY)` of the way.
    pub(crate) fn observe_at(&self, sample: Duration, now: Instant) {
        let sample_us = (sample.as_secs_f64() * 1e6) as f32;
        let now_ms = millis_since_epoch(now);
        let _ = self.estimate.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
            let estimate = match unpack(word) {
                (Some(estimate), at_ms) if sample_us < estimate => {
                    let elapsed_ms = now_ms.wrapping_sub(at_ms) as f32;
                    let weight = (-elapsed_ms / DECAY.as_millis() as f32).exp();
                    estimate * weight + sample_us * (1.0 - weight)
                }
                _ => sample_us,
            };
            Some(pack(estimate.max(MIN_LATENCY_US), now_ms))
        });
    }

    /// The estimate starts over; calls open now give no sample.
    pub(crate) fn start_over(&self) {
        self.period.fetch_add(1, Ordering::Relaxed);
        self.estimate.store(0, Ordering::Relaxed);
    }

    /// A measured call starts on the member: it counts as open until the guard is dropped.
    pub(crate) fn start(&self) -> InFlight<'_> {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight { load: self, period: self.period.load(Ordering::Relaxed), started: Instant::now() }
    }
}

/// A measured call open on a member.
#[derive(Debug)]
pub(crate) struct InFlight<'a> {
    load: &'a Load,
    period: u32,
    started: Instant,
}

impl InFlight<'_> {
    /// The member answered: its latency is a sample (unless the estimate started over since).
    pub(crate) fn answered(self) {
        if self.load.period.load(Ordering::Relaxed) == self.period {
            let now = Instant::now();
            self.load.observe_at(now.saturating_duration_since(self.started), now);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.load.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Orders `members` for a call: the cheaper of two distinct members picked at random first
/// (on a tie the first picked), then the others cheapest first. Each cost is read once.
pub(crate) fn p2c_order<T>(members: Vec<T>, cost: impl Fn(&T) -> f64) -> Vec<T> {
    let mut costed: Vec<(f64, T)> = members.into_iter().map(|member| (cost(&member), member)).collect();
    if costed.len() >= 2 {
        let first = fastrand::usize(..costed.len());
        let mut second = fastrand::usize(..costed.len() - 1);
        if second >= first {
            second += 1;
        }
        let winner = if costed[second].0 < costed[first].0 { second } else { first };
        costed.swap(0, winner);
        costed[1..].sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    costed.into_iter().map(|(_, member)| member).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn estimate_ms(load: &Load) -> f64 {
        load.estimate().unwrap().as_secs_f64() * 1e3
    }

    #[test]
    fn a_peak_replaces_the_estimate_and_lower_samples_decay_with_time() {
        let load = Load::default();
        assert_eq!(load.estimate(), None);
        assert_eq!(load.cost(), f64::from(DEFAULT_LATENCY_US), "the default until a sample comes");
        let t0 = Instant::now();
        load.observe_at(ms(2), t0);
        assert!((estimate_ms(&load) - 2.0).abs() < 1e-3, "the first sample is the estimate");
        load.observe_at(ms(50), t0);
        assert!((estimate_ms(&load) - 50.0).abs() < 1e-3, "a peak replaces it at once");
        load.observe_at(ms(2), t0);
        assert!((estimate_ms(&load) - 50.0).abs() < 1e-3, "a lower sample at the same instant has no weight");
        // One time constant later, a lower sample has moved it 1 - 1/e of the way.
        load.observe_at(ms(2), t0 + DECAY);
        let expected = 2.0 + 48.0 / std::f64::consts::E;
        assert!((estimate_ms(&load) - expected).abs() < 0.05, "{} vs {expected}", estimate_ms(&load));
        // Long after, a lower sample is all that counts.
        load.observe_at(ms(1), t0 + DECAY * 20);
        assert!((estimate_ms(&load) - 1.0).abs() < 1e-3);
        // A zero sample keeps the estimate positive (0 would read as "no sample").
        load.observe_at(Duration::ZERO, t0 + DECAY * 60);
        assert!(load.estimate().is_some());
    }

    #[test]
    fn cost_grows_with_open_calls_and_a_call_open_across_a_restart_gives_no_sample() {
        let load = Load::default();
        load.observe(ms(1));
        let idle = load.cost();
        let first = load.start();
        let second = load.start();
        assert_eq!(load.outstanding(), 2);
        assert!((load.cost() / idle - 3.0).abs() < 1e-9, "estimate × (open + 1)");
        drop(first);
        assert_eq!(load.outstanding(), 1, "a call dropped unanswered is no longer open");
        load.start_over();
        assert_eq!(load.estimate(), None);
        second.answered();
        assert_eq!(load.outstanding(), 0);
        assert_eq!(load.estimate(), None, "the call began before the estimate started over");
        load.start().answered();
        assert!(load.estimate().is_some(), "a call begun after it does");
    }

    /// How often each of the members with these costs comes first, over `picks` orders.
    fn firsts(costs: &[f64], picks: usize) -> Vec<usize> {
        let mut counts = vec![0; costs.len()];
        for _ in 0..picks {
            let order = p2c_order((0..costs.len()).collect(), |&i| costs[i]);
            counts[order[0]] += 1;
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, (0..costs.len()).collect::<Vec<_>>(), "every member is in the order once");
            assert!(order[1..].windows(2).all(|w| costs[w[0]] <= costs[w[1]]), "the rest cheapest first");
        }
        counts
    }

    #[test]
    fn the_cheaper_of_two_random_members_goes_first() {
        // Equal costs: an even spread.
        let even = firsts(&[1.0, 1.0, 1.0], 3000);
        assert!(even.iter().all(|&n| n > 800), "{even:?}");
        // Of three, the dearest never wins a pair; the cheapest wins both pairs it is in.
        let skewed = firsts(&[1.0, 2.0, 10.0], 3000);
        assert_eq!(skewed[2], 0, "{skewed:?}");
        assert!(skewed[0] > skewed[1] && skewed[1] > 0, "{skewed:?}");
        // One or two members.
        assert_eq!(firsts(&[5.0], 10), [10]);
        assert_eq!(firsts(&[5.0, 1.0], 10), [0, 10]);
        assert!(p2c_order(Vec::<usize>::new(), |_| 0.0).is_empty());
        // Costs that are not numbers do not upset the order.
        for _ in 0..100 {
            let mut order = p2c_order(vec![0, 1, 2], |&i| [f64::NAN, 1.0, f64::INFINITY][i]);
            order.sort();
            assert_eq!(order, [0, 1, 2]);
        }
    }
}
