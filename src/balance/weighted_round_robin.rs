use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use super::rotation::Rotation;
use super::strategy::Active;
use super::{BuildContext, PickContext, Picker, Strategy};
use crate::pool::Member;

/// Smooth weighted round robin: each endpoint gets exactly its share of
/// every cycle, spread out rather than in bursts, with a lock-free pick.
///
/// When a snapshot is published the strategy lays out one cycle as a table
/// by earliest-deadline-first over virtual time (stride scheduling): endpoint
/// `i` with weight `wᵢ` has its k-th slot at time `(k + φᵢ) / wᵢ` in `[0, 1)`,
/// with a phase `φᵢ` spread by the golden ratio so endpoints of equal weight
/// interleave rather than line up. A pick is one atomic increment and one
/// table read.
///
/// **Burst bound.** Between two picks of endpoint `i` spaced `1/wᵢ` apart,
/// every other endpoint `j` has a slot in any window longer than `1/wⱼ`, so
/// a run of consecutive picks of `i` is at most `1 + ⌈wᵢ / wⱼ⌉` for the
/// heaviest other endpoint `j` (cyclically, across cycle boundaries too).
/// For weights 5:1:1 that allows 6, and the layout achieves 3, the least
/// possible.
///
/// **Threads.** The table position is kept per group of threads (one
/// counter per cache line, see the round-robin picker), so threads picking
/// at once do not contend. Each thread walks the cycle in order from the
/// same start: shares stay exact per cycle and the burst bound holds for
/// the picks of one thread; the picks of several threads interleave.
///
/// **Table size.** A cycle has `Σwᵢ / gcd` slots. Up to 65 536 slots
/// (or one per endpoint, if there are more) the shares are exact; above
/// that the weights are scaled down proportionally (each live endpoint
/// keeps at least one slot), which bounds memory at the cost of a relative
/// error of about `0.5 / slotsᵢ` in each share.
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightedRoundRobin;

/// The largest exact cycle before weights are scaled down.
pub(crate) const MAX_CYCLE: u64 = 1 << 16;

/// The [`WeightedRoundRobin`] picker: one cycle laid out as a table.
#[derive(Debug)]
pub struct WeightedRoundRobinPicker {
    table: Box<[u32]>,
    next: Rotation,
}

impl WeightedRoundRobinPicker {
    /// The cycle: snapshot indices in pick order.
    pub fn cycle(&self) -> &[u32] {
        &self.table
    }
}

impl Strategy for WeightedRoundRobin {
    type Picker = WeightedRoundRobinPicker;

    fn build<S>(&self, members: &[Member<S>], ctx: &BuildContext<'_>) -> WeightedRoundRobinPicker {
        let table = layout(&Active::of(members));
        let start = if table.is_empty() {
            0
        } else {
            ctx.rng.below(table.len())
        };
        WeightedRoundRobinPicker {
            table,
            next: Rotation::new(start),
        }
    }
}

impl Picker for WeightedRoundRobinPicker {
    #[inline]
    fn pick<S>(&self, _members: &[Member<S>], _ctx: &PickContext<'_>) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let n = self.next.next() % self.table.len();
        Some(self.table[n] as usize)
    }
}

/// Slots per endpoint for one cycle: exact (divided by the gcd) when the
/// cycle fits, otherwise scaled to about `MAX_CYCLE` with at least one each.
pub(crate) fn slots(weights: &[u32]) -> Vec<u64> {
    let g = weights
        .iter()
        .fold(0u64, |g, &w| gcd(g, u64::from(w)))
        .max(1);
    let exact: Vec<u64> = weights.iter().map(|&w| u64::from(w) / g).collect();
    let cycle: u64 = exact.iter().sum();
    let cap = MAX_CYCLE.max(weights.len() as u64);
    if cycle <= cap {
        return exact;
    }
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    weights
        .iter()
        .map(|&w| ((u128::from(w) * u128::from(cap) + total / 2) / total).max(1) as u64)
        .collect()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[derive(PartialEq)]
struct Slot {
    time: f64,
    member: usize,
}

impl Eq for Slot {}

impl Ord for Slot {
    fn cmp(&self, other: &Self) -> Ordering {
        self.time
            .total_cmp(&other.time)
            .then(self.member.cmp(&other.member))
    }
}

impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Lays out one cycle by earliest deadline first.
fn layout(active: &Active) -> Box<[u32]> {
    const GOLDEN: f64 = 0.618_033_988_749_894_8;
    let slots = slots(&active.weight);
    let len: u64 = slots.iter().sum();
    let mut table = Vec::with_capacity(len as usize);
    let phase: Vec<f64> = (0..slots.len())
        .map(|i| ((i as f64 + 1.0) * GOLDEN).fract())
        .collect();
    let mut taken = vec![0u64; slots.len()];
    let mut heap: BinaryHeap<Reverse<Slot>> = (0..slots.len())
        .map(|i| {
            Reverse(Slot {
                time: phase[i] / slots[i] as f64,
                member: i,
            })
        })
        .collect();
    while let Some(Reverse(Slot { member, .. })) = heap.pop() {
        table.push(active.index[member]);
        taken[member] += 1;
        if taken[member] < slots[member] {
            heap.push(Reverse(Slot {
                time: (taken[member] as f64 + phase[member]) / slots[member] as f64,
                member,
            }));
        }
    }
    table.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(weights: &[u32]) -> Active {
        Active {
            index: (0..weights.len() as u32).collect(),
            weight: weights.into(),
        }
    }

    fn max_runs(cycle: &[u32], n: usize) -> Vec<usize> {
        let mut best = vec![0; n];
        let doubled: Vec<u32> = cycle.iter().chain(cycle).copied().collect();
        let mut run = 0;
        for (k, &m) in doubled.iter().enumerate() {
            run = if k > 0 && doubled[k - 1] == m {
                run + 1
            } else {
                1
            };
            best[m as usize] = best[m as usize].max(run.min(cycle.len()));
        }
        best
    }

    #[test]
    fn five_one_one_has_runs_of_at_most_three() {
        let t = layout(&active(&[5, 1, 1]));
        assert_eq!(t.len(), 7);
        assert_eq!(max_runs(&t, 3)[0], 3, "{t:?}");
    }

    #[test]
    fn exact_shares_and_gcd() {
        let t = layout(&active(&[20, 40, 60]));
        assert_eq!(t.len(), 6);
        let count = |m| t.iter().filter(|&&x| x == m).count();
        assert_eq!((count(0), count(1), count(2)), (1, 2, 3));
    }

    #[test]
    fn huge_weights_scale_without_overflow() {
        let w = vec![u32::MAX; 1000];
        let t = layout(&active(&w));
        assert_eq!(t.len(), 1000);
        let t = layout(&active(&[u32::MAX, u32::MAX - 1, 1]));
        assert!(t.len() as u64 <= MAX_CYCLE + 3);
        assert!(t.contains(&2), "every live endpoint keeps a slot");
    }

    proptest::proptest! {
        #[test]
        fn runs_stay_within_the_bound(weights in proptest::collection::vec(1u32..200, 2..12)) {
            let t = layout(&active(&weights));
            let s = slots(&weights);
            let runs = max_runs(&t, weights.len());
            for i in 0..weights.len() {
                let heaviest_other = (0..weights.len()).filter(|&j| j != i).map(|j| s[j]).max().unwrap();
                let bound = 1 + s[i].div_ceil(heaviest_other) as usize;
                proptest::prop_assert!(runs[i] <= bound, "i={} run={} bound={} slots={:?}", i, runs[i], bound, s);
                let picks = t.iter().filter(|&&x| x as usize == i).count() as u64;
                proptest::prop_assert_eq!(picks, s[i]);
            }
        }
    }
}
