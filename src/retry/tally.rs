//! A request count that clients on many threads add to without sharing a
//! cache line.
//!
//! Every request through [`Retry`](super::Retry) is counted, for the retry
//! budget and the layer's statistics. One atomic counter shared by every
//! clone makes that count the one cache line all threads write on every
//! request: with clients on several cores it moves between them on each
//! add, and its cost grows with the core count. A [`Tally`] instead gives
//! each long-lived clone a [`Lane`] of its own, a counter on its own cache
//! line that only that clone writes (with a plain load and store, not an
//! atomic add), and sums the lanes when the count is read, which happens
//! only when a retry is asked for or statistics are taken. This is the
//! striped counter of Java's `LongAdder`, with stripes owned rather than
//! hashed. A lane that is given up is folded into the total, so the count
//! stays exact.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A count of requests: a shared counter for occasional adders, plus a
/// lane per long-lived clone.
pub(crate) struct Tally {
    /// Adds from anyone without a lane.
    shared: AtomicU64,
    lanes: Mutex<Lanes>,
}

#[derive(Default)]
struct Lanes {
    /// What lanes held when they were given up.
    retired: u64,
    live: Vec<Arc<Slot>>,
}

/// One lane's counter, alone on its cache line.
#[repr(align(64))]
#[derive(Default)]
struct Slot(AtomicU64);

/// A counter only its holder adds to (it is not `Clone`), counted in the
/// total of every [`Tally`] it joined until it is [`leave`](Lane::leave)n.
pub(crate) struct Lane {
    slot: Arc<Slot>,
}

impl Lane {
    /// A lane on no tally yet.
    pub(crate) fn new() -> Self {
        Lane {
            slot: Arc::new(Slot::default()),
        }
    }

    /// Counts one request. `&mut self` makes the holder the only writer,
    /// so a load and a store do what an atomic add would.
    #[inline]
    pub(crate) fn add(&mut self) {
        let count = &self.slot.0;
        count.store(count.load(Relaxed) + 1, Relaxed);
    }
}

impl fmt::Debug for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Lane")
            .field(&self.slot.0.load(Relaxed))
            .finish()
    }
}

impl Tally {
    pub(crate) fn new() -> Self {
        Tally {
            shared: AtomicU64::new(0),
            lanes: Mutex::new(Lanes::default()),
        }
    }

    /// Counts one request from an adder without a lane.
    #[inline]
    pub(crate) fn add(&self) {
        self.shared.fetch_add(1, Relaxed);
    }

    /// Counts `lane` in this tally from now on (and what it already holds).
    pub(crate) fn join(&self, lane: &Lane) {
        self.lock().live.push(lane.slot.clone());
    }

    /// Stops reading `lane`, keeping what it counted. Its holder calls
    /// this when it is done adding (it is dropping the lane), so the count
    /// read here is its last.
    pub(crate) fn leave(&self, lane: &Lane) {
        let mut lanes = self.lock();
        if let Some(i) = lanes.live.iter().position(|s| Arc::ptr_eq(s, &lane.slot)) {
            let slot = lanes.live.swap_remove(i);
            lanes.retired += slot.0.load(Relaxed);
        }
    }

    /// Requests counted so far. Each lane is read as its holder last wrote
    /// it, so a total read while clients add may miss their latest
    /// requests, never count one twice, and never go back.
    pub(crate) fn total(&self) -> u64 {
        let lanes = self.lock();
        let in_lanes: u64 = lanes.live.iter().map(|s| s.0.load(Relaxed)).sum();
        self.shared.load(Relaxed) + lanes.retired + in_lanes
    }

    fn lock(&self) -> MutexGuard<'_, Lanes> {
        // Plain bookkeeping: a poisoned lock still holds consistent counts.
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tally")
            .field("total", &self.total())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_and_shared_adds_sum_exactly_and_survive_leaving() {
        let tally = Tally::new();
        let other = Tally::new();
        tally.add();
        let mut a = Lane::new();
        a.add(); // before joining: still counted when it joins
        tally.join(&a);
        other.join(&a);
        let mut b = Lane::new();
        tally.join(&b);
        for _ in 0..10 {
            a.add();
            b.add();
        }
        assert_eq!(tally.total(), 1 + 11 + 10);
        assert_eq!(other.total(), 11, "a lane counts in every tally it joined");
        tally.leave(&a);
        drop(a);
        assert_eq!(tally.total(), 22, "what a lane counted stays");
        b.add();
        assert_eq!(tally.total(), 23);
        tally.leave(&b);
        tally.leave(&b); // twice: nothing counted twice
        assert_eq!(tally.total(), 23);
        assert_eq!(tally.lock().live.len(), 0);
    }

    #[test]
    fn lanes_on_many_threads_lose_no_request() {
        let tally = Arc::new(Tally::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let tally = tally.clone();
                std::thread::spawn(move || {
                    let mut lane = Lane::new();
                    tally.join(&lane);
                    for i in 0..10_000 {
                        lane.add();
                        if i % 1000 == 0 {
                            tally.add();
                            // A read while others add never goes back.
                            let seen = tally.total();
                            assert!(seen <= 4 * 10_010);
                        }
                    }
                    if t % 2 == 0 {
                        tally.leave(&lane);
                    }
                    lane
                })
            })
            .collect();
        let lanes: Vec<Lane> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(tally.total(), 4 * 10_010);
        for lane in &lanes {
            tally.leave(lane);
        }
        assert_eq!(tally.total(), 4 * 10_010);
    }
}
