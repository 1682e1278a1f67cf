//! Retry budgets: how many retries a client may add on top of its traffic.
//!
//! A fixed retry count ("try each request up to three times") multiplies
//! the load on a backend by up to four exactly when that backend is
//! failing: the retry storm that turns a brown-out into an outage. A retry
//! budget instead caps retries as a fraction of the client's recent
//! traffic, plus a small floor so that a client with little traffic can
//! still retry at all. Scattered failures are retried; during a total
//! outage the extra load stays at `ratio` of the traffic plus the floor.
//! This is Finagle's `RetryBudget` (`ttl`, `minRetriesPerSec`,
//! `percentCanRetry`; see the Finagle client guide,
//! <https://twitter.github.io/finagle/guide/Clients.html#retries>) and
//! linkerd's retry budgets (`retryRatio`, `minRetriesPerSecond`, `ttl`).
//!
//! [`RetryBudget`] implements the rule; its docs say how "recent" is
//! measured without a clock read on every request.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::tally::Tally;
use crate::error::{InvalidSetting, check, valid};

/// Samples kept: after pruning, at most one at or before the start of the
/// window and ten inside it (they are a tenth of a window apart); one
/// spare.
const RING: usize = 12;

/// The largest ratio accepted: a thousand retries per request is already
/// no limit at all.
const MAX_RATIO: f64 = 1000.0;

/// A withdrawal needs one whole retry available; the hair below 1 absorbs
/// float rounding in `ratio × requests`.
const ONE: f64 = 1.0 - 1e-9;

/// A budget of retries (and hedges) shared by all clones of a client, as
/// in Finagle and linkerd.
///
/// Cloning is cheap and every clone spends from the same budget.
///
/// Over a sliding window (10 s by default), a [`RetryBudget`] allows
///
/// ```text
/// ratio × recent requests + min_per_second × window − recent retries
/// ```
///
/// more retries (or hedges); one is granted while that is at least 1.
///
/// # How it is measured
///
/// [`deposit`](RetryBudget::deposit) runs on every request, so it is a
/// single relaxed atomic add: no clock, no lock, no allocation.
/// [`withdraw`](RetryBudget::withdraw) runs only when a retry is wanted;
/// it reads the clock and takes a short lock. Since deposits carry no
/// time, withdrawals take samples `(instant, total requests, total
/// retries)` — at most one per tenth of a window, in a ring of a dozen —
/// and "recent" is measured from them:
///
/// - traffic between samples that lie inside the window counts in full;
/// - of the interval that straddles the start of the window, requests count
///   in proportion to the part inside the window (deposits are assumed
///   spread evenly over it), so a client that was quiet for a long time
///   does not bank a burst (the other side of it: requests that arrive
///   in a burst after a quiet spell, before the first withdrawal, are
///   diluted the same way, so for one window the budget errs towards the
///   floor, never above the rule). Retries in that interval all happened in its
///   first tenth of a window (a later withdrawal would have taken a new
///   sample), so they count in proportion to the part of that tenth still
///   inside the window;
/// - while the budget is younger than its window, everything since it was
///   created counts.
///
/// A fresh budget starts with the floor available. Over any span of `S`
/// seconds, retries are bounded by about `ratio × requests + min_per_second
/// × S`, plus up to one window's allowance at the edges of the span.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::retry::RetryBudget;
///
/// // 20 % of the last 10 s of requests, plus 10 retries per second.
/// let budget = RetryBudget::new(Duration::from_secs(10), 0.2, 10);
/// let shared = budget.clone(); // e.g. held by another clone of the client
/// for _ in 0..1000 {
///     budget.deposit();
/// }
/// let mut granted = 0;
/// while shared.withdraw() {
///     granted += 1;
/// }
/// assert_eq!(granted, 300); // 0.2 × 1000 + 10 × 10
/// assert_eq!(budget.stats().exhausted, 1);
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    /// Original requests since creation: all that `deposit` touches.
    requests: Tally,
    window: Duration,
    /// The least time between two samples: a tenth of the window, rounded
    /// up so that at most ten samples fit inside one window.
    spacing: Duration,
    ratio: f64,
    min_per_second: u32,
    /// `min_per_second × window`, in retries.
    floor: f64,
    state: Mutex<State>,
}

struct State {
    /// Oldest first; never empty (the first sample is taken at creation).
    samples: VecDeque<Sample>,
    /// Withdrawals granted since creation.
    retries: u64,
    /// Withdrawals refused since creation.
    exhausted: u64,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    requests: u64,
    retries: u64,
}

/// A snapshot of a [`RetryBudget`], for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct BudgetStats {
    /// Requests deposited since the budget was created.
    pub requests: u64,
    /// Retries and hedges granted since the budget was created.
    pub retries: u64,
    /// Withdrawals refused since the budget was created.
    pub exhausted: u64,
    /// Retries available now (never negative): a withdrawal succeeds while
    /// this is at least 1. An estimate, measured as the
    /// [`RetryBudget`] docs describe.
    pub available: f64,
}

impl RetryBudget {
    /// A budget that allows `ratio × requests + min_per_second × window`
    /// retries over any sliding `window`, less the retries already made in
    /// it.
    ///
    /// `ratio` may be 0 (only the floor is left) and at most 1000;
    /// `min_per_second` may be 0: then a client with no recent traffic
    /// cannot retry at all.
    ///
    /// # Panics
    ///
    /// When `window` is zero, or `ratio` is NaN, negative or above 1000
    /// (infinity included); [`try_new`](RetryBudget::try_new) returns the
    /// error instead.
    #[track_caller]
    pub fn new(window: Duration, ratio: f64, min_per_second: u32) -> Self {
        valid(Self::try_new(window, ratio, min_per_second))
    }

    /// [`new`](RetryBudget::new), refusing a zero `window` and a `ratio`
    /// that is not a number between 0 and 1000.
    pub fn try_new(
        window: Duration,
        ratio: f64,
        min_per_second: u32,
    ) -> Result<Self, InvalidSetting> {
        check(
            !window.is_zero(),
            "RetryBudget::new(window)",
            window,
            "must be longer than zero",
        )?;
        check(
            (0.0..=MAX_RATIO).contains(&ratio),
            "RetryBudget::new(ratio)",
            ratio,
            "must be a number from 0 to 1000",
        )?;
        let tenth = window / 10;
        let spacing = if tenth * 10 < window {
            tenth + Duration::from_nanos(1)
        } else {
            tenth
        };
        let mut samples = VecDeque::with_capacity(RING);
        samples.push_back(Sample {
            at: Instant::now(),
            requests: 0,
            retries: 0,
        });
        Ok(RetryBudget {
            inner: Arc::new(Inner {
                requests: Tally::new(),
                window,
                spacing,
                ratio,
                min_per_second,
                floor: f64::from(min_per_second) * window.as_secs_f64(),
                state: Mutex::new(State {
                    samples,
                    retries: 0,
                    exhausted: 0,
                }),
            }),
        })
    }

    /// Counts one original request (not a retry).
    ///
    /// This runs on every request, so it is one relaxed atomic add and
    /// nothing else. ([`Retry`](super::Retry) clones that serve many
    /// requests count them on a lane of their own instead, so that clients
    /// on several threads do not all write one counter.)
    #[inline]
    pub fn deposit(&self) {
        self.inner.requests.add();
    }

    /// The count of original requests, for lanes to join.
    pub(crate) fn tally(&self) -> &Tally {
        &self.inner.requests
    }

    /// Takes one retry (or hedge) from the budget; `false` when the budget
    /// is exhausted, which is counted in [`BudgetStats::exhausted`].
    ///
    /// Reads the clock and takes a short lock, shared with the other
    /// withdrawals of all clones.
    pub fn withdraw(&self) -> bool {
        let inner = &*self.inner;
        let now = Instant::now();
        let mut state = inner.lock();
        let requests = inner.requests.total();
        let due = state
            .samples
            .back()
            .is_none_or(|last| now.saturating_duration_since(last.at) >= inner.spacing);
        if due {
            // Taken before the decision, so every retry is counted after
            // the latest sample taken at or before it.
            inner.prune(&mut state, now);
            if state.samples.len() == RING {
                // Unreachable while pruning keeps the ring within bounds;
                // dropping the oldest sample only makes the budget younger.
                state.samples.pop_front();
            }
            let retries = state.retries;
            state.samples.push_back(Sample {
                at: now,
                requests,
                retries,
            });
        }
        let granted = inner.available(&mut state, now, requests) >= ONE;
        if granted {
            state.retries += 1;
        } else {
            state.exhausted += 1;
        }
        granted
    }

    /// Totals since creation and the retries available now.
    pub fn stats(&self) -> BudgetStats {
        let inner = &*self.inner;
        let now = Instant::now();
        let mut state = inner.lock();
        let requests = inner.requests.total();
        let available = inner.available(&mut state, now, requests).max(0.0);
        BudgetStats {
            requests,
            retries: state.retries,
            exhausted: state.exhausted,
            available,
        }
    }

    /// The sliding window over which requests and retries count.
    pub fn window(&self) -> Duration {
        self.inner.window
    }

    /// Retries allowed per recent request.
    pub fn ratio(&self) -> f64 {
        self.inner.ratio
    }

    /// Retries allowed per second of the window whatever the traffic.
    pub fn min_per_second(&self) -> u32 {
        self.inner.min_per_second
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The critical sections are plain arithmetic; a poisoned lock
        // still holds consistent counters.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the samples whose interval ended at or before the start of
    /// the window: afterwards only the first sample can be that old.
    fn prune(&self, state: &mut State, now: Instant) {
        let Some(start) = now.checked_sub(self.window) else {
            return;
        };
        while state.samples.len() > 1 && state.samples[1].at <= start {
            state.samples.pop_front();
        }
    }

    /// Retries available at `now`, with `requests` deposited so far.
    fn available(&self, state: &mut State, now: Instant, requests: u64) -> f64 {
        self.prune(state, now);
        let now_sample = Sample {
            at: now,
            requests,
            retries: state.retries,
        };
        let first = state.samples.front().copied().unwrap_or(now_sample);
        let next = state.samples.get(1).copied().unwrap_or(now_sample);
        // Everything after `next` is inside the window.
        let mut recent_requests = requests.saturating_sub(next.requests) as f64;
        let mut recent_retries = state.retries.saturating_sub(next.retries) as f64;
        // The interval from `first` to `next` may straddle the start.
        let first_requests = next.requests.saturating_sub(first.requests) as f64;
        let first_retries = next.retries.saturating_sub(first.retries) as f64;
        match now.checked_sub(self.window) {
            Some(start) if first.at < start => {
                let inside = next.at.saturating_duration_since(start).as_secs_f64();
                let span = next.at.saturating_duration_since(first.at).as_secs_f64();
                if span > 0.0 {
                    recent_requests += first_requests * (inside / span);
                }
                // Its retries all happened within `spacing` of `first`:
                // count the part of that stretch inside the window.
                let stretch = self
                    .spacing
                    .min(next.at.saturating_duration_since(first.at));
                let inside = (first.at + stretch).saturating_duration_since(start);
                if !stretch.is_zero() {
                    recent_retries +=
                        first_retries * (inside.as_secs_f64() / stretch.as_secs_f64());
                }
            }
            // The budget is younger than the window, or the interval
            // starts inside it.
            _ => {
                recent_requests += first_requests;
                recent_retries += first_retries;
            }
        }
        self.ratio * recent_requests + self.floor - recent_retries
    }
}

impl Default for RetryBudget {
    /// A 10 s window, 20 % of recent requests, at least 10 retries per
    /// second: linkerd's and Finagle's defaults.
    fn default() -> Self {
        Self::new(Duration::from_secs(10), 0.2, 10)
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("window", &self.inner.window)
            .field("ratio", &self.inner.ratio)
            .field("min_per_second", &self.inner.min_per_second)
            .field("requests", &self.inner.requests.total())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn drain(budget: &RetryBudget) -> u32 {
        let mut granted = 0;
        while budget.withdraw() {
            granted += 1;
            assert!(granted <= 1_000_000, "budget never ran out");
        }
        granted
    }

    fn deposit(budget: &RetryBudget, n: u32) {
        for _ in 0..n {
            budget.deposit();
        }
    }

    /// (a) Without traffic only the floor is there: `min_per_second ×
    /// window` withdrawals in one window, then refusals, also later in the
    /// same window.
    #[tokio::test(start_paused = true)]
    async fn floor_alone_allows_min_per_second_times_window() {
        let budget = RetryBudget::default();
        assert_eq!(budget.stats().available, 100.0);
        assert_eq!(drain(&budget), 100);
        advance(Duration::from_secs(5)).await;
        assert!(!budget.withdraw());
        let stats = budget.stats();
        assert_eq!((stats.retries, stats.exhausted), (100, 2));
        assert_eq!(stats.available, 0.0);

        let small = RetryBudget::new(Duration::from_secs(2), 0.2, 3);
        assert_eq!(drain(&small), 6);
    }

    /// (b) 1000 deposits add `0.2 × 1000` to the floor of 100: exactly 300
    /// withdrawals succeed.
    #[tokio::test(start_paused = true)]
    async fn deposits_add_ratio_of_recent_requests() {
        let budget = RetryBudget::default();
        deposit(&budget, 1000);
        assert_eq!(budget.stats().available, 300.0);
        assert_eq!(drain(&budget), 300);
        assert!(!budget.withdraw());
        let stats = budget.stats();
        assert_eq!(
            (stats.requests, stats.retries, stats.exhausted),
            (1000, 300, 2)
        );
    }

    /// (c) Once a window has passed, old deposits and retries stop
    /// counting: the budget is back to the floor plus recent traffic.
    #[tokio::test(start_paused = true)]
    async fn old_traffic_stops_counting_after_the_window() {
        let budget = RetryBudget::default();
        deposit(&budget, 1000);
        assert_eq!(drain(&budget), 300);
        // A refused withdrawal a second later still takes a sample.
        advance(Duration::from_secs(1)).await;
        assert!(!budget.withdraw());
        advance(Duration::from_secs(10)).await;
        // Neither the 1000 requests nor the 300 retries count any more.
        assert_eq!(budget.stats().available, 100.0);
        deposit(&budget, 100);
        assert_eq!(budget.stats().available, 120.0);
        assert_eq!(drain(&budget), 120);

        // Without a sample in between, old retries stop counting once the
        // tenth of a window they were made in has left the window.
        let budget = RetryBudget::default();
        assert_eq!(drain(&budget), 100);
        advance(Duration::from_secs(11)).await;
        assert_eq!(budget.stats().available, 100.0);
        assert_eq!(drain(&budget), 100);
    }

    /// (d) After a long quiet spell, old requests count only at their
    /// average rate over the spell (scaled to the window), not in full.
    #[tokio::test(start_paused = true)]
    async fn quiet_period_does_not_bank_a_burst() {
        let budget = RetryBudget::default();
        deposit(&budget, 1000);
        advance(Duration::from_secs(100)).await;
        // 1000 requests over 100 s is 100 per window: 20 retries, plus
        // the floor; in full they would have allowed 300.
        assert_eq!(budget.stats().available, 120.0);
        assert_eq!(drain(&budget), 120);

        // Retries made now count in full against it, however old the
        // previous sample is.
        let budget = RetryBudget::default();
        deposit(&budget, 1000);
        advance(Duration::from_secs(100)).await;
        assert!(budget.withdraw());
        assert!((budget.stats().available - 119.0).abs() < 1e-6);
    }

    /// (e) Total outage: N requests per second for S seconds, every one of
    /// them wants one retry. Retries stay within `N·S·ratio +
    /// min_per_second·S` plus the slack of the estimate: the deposits of
    /// one sample interval (a tenth of a window) counted at `ratio`, plus
    /// one for rounding. S is a whole number of windows; otherwise add one
    /// window's allowance. The budget is also not much stingier than that.
    #[tokio::test(start_paused = true)]
    async fn total_outage_is_bounded_by_ratio_and_floor() {
        const N: u32 = 100;
        const S: u32 = 60;
        let budget = RetryBudget::default();
        let step = Duration::from_secs(1) / N;
        let mut granted = 0u32;
        for _ in 0..N * S {
            budget.deposit();
            if budget.withdraw() {
                granted += 1;
            }
            advance(step).await;
        }
        let bound = f64::from(N * S) * 0.2 + 10.0 * f64::from(S);
        let slack = 0.2 * f64::from(N) * 1.0 + 1.0;
        assert!(
            f64::from(granted) <= bound + slack,
            "{granted} > {bound} + {slack}"
        );
        assert!(
            f64::from(granted) >= 0.95 * bound,
            "{granted} < 95 % of {bound}"
        );
        let stats = budget.stats();
        assert_eq!(stats.requests, u64::from(N * S));
        assert_eq!(stats.retries + stats.exhausted, u64::from(N * S));
    }

    /// (f) Clones spend from and deposit into the same budget, also from
    /// other threads.
    #[tokio::test(start_paused = true)]
    async fn clones_share_state() {
        let budget = RetryBudget::new(Duration::from_secs(1), 0.5, 2);
        let clone = budget.clone();
        deposit(&clone, 10);
        assert_eq!(budget.stats().available, 7.0);
        assert!(budget.withdraw());
        assert_eq!(clone.stats().available, 6.0);
        assert_eq!(drain(&clone), 6);
        assert!(!budget.withdraw());

        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = budget.clone();
                std::thread::spawn(move || deposit(&b, 10_000))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(clone.stats().requests, 40_010);
    }

    /// (g) Nonsense configuration is refused, naming the setting.
    #[test]
    fn bad_input_is_refused() {
        let ok = |window, ratio| RetryBudget::try_new(window, ratio, 0).map(|b| b.ratio());
        let s = Duration::from_secs(1);
        assert_eq!(ok(s, 0.0), Ok(0.0));
        assert_eq!(ok(s, 0.2), Ok(0.2));
        assert_eq!(ok(s, MAX_RATIO), Ok(MAX_RATIO));
        let refused = |window, ratio| ok(window, ratio).unwrap_err().to_string();
        assert_eq!(
            refused(Duration::ZERO, 0.2),
            "invalid setting RetryBudget::new(window) = 0ns: must be longer than zero"
        );
        for ratio in [f64::NAN, -1.0, f64::NEG_INFINITY, f64::INFINITY, 1000.5] {
            assert_eq!(
                refused(s, ratio),
                format!(
                    "invalid setting RetryBudget::new(ratio) = {ratio:?}: must be a number from 0 to 1000"
                )
            );
        }
    }

    #[test]
    fn try_new_refuses_what_new_panics_on() {
        let second = Duration::from_secs(1);
        assert!(RetryBudget::try_new(second, 0.2, 10).is_ok());
        assert!(RetryBudget::try_new(second, 1000.0, 0).is_ok());
        for bad in [f64::NAN, -0.1, 1000.5, f64::INFINITY] {
            let e = RetryBudget::try_new(second, bad, 10).unwrap_err();
            assert_eq!(e.setting(), "RetryBudget::new(ratio)", "{bad}");
            assert_eq!(e.value(), format!("{bad:?}"));
            assert_eq!(e.reason(), "must be a number from 0 to 1000");
        }
        let e = RetryBudget::try_new(Duration::ZERO, 0.2, 10).unwrap_err();
        assert_eq!(
            (e.setting(), e.value(), e.reason()),
            (
                "RetryBudget::new(window)",
                "0ns",
                "must be longer than zero"
            )
        );
    }

    #[test]
    #[should_panic(expected = "invalid setting RetryBudget::new(ratio) = NaN")]
    fn new_panics_on_a_nan_ratio() {
        let _ = RetryBudget::new(Duration::from_secs(1), f64::NAN, 10);
    }

    #[test]
    #[should_panic(expected = "invalid setting RetryBudget::new(window) = 0ns")]
    fn new_panics_on_a_zero_window() {
        let _ = RetryBudget::new(Duration::ZERO, 0.2, 10);
    }

    /// Extreme but valid configuration works and nothing panics.
    #[tokio::test(start_paused = true)]
    async fn extreme_input_is_handled() {
        let b = RetryBudget::new(Duration::from_secs(1), 0.0, 0);
        deposit(&b, 100);
        assert!(!b.withdraw(), "no ratio and no floor: no retries");

        let b = RetryBudget::new(Duration::from_secs(1), MAX_RATIO, 0);
        b.deposit();
        assert_eq!(drain(&b), 1000);

        let b = RetryBudget::new(Duration::MAX, 0.2, u32::MAX);
        assert!(b.withdraw());
        advance(Duration::from_secs(3600)).await;
        assert!(b.withdraw());
        assert!(b.stats().available > 1e20);

        let b = RetryBudget::new(Duration::from_nanos(1), 0.2, u32::MAX);
        for _ in 0..100 {
            b.deposit();
            let _ = b.withdraw();
            advance(Duration::from_nanos(1)).await;
        }
        assert!(b.inner.lock().samples.len() <= RING);
        let _ = format!("{b:?}");
    }

    /// The ring stays within its size under steady withdrawals.
    #[tokio::test(start_paused = true)]
    async fn ring_stays_bounded() {
        let budget = RetryBudget::new(Duration::from_millis(100), 0.2, 1000);
        for _ in 0..1000 {
            let _ = budget.withdraw();
            assert!(budget.inner.lock().samples.len() < RING);
            advance(Duration::from_millis(3)).await;
        }
    }
}
