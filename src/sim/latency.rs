//! Latency distributions for simulated backends.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;

use super::InvalidSim;

/// How long a simulated backend takes to answer: a distribution to draw
/// from, one independent draw per request.
///
/// Cheap to clone (an `Arc`). Built with [`constant`](Latency::constant),
/// [`uniform`](Latency::uniform), [`log_normal`](Latency::log_normal),
/// [`bimodal`](Latency::bimodal) or [`empirical`](Latency::empirical); the
/// fallible ones validate their parameters.
///
/// ```
/// use std::time::Duration;
/// use rand::{rngs::SmallRng, SeedableRng};
/// use tower_lb::sim::Latency;
///
/// let ms = Duration::from_millis;
/// let latency = Latency::uniform(ms(10), ms(20)).unwrap();
/// let mut rng = SmallRng::seed_from_u64(1);
/// let d = latency.sample(&mut rng);
/// assert!(ms(10) <= d && d <= ms(20));
/// ```
#[derive(Clone)]
pub struct Latency {
    kind: Arc<Kind>,
}

enum Kind {
    Constant(f64),
    Uniform {
        low: f64,
        high: f64,
    },
    LogNormal {
        mu: f64,
        sigma: f64,
    },
    Bimodal {
        fast: Latency,
        slow: Latency,
        slow_share: f64,
    },
    Empirical(QuantileTable),
}

impl fmt::Debug for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.kind {
            Kind::Constant(ns) => f
                .debug_tuple("Constant")
                .field(&from_nanos_f64(*ns))
                .finish(),
            Kind::Uniform { low, high } => f
                .debug_struct("Uniform")
                .field("low", &from_nanos_f64(*low))
                .field("high", &from_nanos_f64(*high))
                .finish(),
            Kind::LogNormal { mu, sigma } => f
                .debug_struct("LogNormal")
                .field("median", &from_nanos_f64(mu.exp()))
                .field("sigma", sigma)
                .finish(),
            Kind::Bimodal {
                fast,
                slow,
                slow_share,
            } => f
                .debug_struct("Bimodal")
                .field("fast", fast)
                .field("slow", slow)
                .field("slow_share", slow_share)
                .finish(),
            Kind::Empirical(table) => f.debug_tuple("Empirical").field(table).finish(),
        }
    }
}

/// Nanoseconds as a `Duration`, saturating at both ends.
pub(super) fn from_nanos_f64(ns: f64) -> Duration {
    if ns.is_nan() || ns <= 0.0 {
        Duration::ZERO
    } else if ns >= u64::MAX as f64 {
        Duration::from_nanos(u64::MAX)
    } else {
        Duration::from_nanos(ns as u64)
    }
}

/// A uniform draw in `[0, 1)` with 53 bits of precision.
pub(super) fn unit<R: RngCore + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl Latency {
    fn of(kind: Kind) -> Self {
        Latency {
            kind: Arc::new(kind),
        }
    }

    /// Always `latency`.
    pub fn constant(latency: Duration) -> Self {
        Self::of(Kind::Constant(latency.as_nanos() as f64))
    }

    /// Uniform between `low` and `high` (inclusive); fails if `low > high`.
    pub fn uniform(low: Duration, high: Duration) -> Result<Self, InvalidSim> {
        if low > high {
            return Err(InvalidSim::UniformBounds { low, high });
        }
        Ok(Self::of(Kind::Uniform {
            low: low.as_nanos() as f64,
            high: high.as_nanos() as f64,
        }))
    }

    /// Log-normal with the given median and shape `sigma` (the standard
    /// deviation of the latency's logarithm): the usual model of service
    /// latency, with a long right tail. `sigma` must be finite and not
    /// negative, the median above zero.
    pub fn log_normal(median: Duration, sigma: f64) -> Result<Self, InvalidSim> {
        if !sigma.is_finite() || sigma < 0.0 {
            return Err(InvalidSim::Sigma(sigma));
        }
        if median.is_zero() {
            return Err(InvalidSim::ZeroMedian);
        }
        Ok(Self::of(Kind::LogNormal {
            mu: (median.as_nanos() as f64).ln(),
            sigma,
        }))
    }

    /// Draws from `slow` with probability `slow_share`, else from `fast`:
    /// a cache in front of a store, a GC pause, a cold path. `slow_share`
    /// must lie in `[0, 1]`.
    pub fn bimodal(fast: Latency, slow: Latency, slow_share: f64) -> Result<Self, InvalidSim> {
        if !(0.0..=1.0).contains(&slow_share) {
            return Err(InvalidSim::Probability(slow_share));
        }
        Ok(Self::of(Kind::Bimodal {
            fast,
            slow,
            slow_share,
        }))
    }

    /// Draws from measured quantiles (see [`QuantileTable`]).
    pub fn empirical(table: QuantileTable) -> Self {
        Self::of(Kind::Empirical(table))
    }

    /// One draw.
    pub fn sample<R: RngCore + ?Sized>(&self, rng: &mut R) -> Duration {
        from_nanos_f64(self.sample_ns(rng))
    }

    fn sample_ns<R: RngCore + ?Sized>(&self, rng: &mut R) -> f64 {
        match &*self.kind {
            Kind::Constant(ns) => *ns,
            Kind::Uniform { low, high } => low + (high - low) * unit(rng),
            Kind::LogNormal { mu, sigma } => {
                // Box–Muller; 1 - u lies in (0, 1], so the logarithm is finite.
                let (u1, u2) = (1.0 - unit(rng), unit(rng));
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (mu + sigma * z).exp()
            }
            Kind::Bimodal {
                fast,
                slow,
                slow_share,
            } => {
                if unit(rng) < *slow_share {
                    slow.sample_ns(rng)
                } else {
                    fast.sample_ns(rng)
                }
            }
            Kind::Empirical(table) => table.at_ns(unit(rng)),
        }
    }
}

/// An empirical latency distribution: measured quantiles, sampled by
/// drawing a uniform `u` in `[0, 1)` and interpolating linearly between
/// the two neighbouring quantiles (inverse transform sampling).
///
/// The quantiles need not be evenly spaced: a table can be dense in the
/// tail, where it matters.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::sim::QuantileTable;
///
/// let ms = Duration::from_millis;
/// let table = QuantileTable::try_new([(0.0, ms(10)), (0.5, ms(20)), (1.0, ms(100))]).unwrap();
/// assert_eq!(table.at(0.25), ms(15));
/// assert_eq!(table.at(0.75), ms(60));
/// ```
#[derive(Clone)]
pub struct QuantileTable {
    /// `(quantile, nanoseconds)`, quantiles strictly increasing from 0 to 1.
    points: Arc<[(f64, f64)]>,
}

impl fmt::Debug for QuantileTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuantileTable")
            .field("points", &self.points.len())
            .field("median", &self.at(0.5))
            .field("max", &self.at(1.0))
            .finish()
    }
}

impl QuantileTable {
    /// A table from `(quantile, latency)` points. The quantiles must start
    /// at 0, end at 1 and increase strictly; the latencies must not
    /// decrease.
    pub fn try_new(points: impl IntoIterator<Item = (f64, Duration)>) -> Result<Self, InvalidSim> {
        let points: Vec<(f64, f64)> = points
            .into_iter()
            .map(|(q, d)| (q, d.as_nanos() as f64))
            .collect();
        if points.len() < 2 {
            return Err(InvalidSim::TooFewQuantiles(points.len()));
        }
        if points[0].0 != 0.0 || points[points.len() - 1].0 != 1.0 {
            return Err(InvalidSim::QuantileRange);
        }
        for (i, pair) in points.windows(2).enumerate() {
            let ((q0, v0), (q1, v1)) = (pair[0], pair[1]);
            // NaN fails this comparison too.
            if !(q0 < q1 && v0 <= v1) {
                return Err(InvalidSim::NotIncreasing { index: i + 1 });
            }
        }
        Ok(QuantileTable {
            points: points.into(),
        })
    }

    /// The latency distribution of the "Beyond Round Robin" experiment
    /// (linkerd, 2016; the Finagle simulation behind it): recorded
    /// production latencies with a median of 167.5 ms, a standard deviation
    /// of 5.4 ms and a maximum of 200 ms. Its quantiles are p0 to p99 in
    /// 1 % steps, p99.1 to p99.9 in 0.1 % steps, p99.91 to p99.99 in
    /// 0.01 % steps, then the maximum.
    pub fn beyond_round_robin() -> Self {
        let quantiles = (0..100)
            .map(|i| f64::from(i) / 100.0)
            .chain((1..10).map(|i| 0.99 + f64::from(i) / 1000.0))
            .chain((1..10).map(|i| 0.999 + f64::from(i) / 10_000.0))
            .chain([1.0]);
        let points: Arc<[(f64, f64)]> = quantiles
            .zip(BEYOND_ROUND_ROBIN_MS)
            .map(|(q, ms)| (q, ms * 1e6))
            .collect();
        debug_assert_eq!(points.len(), BEYOND_ROUND_ROBIN_MS.len());
        QuantileTable { points }
    }

    /// The latency at quantile `q` (clamped to `[0, 1]`), interpolated
    /// linearly between the neighbouring points.
    pub fn at(&self, q: f64) -> Duration {
        from_nanos_f64(self.at_ns(q))
    }

    fn at_ns(&self, q: f64) -> f64 {
        let points = &*self.points;
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        // The first point with a quantile above q; points[0].0 == 0 <= q.
        let hi = points.partition_point(|&(p, _)| p <= q);
        if hi >= points.len() {
            return points[points.len() - 1].1;
        }
        let ((q0, v0), (q1, v1)) = (points[hi - 1], points[hi]);
        v0 + (v1 - v0) * (q - q0) / (q1 - q0)
    }

    /// The number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Always false: a table has at least two points.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// The "Beyond Round Robin" latency quantiles, in milliseconds.
const BEYOND_ROUND_ROBIN_MS: [f64; 119] = [
    164.086, 164.896, 165.100, 165.247, 165.355, 165.449, 165.532, 165.607, 165.669, 165.728,
    165.782, 165.834, 165.884, 165.928, 165.975, 166.018, 166.058, 166.102, 166.144, 166.184,
    166.224, 166.265, 166.305, 166.344, 166.384, 166.422, 166.459, 166.496, 166.536, 166.573,
    166.615, 166.653, 166.691, 166.729, 166.767, 166.805, 166.844, 166.885, 166.926, 166.965,
    167.005, 167.045, 167.086, 167.130, 167.174, 167.220, 167.268, 167.317, 167.370, 167.426,
    167.483, 167.540, 167.604, 167.670, 167.737, 167.811, 167.890, 167.972, 168.053, 168.140,
    168.234, 168.332, 168.436, 168.546, 168.654, 168.771, 168.886, 169.006, 169.136, 169.267,
    169.409, 169.562, 169.711, 169.880, 170.052, 170.261, 170.469, 170.696, 170.938, 171.198,
    171.487, 171.806, 172.140, 172.517, 172.956, 173.450, 173.994, 174.616, 175.270, 175.957,
    176.702, 177.505, 178.525, 179.775, 180.957, 181.720, 182.597, 183.867, 186.390, 192.310,
    193.047, 193.920, 194.778, 195.516, 196.246, 196.757, 197.356, 198.035, 198.830, 198.928,
    199.025, 199.214, 199.290, 199.377, 199.506, 199.610, 199.717, 199.875, 199.989,
];

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    const MS: f64 = 1e6;

    fn ms(d: Duration) -> f64 {
        d.as_nanos() as f64 / MS
    }

    #[test]
    fn table_interpolates_between_uneven_quantiles() {
        let t = QuantileTable::beyond_round_robin();
        assert_eq!(t.len(), 119);
        // Exactly on a point.
        assert!((ms(t.at(0.5)) - 167.483).abs() < 1e-6);
        assert!((ms(t.at(0.99)) - 192.310).abs() < 1e-6);
        assert!((ms(t.at(0.991)) - 193.047).abs() < 1e-6);
        assert!((ms(t.at(0.999)) - 198.830).abs() < 1e-6);
        assert!((ms(t.at(0.9999)) - 199.875).abs() < 1e-6);
        assert!((ms(t.at(1.0)) - 199.989).abs() < 1e-6);
        // Halfway between p99.95 and p99.96.
        let mid = (199.377 + 199.506) / 2.0;
        assert!(
            (ms(t.at(0.99955)) - mid).abs() < 1e-3,
            "{:?}",
            t.at(0.99955)
        );
        // Clamped outside [0, 1].
        assert_eq!(t.at(-1.0), t.at(0.0));
        assert_eq!(t.at(2.0), t.at(1.0));
    }

    #[test]
    fn table_rejects_bad_points() {
        let d = Duration::from_millis;
        assert!(QuantileTable::try_new([(0.0, d(1))]).is_err());
        assert!(QuantileTable::try_new([(0.1, d(1)), (1.0, d(2))]).is_err());
        assert!(QuantileTable::try_new([(0.0, d(1)), (0.9, d(2))]).is_err());
        assert!(matches!(
            QuantileTable::try_new([(0.0, d(1)), (0.5, d(3)), (1.0, d(2))]),
            Err(InvalidSim::NotIncreasing { index: 2 })
        ));
        assert!(QuantileTable::try_new([(0.0, d(1)), (f64::NAN, d(2)), (1.0, d(2))]).is_err());
    }

    fn draws(latency: &Latency, n: usize) -> Vec<f64> {
        let mut rng = SmallRng::seed_from_u64(42);
        let mut v: Vec<f64> = (0..n).map(|_| ms(latency.sample(&mut rng))).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    #[test]
    fn scenario_distribution_matches_its_summary() {
        let v = draws(
            &Latency::empirical(QuantileTable::beyond_round_robin()),
            100_000,
        );
        let median = v[v.len() / 2];
        assert!((median - 167.5).abs() < 0.2, "median {median}");
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!((sd - 5.4).abs() < 0.5, "sd {sd}");
        assert!(v[0] >= 164.086 && v[v.len() - 1] <= 199.989);
    }

    #[test]
    fn parametric_distributions() {
        let d = Duration::from_millis;
        assert!(
            draws(&Latency::constant(d(5)), 10)
                .iter()
                .all(|&x| x == 5.0)
        );

        let v = draws(&Latency::uniform(d(10), d(20)).unwrap(), 10_000);
        assert!(v[0] >= 10.0 && v[v.len() - 1] <= 20.0);
        assert!((v[v.len() / 2] - 15.0).abs() < 0.3);
        assert!(Latency::uniform(d(2), d(1)).is_err());

        // Log-normal: median as given, p84 ≈ median × e^sigma.
        let v = draws(&Latency::log_normal(d(100), 0.5).unwrap(), 20_000);
        assert!((v[v.len() / 2] - 100.0).abs() < 3.0, "{}", v[v.len() / 2]);
        let p84 = v[(v.len() as f64 * 0.8413) as usize];
        assert!((p84 - 100.0 * 0.5f64.exp()).abs() < 6.0, "{p84}");
        assert!(Latency::log_normal(d(100), -1.0).is_err());
        assert!(Latency::log_normal(d(0), 1.0).is_err());

        // Bimodal: 10 % slow.
        let b = Latency::bimodal(Latency::constant(d(1)), Latency::constant(d(50)), 0.1).unwrap();
        let v = draws(&b, 10_000);
        let slow = v.iter().filter(|&&x| x == 50.0).count();
        assert!((800..1200).contains(&slow), "{slow}");
        assert!(v.iter().all(|&x| x == 1.0 || x == 50.0));
        assert!(Latency::bimodal(b.clone(), b, 1.5).is_err());
    }
}
