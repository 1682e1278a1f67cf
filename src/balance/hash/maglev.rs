use std::time::Duration;

use super::order::{CycleWalk, Keyed, Walk, load_factor};
use super::stable::xxh64;
use crate::balance::strategy::Active;
use crate::balance::{BuildContext, PickContext, Picker, Strategy, WeightedRoundRobin};
use crate::error::{InvalidSetting, check, valid};
use crate::pool::Members;

/// The default Maglev table size, a prime.
pub const DEFAULT_TABLE_SIZE: u64 = 65_537;

/// The largest table Maglev builds (entries; four bytes each), however
/// many endpoints there are.
pub const MAX_TABLE_SIZE: u64 = 1 << 24;

/// Slots per endpoint below which the table grows: with `M ≥ 100 × N` no
/// endpoint's share is more than about 1 % off its weight's.
const SLOTS_PER_ENDPOINT: u64 = 100;

/// Maglev consistent hashing (Eisenbud et al., *Maglev: A Fast and
/// Reliable Software Network Load Balancer*, NSDI 2016).
///
/// For every snapshot the strategy fills a lookup table of prime size `M`:
/// each endpoint has its own permutation of the slots (offset and skip from
/// two hashes of its key) and the endpoints take turns claiming their next
/// free preferred slot, heavier endpoints more often (in proportion to
/// weight, as Envoy does). A pick is one hash of the key and one table
/// read, whatever the number of endpoints.
///
/// `M` defaults to 65 537 and grows to the next prime above `100 × N` for
/// larger sets (keeping each share within about 1 % of its weight's), up to
/// [`MAX_TABLE_SIZE`]. When an endpoint leaves, its slots go to others and
/// a few other slots move too: a removal moves a little more than the
/// removed endpoint's share of keys (well under twice it).
///
/// The key's fallback order walks the table onwards from its slot.
/// Requests without a key go to the `fallback` strategy
/// ([`WeightedRoundRobin`] unless set).
#[derive(Debug, Clone)]
pub struct Maglev<F = WeightedRoundRobin> {
    table_size: u64,
    fallback: F,
    load_factor: Option<f64>,
}

impl Default for Maglev {
    fn default() -> Self {
        Maglev {
            table_size: DEFAULT_TABLE_SIZE,
            fallback: WeightedRoundRobin,
            load_factor: None,
        }
    }
}

impl Maglev {
    /// Maglev with a 65 537-slot table, unbounded load and
    /// [`WeightedRoundRobin`] for requests without a key.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<F> Maglev<F> {
    /// The smallest table to build, from 1 to [`MAX_TABLE_SIZE`] slots,
    /// rounded up to a prime. Larger tables spread keys more evenly and
    /// cost more memory and build time; the table still grows to `100 × N`
    /// for many endpoints.
    ///
    /// # Panics
    ///
    /// When `slots` is 0 or above [`MAX_TABLE_SIZE`];
    /// [`try_table_size`](Maglev::try_table_size) returns the error
    /// instead.
    #[must_use]
    #[track_caller]
    pub fn table_size(self, slots: u64) -> Self {
        valid(self.try_table_size(slots))
    }

    /// [`table_size`](Maglev::table_size), refusing 0 and more than
    /// [`MAX_TABLE_SIZE`].
    pub fn try_table_size(mut self, slots: u64) -> Result<Self, InvalidSetting> {
        check(
            (1..=MAX_TABLE_SIZE).contains(&slots),
            "Maglev::table_size",
            slots,
            "must be from 1 to MAX_TABLE_SIZE (16 777 216)",
        )?;
        self.table_size = slots;
        Ok(self)
    }

    /// The strategy for requests without a key.
    pub fn fallback<F2: Strategy>(self, fallback: F2) -> Maglev<F2> {
        Maglev {
            table_size: self.table_size,
            fallback,
            load_factor: self.load_factor,
        }
    }

    /// Consistent hashing with bounded loads: no endpoint takes more than
    /// `c ×` its weighted share of the requests in flight (rounded up); a
    /// key whose endpoint is full goes to the next in its fallback order.
    /// `c` is a finite number of at least 1. See
    /// [`super::DEFAULT_LOAD_FACTOR`].
    ///
    /// # Panics
    ///
    /// When `c` is below 1, NaN or infinite;
    /// [`try_bounded_load`](Maglev::try_bounded_load) returns the error
    /// instead.
    #[must_use]
    #[track_caller]
    pub fn bounded_load(self, c: f64) -> Self {
        valid(self.try_bounded_load(c))
    }

    /// [`bounded_load`](Maglev::bounded_load), refusing values that are
    /// not finite and at least 1.
    pub fn try_bounded_load(mut self, c: f64) -> Result<Self, InvalidSetting> {
        self.load_factor = Some(load_factor("Maglev::bounded_load", c)?);
        Ok(self)
    }
}

/// The [`Maglev`] picker: the lookup table.
#[derive(Debug)]
pub struct MaglevPicker<P> {
    /// Member indices, one per slot.
    table: Box<[u32]>,
    keyed: Keyed<P>,
}

impl<P> MaglevPicker<P> {
    /// The lookup table: a member index per slot.
    pub fn table(&self) -> &[u32] {
        &self.table
    }
}

impl<F: Strategy> Strategy for Maglev<F> {
    fn name(&self) -> &'static str {
        "maglev"
    }

    type Picker = MaglevPicker<F::Picker>;

    /// [`REBUILD_DELAY`](crate::balance::REBUILD_DELAY): the table is
    /// rebuilt once per burst of changes.
    fn rebuild_delay<S>(&self, _members: Members<'_, S>) -> Duration {
        crate::balance::REBUILD_DELAY
    }

    fn build<S>(&self, members: Members<'_, S>, ctx: &BuildContext<'_>) -> Self::Picker {
        let fallback = self.fallback.build(members, ctx);
        let active = Active::of(members);
        let names = active
            .index
            .iter()
            .map(|&i| members[i as usize].endpoint().key().as_bytes());
        MaglevPicker {
            table: populate(names, &active, self.table_size),
            keyed: Keyed::new(members, fallback, self.load_factor),
        }
    }
}

impl<P: Picker> Picker for MaglevPicker<P> {
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

impl<P> Walk for MaglevPicker<P> {
    type Iter<'a>
        = CycleWalk<'a>
    where
        Self: 'a;

    #[inline]
    fn walk(&self, key: u64) -> CycleWalk<'_> {
        let len = self.table.len();
        // Lemire's multiply-shift: the key's slot without a division.
        let at = ((u128::from(key) * len as u128) >> 64) as usize;
        CycleWalk::new(&self.table, at)
    }
}

/// The table size for `n` endpoints: a prime at least `min_size`, at least
/// `100 × n` (up to the cap) and more than `n`.
pub(super) fn table_len(min_size: u64, n: usize) -> u64 {
    let n = n as u64;
    let want = min_size
        .max(n.saturating_mul(SLOTS_PER_ENDPOINT))
        .min(MAX_TABLE_SIZE)
        .max(n + 1)
        .max(2);
    next_prime(want)
}

fn next_prime(mut m: u64) -> u64 {
    while !is_prime(m) {
        m += 1;
    }
    m
}

fn is_prime(m: u64) -> bool {
    if m < 4 {
        return m >= 2;
    }
    if m % 2 == 0 {
        return false;
    }
    let mut d = 3;
    while d * d <= m {
        if m % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// Fills the table (the paper's Populate, weighted): in each round an
/// endpoint claims its next free preferred slot when its weight's turn has
/// come, so heavier endpoints claim proportionally more.
fn populate<'a>(
    names: impl Iterator<Item = &'a [u8]>,
    active: &Active,
    min_size: u64,
) -> Box<[u32]> {
    const EMPTY: u32 = u32::MAX;
    let n = active.len();
    if n == 0 {
        return Box::new([]);
    }
    let m = table_len(min_size, n);
    struct Entry {
        member: u32,
        weight: u64,
        /// The next preferred slot.
        at: u64,
        skip: u64,
        /// Claims a slot when `round × weight` reaches this.
        target: u64,
    }
    let mut entries: Vec<Entry> = names
        .zip(active.index.iter().zip(active.weight.iter()))
        .map(|(name, (&member, &weight))| Entry {
            member,
            weight: u64::from(weight),
            at: xxh64(name, 0) % m,
            skip: xxh64(name, 1) % (m - 1) + 1,
            target: 0,
        })
        .collect();
    // Take turns in an order set by the endpoints' keys, not by where
    // discovery listed them, so the same set always builds the same table.
    entries.sort_unstable_by_key(|e| (e.at, e.skip, e.member));
    let max_weight = entries.iter().map(|e| e.weight).max().unwrap_or(1);
    let mut table = vec![EMPTY; m as usize];
    // Which slots are taken, as a bitset: probing it stays in cache where
    // probing the table would not (8 KiB against 256 KiB for 65 537).
    let mut taken = vec![0u64; (m as usize).div_ceil(64)];
    let is_taken = |taken: &[u64], at: u64| taken[(at >> 6) as usize] & (1 << (at & 63)) != 0;
    let mut filled = 0u64;
    let mut round = 1u64;
    while filled < m {
        for e in &mut entries {
            if filled == m {
                break;
            }
            if round * e.weight < e.target {
                continue;
            }
            e.target += max_weight;
            // The permutation visits every slot (m is prime), so a free one
            // is found while the table is not full.
            while is_taken(&taken, e.at) {
                e.at += e.skip;
                if e.at >= m {
                    e.at -= m;
                }
            }
            taken[(e.at >> 6) as usize] |= 1 << (e.at & 63);
            table[e.at as usize] = e.member;
            filled += 1;
        }
        round += 1;
    }
    table.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sizes_are_prime_and_grow_with_n() {
        assert_eq!(table_len(DEFAULT_TABLE_SIZE, 3), 65_537);
        assert_eq!(table_len(DEFAULT_TABLE_SIZE, 1000), 100_003);
        assert_eq!(table_len(0, 1), 101);
        assert_eq!(table_len(10, 0), 11);
        assert!(table_len(u64::MAX, 5) <= MAX_TABLE_SIZE + 100);
        assert!(is_prime(table_len(u64::MAX, 5)));
        assert!(is_prime(65_537) && !is_prime(65_535) && !is_prime(1) && is_prime(2));
    }

    #[test]
    fn settings_refuse_out_of_range_values() {
        assert_eq!(Maglev::new().try_table_size(1).unwrap().table_size, 1);
        assert_eq!(
            Maglev::new()
                .try_table_size(MAX_TABLE_SIZE)
                .unwrap()
                .table_size,
            MAX_TABLE_SIZE
        );
        for bad in [0, MAX_TABLE_SIZE + 1, u64::MAX] {
            let err = Maglev::new().try_table_size(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid setting Maglev::table_size = {bad}: must be from 1 to MAX_TABLE_SIZE (16 777 216)"
                )
            );
        }
        let m = Maglev::new().try_bounded_load(1.25).unwrap();
        assert_eq!(m.load_factor, Some(1.25));
        for bad in [0.0, 0.99, f64::NAN, f64::INFINITY, -1.0] {
            let err = Maglev::new().try_bounded_load(bad).unwrap_err();
            assert_eq!(err.setting(), "Maglev::bounded_load");
            assert_eq!(err.value(), format!("{bad:?}"));
            assert_eq!(err.reason(), "must be a finite number of at least 1");
        }
    }

    #[test]
    #[should_panic(expected = "invalid setting Maglev::bounded_load = 0.5")]
    fn a_load_factor_below_1_panics() {
        let _ = Maglev::new().bounded_load(0.5);
    }

    #[test]
    #[should_panic(expected = "invalid setting Maglev::table_size = 0")]
    fn a_zero_table_size_panics() {
        let _ = Maglev::new().table_size(0);
    }

    #[test]
    fn populate_follows_weights() {
        let active = Active {
            index: vec![0, 1, 2].into(),
            weight: vec![1, 2, 3].into(),
        };
        let names = [&b"a"[..], b"b", b"c"];
        let table = populate(names.into_iter(), &active, 60_000);
        let m = table.len() as f64;
        for (i, want) in [(0u32, 1.0 / 6.0), (1, 2.0 / 6.0), (2, 3.0 / 6.0)] {
            let got = table.iter().filter(|&&t| t == i).count() as f64 / m;
            assert!((got - want).abs() < 0.001, "{i}: {got} vs {want}");
        }
    }
}
