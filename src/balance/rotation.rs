//! The shared position of a rotating picker (round robin and smooth
//! weighted round robin): one atomic counter, as tower's and pingora's
//! round robin keep.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// A position in a cycle, advanced once per pick.
///
/// One counter that every clone and thread advances: a single thread sees
/// an exact rotation, and threads picking at once share it, so every
/// endpoint still gets its share.
#[derive(Debug)]
pub(crate) struct Rotation {
    position: AtomicUsize,
}

impl Rotation {
    /// A rotation whose first position is `start`.
    pub(crate) fn new(start: usize) -> Self {
        Rotation {
            position: AtomicUsize::new(start),
        }
    }

    /// The next position (to be reduced modulo the cycle's length).
    #[inline]
    pub(crate) fn next(&self) -> usize {
        self.position.fetch_add(1, Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_rotates_exactly_and_threads_together_take_even_shares() {
        let r = Rotation::new(5);
        assert_eq!((0..4).map(|_| r.next()).collect::<Vec<_>>(), [5, 6, 7, 8]);

        // Two threads picking at once together take every position's
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
