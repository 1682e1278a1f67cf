use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

/// Bits of [`EndpointStats::live`] that count requests in flight; the bits
/// above count successes, so finishing a successful request is one atomic
/// add (`SUCCESS - 1`).
const IN_FLIGHT_BITS: u32 = 24;
const IN_FLIGHT_MASK: u64 = (1 << IN_FLIGHT_BITS) - 1;
const SUCCESS: u64 = 1 << IN_FLIGHT_BITS;
/// Successes the packed field holds before it wraps into `success_wraps`.
const SUCCESS_FIELD: u64 = 1 << (64 - IN_FLIGHT_BITS);

/// Live counters for one endpoint, shared by every snapshot that holds it.
///
/// An endpoint keeps the same `EndpointStats` for as long as its key stays
/// in the pool, so a re-announce with a new weight or priority loses
/// nothing. All fields are atomics updated on the request path without a
/// lock; a request costs two atomic adds here (start, and finish with its
/// outcome).
#[derive(Debug)]
// Each endpoint's counters get their own cache lines (two, for the
// adjacent-line prefetcher), so requests to different endpoints on
// different cores do not contend.
#[repr(align(128))]
pub struct EndpointStats {
    /// The pool's epoch: latency stamps are nanoseconds since it.
    epoch: Instant,
    /// Low 24 bits: requests in flight (up to 16.7 million at once per
    /// endpoint); high 40 bits: successes, modulo 2^40.
    live: AtomicU64,
    /// How many times the success field wrapped.
    success_wraps: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Peak-EWMA round-trip estimate in nanoseconds, as `f64` bits; 0 means
    /// no sample yet.
    ewma_ns: AtomicU64,
    /// When `ewma_ns` was last updated, in nanoseconds since the pool epoch.
    ewma_at: AtomicU64,
}

impl EndpointStats {
    pub(crate) fn new(epoch: Instant) -> Self {
        EndpointStats {
            epoch,
            live: AtomicU64::new(0),
            success_wraps: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(0),
            ewma_at: AtomicU64::new(0),
        }
    }

    /// Nanoseconds from the pool epoch to now.
    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        crate::balance::nanos_since(self.epoch)
    }

    /// Requests sent to this endpoint that have not finished (completed,
    /// failed or been cancelled).
    pub fn in_flight(&self) -> u64 {
        self.live.load(Relaxed) & IN_FLIGHT_MASK
    }

    /// Requests that completed successfully.
    pub fn successes(&self) -> u64 {
        let field = self.live.load(Relaxed) >> IN_FLIGHT_BITS;
        self.success_wraps.load(Relaxed) * SUCCESS_FIELD + field
    }

    /// Requests that failed.
    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    /// The Peak-EWMA latency estimate as of its last sample, if any.
    pub fn ewma_latency(&self) -> Option<Duration> {
        let ns = f64::from_bits(self.ewma_ns.load(Relaxed));
        (ns > 0.0).then(|| Duration::from_nanos(ns as u64))
    }

    #[inline]
    pub(crate) fn start(&self) {
        self.live.fetch_add(1, Relaxed);
    }

    /// Ends a request that was cancelled or whose outcome is recorded
    /// separately.
    #[inline]
    pub(crate) fn finish(&self) {
        self.live.fetch_sub(1, Relaxed);
    }

    /// Ends a request that succeeded: one atomic add.
    #[inline]
    pub(crate) fn finish_success(&self) {
        let before = self.live.fetch_add(SUCCESS.wrapping_sub(1), Relaxed);
        if before >> IN_FLIGHT_BITS == SUCCESS_FIELD - 1 {
            self.success_wraps.fetch_add(1, Relaxed);
        }
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    /// Ends a request that failed.
    pub(crate) fn finish_failure(&self) {
        self.finish();
        self.failures.fetch_add(1, Relaxed);
        self.consecutive_failures.fetch_add(1, Relaxed);
    }

    /// Folds one round trip into the Peak-EWMA estimate: a sample above the
    /// (decayed) estimate replaces it at once (the peak), a lower one pulls
    /// it down with weight `1 - exp(-elapsed / tau)`.
    pub(crate) fn record_rtt(&self, rtt_ns: f64, now_ns: u64, tau_ns: f64) {
        let at = self.ewma_at.load(Relaxed);
        let _ = self.ewma_ns.fetch_update(Relaxed, Relaxed, |bits| {
            let prev = f64::from_bits(bits);
            let next = if prev <= 0.0 || rtt_ns > prev {
                rtt_ns
            } else {
                let decay = decay(now_ns.saturating_sub(at), tau_ns);
                prev * decay + rtt_ns * (1.0 - decay)
            };
            Some(next.max(1.0).to_bits())
        });
        self.ewma_at.store(now_ns, Relaxed);
    }

    /// The Peak-EWMA estimate decayed to `now_ns`, or `None` with no
    /// sample yet. An endpoint that gets no traffic drifts back towards zero
    /// cost, so a once-slow endpoint is tried again (linkerd, Finagle).
    #[inline]
    pub(crate) fn rtt_estimate(&self, now_ns: u64, tau_ns: f64) -> Option<f64> {
        let prev = f64::from_bits(self.ewma_ns.load(Relaxed));
        if prev <= 0.0 {
            return None;
        }
        Some(prev * decay(now_ns.saturating_sub(self.ewma_at.load(Relaxed)), tau_ns))
    }
}

/// `exp(-elapsed / tau)`, to a relative error below 1e-6 — ample for
/// weighing latencies — without a libm call on the request path.
#[inline]
fn decay(elapsed_ns: u64, tau_ns: f64) -> f64 {
    let x = elapsed_ns as f64 / tau_ns;
    if x < 1e-3 {
        // The common case: far less than tau since the last sample.
        return 1.0 - x + 0.5 * x * x;
    }
    if x >= 700.0 {
        return 0.0;
    }
    // exp(-x) = 2^-(k + f) with k whole and f in [0, 1); 2^-f by a
    // polynomial, 2^-k by building the exponent bits.
    let y = x * std::f64::consts::LOG2_E;
    let k = y.floor();
    let f = (y - k) * std::f64::consts::LN_2;
    // exp(-f) for f in [0, ln 2), Taylor to the 8th power (error < 1e-7).
    let p = 1.0
        - f * (1.0
            - f * (0.5
                - f * (1.0 / 6.0
                    - f * (1.0 / 24.0
                        - f * (1.0 / 120.0
                            - f * (1.0 / 720.0 - f * (1.0 / 5040.0 - f / 40320.0)))))));
    // k <= 1010 here, so 1023 - k stays a normal exponent.
    p * f64::from_bits(((1023 - k as i64) as u64) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let s = EndpointStats::new(Instant::now());
        let tau = 1e9;
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
    fn decay_matches_exp() {
        let mut x = 0.0f64;
        while x < 800.0 {
            let got = decay((x * 1e9) as u64, 1e9);
            let want = (-x).exp();
            assert!(
                (got - want).abs() <= 1e-6 * want + 1e-300,
                "{x}: {got} vs {want}"
            );
            x = x * 1.01 + 1e-6;
        }
        assert_eq!(decay(u64::MAX, 1.0), 0.0);
    }

    #[test]
    fn counters() {
        let s = EndpointStats::new(Instant::now());
        s.start();
        s.start();
        s.finish_failure();
        s.start();
        s.finish_failure();
        assert_eq!(s.consecutive_failures(), 2);
        s.finish_success();
        assert_eq!(
            (
                s.in_flight(),
                s.successes(),
                s.failures(),
                s.consecutive_failures()
            ),
            (0, 1, 2, 0)
        );
        s.start();
        s.finish();
        assert_eq!((s.in_flight(), s.successes()), (0, 1));
    }

    #[test]
    fn success_field_wraps_into_the_overflow_counter() {
        let s = EndpointStats::new(Instant::now());
        s.live.store((SUCCESS_FIELD - 2) << IN_FLIGHT_BITS, Relaxed);
        for _ in 0..3 {
            s.start();
            s.start();
            s.finish_success();
            s.finish();
        }
        assert_eq!(s.successes(), SUCCESS_FIELD + 1);
        assert_eq!(s.in_flight(), 0);
    }
}
