use std::time::Duration;

use super::order::{Keyed, Walk, load_factor};
use super::stable::{mix, xxh64};
use crate::balance::strategy::Active;
use crate::balance::{BuildContext, PickContext, Picker, Strategy, WeightedRoundRobin};
use crate::error::{InvalidSetting, valid};
use crate::pool::Members;

/// Rendezvous (highest random weight) hashing, weighted (Thaler and
/// Ravishankar, *Using Name-Based Mappings to Increase Hit Rates*, 1998;
/// the weighted form by Schindelhauer and Schomaker, 2005).
///
/// Every endpoint scores the key, `score = -w / ln(h / 2⁶⁴)` with `h` a
/// hash of the key and the endpoint's key, and the highest score wins; with
/// equal weights the score is `h` itself. A key's fallback order is simply
/// its endpoints by descending score, and removing an endpoint moves only
/// its own keys. No table is built, but a pick hashes every endpoint:
/// `O(N)` per pick, so it suits small sets (tens of endpoints) and
/// subsetting, where its exact minimal disruption and per-key order matter
/// more than pick cost.
#[derive(Debug, Clone)]
pub struct Rendezvous<F = WeightedRoundRobin> {
    fallback: F,
    load_factor: Option<f64>,
}

impl Default for Rendezvous {
    fn default() -> Self {
        Rendezvous {
            fallback: WeightedRoundRobin,
            load_factor: None,
        }
    }
}

impl Rendezvous {
    /// Rendezvous hashing with unbounded load and [`WeightedRoundRobin`]
    /// for requests without a key.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<F> Rendezvous<F> {
    /// The strategy for requests without a key.
    pub fn fallback<F2: Strategy>(self, fallback: F2) -> Rendezvous<F2> {
        Rendezvous {
            fallback,
            load_factor: self.load_factor,
        }
    }

    /// Bounded load, as [`Maglev::bounded_load`](super::Maglev::bounded_load):
    /// a full endpoint's keys move to their next-highest score.
    ///
    /// # Panics
    ///
    /// When `c` is below 1, NaN or infinite;
    /// [`try_bounded_load`](Rendezvous::try_bounded_load) returns the
    /// error instead.
    #[must_use]
    #[track_caller]
    pub fn bounded_load(self, c: f64) -> Self {
        valid(self.try_bounded_load(c))
    }

    /// [`bounded_load`](Rendezvous::bounded_load), refusing values that
    /// are not finite and at least 1.
    pub fn try_bounded_load(mut self, c: f64) -> Result<Self, InvalidSetting> {
        self.load_factor = Some(load_factor("Rendezvous::bounded_load", c)?);
        Ok(self)
    }
}

/// The [`Rendezvous`] picker: each endpoint's seed and weight.
#[derive(Debug)]
pub struct RendezvousPicker<P> {
    /// Member indices of the active endpoints.
    index: Box<[u32]>,
    /// The hash of each one's key.
    seeds: Box<[u64]>,
    /// Their weights, or `None` when all are equal.
    weights: Option<Box<[f64]>>,
    keyed: Keyed<P>,
}

impl<F: Strategy> Strategy for Rendezvous<F> {
    fn name(&self) -> &'static str {
        "rendezvous"
    }

    type Picker = RendezvousPicker<F::Picker>;

    /// The fallback's: a rendezvous picker holds no table of its own.
    fn rebuild_delay<S>(&self, members: Members<'_, S>) -> Duration {
        self.fallback.rebuild_delay(members)
    }

    fn build<S>(&self, members: Members<'_, S>, ctx: &BuildContext<'_>) -> Self::Picker {
        let fallback = self.fallback.build(members, ctx);
        let active = Active::of(members);
        let seeds = active
            .index
            .iter()
            .map(|&i| xxh64(members[i as usize].endpoint().key().as_bytes(), 0))
            .collect();
        let weights =
            (!active.uniform()).then(|| active.weight.iter().map(|&w| f64::from(w)).collect());
        RendezvousPicker {
            index: active.index.clone(),
            seeds,
            weights,
            keyed: Keyed::new(members, fallback, self.load_factor),
        }
    }
}

impl<P> RendezvousPicker<P> {
    /// Endpoint `j`'s rank for `key`: the score (as order-preserving bits)
    /// above, the endpoint's seed below to break ties independently of
    /// the order endpoints are listed in.
    #[inline]
    fn rank(&self, key: u64, j: usize) -> u128 {
        let h = mix(key, self.seeds[j]);
        let score = match &self.weights {
            None => h,
            Some(w) => {
                // u in (0, 1): ln(u) < 0 and the score is positive, whose
                // bits order as the values do.
                let u = ((h >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
                (-w[j] / u.ln()).to_bits()
            }
        };
        (u128::from(score) << 64) | u128::from(self.seeds[j])
    }
}

impl<P: Picker> Picker for RendezvousPicker<P> {
    #[inline]
    fn pick<S>(&self, members: Members<'_, S>, ctx: &PickContext<'_>) -> Option<usize> {
        self.keyed.pick_nth(self, members, ctx, 0)
    }

    #[inline]
    fn pick_nth<S>(
        &self,
        members: Members<'_, S>,
        ctx: &PickContext<'_>,
        n: usize,
    ) -> Option<usize> {
        self.keyed.pick_nth(self, members, ctx, n)
    }

    fn ewma_decay(&self) -> Option<Duration> {
        self.keyed.fallback.ewma_decay()
    }
}

/// The endpoints by descending rank, one `O(N)` pass each.
pub(super) struct RankWalk<'a, P> {
    picker: &'a RendezvousPicker<P>,
    key: u64,
    /// The rank last yielded; the next is the highest below it.
    below: u128,
}

impl<P> Iterator for RankWalk<'_, P> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        let mut best: Option<(u128, usize)> = None;
        for j in 0..self.picker.seeds.len() {
            let r = self.picker.rank(self.key, j);
            if r < self.below && best.is_none_or(|(b, _)| r > b) {
                best = Some((r, j));
            }
        }
        let (r, j) = best?;
        self.below = r;
        Some(self.picker.index[j])
    }
}

impl<P> Walk for RendezvousPicker<P> {
    type Iter<'a>
        = RankWalk<'a, P>
    where
        Self: 'a;

    #[inline]
    fn walk(&self, key: u64) -> RankWalk<'_, P> {
        RankWalk {
            picker: self,
            key,
            below: u128::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_load_refuses_out_of_range_values() {
        let r = Rendezvous::new().try_bounded_load(2.0).unwrap();
        assert_eq!(r.load_factor, Some(2.0));
        for bad in [0.0, 0.5, f64::NAN, f64::INFINITY] {
            let err = Rendezvous::new().try_bounded_load(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid setting Rendezvous::bounded_load = {bad:?}: must be a finite number of at least 1"
                )
            );
        }
    }

    #[test]
    #[should_panic(expected = "invalid setting Rendezvous::bounded_load = NaN")]
    fn a_nan_load_factor_panics() {
        let _ = Rendezvous::new().bounded_load(f64::NAN);
    }
}
