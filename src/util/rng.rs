use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use rand::RngCore;

const WY_P0: u64 = 0xa076_1d64_78bd_642f;
const WY_P1: u64 = 0xe703_7ed1_a0b4_28db;

fn wymix(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

fn wyrand_step(state: u64) -> u64 {
    wymix(state ^ WY_P1, state)
}

/// The random numbers a picker draws from: lock-free, allocation-free and,
/// when seeded, repeatable.
///
/// The default draws from [`rand::rng()`], rand's generator of the calling
/// thread (ChaCha12, seeded from the OS), so clones on different threads
/// never contend. [`PickRng::seeded`] shares one atomic state between all
/// clones of a balancer: a single-threaded run with the same seed makes the
/// same picks. It steps wyrand, which is fast and statistically sound but
/// not cryptographic; picks need nothing more.
pub struct PickRng {
    seeded: Option<AtomicU64>,
}

impl PickRng {
    /// rand's generator of the calling thread ([`rand::rng()`]), seeded
    /// from the OS.
    pub fn from_entropy() -> Self {
        PickRng { seeded: None }
    }

    /// One shared generator starting at `seed`.
    pub fn seeded(seed: u64) -> Self {
        PickRng {
            seeded: Some(AtomicU64::new(seed)),
        }
    }

    /// One shared generator seeded from `rng`.
    pub fn from_rng(rng: &mut impl RngCore) -> Self {
        Self::seeded(rng.next_u64())
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&self) -> u64 {
        match &self.seeded {
            Some(s) => wyrand_step(s.fetch_add(WY_P0, Relaxed).wrapping_add(WY_P0)),
            None => rand::rng().next_u64(),
        }
    }

    /// A uniform index below `n` (`n > 0`), by Lemire's multiply-shift.
    #[inline]
    pub fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Two independent uniform indices, below `n` and below `m` (both
    /// `> 0`), from one draw: the multiply-shift's high word is the first,
    /// and its low word — the fraction it leaves, itself uniform — scaled
    /// by `m` is the second.
    #[inline]
    pub fn below_pair(&self, n: usize, m: usize) -> (usize, usize) {
        let wide = u128::from(self.next_u64()) * n as u128;
        let first = (wide >> 64) as usize;
        let second = ((u128::from(wide as u64) * m as u128) >> 64) as usize;
        (first, second)
    }
}

impl Default for PickRng {
    fn default() -> Self {
        Self::from_entropy()
    }
}

impl fmt::Debug for PickRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PickRng")
            .field("seeded", &self.seeded.is_some())
            .finish()
    }
}

/// True one time in `2^shift`, at random (always, for `shift` 0), from a
/// wyrand stream of the calling thread's own: no lock, no shared line, no
/// allocation, and independent of what the picks draw. Sampling by a
/// counter instead would alias with any request pattern whose period
/// divides `2^shift`.
#[inline]
pub(crate) fn one_in_pow2(shift: u8) -> bool {
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    if shift == 0 {
        return true;
    }
    STATE.with(|state| {
        let mut s = state.get();
        if s == 0 {
            // Seeded from where the thread's state lives, so that threads
            // draw different streams.
            s = wyrand_step(std::ptr::from_ref(state) as u64 ^ WY_P1);
        }
        s = s.wrapping_add(WY_P0);
        state.set(s);
        let mask = (1u64 << shift.min(63)) - 1;
        wyrand_step(s) & mask == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_in_pow2_hits_about_one_time_in_two_to_the_shift() {
        assert!((0..1_000).all(|_| one_in_pow2(0)));
        for shift in [1u8, 3, 6] {
            let n = 200_000u32;
            let hits = (0..n).filter(|_| one_in_pow2(shift)).count() as f64;
            let want = f64::from(n) / f64::from(1u32 << shift);
            // Binomial: within five standard deviations.
            let sd = (want * (1.0 - 1.0 / f64::from(1u32 << shift))).sqrt();
            assert!(
                (hits - want).abs() < 5.0 * sd,
                "shift {shift}: {hits} vs {want}"
            );
        }
        // No period: of consecutive pairs, both hit about 1/64 of the time
        // at shift 3 (a counter would give 0).
        let draws: Vec<bool> = (0..200_000).map(|_| one_in_pow2(3)).collect();
        let pairs = draws.windows(2).filter(|w| w[0] && w[1]).count();
        assert!((2_300..3_950).contains(&pairs), "{pairs}");
        // Another thread draws another stream.
        let here: Vec<bool> = (0..256).map(|_| one_in_pow2(1)).collect();
        let there = std::thread::spawn(|| (0..256).map(|_| one_in_pow2(1)).collect::<Vec<_>>())
            .join()
            .unwrap();
        assert_ne!(here, there);
    }

    #[test]
    fn seeded_is_repeatable_and_below_is_in_range() {
        let a = PickRng::seeded(7);
        let b = PickRng::seeded(7);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
        let mut hits = [0u32; 7];
        for _ in 0..70_000 {
            hits[a.below(7)] += 1;
        }
        // 10k expected per bucket; 5 sigma is ~460.
        assert!(
            hits.iter().all(|&h| (9_500..10_500).contains(&h)),
            "{hits:?}"
        );
        let t = PickRng::from_entropy();
        assert!((0..1000).all(|_| t.below(3) < 3));

        // Both halves of a pair are uniform and independent: every one of
        // the 5 × 4 combinations comes up about as often (4000 each).
        let mut pairs = [[0u32; 4]; 5];
        for _ in 0..80_000 {
            let (x, y) = a.below_pair(5, 4);
            pairs[x][y] += 1;
        }
        // 5 sigma is ~310.
        assert!(
            pairs.iter().flatten().all(|&h| (3_650..4_350).contains(&h)),
            "{pairs:?}"
        );
    }
}
