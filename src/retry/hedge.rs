use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::error::{InvalidSetting, check, valid};

/// When to send a hedged (backup) copy of a request: "The Tail at Scale"
/// (Dean and Barroso, 2013). A second copy sent to another endpoint once
/// the first is slower than most cuts the tail latency for a few percent
/// more load; the budget caps that load.
#[derive(Debug, Clone)]
pub struct Hedge {
    pub(crate) delay: HedgeDelay,
}

#[derive(Debug, Clone)]
pub(crate) enum HedgeDelay {
    Fixed(Duration),
    Percentile {
        quantile: f64,
        min: Duration,
        max: Duration,
    },
}

impl Hedge {
    /// Hedges requests that have not answered after `delay`.
    pub fn after(delay: Duration) -> Self {
        Hedge {
            delay: HedgeDelay::Fixed(delay),
        }
    }

    /// Hedges requests slower than the `percentile` (e.g. 95.0) of the
    /// layer's recent latencies, learned from its own requests, but never
    /// sooner than `min` nor later than `max` (used until enough
    /// latencies are known).
    ///
    /// # Panics
    ///
    /// When `percentile` is not a number from 0 to 100, or `max` is
    /// shorter than `min`; [`try_at_percentile`](Hedge::try_at_percentile)
    /// returns the error instead.
    #[track_caller]
    pub fn at_percentile(percentile: f64, min: Duration, max: Duration) -> Self {
        valid(Self::try_at_percentile(percentile, min, max))
    }

    /// [`at_percentile`](Hedge::at_percentile), refusing a `percentile`
    /// outside 0–100 (NaN included) and a `max` shorter than `min`.
    pub fn try_at_percentile(
        percentile: f64,
        min: Duration,
        max: Duration,
    ) -> Result<Self, InvalidSetting> {
        check(
            (0.0..=100.0).contains(&percentile),
            "Hedge::at_percentile(percentile)",
            percentile,
            "must be a number from 0 to 100",
        )?;
        check(
            max >= min,
            "Hedge::at_percentile(max)",
            max,
            "must not be shorter than min",
        )?;
        Ok(Hedge {
            delay: HedgeDelay::Percentile {
                quantile: percentile / 100.0,
                min,
                max,
            },
        })
    }

    pub(crate) fn learns(&self) -> bool {
        matches!(self.delay, HedgeDelay::Percentile { .. })
    }

    pub(crate) fn delay(&self, latencies: &LatencyHistogram) -> Duration {
        match self.delay {
            HedgeDelay::Fixed(d) => d,
            HedgeDelay::Percentile { quantile, min, max } => latencies
                .quantile(quantile)
                .map_or(max, |d| d.clamp(min, max)),
        }
    }
}

/// Latencies in power-of-two buckets of microseconds; old samples fade by
/// halving every bucket each `AGE_EVERY` samples.
#[derive(Debug)]
pub(crate) struct LatencyHistogram {
    buckets: [AtomicU64; 40],
    count: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
        }
    }
}

const AGE_EVERY: u64 = 4096;
const MIN_SAMPLES: u64 = 32;

impl LatencyHistogram {
    pub(crate) fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let bucket = (63 - us.leading_zeros() as usize).min(self.buckets.len() - 1);
        self.buckets[bucket].fetch_add(1, Relaxed);
        if self.count.fetch_add(1, Relaxed) % AGE_EVERY == AGE_EVERY - 1 {
            for b in &self.buckets {
                let _ = b.fetch_update(Relaxed, Relaxed, |v| Some(v / 2));
            }
        }
    }

    /// The upper bound of the bucket holding quantile `q`, once enough
    /// samples are in.
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        // On the stack: this runs in `call` for every hedgeable request.
        let counts = self.buckets.each_ref().map(|b| b.load(Relaxed));
        let total: u64 = counts.iter().sum();
        if total < MIN_SAMPLES {
            return None;
        }
        let rank = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank.max(1) {
                return Some(Duration::from_micros(1u64 << (i + 1).min(63)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_at_percentile_refuses_a_percentile_outside_0_to_100() {
        let (min, max) = (Duration::from_millis(1), Duration::from_secs(1));
        assert!(Hedge::try_at_percentile(95.0, min, max).is_ok());
        for bad in [f64::NAN, -1.0, 100.1, f64::INFINITY] {
            let e = Hedge::try_at_percentile(bad, min, max).unwrap_err();
            assert_eq!(e.setting(), "Hedge::at_percentile(percentile)", "{bad}");
            assert_eq!(e.value(), format!("{bad:?}"));
            assert_eq!(e.reason(), "must be a number from 0 to 100");
        }
    }

    #[test]
    fn learns_a_percentile_within_its_bounds() {
        let h = LatencyHistogram::default();
        let hedge = Hedge::at_percentile(90.0, Duration::from_millis(1), Duration::from_secs(1));
        assert_eq!(
            hedge.delay(&h),
            Duration::from_secs(1),
            "too few samples: the max"
        );
        for i in 0..1000u64 {
            // 90 % at about 5 ms, 10 % at about 200 ms.
            let ms = if i % 10 == 0 { 200 } else { 5 };
            h.record(Duration::from_millis(ms));
        }
        let d = hedge.delay(&h);
        assert!(
            d >= Duration::from_millis(5) && d <= Duration::from_millis(17),
            "{d:?}"
        );
        let p99 = Hedge::at_percentile(99.0, Duration::from_millis(1), Duration::from_secs(1));
        assert!(p99.delay(&h) >= Duration::from_millis(200));
        assert_eq!(
            Hedge::after(Duration::from_millis(7)).delay(&h),
            Duration::from_millis(7)
        );
    }

    #[test]
    fn a_percentile_must_be_from_0_to_100_and_max_at_least_min() {
        let ms = Duration::from_millis;
        let p = |percentile, min, max| {
            Hedge::try_at_percentile(percentile, min, max).map(|h| match h.delay {
                HedgeDelay::Percentile { quantile, .. } => quantile,
                HedgeDelay::Fixed(_) => unreachable!("a percentile hedge"),
            })
        };
        assert_eq!(p(95.0, ms(1), ms(10)), Ok(0.95));
        assert_eq!(p(0.0, ms(1), ms(1)), Ok(0.0));
        assert_eq!(p(100.0, ms(1), ms(10)), Ok(1.0));
        for bad in [f64::NAN, -1.0, 100.5, f64::INFINITY, f64::NEG_INFINITY] {
            let err = p(bad, ms(1), ms(10)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid setting Hedge::at_percentile(percentile) = {bad:?}: must be a number from 0 to 100"
                )
            );
        }
        assert_eq!(
            p(95.0, ms(10), ms(1)).unwrap_err().to_string(),
            "invalid setting Hedge::at_percentile(max) = 1ms: must not be shorter than min"
        );
    }

    #[test]
    #[should_panic(expected = "invalid setting Hedge::at_percentile(percentile) = NaN")]
    fn at_percentile_panics_on_nan() {
        let _ = Hedge::at_percentile(f64::NAN, Duration::ZERO, Duration::from_secs(1));
    }
}
