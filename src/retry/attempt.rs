//! How a retry tells the balancer below it which endpoints this request
//! already tried, and learns which one it picked.
//!
//! [`Retry`](super::Retry) sets the context on the current thread for the
//! synchronous duration of its inner service's `call`; [`Balance`] reads it
//! in its own `call` (where it picks), avoids the endpoints listed, and
//! records the one it chose. This works for any request type and costs a
//! thread-local read when no retry layer is above. It needs `call` to reach
//! the balancer synchronously: a layer in between that defers the call to
//! another task (`Buffer`) hides the context, and retries then pick as
//! first attempts do.
//!
//! [`Balance`]: crate::balance::Balance

use std::cell::Cell;
use std::sync::Arc;

/// Endpoints are told apart by (a hash of) the address of their stats,
/// which an endpoint keeps for as long as it stays in the pool: no
/// reference count to take, small enough to copy freely; a collision, or
/// an endpoint that is gone, can only cause a needless avoidance, never a
/// wrong answer.
pub(crate) type EndpointId = u32;

#[inline]
pub(crate) fn endpoint_id<T>(stats: &Arc<T>) -> EndpointId {
    let addr = Arc::as_ptr(stats) as *const u8 as usize as u64;
    // Allocations are aligned, so the low bits carry little; mix them up.
    (addr.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32
}

/// The most endpoints a request remembers trying; older ones are
/// forgotten first.
const REMEMBERED: usize = 4;

/// The endpoints one request has tried so far.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Attempts {
    tried: [EndpointId; REMEMBERED],
    len: u32,
}

impl Attempts {
    pub(crate) fn tried(&self, id: EndpointId) -> bool {
        self.tried[..(self.len as usize).min(REMEMBERED)].contains(&id)
    }

    pub(crate) fn remember(&mut self, id: EndpointId) {
        if self.tried(id) {
            return;
        }
        if (self.len as usize) < REMEMBERED {
            self.tried[self.len as usize] = id;
            self.len += 1;
        } else {
            self.tried.rotate_left(1);
            self.tried[REMEMBERED - 1] = id;
        }
    }
}

thread_local! {
    static CURRENT: Cell<Option<Attempts>> = const { Cell::new(None) };
    static COMPLETED: Cell<Option<EndpointId>> = const { Cell::new(None) };
}

/// Runs `call` with `attempts` visible to a balancer below.
pub(crate) fn scope<R>(attempts: Attempts, call: impl FnOnce() -> R) -> R {
    let outer = CURRENT.replace(Some(attempts));
    let out = call();
    CURRENT.set(outer);
    out
}

/// For the balancer: the endpoints to avoid, if a retry layer set them.
#[inline]
pub(crate) fn current() -> Option<Attempts> {
    CURRENT.get()
}

/// For the balancer's response future: the request it carried has just
/// finished at endpoint `id`. Read back by the retry layer polling it, on
/// the same thread, in the same poll.
#[inline]
pub(crate) fn completed(id: EndpointId) {
    COMPLETED.set(Some(id));
}

/// For the retry layer: the endpoint of the attempt that just finished,
/// if a balancer below reported it (and clears it). Read only when an
/// attempt is to be retried, so a request that succeeds pays nothing; when
/// no balancer sits below, the value may be left over from another request
/// on this thread, which can only cause a needless avoidance.
#[inline]
pub(crate) fn take_completed() -> Option<EndpointId> {
    COMPLETED.take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_four_and_restores_the_outer_scope() {
        let mut a = Attempts::default();
        for id in 1..=6 {
            a.remember(id);
        }
        assert!(!a.tried(1) && !a.tried(2));
        assert!((3..=6).all(|id| a.tried(id)));
        assert_eq!(current().map(|_| ()), None);
        scope(a, || {
            assert!(current().is_some_and(|c| c.tried(6)));
            completed(42);
        });
        assert!(current().is_none(), "restored");
        assert_eq!(take_completed(), Some(42));
        assert_eq!(take_completed(), None);
    }
}
