//! Trial requests: how an endpoint out of rotation comes back. Failover
//! offers a trial; the one request that takes it is sent there, and the
//! outcome decides.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::pool::Member;

/// One endpoint's trial: offered, taken by a request, or ended by that
/// request's completion (or cancellation). Failover holds one per endpoint
/// on trial and publishes it in its view; the balancer takes it and hands
/// it to the request, which ends it.
#[derive(Debug)]
pub(crate) struct Trial {
    state: AtomicU8,
}

const OFFERED: u8 = 0;
const TAKEN: u8 = 1;
const ENDED: u8 = 2;

impl Trial {
    /// A trial on offer.
    pub(crate) fn offered() -> Arc<Self> {
        Arc::new(Trial {
            state: AtomicU8::new(OFFERED),
        })
    }

    /// Takes the trial on offer, for the one request that gets it.
    #[inline]
    pub(crate) fn take(&self) -> bool {
        self.state.load(Ordering::Relaxed) == OFFERED
            && self
                .state
                .compare_exchange(OFFERED, TAKEN, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The trial request has finished (its outcome is in the endpoint's
    /// stats) or been given up on. Release: whoever sees the end sees the
    /// outcome recorded before it.
    #[inline]
    pub(crate) fn end(&self) {
        self.state.store(ENDED, Ordering::Release);
    }

    /// Whether a request took the trial and has since ended (pairs with
    /// [`end`](Self::end)).
    pub(crate) fn ended(&self) -> bool {
        self.state.load(Ordering::Acquire) == ENDED
    }

    /// Offers the trial again, after a trial request that decided nothing.
    pub(crate) fn offer_again(&self) {
        self.state.store(OFFERED, Ordering::Relaxed);
    }
}

/// An endpoint out of rotation and its trial, as a view publishes them.
#[derive(Debug)]
pub(crate) struct OnTrial<S> {
    pub(crate) member: Member<S>,
    pub(crate) trial: Arc<Trial>,
}

impl<S: Clone> Clone for OnTrial<S> {
    fn clone(&self) -> Self {
        OnTrial {
            member: self.member.clone(),
            trial: self.trial.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trial_is_taken_once_until_offered_again() {
        let t = Trial::offered();
        assert!(!t.ended());
        assert!(t.take());
        assert!(!t.take(), "taken once");
        assert!(!t.ended(), "taken, still running");
        t.end();
        assert!(t.ended());
        assert!(!t.take(), "an ended trial is not on offer");
        t.offer_again();
        assert!(!t.ended());
        assert!(t.take());
    }
}
