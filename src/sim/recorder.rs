//! Recording latencies and reading quantiles.

use std::time::Duration;

/// How a request of a load run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The service answered with a response.
    Ok,
    /// The service answered with an error, or was not ready.
    Failed,
    /// No answer within the per-request timeout; the request was
    /// cancelled.
    TimedOut,
}

/// One request of a load run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sample {
    /// Its number in the run, from 0.
    pub index: u64,
    /// When it was due to be sent, from the start of the run.
    pub sent_at: Duration,
    /// From when it was due to be sent to its answer (or to its timeout).
    pub latency: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

impl Sample {
    /// A sample.
    pub fn new(index: u64, sent_at: Duration, latency: Duration, outcome: Outcome) -> Self {
        Sample {
            index,
            sent_at,
            latency,
            outcome,
        }
    }
}

/// The samples of a load run, in request order.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::sim::{LatencyRecorder, Outcome, Sample};
///
/// let ms = Duration::from_millis;
/// let mut rec = LatencyRecorder::new();
/// for i in 1..=100 {
///     rec.record(Sample::new(i, ms(i), ms(i), Outcome::Ok));
/// }
/// let lat = rec.latencies();
/// assert_eq!(lat.quantile(0.5), Some(ms(50)));
/// assert_eq!(lat.quantile(0.99), Some(ms(99)));
/// assert_eq!(rec.success_rate(ms(90)), 0.9);
/// ```
#[derive(Debug, Clone, Default)]
pub struct LatencyRecorder {
    samples: Vec<Sample>,
}

impl LatencyRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty recorder with room for `n` samples.
    pub fn with_capacity(n: usize) -> Self {
        LatencyRecorder {
            samples: Vec::with_capacity(n),
        }
    }

    /// Adds a sample.
    pub fn record(&mut self, sample: Sample) {
        self.samples.push(sample);
    }

    /// Puts the samples in request order.
    pub fn sort(&mut self) {
        self.samples.sort_by_key(|s| s.index);
    }

    /// The samples.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// How many samples there are.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// How many samples ended so.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.samples.iter().filter(|s| s.outcome == outcome).count()
    }

    /// The latencies of every sample: an error's is its time to fail, a
    /// timed-out request's its timeout.
    pub fn latencies(&self) -> Latencies {
        self.latencies_where(|_| true)
    }

    /// The latencies of the samples `keep` selects.
    pub fn latencies_where(&self, mut keep: impl FnMut(&Sample) -> bool) -> Latencies {
        self.samples
            .iter()
            .filter(|s| keep(s))
            .map(|s| s.latency)
            .collect()
    }

    /// The share of samples answered with a response within `within`, in
    /// `[0, 1]`; 0 when there are none.
    pub fn success_rate(&self, within: Duration) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let ok = self
            .samples
            .iter()
            .filter(|s| s.outcome == Outcome::Ok && s.latency <= within)
            .count();
        ok as f64 / self.samples.len() as f64
    }

    /// How many samples had no answer within `within`: answered (with a
    /// response or an error) after it, or timed out, whenever their
    /// timeout was. Together with the requests counted by
    /// [`success_rate`](LatencyRecorder::success_rate) and the errors
    /// within `within`, they make up every sample.
    pub fn slower_than(&self, within: Duration) -> usize {
        self.samples
            .iter()
            .filter(|s| s.outcome == Outcome::TimedOut || s.latency > within)
            .count()
    }
}

impl Extend<Sample> for LatencyRecorder {
    fn extend<I: IntoIterator<Item = Sample>>(&mut self, iter: I) {
        self.samples.extend(iter);
    }
}

/// Sorted latencies, for quantiles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latencies {
    sorted: Vec<Duration>,
}

impl FromIterator<Duration> for Latencies {
    fn from_iter<I: IntoIterator<Item = Duration>>(iter: I) -> Self {
        let mut sorted: Vec<Duration> = iter.into_iter().collect();
        sorted.sort_unstable();
        Latencies { sorted }
    }
}

impl Latencies {
    /// How many there are.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The `q` quantile (`q` in `[0, 1]`, clamped) by nearest rank: the
    /// smallest latency with at least `q` of them at or below it. `None`
    /// when empty or `q` is NaN.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.sorted.is_empty() || q.is_nan() {
            return None;
        }
        let n = self.sorted.len();
        let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
        self.sorted.get(rank.clamp(1, n) - 1).copied()
    }

    /// The smallest.
    pub fn min(&self) -> Option<Duration> {
        self.sorted.first().copied()
    }

    /// The largest.
    pub fn max(&self) -> Option<Duration> {
        self.sorted.last().copied()
    }

    /// The mean.
    pub fn mean(&self) -> Option<Duration> {
        if self.sorted.is_empty() {
            return None;
        }
        let total: u128 = self.sorted.iter().map(Duration::as_nanos).sum();
        let mean = total / self.sorted.len() as u128;
        Some(Duration::from_nanos(
            u64::try_from(mean).unwrap_or(u64::MAX),
        ))
    }

    /// All of them, smallest first.
    pub fn as_slice(&self) -> &[Duration] {
        &self.sorted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nearest_rank_quantiles() {
        let l: Latencies = [ms(30), ms(10), ms(20), ms(40)].into_iter().collect();
        assert_eq!(l.quantile(0.0), Some(ms(10)));
        assert_eq!(l.quantile(0.25), Some(ms(10)));
        assert_eq!(l.quantile(0.26), Some(ms(20)));
        assert_eq!(l.quantile(0.5), Some(ms(20)));
        assert_eq!(l.quantile(0.99), Some(ms(40)));
        assert_eq!(l.quantile(1.5), Some(ms(40)));
        assert_eq!(l.quantile(f64::NAN), None);
        assert_eq!(l.mean(), Some(ms(25)));
        assert_eq!(Latencies::default().quantile(0.5), None);
    }

    #[test]
    fn success_needs_an_answer_in_time() {
        let mut r = LatencyRecorder::new();
        r.record(Sample::new(0, ms(0), ms(5), Outcome::Ok));
        r.record(Sample::new(1, ms(1), ms(50), Outcome::Ok));
        r.record(Sample::new(2, ms(2), ms(5), Outcome::Failed));
        r.record(Sample::new(3, ms(3), ms(10), Outcome::TimedOut));
        assert_eq!(r.success_rate(ms(10)), 0.25);
        assert_eq!(r.success_rate(ms(50)), 0.5);
        assert_eq!(r.count(Outcome::Failed), 1);
        // The one answered late, and the one timed out.
        assert_eq!(r.slower_than(ms(10)), 2);
        assert_eq!(r.slower_than(ms(50)), 1);
        assert_eq!(r.slower_than(ms(4)), 4);
        assert_eq!(LatencyRecorder::new().success_rate(ms(1)), 0.0);
    }
}
