use std::time::Duration;

use super::draw::WeightedDraw;
use super::{BuildContext, PickContext, Picker, Strategy};
use crate::PickRng;
use crate::pool::Members;

/// A random endpoint with probability proportional to its weight, in O(1)
/// per pick whatever the number of endpoints.
///
/// Equal weights draw uniformly, and weights within a factor of four of
/// their mean draw by rejection (a uniform draw kept with probability
/// `weight / max`): both are exact and build nothing, so a change to the
/// set costs nothing here. Skewed weights use Walker's alias method with
/// Vose's construction, in integer arithmetic exact to one part in 2^64
/// (weights up to `u32::MAX` each, any count): one random 64-bit draw per
/// pick chooses a column and a coin, and the table is built in O(N) once
/// per burst of changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightedRandom;

/// The [`WeightedRandom`] picker: a uniform draw for equal weights, a
/// rejection draw for weights that differ by little (both built in O(1)),
/// an alias table for skewed ones.
#[derive(Debug)]
pub struct WeightedRandomPicker {
    draw: WeightedDraw,
}

impl Strategy for WeightedRandom {
    fn name(&self) -> &'static str {
        "weighted_random"
    }

    type Picker = WeightedRandomPicker;

    /// [`REBUILD_DELAY`](crate::balance::REBUILD_DELAY) for skewed
    /// weights, whose alias table is rebuilt once per burst of changes;
    /// zero for the others, whose draw builds nothing.
    fn rebuild_delay<S>(&self, members: Members<'_, S>) -> Duration {
        if WeightedDraw::needs_table(members) {
            crate::balance::REBUILD_DELAY
        } else {
            Duration::ZERO
        }
    }

    fn build<S>(&self, members: Members<'_, S>, _ctx: &BuildContext<'_>) -> WeightedRandomPicker {
        WeightedRandomPicker {
            draw: WeightedDraw::new(members),
        }
    }
}

impl Picker for WeightedRandomPicker {
    #[inline]
    fn pick<S>(&self, members: Members<'_, S>, ctx: &PickContext<'_>) -> Option<usize> {
        self.draw.draw(members, ctx.rng).map(|d| d.index)
    }
}

/// `units / total` as a fraction of 2^64, given `units < total` and
/// `reciprocal = (2^128 - 1) / total`; the product is below
/// `total × reciprocal < 2^128`, so it cannot overflow.
#[inline]
fn scaled(units: u128, reciprocal: u128) -> u64 {
    ((units * reciprocal) >> 64).min(u128::from(u64::MAX)) as u64
}

/// Walker's alias table over positions `0..weights.len()`.
#[derive(Debug)]
pub(crate) struct AliasTable {
    /// Per column: keep the column's own index when the coin is below
    /// `threshold`, else take `alias`. Thresholds are fractions of 2^64.
    columns: Box<[Column]>,
}

#[derive(Debug, Clone, Copy)]
struct Column {
    threshold: u64,
    own: u32,
    alias: u32,
}

impl AliasTable {
    pub(crate) fn new(weights: &[u32]) -> Self {
        let n = weights.len();
        if n == 0 {
            return AliasTable {
                columns: Box::new([]),
            };
        }
        // Each column holds `total` units; endpoint i brings w_i * n units.
        let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
        // An all-zero table would divide by zero; it has nothing to pick.
        if total == 0 {
            return AliasTable {
                columns: Box::new([]),
            };
        }
        let mut units: Vec<u128> = weights.iter().map(|&w| u128::from(w) * n as u128).collect();
        let mut columns: Vec<Column> = (0..n as u32)
            .map(|own| Column {
                threshold: u64::MAX,
                own,
                alias: own,
            })
            .collect();
        let mut small: Vec<usize> = Vec::with_capacity(n);
        let mut large: Vec<usize> = Vec::with_capacity(n);
        for (i, &u) in units.iter().enumerate() {
            if u < total { &mut small } else { &mut large }.push(i);
        }
        // Thresholds are `units × 2^64 / total`: one division up front and
        // a multiply per column, which is exact or one part in 2^64 low.
        let reciprocal = u128::MAX / total;
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            // Column s keeps its own share and lends the rest to l.
            columns[s].threshold = scaled(units[s], reciprocal);
            columns[s].alias = l as u32;
            units[l] -= total - units[s];
            if units[l] < total {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left is full (up to rounding): always keep.
        AliasTable {
            columns: columns.into(),
        }
    }

    #[inline]
    pub(crate) fn sample(&self, rng: &PickRng) -> Option<usize> {
        let n = self.columns.len();
        if n == 0 {
            return None;
        }
        // The high half of r * n picks the column; the low half is a fresh
        // uniform fraction used as the coin.
        let wide = u128::from(rng.next_u64()) * n as u128;
        let col = &self.columns[(wide >> 64) as usize];
        let coin = wide as u64;
        Some(if coin < col.threshold {
            col.own
        } else {
            col.alias
        } as usize)
    }
}
