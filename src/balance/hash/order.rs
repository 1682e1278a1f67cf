//! What the three hash pickers share: the key's fallback order, bounded
//! load, and the fallback picker for requests without a key.

use super::super::strategy::Active;
use super::super::{PickContext, Picker};
use super::stable::mix;
use crate::error::{InvalidSetting, check};
use crate::pool::Members;

/// How many endpoints of a key's order come from the algorithm itself;
/// the rest follow in a key-rotated scan (see [`Order`]).
pub(super) const DISTINCT: usize = 8;

/// How many raw candidates (which may repeat) the algorithm's walk may
/// offer before the scan takes over.
const RAW_STEPS: usize = 64;

/// An algorithm's raw preference order for a key: indices of active
/// members, possibly repeating (a ring walk meets the same endpoint again).
pub(super) trait Walk {
    type Iter<'a>: Iterator<Item = u32>
    where
        Self: 'a;

    fn walk(&self, key: u64) -> Self::Iter<'_>;
}

/// A walk once round a circle of member indices (Maglev's table, the
/// ring's points) from position `at` onwards.
pub(super) struct CycleWalk<'a> {
    slots: &'a [u32],
    at: usize,
    left: usize,
}

impl<'a> CycleWalk<'a> {
    /// Starts at `at`; a position past the end wraps to the first.
    #[inline]
    pub(super) fn new(slots: &'a [u32], at: usize) -> Self {
        CycleWalk {
            slots,
            at: if at >= slots.len() { 0 } else { at },
            left: slots.len(),
        }
    }
}

impl Iterator for CycleWalk<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let c = self.slots[self.at];
        self.at += 1;
        if self.at == self.slots.len() {
            self.at = 0;
        }
        Some(c)
    }
}

/// State common to the hash pickers.
#[derive(Debug)]
pub(super) struct Keyed<P> {
    pub(super) fallback: P,
    /// Indices of the members that take traffic.
    pub(super) active: Box<[u32]>,
    /// Each member's weight (0 for members that take none), by member index.
    weight: Box<[u32]>,
    total_weight: f64,
    /// The bounded-load factor `c`, when bounded.
    factor: Option<f64>,
}

impl<P: Picker> Keyed<P> {
    pub(super) fn new<S>(members: Members<'_, S>, fallback: P, factor: Option<f64>) -> Self {
        let active = Active::of(members);
        let mut weight = vec![0u32; members.len()];
        for (&i, &w) in active.index.iter().zip(active.weight.iter()) {
            weight[i as usize] = w;
        }
        Keyed {
            fallback,
            total_weight: active.weight.iter().map(|&w| f64::from(w)).sum(),
            weight: weight.into(),
            active: active.index,
            factor,
        }
    }

    /// The `n`th endpoint of the key's order — skipping endpoints at their
    /// load cap when load is bounded — or the fallback's pick when the
    /// request has no key.
    #[inline]
    pub(super) fn pick_nth<W: Walk, S>(
        &self,
        walk: &W,
        members: Members<'_, S>,
        ctx: &PickContext<'_>,
        n: usize,
    ) -> Option<usize> {
        let Some(key) = ctx.key else {
            return self.fallback.pick_nth(members, ctx, n);
        };
        if self.active.is_empty() {
            return None;
        }
        let order = || Order::new(walk.walk(key), &self.active, key);
        let chosen = match self.factor {
            // The common case: the walk's first candidate.
            None if n == 0 => walk.walk(key).next(),
            None => order().nth(n),
            Some(c) => {
                let mut total = None;
                order()
                    .filter(|&i| self.has_room(members, i, c, &mut total))
                    .nth(n)
                    // Only a race with other picks can leave no endpoint
                    // with room; then affinity wins.
                    .or_else(|| order().nth(n))
            }
        };
        chosen.map(|i| i as usize)
    }

    /// Whether member `i` may take one more request: its in-flight count
    /// plus this request stays within `c ×` its weighted share of all
    /// in-flight requests plus this one, rounded up (Mirrokni, Thorup and
    /// Zadimoghaddam's capacity `⌈c·m/n⌉`, weighted). `total` caches the
    /// sum of in-flight counts for the pick.
    #[inline]
    fn has_room<S>(
        &self,
        members: Members<'_, S>,
        i: u32,
        c: f64,
        total: &mut Option<u64>,
    ) -> bool {
        let Some(m) = members.get(i as usize) else {
            return false;
        };
        let load = m.stats().in_flight();
        if load == 0 {
            // The capacity is at least one.
            return true;
        }
        let total = *total.get_or_insert_with(|| {
            self.active
                .iter()
                .filter_map(|&j| members.get(j as usize))
                .map(|m| m.stats().in_flight())
                .sum()
        });
        let w = f64::from(self.weight.get(i as usize).copied().unwrap_or(0));
        // load + 1 <= ceil(x)  <=>  load < x, with x = c·(total+1)·w/W.
        (load as f64) * self.total_weight < c * (total as f64 + 1.0) * w
    }
}

/// A key's fallback order: every active endpoint exactly once. The first
/// [`DISTINCT`] come from the algorithm's walk (its own notion of "next",
/// so the second choice is the endpoint that would own the key if the
/// first were gone); the rest, and any the walk does not reach within
/// `RAW_STEPS` candidates, follow in the active list rotated by the key.
/// Allocation-free: it remembers what it yielded in a small array.
pub(super) struct Order<'a, I> {
    walk: I,
    active: &'a [u32],
    seen: [u32; DISTINCT],
    seen_len: usize,
    raw_left: usize,
    yielded: usize,
    key: u64,
    /// Where the scan starts, once it has.
    scan_start: Option<usize>,
    scanned: usize,
}

impl<'a, I: Iterator<Item = u32>> Order<'a, I> {
    pub(super) fn new(walk: I, active: &'a [u32], key: u64) -> Self {
        Order {
            walk,
            active,
            seen: [0; DISTINCT],
            seen_len: 0,
            raw_left: RAW_STEPS,
            yielded: 0,
            key,
            scan_start: None,
            scanned: 0,
        }
    }
}

impl<I: Iterator<Item = u32>> Iterator for Order<'_, I> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        if self.yielded >= self.active.len() {
            return None;
        }
        while self.seen_len < DISTINCT && self.raw_left > 0 {
            self.raw_left -= 1;
            let Some(c) = self.walk.next() else {
                self.raw_left = 0;
                break;
            };
            if !self.seen[..self.seen_len].contains(&c) {
                self.seen[self.seen_len] = c;
                self.seen_len += 1;
                self.yielded += 1;
                return Some(c);
            }
        }
        let n = self.active.len();
        let key = self.key;
        let start = *self
            .scan_start
            .get_or_insert_with(|| ((u128::from(mix(key, 0x5CA7)) * n as u128) >> 64) as usize);
        while self.scanned < n {
            let at = start + self.scanned;
            self.scanned += 1;
            let c = self.active[if at >= n { at - n } else { at }];
            if !self.seen[..self.seen_len].contains(&c) {
                self.yielded += 1;
                return Some(c);
            }
        }
        None
    }
}

/// The bounded-load factor a user asked for, checked: a finite number of
/// at least 1 (1 is no endpoint above the mean — still always
/// satisfiable).
pub(super) fn load_factor(setting: &'static str, c: f64) -> Result<f64, InvalidSetting> {
    check(
        c.is_finite() && c >= 1.0,
        setting,
        c,
        "must be a finite number of at least 1",
    )?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_permutation_led_by_the_walk() {
        let active: Vec<u32> = (0..20).collect();
        // A walk with repeats that reaches only a few endpoints.
        let walk = [5u32, 5, 3, 5, 3, 9, 1, 1, 0, 2, 4, 6, 7, 8, 10, 11];
        let order: Vec<u32> = Order::new(walk.into_iter(), &active, 42).collect();
        assert_eq!(&order[..DISTINCT], &[5, 3, 9, 1, 0, 2, 4, 6]);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, active);
        // Repeatable.
        let again: Vec<u32> = Order::new(walk.into_iter(), &active, 42).collect();
        assert_eq!(order, again);
    }

    #[test]
    fn load_factor_is_finite_and_at_least_one() {
        assert_eq!(load_factor("Maglev::bounded_load", 1.0), Ok(1.0));
        assert_eq!(load_factor("Maglev::bounded_load", 1.25), Ok(1.25));
        for bad in [f64::NAN, 0.0, 0.5, -1.0, f64::INFINITY, f64::NEG_INFINITY] {
            let err = load_factor("Maglev::bounded_load", bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid setting Maglev::bounded_load = {bad:?}: must be a finite number of at least 1"
                )
            );
        }
    }
}
