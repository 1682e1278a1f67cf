use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::latency::LatencyCounts;

/// Live counters for one endpoint, shared by every snapshot that holds it.
///
/// An endpoint keeps the same stats for as long as its key stays in the
/// pool, so a re-announce with a new weight or priority loses nothing. All
/// fields are atomics updated on the request path without a lock. Reach
/// them through a [`StatsHandle`], which also knows the requests in flight.
#[derive(Debug)]
// Each endpoint's counters get their own cache lines, so requests to
// different endpoints on different cores do not contend; `C` keeps the
// fields in the order below, what picks read on the first line and what
// completions write on the second. Aligned to one line, not two: the
// `Arc`'s reference count (the in-flight count a pick reads) then sits on
// the line just before, in the same 128-byte pair, which the adjacent-line
// prefetcher fetches together.
#[repr(C, align(64))]
pub struct EndpointStats {
    /// The pool's epoch: latency stamps are nanoseconds since it.
    epoch: Instant,
    /// How many of the `Arc`'s strong references are [`StatsHandle`]s; the
    /// others are requests in flight. Read by every pick that looks at
    /// load, written only when snapshots change.
    handles: AtomicU64,
    /// Peak-EWMA round-trip estimate in nanoseconds, as `f64` bits; 0 means
    /// no sample yet. Read by Peak-EWMA picks beside `handles`, and written
    /// only by requests that are timed for Peak-EWMA.
    ewma_ns: AtomicU64,
    /// When `ewma_ns` was last updated, in nanoseconds since the pool epoch.
    ewma_at: AtomicU64,
    /// When a timed request last got an answer (a success or a failure,
    /// not a cancellation), in nanoseconds since the pool epoch.
    answered_at: AtomicU64,
    /// Its latency histogram, once the pool keeps them
    /// ([`Pool::record_latency`](super::Pool::record_latency)). Beside the
    /// Peak-EWMA fields a timed response writes anyway.
    latency: OnceLock<Box<LatencyCounts>>,
    /// Written by every completion: on a line of their own, so that a pick
    /// on one core does not miss on the line it reads each time a request
    /// ends on another.
    outcomes: Outcomes,
}

#[derive(Debug)]
#[repr(align(64))]
struct Outcomes {
    successes: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Failures that showed the endpoint could not be reached (a subset
    /// of `failures`).
    unreachable: AtomicU64,
    /// Woken on every failure, and by [`wake`](EndpointStats::wake), so
    /// whoever watches outcomes (failover) reacts at once rather than at
    /// its next tick.
    signal: Arc<Notify>,
}

/// A shared reference to one endpoint's [`EndpointStats`] (it derefs to
/// them), as held by snapshots and pickers.
///
/// Requests in flight are counted without a counter of their own: each
/// request holds a plain reference to the stats for as long as it runs, so
/// [`in_flight`](StatsHandle::in_flight) is the number of references that
/// are not handles. Starting a request is then one atomic increment and
/// finishing it one decrement (plus one for the outcome), and a request can
/// outlive the snapshot it was picked from. While a snapshot is being
/// replaced the count may read one high for an instant.
///
/// Why not a counter of its own beside the reference: that is one more
/// atomic increment and decrement per request, and measured in the
/// `roundtrip` bench, back to back with this build on a 2-vCPU guest, it
/// cost 13–17 ns per request. As ratios to tower's p2c in the same run
/// (N = 10 / 1 000), `least_in_flight` went 0.252 → 0.302 / 0.283 → 0.356
/// and `random` 0.262 → 0.298 / 0.281 → 0.319: more than the 12–14 %
/// run-to-run spread of those ratios.
pub struct StatsHandle {
    stats: Arc<EndpointStats>,
}

impl StatsHandle {
    /// Stats whose failures wake nothing; for tests and benches.
    #[cfg(any(test, feature = "unstable-bench"))]
    pub(crate) fn new(epoch: Instant) -> Self {
        Self::with_signal(epoch, Arc::new(Notify::new()))
    }

    /// Stats whose failures wake `signal` (the pool's).
    pub(crate) fn with_signal(epoch: Instant, signal: Arc<Notify>) -> Self {
        StatsHandle {
            stats: Arc::new(EndpointStats {
                epoch,
                handles: AtomicU64::new(1),
                ewma_ns: AtomicU64::new(0),
                ewma_at: AtomicU64::new(0),
                answered_at: AtomicU64::new(0),
                latency: OnceLock::new(),
                outcomes: Outcomes {
                    successes: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    consecutive_failures: AtomicU32::new(0),
                    unreachable: AtomicU64::new(0),
                    signal,
                },
            }),
        }
    }

    /// Requests sent to this endpoint that have not finished (completed,
    /// failed or been cancelled).
    #[inline]
    pub fn in_flight(&self) -> u64 {
        let refs = Arc::strong_count(&self.stats) as u64;
        refs.saturating_sub(self.stats.handles.load(Relaxed))
    }

    /// Whether two handles refer to the same endpoint's stats.
    pub fn ptr_eq(a: &StatsHandle, b: &StatsHandle) -> bool {
        Arc::ptr_eq(&a.stats, &b.stats)
    }

    /// The endpoint's identity for a retry layer's "already tried" set.
    #[inline]
    pub(crate) fn id(&self) -> crate::attempt::EndpointId {
        crate::attempt::endpoint_id(&self.stats)
    }

    /// Starts a request: the returned reference counts it as in flight
    /// until it is dropped.
    #[inline]
    pub(crate) fn start_request(&self) -> Arc<EndpointStats> {
        Arc::clone(&self.stats)
    }
}

impl Clone for StatsHandle {
    fn clone(&self) -> Self {
        // Count the handle before the reference, so a concurrent reader
        // sees one request too few rather than one too many.
        self.stats.handles.fetch_add(1, Relaxed);
        StatsHandle {
            stats: Arc::clone(&self.stats),
        }
    }
}

impl Drop for StatsHandle {
    fn drop(&mut self) {
        self.stats.handles.fetch_sub(1, Relaxed);
    }
}

impl Deref for StatsHandle {
    type Target = EndpointStats;

    fn deref(&self) -> &EndpointStats {
        &self.stats
    }
}

impl fmt::Debug for StatsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsHandle")
            .field("in_flight", &self.in_flight())
            .field("stats", &*self.stats)
            .finish()
    }
}

impl EndpointStats {
    /// The pool's epoch: on tokio's clock, latency stamps count from it.
    #[inline]
    pub(crate) fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Requests that completed successfully.
    pub fn successes(&self) -> u64 {
        self.outcomes.successes.load(Relaxed)
    }

    /// Requests that failed.
    pub fn failures(&self) -> u64 {
        self.outcomes.failures.load(Relaxed)
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.outcomes.consecutive_failures.load(Relaxed)
    }

    /// Failures that showed the endpoint could not be reached: connection
    /// refused or reset before an answer, a connect timeout, the endpoint
    /// service not becoming ready, as the balancer's classifier judged
    /// them.
    pub fn unreachable_failures(&self) -> u64 {
        self.outcomes.unreachable.load(Relaxed)
    }

    /// The Peak-EWMA latency estimate as of its last sample, if any.
    pub fn ewma_latency(&self) -> Option<Duration> {
        let ns = f64::from_bits(self.ewma_ns.load(Relaxed));
        (ns > 0.0).then(|| Duration::from_nanos(ns as u64))
    }

    /// Gives it a latency histogram, if it has none yet.
    pub(crate) fn keep_latency(&self) {
        self.latency.get_or_init(LatencyCounts::new);
    }

    /// Its latency histogram, if it keeps one.
    pub(crate) fn latency(&self) -> Option<&LatencyCounts> {
        self.latency.get().map(|b| &**b)
    }

    /// Counts an answer after `rtt_ns` in its histogram, if it keeps one,
    /// `2^weight_shift` times (a sample of that many answers).
    #[inline]
    pub(crate) fn record_latency(&self, rtt_ns: u64, weight_shift: u8) {
        if let Some(h) = self.latency.get() {
            h.record(rtt_ns, weight_shift);
        }
    }

    /// Records a success (the request's reference is dropped separately).
    #[inline]
    pub(crate) fn record_success(&self) {
        self.outcomes.successes.fetch_add(1, Relaxed);
        if self.outcomes.consecutive_failures.load(Relaxed) != 0 {
            self.outcomes.consecutive_failures.store(0, Relaxed);
        }
    }

    /// Wakes whoever watches the pool's outcomes, as a failure does.
    pub(crate) fn wake(&self) {
        self.outcomes.signal.notify_one();
    }

    /// Forgets the failure streak and the latency estimate (when an
    /// ejected or down endpoint comes back): its history is stale, and
    /// with no estimate a load-aware strategy costs it as its rivals, so
    /// it gets its share at once rather than after a stale peak decays.
    pub(crate) fn reset_history(&self) {
        self.outcomes.consecutive_failures.store(0, Relaxed);
        self.ewma_ns.store(0, Relaxed);
    }

    /// The Peak-EWMA estimate as [`rtt_estimate`](Self::rtt_estimate)
    /// gives it, but for an endpoint with requests in flight no lower than
    /// the time since it last answered: a request outstanding that long
    /// takes at least that long, so an endpoint that stops answering (a
    /// hung process) costs more with every moment, instead of attracting
    /// requests at its last good latency until the first one times out.
    #[inline]
    pub(crate) fn rtt_estimate_loaded(
        &self,
        now_ns: u64,
        inv_tau_ns: f64,
        in_flight: u64,
    ) -> Option<f64> {
        let estimate = self.rtt_estimate(now_ns, inv_tau_ns)?;
        if in_flight == 0 {
            return Some(estimate);
        }
        let silent = now_ns.saturating_sub(self.answered_at.load(Relaxed)) as f64;
        Some(estimate.max(silent))
    }

    /// Records a failure (`unreachable` when it showed the endpoint could
    /// not be reached), and wakes whoever watches the pool's outcomes.
    pub(crate) fn record_failure(&self, unreachable: bool) {
        self.outcomes.failures.fetch_add(1, Relaxed);
        self.outcomes.consecutive_failures.fetch_add(1, Relaxed);
        if unreachable {
            self.outcomes.unreachable.fetch_add(1, Relaxed);
        }
        self.outcomes.signal.notify_one();
    }

    /// Scores an attempt that failed or was cancelled after `rtt_ns`:
    /// never below the current estimate, so that an endpoint that fails
    /// fast, or whose attempts are given up on, never looks cheaper for
    /// it. With no estimate yet, `rtt_ns` becomes the first one only when
    /// `bound` (it is then a lower bound of the latency, as a cancelled
    /// attempt's running time is); a fast failure leaves it unset, so the
    /// endpoint keeps being costed at its rival's estimate.
    #[inline]
    pub(crate) fn record_rtt_at_least(
        &self,
        rtt_ns: f64,
        now_ns: u64,
        inv_tau_ns: f64,
        bound: bool,
    ) {
        match self.rtt_estimate(now_ns, inv_tau_ns) {
            Some(estimate) => self.record_rtt(rtt_ns.max(estimate), now_ns, inv_tau_ns),
            None if bound => self.record_rtt(rtt_ns, now_ns, inv_tau_ns),
            None => {}
        }
    }

    /// Notes that a timed request got an answer at `now_ns`.
    #[inline]
    pub(crate) fn record_answer(&self, now_ns: u64) {
        self.answered_at.store(now_ns, Relaxed);
    }

    /// Folds one round trip into the Peak-EWMA estimate: a sample above the
    /// (decayed) estimate replaces it at once (the peak), a lower one pulls
    /// it down with weight `1 - exp(-elapsed / tau)`; `inv_tau_ns` is
    /// `1 / tau` in nanoseconds.
    ///
    /// A load and a store rather than a compare-and-swap loop: when two
    /// requests to the same endpoint end at the same instant, one of their
    /// two samples may be lost. The estimate stays one that samples made,
    /// and the next sample corrects it; a lock-prefixed instruction on
    /// every response would cost more than that is worth.
    #[inline]
    pub(crate) fn record_rtt(&self, rtt_ns: f64, now_ns: u64, inv_tau_ns: f64) {
        let prev = f64::from_bits(self.ewma_ns.load(Relaxed));
        let next = if prev <= 0.0 || rtt_ns > prev {
            rtt_ns
        } else {
            let at = self.ewma_at.load(Relaxed);
            let decay = decay(now_ns.saturating_sub(at), inv_tau_ns);
            prev * decay + rtt_ns * (1.0 - decay)
        };
        self.ewma_ns.store(next.max(1.0).to_bits(), Relaxed);
        self.ewma_at.store(now_ns, Relaxed);
    }

    /// The Peak-EWMA estimate decayed to `now_ns`, or `None` with no
    /// sample yet. An endpoint that gets no traffic drifts back towards zero
    /// cost, so a once-slow endpoint is tried again (linkerd, Finagle).
    #[inline]
    pub(crate) fn rtt_estimate(&self, now_ns: u64, inv_tau_ns: f64) -> Option<f64> {
        let prev = f64::from_bits(self.ewma_ns.load(Relaxed));
        if prev <= 0.0 {
            return None;
        }
        Some(
            prev * decay(
                now_ns.saturating_sub(self.ewma_at.load(Relaxed)),
                inv_tau_ns,
            ),
        )
    }
}

/// `exp(-elapsed / tau)` given `1 / tau`.
///
/// Samples of a busy endpoint are far less than `tau` (10 s by default)
/// apart, and there a second-order Taylor series is exact to 2e-10; it
/// saves a libm call on each of the three decays a Peak-EWMA request
/// computes (two candidates at the pick, one at the response).
#[inline]
fn decay(elapsed_ns: u64, inv_tau_ns: f64) -> f64 {
    let x = elapsed_ns as f64 * inv_tau_ns;
    if x < 1e-3 {
        return 1.0 - x + 0.5 * x * x;
    }
    (-x).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_picks_read_and_what_completions_write_are_on_different_lines() {
        use std::mem::{align_of, offset_of, size_of};
        assert_eq!(size_of::<EndpointStats>(), 128, "two lines, no more");
        assert_eq!(align_of::<EndpointStats>(), 64, "one line");
        for read in [
            offset_of!(EndpointStats, handles),
            offset_of!(EndpointStats, ewma_ns),
            offset_of!(EndpointStats, ewma_at),
            offset_of!(EndpointStats, answered_at),
            offset_of!(EndpointStats, latency),
        ] {
            assert!(read < 64, "read by picks: the first line");
        }
        assert_eq!(offset_of!(EndpointStats, outcomes), 64, "the second line");
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let s = StatsHandle::new(Instant::now());
        let tau = 1e-9; // 1 / (1 s)
        assert_eq!(s.rtt_estimate(0, tau), None);
        s.record_rtt(100.0, 0, tau);
        assert_eq!(s.rtt_estimate(0, tau), Some(100.0));
        s.record_rtt(1000.0, 10, tau);
        assert_eq!(s.ewma_latency(), Some(Duration::from_nanos(1000)));
        // A lower sample long after moves the estimate almost all the way.
        s.record_rtt(10.0, 10 + 10_000_000_000, tau);
        assert!(s.rtt_estimate(10 + 10_000_000_000, tau).unwrap() < 11.0);
        // With no samples the estimate decays towards zero.
        s.record_rtt(1000.0, 20_000_000_000, tau);
        let later = s.rtt_estimate(21_000_000_000, tau).unwrap();
        assert!(
            (later - 1000.0 / std::f64::consts::E).abs() < 1e-6,
            "{later}"
        );
    }

    #[test]
    fn failures_and_cancellations_never_lower_the_estimate() {
        let s = StatsHandle::new(Instant::now());
        let tau = 1e-9;
        // A fast failure with no estimate sets none; a cancelled attempt's
        // running time does.
        s.record_rtt_at_least(100.0, 0, tau, false);
        assert_eq!(s.rtt_estimate(0, tau), None);
        s.record_rtt_at_least(5000.0, 0, tau, true);
        assert_eq!(s.rtt_estimate(0, tau), Some(5000.0));
        // Faster failures keep it where it is; a slower one raises it.
        for _ in 0..100 {
            s.record_rtt_at_least(10.0, 1, tau, false);
        }
        assert!(s.rtt_estimate(1, tau).unwrap() >= 4999.9);
        s.record_rtt_at_least(9000.0, 2, tau, true);
        assert_eq!(s.rtt_estimate(2, tau), Some(9000.0));
    }

    #[tokio::test]
    async fn failures_wake_the_signal() {
        let signal = Arc::new(Notify::new());
        let s = StatsHandle::with_signal(Instant::now(), signal.clone());
        s.record_success();
        let woken = || tokio::time::timeout(Duration::from_millis(10), signal.notified());
        assert!(woken().await.is_err(), "a success wakes nothing");
        s.record_failure(false);
        assert!(woken().await.is_ok(), "a failure stores a wake-up");
        s.wake();
        assert!(woken().await.is_ok(), "and so does wake");
    }

    #[test]
    fn an_endpoint_that_stops_answering_costs_at_least_its_silence() {
        let s = StatsHandle::new(Instant::now());
        let tau = 1e-9;
        s.record_rtt(300.0, 1_000, tau);
        s.record_answer(1_000);
        // Idle: the estimate. Busy: no less than the time since it last
        // answered.
        assert_eq!(
            s.rtt_estimate_loaded(1_100, tau, 0),
            s.rtt_estimate(1_100, tau)
        );
        assert_eq!(
            s.rtt_estimate_loaded(1_100, tau, 1),
            s.rtt_estimate(1_100, tau)
        );
        let later = 1_000 + 50_000_000;
        assert_eq!(s.rtt_estimate_loaded(later, tau, 3), Some(50_000_000.0));
        // A cancelled attempt is no answer: the silence goes on.
        s.record_rtt_at_least(1_000.0, later, tau, true);
        let even_later = later + 10_000_000;
        assert_eq!(
            s.rtt_estimate_loaded(even_later, tau, 1),
            Some(60_000_000.0)
        );
        s.reset_history();
        assert_eq!(s.rtt_estimate_loaded(later, tau, 3), None);
    }

    #[test]
    fn the_estimate_decays_by_exp_of_elapsed_over_tau() {
        let s = StatsHandle::new(Instant::now());
        let tau_ns = 1e9;
        let inv_tau = 1.0 / tau_ns;
        s.record_rtt(1000.0, 0, inv_tau);
        // Untouched, the estimate is 1000 × e^(-t / tau).
        for (t_ns, want) in [
            (0, 1000.0),
            // Short gaps (the series), either side of where it hands over.
            (100_000, 999.900_004_999_833_3),
            (999_000, 999.001_498_834_374_3),
            (1_000_000, 999.000_499_833_375),
            (500_000_000, 606.530_659_712_633_5),
            (1_000_000_000, 367.879_441_171_442_35),
            (3_000_000_000, 49.787_068_367_863_945),
        ] {
            let got = s.rtt_estimate(t_ns, inv_tau).unwrap();
            assert!((got - want).abs() < 1e-9 * want, "{t_ns}: {got} vs {want}");
        }
        assert_eq!(s.rtt_estimate(10_000_000_000_000, inv_tau), Some(0.0));
        // A lower sample one tau later weighs 1 - 1/e against the decayed
        // estimate's 1/e: 1000/e + 100 × (1 - 1/e).
        s.record_rtt(100.0, 1_000_000_000, inv_tau);
        let want = 431.091_497_054_298_1;
        let got = s.rtt_estimate(1_000_000_000, inv_tau).unwrap();
        assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    }

    #[test]
    fn counters_and_in_flight_by_reference() {
        let h = StatsHandle::new(Instant::now());
        let h2 = h.clone();
        let r1 = h.start_request();
        let r2 = h.start_request();
        assert_eq!((h.in_flight(), h2.in_flight()), (2, 2));
        r1.record_failure(false);
        drop(r1);
        let r3 = h.start_request();
        r3.record_failure(true);
        drop(r3);
        assert_eq!(h.consecutive_failures(), 2);
        r2.record_success();
        drop(r2);
        drop(h2);
        assert_eq!(
            (
                h.in_flight(),
                h.successes(),
                h.failures(),
                h.consecutive_failures()
            ),
            (0, 1, 2, 0)
        );
        assert_eq!(h.unreachable_failures(), 1);
        // A request may outlive every handle.
        let r = h.start_request();
        drop(h);
        r.record_success();
        assert_eq!(r.successes(), 2);
    }
}
