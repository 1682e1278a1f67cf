//! Drawing a member in proportion to its weight, with as little built per
//! set as the weights allow.
//!
//! The alias table (Walker, Vose) draws in O(1) but costs O(N) to build,
//! for every change to the set. Most sets do not need it: equal weights
//! draw uniformly, and weights that differ by little draw by rejection
//! (a uniform draw kept with probability `weight / max`, drawn again
//! otherwise), which gives every member exactly its weight's share and
//! needs only the set's largest weight, which the snapshot keeps. Only
//! skewed weights build the table.

use super::weighted_random::AliasTable;
use crate::PickRng;
use crate::pool::{Members, Weights};

/// How many draws a rejection may take before it settles for a scan. A
/// draw is kept at least a quarter of the time (see
/// [`WeightedDraw::Rejection`]), so running out happens less than once in
/// 10^15 picks.
const MAX_DRAWS: usize = 256;

/// A member drawn: its index in the members, and the weight it is drawn
/// with (at least 1: a set that drains as a whole is drawn alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drawn {
    pub(crate) index: usize,
    pub(crate) weight: u32,
}

/// How a set's members are drawn by weight. Members of weight 0 are never
/// drawn while any member has a weight; when all have 0 they are drawn
/// alike.
#[derive(Debug)]
pub(crate) enum WeightedDraw {
    /// Equal weights, or all 0: a uniform draw. Nothing is built.
    Uniform { n: usize, weight: u32 },
    /// Weights that differ, but by little: a uniform draw kept with
    /// probability `weight / max`. Nothing is built. Chosen when at least
    /// two members are live and a draw is kept at least a quarter of the
    /// time (`count × max ≤ 4 × sum`).
    Rejection { n: usize, max: u32 },
    /// Skewed weights, or one live member among draining ones: an alias
    /// table over the live members, built in O(N).
    Table {
        index: Box<[u32]>,
        weight: Box<[u32]>,
        alias: AliasTable,
    },
}

impl WeightedDraw {
    /// O(1) unless the weights are skewed: the members' weight totals are
    /// kept by the snapshot.
    pub(crate) fn new<S>(members: Members<'_, S>) -> Self {
        let w = members.weights();
        let n = members.len();
        if w.uniform() {
            let weight = if w.live == 0 { 1 } else { w.max };
            return WeightedDraw::Uniform { n, weight };
        }
        if !Self::skewed(&w) {
            return WeightedDraw::Rejection { n, max: w.max };
        }
        let active = super::strategy::Active::of(members);
        WeightedDraw::Table {
            alias: AliasTable::new(&active.weight),
            index: active.index,
            weight: active.weight,
        }
    }

    /// Whether drawing from `members` builds an alias table.
    pub(crate) fn needs_table<S>(members: Members<'_, S>) -> bool {
        let w = members.weights();
        !w.uniform() && Self::skewed(&w)
    }

    /// Too skewed for rejection: fewer than two live members, or a draw
    /// kept less than a quarter of the time.
    fn skewed(w: &Weights) -> bool {
        w.live < 2 || (w.count as u128) * u128::from(w.max) > 4 * u128::from(w.sum)
    }

    /// The mean weight of the members drawn from.
    pub(crate) fn mean_weight<S>(members: Members<'_, S>) -> f64 {
        let w = members.weights();
        if w.live == 0 {
            1.0
        } else {
            w.sum as f64 / w.live as f64
        }
    }

    /// How many members can be drawn.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        match self {
            WeightedDraw::Uniform { n, .. } | WeightedDraw::Rejection { n, .. } => *n,
            WeightedDraw::Table { index, .. } => index.len(),
        }
    }

    /// One member, by weight.
    #[inline(always)]
    pub(crate) fn draw<S>(&self, members: Members<'_, S>, rng: &PickRng) -> Option<Drawn> {
        match self {
            WeightedDraw::Uniform { n, weight } => Some(Drawn {
                index: below(rng, *n)?,
                weight: *weight,
            }),
            WeightedDraw::Rejection { n, max } => rejection(members, rng, *n, *max),
            WeightedDraw::Table {
                index,
                weight,
                alias,
            } => {
                let p = alias.sample(rng)?;
                Some(Drawn {
                    index: *index.get(p)? as usize,
                    weight: *weight.get(p)?,
                })
            }
        }
    }

    /// Two distinct members: the first by weight, the second uniformly
    /// among the live others, as power of two choices draws them. The
    /// second is `None` when only one member can be drawn.
    #[inline(always)]
    pub(crate) fn draw_two<S>(
        &self,
        members: Members<'_, S>,
        rng: &PickRng,
    ) -> Option<(Drawn, Option<Drawn>)> {
        match self {
            WeightedDraw::Uniform { n, weight } => {
                let w = *weight;
                match *n {
                    0 => None,
                    1 => Some((
                        Drawn {
                            index: 0,
                            weight: w,
                        },
                        None,
                    )),
                    n => {
                        // One draw for both.
                        let (a, mut b) = rng.below_pair(n, n - 1);
                        if b >= a {
                            b += 1;
                        }
                        let a = Drawn {
                            index: a,
                            weight: w,
                        };
                        Some((
                            a,
                            Some(Drawn {
                                index: b,
                                weight: w,
                            }),
                        ))
                    }
                }
            }
            WeightedDraw::Rejection { n, max } => {
                let a = rejection(members, rng, *n, *max)?;
                Some((a, other_live(members, rng, *n, a.index)))
            }
            WeightedDraw::Table {
                index,
                weight,
                alias,
            } => {
                let n = index.len();
                let a = alias.sample(rng)?;
                let at = |p: usize| {
                    Some(Drawn {
                        index: *index.get(p)? as usize,
                        weight: *weight.get(p)?,
                    })
                };
                if n == 1 {
                    return Some((at(a)?, None));
                }
                let mut b = rng.below(n - 1);
                if b >= a {
                    b += 1;
                }
                Some((at(a)?, at(b)))
            }
        }
    }
}

#[inline(always)]
fn below(rng: &PickRng, n: usize) -> Option<usize> {
    (n > 0).then(|| rng.below(n))
}

/// A uniform draw kept with probability weight / `max`.
#[inline(always)]
fn rejection<S>(members: Members<'_, S>, rng: &PickRng, n: usize, max: u32) -> Option<Drawn> {
    let mut last = 0;
    for _ in 0..MAX_DRAWS {
        let (i, r) = rng.below_pair(n, max as usize);
        let weight = members.get(i)?.endpoint().weight();
        if (r as u32) < weight {
            return Some(Drawn { index: i, weight });
        }
        last = i;
    }
    live_from(members, n, last, usize::MAX)
}

/// A uniform draw among the live members other than `not`.
#[inline(always)]
fn other_live<S>(members: Members<'_, S>, rng: &PickRng, n: usize, not: usize) -> Option<Drawn> {
    let mut last = 0;
    for _ in 0..MAX_DRAWS {
        let i = rng.below(n);
        let weight = members.get(i)?.endpoint().weight();
        if i != not && weight > 0 {
            return Some(Drawn { index: i, weight });
        }
        last = i;
    }
    live_from(members, n, last, not)
}

/// The first live member from `from` on (wrapping), other than `not`:
/// where a rejection that ran out of draws settles.
#[cold]
fn live_from<S>(members: Members<'_, S>, n: usize, from: usize, not: usize) -> Option<Drawn> {
    (0..n)
        .map(|k| (from + k) % n)
        .filter(|&i| i != not)
        .find_map(|i| {
            let weight = members.get(i)?.endpoint().weight();
            (weight > 0).then_some(Drawn { index: i, weight })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;
    use crate::pool::{Member, MemberList, StatsHandle};
    use tokio::time::Instant;

    fn list(weights: &[u32]) -> MemberList<()> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let ep = Endpoint::new(([127, 0, 0, 1], 1000 + i as u16).into()).with_weight(w);
                Member::new(ep, (), StatsHandle::new(Instant::now()))
            })
            .collect()
    }

    /// Shares of `draws` draws, first candidates and second ones.
    fn shares(weights: &[u32], draws: usize) -> (Vec<f64>, Vec<f64>, &'static str) {
        let list = list(weights);
        let draw = WeightedDraw::new(list.view());
        let kind = match draw {
            WeightedDraw::Uniform { .. } => "uniform",
            WeightedDraw::Rejection { .. } => "rejection",
            WeightedDraw::Table { .. } => "table",
        };
        let rng = PickRng::seeded(7);
        let (mut first, mut second) = (vec![0.0; weights.len()], vec![0.0; weights.len()]);
        for _ in 0..draws {
            let (a, b) = draw.draw_two(list.view(), &rng).expect("a member");
            assert_eq!(a.weight, weights[a.index].max(1), "drawn with its weight");
            first[a.index] += 1.0 / draws as f64;
            if let Some(b) = b {
                assert_ne!(a.index, b.index, "two distinct members");
                second[b.index] += 1.0 / draws as f64;
            }
        }
        (first, second, kind)
    }

    /// Within 0.01 of the share (200 000 draws: 4.5 standard deviations
    /// of the widest share, 0.5, at seed 7).
    fn close(actual: &[f64], want: &[f64]) {
        for (a, w) in actual.iter().zip(want) {
            assert!((a - w).abs() < 0.01, "{actual:?} against {want:?}");
        }
    }

    fn proportional(weights: &[u32]) -> Vec<f64> {
        let live = weights.iter().any(|&w| w > 0);
        let w: Vec<f64> = weights
            .iter()
            .map(|&w| if live { f64::from(w) } else { 1.0 })
            .collect();
        let sum: f64 = w.iter().sum();
        w.iter().map(|x| x / sum).collect()
    }

    #[test]
    fn each_way_of_drawing_gives_exact_shares() {
        for (weights, kind) in [
            (&[3, 3, 3, 3][..], "uniform"),
            (&[0, 0, 0], "uniform"),
            (&[1, 2, 3, 4], "rejection"),
            (&[0, 2, 2, 5], "rejection"),
            (&[1, 100, 1, 1], "rejection"),
            (&[0, 0, 0, 0, 0, 7, 7], "rejection"),
            (&[1, 100, 1, 1, 1, 1], "table"),
            (&[0, 0, 0, 0, 0, 7], "table"),
        ] {
            let (first, second, got) = shares(weights, 200_000);
            assert_eq!(got, kind, "{weights:?}");
            close(&first, &proportional(weights));
            // The second candidate never drains while something is live.
            for (i, &w) in weights.iter().enumerate() {
                if w == 0 && weights.iter().any(|&w| w > 0) {
                    assert_eq!(
                        second[i], 0.0,
                        "{weights:?}: a draining member drawn second"
                    );
                }
            }
        }
    }

    #[test]
    fn a_lone_member_is_drawn_alone_and_none_from_nothing() {
        let one = list(&[5]);
        let draw = WeightedDraw::new(one.view());
        let rng = PickRng::seeded(1);
        let (a, b) = draw.draw_two(one.view(), &rng).unwrap();
        assert_eq!((a.index, b), (0, None));
        let none = list(&[]);
        let draw = WeightedDraw::new(none.view());
        assert_eq!(draw.len(), 0);
        assert!(draw.draw(none.view(), &rng).is_none());
        assert!(draw.draw_two(none.view(), &rng).is_none());
    }

    #[test]
    fn huge_weights_neither_overflow_nor_bias() {
        let (first, _, kind) = shares(&[u32::MAX, u32::MAX - 1, u32::MAX / 2], 200_000);
        assert_eq!(kind, "rejection");
        close(
            &first,
            &proportional(&[u32::MAX, u32::MAX - 1, u32::MAX / 2]),
        );
    }
}
