//! The shared position of a rotating picker (round robin and smooth
//! weighted round robin), spread over cache lines so that threads picking
//! at once do not all write the same one.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// How many counters a rotation keeps. Threads are spread over them in the
/// order they first pick; more than this many picking threads share.
const SHARDS: usize = 8;

/// A counter on a cache line of its own.
#[derive(Debug)]
#[repr(align(128))]
struct Shard(AtomicUsize);

/// A position in a cycle, advanced once per pick.
///
/// Each thread advances its own shard's counter. Every shard starts at the
/// same place and walks the whole cycle in order, so a single thread sees
/// an exact rotation (the same one, whichever shard it has), and several
/// threads each see one: every endpoint still gets its share, and two
/// cores never fight over one counter.
#[derive(Debug)]
pub(crate) struct Rotation {
    shards: Box<[Shard; SHARDS]>,
}

impl Rotation {
    /// A rotation whose first position is `start`.
    pub(crate) fn new(start: usize) -> Self {
        Rotation {
            shards: Box::new(std::array::from_fn(|_| Shard(AtomicUsize::new(start)))),
        }
    }

    /// The next position (to be reduced modulo the cycle's length).
    #[inline]
    pub(crate) fn next(&self) -> usize {
        let shard = &self.shards[shard()];
        shard.0.fetch_add(1, Relaxed)
    }
}

thread_local! {
    /// This thread's shard (below `SHARDS`), `usize::MAX` until its first
    /// pick.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Hands out shards to threads in turn.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

#[inline]
fn shard() -> usize {
    SHARD.with(|s| match s.get() {
        usize::MAX => assign(s),
        shard => shard,
    })
}

#[cold]
#[inline(never)]
fn assign(slot: &Cell<usize>) -> usize {
    let shard = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
    slot.set(shard);
    shard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_rotates_exactly_and_threads_together_take_even_shares() {
        let r = Rotation::new(5);
        assert_eq!((0..4).map(|_| r.next()).collect::<Vec<_>>(), [5, 6, 7, 8]);

        // Two threads picking at once (on two shards, or one if the
        // process has handed out many) together take every position's
        // share exactly.
        let r = std::sync::Arc::new(Rotation::new(0));
        let seen: Vec<Vec<usize>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let r = r.clone();
                    s.spawn(move || (0..1000).map(|_| r.next() % 10).collect::<Vec<_>>())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all = [0u32; 10];
        for &p in seen.iter().flatten() {
            all[p] += 1;
        }
        assert!(all.iter().all(|&c| c == 200), "{all:?}");
    }
}
