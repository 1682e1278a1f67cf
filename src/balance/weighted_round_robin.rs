use super::rotation::Rotation;
use super::strategy::Active;
use super::{BuildContext, PickContext, Picker, Strategy};
use crate::pool::Members;

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

/// The [`WeightedRoundRobin`] picker: one cycle laid out as a table, or,
/// when every weight is equal, plain rotation over the members (built in
/// O(1)).
#[derive(Debug)]
pub struct WeightedRoundRobinPicker {
    cycle: Cycle,
    next: Rotation,
}

#[derive(Debug)]
enum Cycle {
    /// Equal weights: members `0..n` in order.
    Equal(usize),
    /// Snapshot indices in pick order.
    Table(Box<[u32]>),
}

impl Cycle {
    fn len(&self) -> usize {
        match self {
            Cycle::Equal(n) => *n,
            Cycle::Table(table) => table.len(),
        }
    }
}

impl WeightedRoundRobinPicker {
    /// One cycle: snapshot indices in pick order.
    pub fn cycle(&self) -> Vec<u32> {
        match &self.cycle {
            Cycle::Equal(n) => (0..*n as u32).collect(),
            Cycle::Table(table) => table.to_vec(),
        }
    }
}

impl Strategy for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        "weighted_round_robin"
    }

    type Picker = WeightedRoundRobinPicker;

    fn build<S>(
        &self,
        members: Members<'_, S>,
        ctx: &BuildContext<'_>,
    ) -> WeightedRoundRobinPicker {
        let cycle = if members.weights().uniform() {
            Cycle::Equal(members.len())
        } else {
            Cycle::Table(layout(&Active::of(members)))
        };
        let start = match cycle.len() {
            0 => 0,
            n => ctx.rng.below(n),
        };
        WeightedRoundRobinPicker {
            cycle,
            next: Rotation::new(start),
        }
    }
}

impl Picker for WeightedRoundRobinPicker {
    #[inline]
    fn pick<S>(&self, _members: Members<'_, S>, _ctx: &PickContext<'_>) -> Option<usize> {
        match &self.cycle {
            Cycle::Equal(0) => None,
            Cycle::Equal(n) => Some(self.next.next() % n),
            Cycle::Table(table) if table.is_empty() => None,
            Cycle::Table(table) => table
                .get(self.next.next() % table.len())
                .map(|&i| i as usize),
        }
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

/// Lays out one cycle by earliest deadline first: every slot of every
/// endpoint in order of its time `(k + φᵢ) / slotsᵢ` (ties by position).
///
/// That is the order a heap of each endpoint's next slot would pop them
/// in, but found by a bucket sort: times fall in `[0, 1)`, so slot times
/// dropped into as many buckets as there are slots leave about one per
/// bucket, and the cycle costs O(slots) rather than O(slots · log N).
fn layout(active: &Active) -> Box<[u32]> {
    const GOLDEN: f64 = 0.618_033_988_749_894_8;
    let slots = slots(&active.weight);
    let len = slots.iter().sum::<u64>() as usize;
    let bucket_of = |time: f64| ((time * len as f64) as usize).min(len.saturating_sub(1));
    let times = || {
        slots.iter().enumerate().flat_map(|(i, &n)| {
            let phase = ((i as f64 + 1.0) * GOLDEN).fract();
            (0..n).map(move |k| ((k as f64 + phase) / n as f64, i as u32))
        })
    };
    // Counting sort into buckets, then each (tiny) bucket in order.
    let mut start = vec![0usize; len + 1];
    for (time, _) in times() {
        start[bucket_of(time) + 1] += 1;
    }
    for b in 1..=len {
        start[b] += start[b - 1];
    }
    let mut fill = start.clone();
    let mut sorted = vec![(0.0f64, 0u32); len];
    for (time, member) in times() {
        let b = bucket_of(time);
        sorted[fill[b]] = (time, member);
        fill[b] += 1;
    }
    for bucket in start.windows(2) {
        if bucket[1] - bucket[0] > 1 {
            sorted[bucket[0]..bucket[1]]
                .sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        }
    }
    sorted
        .into_iter()
        .map(|(_, member)| active.index[member as usize])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout as a heap of each endpoint's next slot pops it: the
    /// definition the bucket sort must match slot for slot.
    fn heap_layout(active: &Active) -> Vec<u32> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        const GOLDEN: f64 = 0.618_033_988_749_894_8;
        #[derive(PartialEq)]
        struct Slot(f64, usize);
        impl Eq for Slot {}
        impl Ord for Slot {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
            }
        }
        impl PartialOrd for Slot {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        let slots = slots(&active.weight);
        let phase: Vec<f64> = (0..slots.len())
            .map(|i| ((i as f64 + 1.0) * GOLDEN).fract())
            .collect();
        let mut taken = vec![0u64; slots.len()];
        let mut heap: BinaryHeap<Reverse<Slot>> = (0..slots.len())
            .map(|i| Reverse(Slot(phase[i] / slots[i] as f64, i)))
            .collect();
        let mut table = Vec::new();
        while let Some(Reverse(Slot(_, m))) = heap.pop() {
            table.push(active.index[m]);
            taken[m] += 1;
            if taken[m] < slots[m] {
                heap.push(Reverse(Slot(
                    (taken[m] as f64 + phase[m]) / slots[m] as f64,
                    m,
                )));
            }
        }
        table
    }

    #[test]
    fn the_bucket_sorted_cycle_is_the_earliest_deadline_first_cycle() {
        let cases: Vec<Vec<u32>> = vec![
            vec![5, 1, 1],
            vec![1; 100],
            vec![7; 3],
            (0..1000).map(|i| 1 + i % 4).collect(),
            (0..500).map(|i| [1, 2, 3, 5, 7, 11, 13][i % 7]).collect(),
            vec![u32::MAX, u32::MAX - 1, 1],
            vec![1000, 1],
            (0..70_000).map(|_| 1).collect(),
            vec![3],
        ];
        for weights in cases {
            let active = active(&weights);
            assert_eq!(
                &*layout(&active),
                heap_layout(&active),
                "weights {:?}",
                &weights[..weights.len().min(8)]
            );
        }
    }

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
