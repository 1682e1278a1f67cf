use std::time::Duration;

use tokio::time::Instant;

use super::draw::{Drawn, WeightedDraw};
use super::{BuildContext, PickContext, Picker, Strategy};
use crate::PickRng;
use crate::error::{InvalidSetting, check, valid};
use crate::pool::{Members, StatsHandle};
use crate::util::clock::{LatencyClock, inv_tau_ns};

/// Power of two choices over the fewest requests in flight, weight-aware.
///
/// Draws two distinct endpoints — the first in proportion to weight, the
/// second uniformly — and sends to the one with the lower
/// `in_flight / weight`, keeping the first on a tie. When idle the shares
/// follow the weights; under load the endpoint that answers slowest builds
/// up requests and is avoided (Mitzenmacher, *The Power of Two Choices in
/// Randomized Load Balancing*, 2001; tower's `p2c` with `PendingRequests`,
/// made weight-aware).
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastInFlight;

/// Power of two choices over Peak-EWMA latency, weight-aware.
///
/// Draws two distinct endpoints as [`LeastInFlight`] does and sends to the
/// one with the lower expected latency for this request:
///
/// ```text
/// cost = rtt_estimate × (1 + in_flight × w̄ / w)
/// ```
///
/// An endpoint of weight `w` is treated as `w / w̄` times the capacity of an
/// average one (`w̄`, the mean weight), so its queue drains that much
/// faster: load is divided by weight, and with equal weights this is the
/// classic `rtt × (in_flight + 1)`. Idle endpoints of equal latency tie,
/// and the tie goes to the first draw, so idle shares follow the weights.
///
/// The estimate jumps to any slower sample at once (the peak) and decays
/// towards faster ones, and towards zero with no traffic, with time
/// constant [`decay`](PeakEwma::decay), so a slow endpoint is shunned
/// quickly and retried once it has been quiet a while (Finagle's and
/// linkerd's Peak-EWMA balancer). An endpoint with no sample yet is costed
/// at its rival's estimate, so a newly added endpoint gets its share at
/// once; when neither has a sample, in-flight load alone decides. An
/// endpoint with requests in flight is costed at no less than the time
/// since it last answered, so one that stops answering (a hung process)
/// is avoided within milliseconds rather than at its first timeout.
///
/// A failed attempt is scored no lower than the current estimate, so a
/// fast failure never makes an endpoint look cheaper; a cancelled one (a
/// timeout above, a hedge that lost) at the time it had run.
///
/// Each request is timed from pick to response. With the `cpu-clock`
/// feature (default) the balancer reads the CPU's counter for that, which
/// is several times cheaper than the OS clock; while tokio's clock is
/// paused (`tokio::time::pause`, `start_paused`, the `sim` module)
/// it reads tokio's clock instead, so simulated latency counts. Which clock
/// is decided whenever pickers are built, so pause the clock before
/// building the balancer. The first balancer in a process that uses the
/// CPU's counter calibrates it against the OS clock, which takes about a
/// millisecond once.
#[derive(Debug, Clone, Copy)]
pub struct PeakEwma {
    decay: Duration,
}

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma {
            decay: Duration::from_secs(10),
        }
    }
}

impl PeakEwma {
    /// Peak-EWMA with a 10 s decay.
    pub fn new() -> Self {
        Self::default()
    }

    /// How fast old samples fade (the EWMA time constant, longer than
    /// zero).
    ///
    /// # Panics
    ///
    /// When `decay` is zero; [`try_decay`](PeakEwma::try_decay) returns
    /// the error instead.
    #[must_use]
    #[track_caller]
    pub fn decay(self, decay: Duration) -> Self {
        valid(self.try_decay(decay))
    }

    /// [`decay`](PeakEwma::decay), refusing zero.
    pub fn try_decay(mut self, decay: Duration) -> Result<Self, InvalidSetting> {
        check(
            !decay.is_zero(),
            "PeakEwma::decay",
            decay,
            "must be longer than zero",
        )?;
        self.decay = decay;
        Ok(self)
    }
}

/// A candidate drawn, as the comparison sees it.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// Index into the members the picker was built for.
    index: u32,
    weight: u32,
    /// Mean weight over this weight: how much slower than average its
    /// queue drains.
    inv_capacity: f64,
}

/// Draws the two candidates; shared by both P2C pickers. Built in O(1)
/// unless the weights are skewed (see [`WeightedDraw`]).
#[derive(Debug)]
struct Pair {
    draw: WeightedDraw,
    /// The mean live weight.
    mean: f64,
}

impl Pair {
    fn new<S>(members: Members<'_, S>) -> Self {
        Pair {
            draw: WeightedDraw::new(members),
            mean: WeightedDraw::mean_weight(members),
        }
    }

    #[inline(always)]
    fn candidate(&self, d: Drawn) -> Candidate {
        Candidate {
            index: d.index as u32,
            weight: d.weight,
            inv_capacity: self.mean / f64::from(d.weight),
        }
    }

    /// Picks with `better(b, a)` deciding whether the second candidate
    /// wins; each candidate comes with its member's stats.
    ///
    /// Always inlined, as both pickers' `pick` are: the compiler left them
    /// out of line in a binary holding many strategies, and there the
    /// round trip over 10 000 endpoints (whose stats miss the cache) took
    /// 60 ns alone and 92–100 ns under a layer, against 53 and 62–65 ns
    /// inlined.
    #[inline(always)]
    fn pick<S>(
        &self,
        members: Members<'_, S>,
        rng: &PickRng,
        mut better: impl FnMut((&Candidate, &StatsHandle), (&Candidate, &StatsHandle)) -> bool,
    ) -> Option<usize> {
        let (a, b) = self.draw.draw_two(members, rng)?;
        let Some(b) = b else {
            return Some(a.index);
        };
        let (a, b) = (self.candidate(a), self.candidate(b));
        let (sa, sb) = (
            members.get(a.index as usize)?.stats(),
            members.get(b.index as usize)?.stats(),
        );
        Some(if better((&b, sb), (&a, sa)) {
            b.index
        } else {
            a.index
        } as usize)
    }
}

/// The [`LeastInFlight`] picker.
#[derive(Debug)]
pub struct LeastInFlightPicker {
    pair: Pair,
}

impl Strategy for LeastInFlight {
    fn name(&self) -> &'static str {
        "p2c_least_in_flight"
    }

    type Picker = LeastInFlightPicker;

    fn build<S>(&self, members: Members<'_, S>, _ctx: &BuildContext<'_>) -> LeastInFlightPicker {
        LeastInFlightPicker {
            pair: Pair::new(members),
        }
    }
}

impl Picker for LeastInFlightPicker {
    #[inline(always)]
    fn pick<S>(&self, members: Members<'_, S>, ctx: &PickContext<'_>) -> Option<usize> {
        self.pair.pick(members, ctx.rng, |(b, sb), (a, sa)| {
            // in_flight_b / w_b < in_flight_a / w_a, without division.
            u128::from(sb.in_flight()) * u128::from(a.weight)
                < u128::from(sa.in_flight()) * u128::from(b.weight)
        })
    }
}

/// The [`PeakEwma`] picker.
#[derive(Debug)]
pub struct PeakEwmaPicker {
    pair: Pair,
    epoch: Instant,
    clock: LatencyClock,
    decay: Duration,
    inv_tau_ns: f64,
}

impl Strategy for PeakEwma {
    fn name(&self) -> &'static str {
        "p2c_peak_ewma"
    }

    type Picker = PeakEwmaPicker;

    fn build<S>(&self, members: Members<'_, S>, ctx: &BuildContext<'_>) -> PeakEwmaPicker {
        PeakEwmaPicker {
            pair: Pair::new(members),
            epoch: ctx.epoch,
            clock: ctx.latency_clock(),
            decay: self.decay,
            inv_tau_ns: inv_tau_ns(self.decay),
        }
    }
}

impl Picker for PeakEwmaPicker {
    #[inline(always)]
    fn pick<S>(&self, members: Members<'_, S>, ctx: &PickContext<'_>) -> Option<usize> {
        let mut now_ns = ctx.now_ns;
        let inv_tau = self.inv_tau_ns;
        self.pair.pick(members, ctx.rng, |(b, sb), (a, sa)| {
            let now = *now_ns.get_or_insert_with(|| self.clock.now_ns(self.epoch));
            let (ia, ib) = (sa.in_flight(), sb.in_flight());
            let (rtt_a, rtt_b) = match (
                sa.rtt_estimate_loaded(now, inv_tau, ia),
                sb.rtt_estimate_loaded(now, inv_tau, ib),
            ) {
                (Some(x), Some(y)) => (x, y),
                (Some(x), None) => (x, x),
                (None, Some(y)) => (y, y),
                (None, None) => (1.0, 1.0),
            };
            let cost = |c: &Candidate, in_flight: u64, rtt: f64| {
                rtt * (1.0 + in_flight as f64 * c.inv_capacity)
            };
            cost(b, ib, rtt_b) < cost(a, ia, rtt_a)
        })
    }

    fn ewma_decay(&self) -> Option<Duration> {
        Some(self.decay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_must_be_longer_than_zero() {
        let d = Duration::from_nanos(1);
        assert_eq!(PeakEwma::new().try_decay(d).unwrap().decay, d);
        let err = PeakEwma::new().try_decay(Duration::ZERO).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid setting PeakEwma::decay = 0ns: must be longer than zero"
        );
    }

    #[test]
    #[should_panic(expected = "invalid setting PeakEwma::decay = 0ns")]
    fn a_zero_decay_panics() {
        let _ = PeakEwma::new().decay(Duration::ZERO);
    }
}
