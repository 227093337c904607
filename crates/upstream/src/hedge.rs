//! Hedged reads: a read its member has not answered within a short delay is sent to a second
//! healthy member as well, and the first answer wins (the other call is dropped, which resets
//! its HTTP/2 stream). A member that hangs or is cut off from its peers still counts as
//! healthy until a probe misses its deadline, and without hedging every read balanced onto it
//! meanwhile waits that long. The delay follows the member's latency estimate, so that a
//! member merely busy is not hedged against; a budget keeps hedges to one per
//! [`READS_PER_HEDGE`] reads, so that a cluster slow everywhere gets a tenth more reads at
//! most, never twice as many. Only reads are hedged, and only unary ones whose latency
//! measures their member ([`crate::Timing::Measured`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A read is hedged after this long at least ...
const MIN_DELAY: Duration = Duration::from_millis(25);
/// ... or after this many times its member's latency estimate, if that is longer ...
const ESTIMATE_FACTOR: u32 = 4;
/// ... but never later than this (a probe deadline is 1 s by default).
const MAX_DELAY: Duration = Duration::from_millis(500);
/// One hedge is allowed per this many reads ...
const READS_PER_HEDGE: u32 = 10;
/// ... and at most this many are saved up.
const MAX_SAVED: u32 = 10;

/// How long a read on a member with latency estimate `estimate` waits before it is hedged.
pub(crate) fn delay(estimate: Option<Duration>) -> Duration {
    estimate.map_or(MIN_DELAY, |estimate| (estimate * ESTIMATE_FACTOR).clamp(MIN_DELAY, MAX_DELAY))
}

/// The hedges a pool may still send, in tenths of a hedge: every read adds one tenth, every
/// hedge takes a whole one.
#[derive(Debug)]
pub(crate) struct Budget {
    tenths: AtomicU32,
}

impl Default for Budget {
    fn default() -> Self {
        Budget { tenths: AtomicU32::new(MAX_SAVED * READS_PER_HEDGE) }
    }
}

impl Budget {
    /// A read that may be hedged starts.
    pub(crate) fn deposit(&self) {
        let _ = self
            .tenths
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tenths| (tenths < MAX_SAVED * READS_PER_HEDGE).then_some(tenths + 1));
    }

    /// Takes one hedge from the budget; false if there is none.
    pub(crate) fn withdraw(&self) -> bool {
        self.tenths.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tenths| tenths.checked_sub(READS_PER_HEDGE)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_follows_the_estimate_within_bounds() {
        assert_eq!(delay(None), MIN_DELAY);
        assert_eq!(delay(Some(Duration::from_micros(300))), MIN_DELAY);
        assert_eq!(delay(Some(Duration::from_millis(20))), Duration::from_millis(80));
        assert_eq!(delay(Some(Duration::from_secs(3))), MAX_DELAY);
    }

    #[test]
    fn budget_allows_one_hedge_per_ten_reads_once_the_savings_are_spent() {
        let budget = Budget::default();
        let saved = (0..100).take_while(|_| budget.withdraw()).count();
        assert_eq!(saved, MAX_SAVED as usize);
        let mut hedges = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.withdraw() {
                hedges += 1;
            }
        }
        assert_eq!(hedges, 100);
        for _ in 0..10_000 {
            budget.deposit();
        }
        assert_eq!((0..100).take_while(|_| budget.withdraw()).count(), MAX_SAVED as usize, "savings are capped");
    }
}
