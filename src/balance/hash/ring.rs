use std::io::Write;
use std::time::Duration;

use super::KeyHash;
use super::order::{CycleWalk, Keyed, Walk, load_factor};
use super::stable::{Crc32, xxh64};
use crate::Endpoint;
use crate::balance::strategy::Active;
use crate::balance::{BuildContext, PickContext, Picker, Strategy, WeightedRoundRobin};
use crate::error::{InvalidSetting, check, valid};
use crate::pool::Members;

/// Points per unit of weight, as nginx and pingora-ketama place them.
pub const KETAMA_POINTS: u32 = 160;

/// The most points a ring holds (eight bytes each); past it the points per
/// unit of weight are scaled down.
pub const MAX_RING_POINTS: u64 = 1 << 22;

/// Ring (ketama) consistent hashing, laid out as nginx's
/// `hash $key consistent` and pingora-ketama lay it out, so a key maps to
/// the same endpoint as it does behind either (Karger et al., *Consistent
/// Hashing and Random Trees*, STOC 1997; the ketama ring of libketama).
///
/// Each endpoint gets `160 × weight` points on a 32-bit circle: the first
/// is the CRC-32 of its host, a zero byte, its port and the four
/// little-endian bytes of 0; each next one the CRC-32 of the same prefix
/// followed by the previous point. The host and port are those of the
/// endpoint's socket address (the IP without brackets, as pingora-ketama
/// formats it) or, for an endpoint known by key only, its key split at the
/// last `:`. A key goes to the first point at or after the CRC-32 of its
/// bytes, wrapping round. Where two points coincide the endpoint whose key
/// hashes lower keeps it (pingora-ketama leaves that to its sort order;
/// with 32-bit points it is rare), so the ring does not depend on the
/// order discovery lists endpoints in.
///
/// Removing an endpoint moves only the keys on its arcs; adding it back
/// restores them. The key's fallback order walks the circle onwards, so a
/// retry goes where the key would go were its endpoint gone.
///
/// Rings with more than [`MAX_RING_POINTS`] points (a total weight above
/// 26 214) get proportionally fewer points per weight, at least one per
/// endpoint: then they no longer match nginx's layout.
#[derive(Debug, Clone)]
pub struct Ring<F = WeightedRoundRobin> {
    points_per_weight: u32,
    fallback: F,
    load_factor: Option<f64>,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            points_per_weight: KETAMA_POINTS,
            fallback: WeightedRoundRobin,
            load_factor: None,
        }
    }
}

impl Ring {
    /// A ketama ring: 160 points per weight, unbounded load,
    /// [`WeightedRoundRobin`] for requests without a key.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<F> Ring<F> {
    /// Points per unit of weight (at least 1); other values than 160 do not
    /// match nginx's ring.
    ///
    /// # Panics
    ///
    /// When `points` is 0;
    /// [`try_points_per_weight`](Ring::try_points_per_weight) returns the
    /// error instead.
    #[must_use]
    #[track_caller]
    pub fn points_per_weight(self, points: u32) -> Self {
        valid(self.try_points_per_weight(points))
    }

    /// [`points_per_weight`](Ring::points_per_weight), refusing 0.
    pub fn try_points_per_weight(mut self, points: u32) -> Result<Self, InvalidSetting> {
        check(
            points >= 1,
            "Ring::points_per_weight",
            points,
            "must be at least 1",
        )?;
        self.points_per_weight = points;
        Ok(self)
    }

    /// The strategy for requests without a key.
    pub fn fallback<F2: Strategy>(self, fallback: F2) -> Ring<F2> {
        Ring {
            points_per_weight: self.points_per_weight,
            fallback,
            load_factor: self.load_factor,
        }
    }

    /// Bounded load, as [`Maglev::bounded_load`](super::Maglev::bounded_load):
    /// a full endpoint's keys move on round the circle.
    ///
    /// # Panics
    ///
    /// When `c` is below 1, NaN or infinite;
    /// [`try_bounded_load`](Ring::try_bounded_load) returns the error
    /// instead.
    #[must_use]
    #[track_caller]
    pub fn bounded_load(self, c: f64) -> Self {
        valid(self.try_bounded_load(c))
    }

    /// [`bounded_load`](Ring::bounded_load), refusing values that are not
    /// finite and at least 1.
    pub fn try_bounded_load(mut self, c: f64) -> Result<Self, InvalidSetting> {
        self.load_factor = Some(load_factor("Ring::bounded_load", c)?);
        Ok(self)
    }
}

/// The [`Ring`] picker: the sorted points.
#[derive(Debug)]
pub struct RingPicker<P> {
    /// Point positions, ascending.
    hashes: Box<[u32]>,
    /// An index into `hashes` by the top bits of a position.
    starts: Starts,
    /// The member index of each point.
    nodes: Box<[u32]>,
    keyed: Keyed<P>,
}

impl<P> RingPicker<P> {
    /// The points: position on the circle and member index, in order.
    pub fn points(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.hashes.iter().copied().zip(self.nodes.iter().copied())
    }
}

impl<F: Strategy> Strategy for Ring<F> {
    fn name(&self) -> &'static str {
        "ring"
    }

    type Picker = RingPicker<F::Picker>;

    /// [`REBUILD_DELAY`](crate::balance::REBUILD_DELAY): the table is
    /// rebuilt once per burst of changes.
    fn rebuild_delay<S>(&self, _members: Members<'_, S>) -> Duration {
        crate::balance::REBUILD_DELAY
    }

    fn build<S>(&self, members: Members<'_, S>, ctx: &BuildContext<'_>) -> Self::Picker {
        let fallback = self.fallback.build(members, ctx);
        let active = Active::of(members);
        let total: u64 = active.weight.iter().map(|&w| u64::from(w)).sum();
        let per_weight = u64::from(self.points_per_weight);
        let scale = if total.saturating_mul(per_weight) > MAX_RING_POINTS {
            Some(MAX_RING_POINTS as f64 / total as f64)
        } else {
            None
        };
        // Points that land on the same position go to the endpoint whose
        // key hashes lowest: its rank among the active endpoints.
        let mut by_key: Vec<(u64, u32)> = active
            .index
            .iter()
            .map(|&i| (xxh64(members[i as usize].endpoint().key().as_bytes(), 0), i))
            .collect();
        by_key.sort_unstable();
        let member_of_rank: Vec<u32> = by_key.iter().map(|&(_, i)| i).collect();
        let mut rank_of = vec![0u32; members.len()];
        for (rank, &i) in member_of_rank.iter().enumerate() {
            rank_of[i as usize] = rank as u32;
        }
        // Position in the high half, rank in the low: sorting the u64s
        // orders points by position, then by rank.
        let mut points: Vec<u64> = Vec::new();
        let mut name = Vec::with_capacity(64);
        for (&i, &w) in active.index.iter().zip(active.weight.iter()) {
            let count = match scale {
                None => u64::from(w) * per_weight,
                Some(s) => ((f64::from(w) * s) as u64).max(1),
            };
            name.clear();
            ketama_name(members[i as usize].endpoint(), &mut name);
            let mut base = Crc32::new();
            base.update(&name);
            let rank = u64::from(rank_of[i as usize]);
            let mut prev: u32 = 0;
            for _ in 0..count {
                let mut h = base;
                h.update(&prev.to_le_bytes());
                prev = h.finish();
                points.push(u64::from(prev) << 32 | rank);
            }
        }
        points.sort_unstable();
        points.dedup_by_key(|p| *p >> 32);
        let hashes: Box<[u32]> = points.iter().map(|&p| (p >> 32) as u32).collect();
        let nodes = points
            .iter()
            .map(|&p| member_of_rank[(p & u64::from(u32::MAX)) as usize])
            .collect();
        RingPicker {
            starts: Starts::of(&hashes),
            hashes,
            nodes,
            keyed: Keyed::new(members, fallback, self.load_factor),
        }
    }
}

/// Where the points of each range of positions start, so a lookup
/// searches only its range's few points: the top `bits` bits of a
/// position select the range. About 8 points a range, up to 2¹⁶ ranges.
#[derive(Debug)]
struct Starts {
    shift: u32,
    /// `at[r]`: the first point at or past range `r`'s start; one more
    /// entry than ranges.
    at: Box<[u32]>,
}

impl Starts {
    fn of(hashes: &[u32]) -> Self {
        let bits = (hashes.len() / 8).max(1).ilog2().min(16);
        let shift = 32 - bits;
        let ranges = 1usize << bits;
        let mut at = Vec::with_capacity(ranges + 1);
        let mut next = 0usize;
        for r in 0..ranges as u64 {
            let start = (r << shift) as u32;
            while next < hashes.len() && hashes[next] < start {
                next += 1;
            }
            at.push(next as u32);
        }
        at.push(hashes.len() as u32);
        Starts {
            shift,
            at: at.into(),
        }
    }

    /// The first point at or past position `h` (`hashes.len()` past the
    /// last): the same as a binary search of all points.
    #[inline]
    fn find(&self, hashes: &[u32], h: u32) -> usize {
        // `shift` is at least 16, so the range index fits.
        let r = (u64::from(h) >> self.shift) as usize;
        let (lo, hi) = (self.at[r] as usize, self.at[r + 1] as usize);
        lo + hashes[lo..hi].partition_point(|&p| p < h)
    }
}

/// The bytes each of an endpoint's points extends: `host \0 port`.
fn ketama_name(endpoint: &Endpoint, out: &mut Vec<u8>) {
    match endpoint.address() {
        Some(addr) => {
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{}\0{}", addr.ip(), addr.port());
        }
        None => {
            let key = endpoint.key();
            match key.rsplit_once(':') {
                Some((host, port)) => {
                    out.extend_from_slice(host.as_bytes());
                    out.push(0);
                    out.extend_from_slice(port.as_bytes());
                }
                None => {
                    out.extend_from_slice(key.as_bytes());
                    out.push(0);
                }
            }
        }
    }
}

impl<P: Picker> Picker for RingPicker<P> {
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

    const KEY_HASH: KeyHash = KeyHash::Crc32;
}

impl<P> Walk for RingPicker<P> {
    type Iter<'a>
        = CycleWalk<'a>
    where
        Self: 'a;

    #[inline]
    fn walk(&self, key: u64) -> CycleWalk<'_> {
        // A key hashed with another function than CRC-32 still lands
        // somewhere on the circle.
        let h = key as u32;
        let at = self.starts.find(&self.hashes, h);
        // Past the last point, the circle starts again at the first.
        CycleWalk::new(&self.nodes, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_index_finds_what_a_search_of_all_points_finds() {
        for len in [0usize, 1, 7, 8, 9, 100, 1000, 100_000] {
            let mut x = 0x9E37_79B9_u32;
            let mut hashes: Vec<u32> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x
                })
                .collect();
            hashes.sort_unstable();
            hashes.dedup();
            let starts = Starts::of(&hashes);
            let probes = hashes
                .iter()
                .flat_map(|&h| [h, h.wrapping_add(1), h.wrapping_sub(1)])
                .chain([0, 1, u32::MAX, u32::MAX - 1, 1 << 31]);
            for h in probes {
                assert_eq!(
                    starts.find(&hashes, h),
                    hashes.partition_point(|&p| p < h),
                    "{len} points, position {h}"
                );
            }
        }
    }

    #[test]
    fn settings_refuse_out_of_range_values() {
        let ring = Ring::new().try_points_per_weight(1).unwrap();
        assert_eq!(ring.points_per_weight, 1);
        let err = Ring::new().try_points_per_weight(0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid setting Ring::points_per_weight = 0: must be at least 1"
        );
        assert_eq!(
            Ring::new().try_bounded_load(1.0).unwrap().load_factor,
            Some(1.0)
        );
        for bad in [0.0, 0.5, f64::NAN, f64::INFINITY, -2.0] {
            let err = Ring::new().try_bounded_load(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid setting Ring::bounded_load = {bad:?}: must be a finite number of at least 1"
                )
            );
        }
    }

    #[test]
    #[should_panic(expected = "invalid setting Ring::points_per_weight = 0")]
    fn zero_points_per_weight_panics() {
        let _ = Ring::new().points_per_weight(0);
    }

    #[test]
    fn points_per_weight_refuses_zero() {
        let e = Ring::new().try_points_per_weight(0).unwrap_err();
        assert_eq!(
            (e.setting(), e.value(), e.reason()),
            ("Ring::points_per_weight", "0", "must be at least 1")
        );
        let ring = Ring::new().try_points_per_weight(40).expect("40 points");
        assert_eq!(ring.points_per_weight, 40);
    }
}
