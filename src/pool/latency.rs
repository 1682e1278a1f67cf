//! One endpoint's latency histogram: log-linear buckets of atomic counts.
//!
//! Off by default; [`Pool::record_latency`](super::Pool::record_latency)
//! gives every endpoint one, allocated when the snapshot is built, never on
//! the request path. A response timed then adds to one bucket (one, or
//! the number of answers it stands for when the pool samples): an index
//! from the latency's leading bit and the two bits after it, and one
//! relaxed atomic add. Buckets are four per power of two (each ends at most 1.25×
//! where it starts, finer than Prometheus's default buckets) from 1 µs to about
//! 69 s, with one below and one above: 106 counts, 848 bytes per endpoint.

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

/// Latencies below `2^MIN_SHIFT` ns (1.024 µs) share the first bucket.
const MIN_SHIFT: u32 = 10;
/// Latencies of `2^MAX_SHIFT` ns (68.7 s) or more share the last bucket.
const MAX_SHIFT: u32 = 36;
/// Buckets per power of two: the two bits after the leading one.
const SUB_BITS: u32 = 2;
const SUB: usize = 1 << SUB_BITS;
/// The bucket count: one below, four per power of two, one above.
pub(crate) const BUCKETS: usize = 2 + (MAX_SHIFT - MIN_SHIFT) as usize * SUB;

/// The counts of one endpoint's latencies, by bucket.
pub(crate) struct LatencyCounts {
    counts: [AtomicU64; BUCKETS],
}

impl LatencyCounts {
    pub(crate) fn new() -> Box<Self> {
        Box::new(LatencyCounts {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        })
    }

    /// Counts a latency of `ns` nanoseconds `2^weight_shift` times: once
    /// for an answer timed among all, more for one sampled among many.
    #[inline]
    pub(crate) fn record(&self, ns: u64, weight_shift: u8) {
        self.counts[bucket(ns)].fetch_add(1 << weight_shift, Relaxed);
    }

    /// The non-empty buckets, in order: `(from_ns, below_ns, count)`.
    pub(crate) fn buckets(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.counts.iter().enumerate().filter_map(|(i, c)| {
            let n = c.load(Relaxed);
            (n > 0).then(|| (from_ns(i), below_ns(i), n))
        })
    }
}

impl fmt::Debug for LatencyCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyCounts")
            .field("count", &self.buckets().map(|(.., n)| n).sum::<u64>())
            .finish()
    }
}

/// Whether a pool's endpoints keep latency histograms and, for a strategy
/// that does not time every request anyway, one answer in how many a
/// balancer times for them (a power of two; each sample then counts for
/// that many). One byte, shared by the pool and its balancers: a pick reads
/// it where it reads the rest of its balancer's state.
#[derive(Debug)]
pub(crate) struct Sampling(AtomicU8);

/// The byte's value while no histograms are kept.
const OFF: u8 = u8::MAX;
/// At most one answer in `2^MAX_SAMPLE_SHIFT` (about a million) is timed.
pub(crate) const MAX_SAMPLE_SHIFT: u8 = 20;

impl Sampling {
    pub(crate) fn off() -> Self {
        Sampling(AtomicU8::new(OFF))
    }

    /// Turns histograms on, timing every answer, unless they are on.
    pub(crate) fn keep(&self) {
        let _ = self.0.compare_exchange(OFF, 0, Relaxed, Relaxed);
    }

    pub(crate) fn is_on(&self) -> bool {
        self.0.load(Relaxed) != OFF
    }

    /// Times one answer in `one_in`, rounded down to a power of two (1 for
    /// 0) and capped at `2^MAX_SAMPLE_SHIFT`, if histograms are on.
    pub(crate) fn set_one_in(&self, one_in: u32) {
        let shift = one_in.max(1).ilog2().min(u32::from(MAX_SAMPLE_SHIFT)) as u8;
        let _ = self
            .0
            .fetch_update(Relaxed, Relaxed, |s| (s != OFF).then_some(shift));
    }

    /// `None` while off; else `n` for one answer in `2^n`.
    #[inline]
    pub(crate) fn shift(&self) -> Option<u8> {
        let s = self.0.load(Relaxed);
        (s != OFF).then_some(s)
    }

    /// One answer in how many is timed, while histograms are on.
    pub(crate) fn one_in(&self) -> Option<u32> {
        self.shift().map(|s| 1 << s)
    }
}

/// The bucket a latency of `ns` falls in.
#[inline]
fn bucket(ns: u64) -> usize {
    if ns < 1 << MIN_SHIFT {
        return 0;
    }
    let octave = 63 - ns.leading_zeros();
    if octave >= MAX_SHIFT {
        return BUCKETS - 1;
    }
    let sub = (ns >> (octave - SUB_BITS)) as usize & (SUB - 1);
    1 + (octave - MIN_SHIFT) as usize * SUB + sub
}

/// Where bucket `i` starts, in nanoseconds (inclusive).
fn from_ns(i: usize) -> u64 {
    if i == 0 { 0 } else { below_ns(i - 1) }
}

/// Where bucket `i` ends, in nanoseconds (exclusive); `u64::MAX` for the
/// last one.
fn below_ns(i: usize) -> u64 {
    match i {
        0 => 1 << MIN_SHIFT,
        i if i >= BUCKETS - 1 => u64::MAX,
        i => {
            let k = i - 1;
            let octave = MIN_SHIFT + (k / SUB) as u32;
            let step = 1u64 << (octave - SUB_BITS);
            (1u64 << octave) + (k % SUB + 1) as u64 * step
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latency_falls_in_the_bucket_whose_bounds_hold_it() {
        let mut ns = 0u64;
        while ns < 1 << 40 {
            let i = bucket(ns);
            assert!(from_ns(i) <= ns && ns < below_ns(i), "{ns} in {i}");
            ns = ns * 9 / 8 + 1;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket(0), 0);
        for i in 1..BUCKETS {
            assert_eq!(from_ns(i), below_ns(i - 1), "buckets are contiguous");
            assert_eq!(bucket(from_ns(i)), i, "a bucket starts at its start");
            assert_eq!(bucket(below_ns(i - 1) - 1), i - 1);
        }
    }

    #[test]
    fn buckets_are_at_most_a_quarter_wider_than_where_they_start() {
        for i in 2..BUCKETS - 1 {
            let (from, below) = (from_ns(i) as f64, below_ns(i) as f64);
            assert!(below / from <= 1.25 + 1e-12, "bucket {i}: {from}..{below}");
        }
        assert_eq!(below_ns(BUCKETS - 2), 1 << MAX_SHIFT);
    }

    #[test]
    fn sampling_is_off_until_kept_and_rounds_down_to_a_power_of_two() {
        let s = Sampling::off();
        s.set_one_in(8);
        assert_eq!(s.one_in(), None, "no sampling while off");
        s.keep();
        assert_eq!(s.one_in(), Some(1));
        for (asked, got) in [
            (0, 1),
            (1, 1),
            (7, 4),
            (8, 8),
            (1000, 512),
            (u32::MAX, 1 << 20),
        ] {
            s.set_one_in(asked);
            assert_eq!(s.one_in(), Some(got), "{asked}");
        }
        s.keep();
        assert_eq!(s.one_in(), Some(1 << 20), "keeping again keeps the rate");
    }

    #[test]
    fn counts_add_up_by_bucket() {
        let h = LatencyCounts::new();
        for ns in [500, 900, 1_500_000, 1_500_001, 200_000_000_000] {
            h.record(ns, 0);
        }
        let b: Vec<_> = h.buckets().collect();
        assert_eq!(b.len(), 3, "{b:?}");
        assert_eq!(b[0], (0, 1024, 2));
        assert_eq!(b[1].2, 2);
        assert!(b[1].0 <= 1_500_000 && 1_500_001 < b[1].1);
        assert_eq!(b[2], (1 << MAX_SHIFT, u64::MAX, 1));
        h.record(500, 3);
        assert_eq!(h.buckets().next(), Some((0, 1024, 10)), "a sample counts 8");
    }
}
