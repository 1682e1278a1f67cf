//! What a request has tried: the link from a retry layer to the balancer
//! below it, carried by the request itself.
//!
//! A retry should go to an endpoint the request has not tried yet, and a
//! hedge should never go where an attempt of the same request is still in
//! flight (Envoy's `previous_hosts`). [`Retry`](crate::retry::Retry)
//! attaches one [`Attempts`] record to every attempt it sends;
//! [`Balance`](crate::balance::Balance) reads it when it picks, avoids the
//! endpoints listed, and writes the endpoint it chose into it *as the
//! attempt is sent*. The record is shared between the attempts of one
//! request, so the retry layer learns where each attempt went without
//! waiting for it to end, and a hedge sent while the first attempt still
//! runs avoids it.
//!
//! Because the record travels inside the request, the link survives
//! anything in between that moves the request to another task, such as a
//! `tower::buffer::Buffer`. It flows one way: retry writes the record into
//! the request, the balancer fills it in; neither knows the other's types.
//!
//! A request type carries a record through the [`Attempted`] trait:
//!
//! - `http::Request<B>` keeps it in its extensions;
//! - [`Tracked<R>`] wraps any request and keeps it in a field;
//! - plain values — `()`, numbers, `String`, `&str`, `Vec<T>` — carry
//!   none: their retries may land where an earlier attempt went.
//!
//! For a request type of your own, `impl Attempted for MyRequest {}` lets
//! it through the layers without a record; implement the two methods over
//! a field of type `Option<Attempts>` to carry one.
//!
//! ```
//! use tower_lb::attempt::{Attempted, Attempts};
//!
//! #[derive(Clone)]
//! struct Query {
//!     sql: String,
//!     attempts: Option<Attempts>,
//! }
//!
//! impl Attempted for Query {
//!     fn attempts(&self) -> Option<&Attempts> {
//!         self.attempts.as_ref()
//!     }
//!     fn set_attempts(&mut self, attempts: Attempts) {
//!         self.attempts = Some(attempts);
//!     }
//! }
//! # let _ = Query { sql: String::new(), attempts: None }.sql;
//! ```
//!
//! A retry layer attaches the record to every attempt of a request it may
//! repeat, the first included. That costs one small allocation per
//! request (and, for `http::Request`, the extensions map); plain values,
//! which carry nothing, cost nothing.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

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
    // Never 0, which marks a slot not yet written.
    ((addr.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32).max(1)
}

/// The most endpoints a request remembers; older ones are forgotten first.
const REMEMBERED: usize = 8;

/// The endpoints the attempts of one request were sent to, shared by the
/// retry layer and every attempt's copy of the request.
///
/// Cheap to clone (one reference count). Written by a balancer as each
/// attempt is sent; read by the balancer when it picks for the next one.
#[derive(Clone, Default)]
pub struct Attempts {
    record: Arc<Record>,
}

#[derive(Default)]
struct Record {
    /// Attempts recorded so far (may exceed `REMEMBERED`).
    sent: AtomicU32,
    /// Endpoint ids, in a ring; 0 is a slot not written yet.
    ids: [AtomicU32; REMEMBERED],
    /// Bit `n` set: attempt `n` (from 0, below 32) is a hedge, for the
    /// balancer's attempt span.
    hedges: AtomicU32,
}

impl Attempts {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many attempts were recorded as sent to an endpoint.
    pub fn sent(&self) -> u32 {
        self.record.sent.load(Ordering::Acquire)
    }

    /// Whether an attempt was sent to the endpoint with this id.
    #[inline]
    pub(crate) fn tried(&self, id: EndpointId) -> bool {
        let sent = self.record.sent.load(Ordering::Acquire) as usize;
        self.record.ids[..sent.min(REMEMBERED)]
            .iter()
            .any(|slot| slot.load(Ordering::Acquire) == id)
    }

    /// Records an attempt sent to the endpoint with this id, and returns
    /// its number (0 for the first).
    #[inline]
    pub(crate) fn record(&self, id: EndpointId) -> u32 {
        let n = self.record.sent.fetch_add(1, Ordering::AcqRel);
        self.record.ids[n as usize % REMEMBERED].store(id, Ordering::Release);
        n
    }

    /// Marks the next attempt to be recorded as a hedge.
    pub(crate) fn mark_next_hedge(&self) {
        let n = self.record.sent.load(Ordering::Acquire);
        if n < u32::BITS {
            self.record.hedges.fetch_or(1 << n, Ordering::AcqRel);
        }
    }

    /// Whether attempt `n` (0 for the first) was marked as a hedge.
    pub(crate) fn is_hedge(&self, n: u32) -> bool {
        n < u32::BITS && self.record.hedges.load(Ordering::Acquire) & (1 << n) != 0
    }
}

impl fmt::Debug for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attempts")
            .field("sent", &self.sent())
            .finish()
    }
}

/// A request that can carry its [`Attempts`] record from a retry layer to
/// the balancer below it (see the [module docs](self)).
///
/// Both methods default to carrying nothing, so `impl Attempted for T {}`
/// is enough to send a type through the layers.
pub trait Attempted {
    /// Whether this type keeps the record it is given; a retry layer
    /// attaches one to a first attempt only then. Set it to `true` when you
    /// implement the two methods.
    const CARRIES: bool = false;

    /// The record a retry layer attached, if any.
    fn attempts(&self) -> Option<&Attempts> {
        None
    }

    /// Attaches a record; a type that cannot carry one ignores it.
    fn set_attempts(&mut self, attempts: Attempts) {
        let _ = attempts;
    }
}

impl<B> Attempted for http::Request<B> {
    const CARRIES: bool = true;

    #[inline]
    fn attempts(&self) -> Option<&Attempts> {
        self.extensions().get::<Attempts>()
    }

    fn set_attempts(&mut self, attempts: Attempts) {
        self.extensions_mut().insert(attempts);
    }
}

impl<T: Attempted + ?Sized> Attempted for Box<T> {
    const CARRIES: bool = T::CARRIES;

    fn attempts(&self) -> Option<&Attempts> {
        (**self).attempts()
    }

    fn set_attempts(&mut self, attempts: Attempts) {
        (**self).set_attempts(attempts);
    }
}

macro_rules! carries_nothing {
    ($($t:ty),* $(,)?) => {
        $(impl Attempted for $t {})*
    };
}

carries_nothing!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    String,
    &str,
);

impl<T> Attempted for Vec<T> {}

/// Any request, with room for its [`Attempts`] record.
///
/// Wrap requests of a type that cannot carry a record in `Tracked` to have
/// retries and hedges avoid the endpoints already tried; endpoint services
/// then receive the `Tracked` request (use [`into_inner`](Tracked::into_inner)
/// or deref to reach yours).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracked<R> {
    request: R,
    attempts: Option<Attempts>,
}

impl<R> Tracked<R> {
    /// Wraps `request`, with no record yet.
    pub fn new(request: R) -> Self {
        Tracked {
            request,
            attempts: None,
        }
    }

    /// The request.
    pub fn get_ref(&self) -> &R {
        &self.request
    }

    /// The request, mutably.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.request
    }

    /// Unwraps the request.
    pub fn into_inner(self) -> R {
        self.request
    }
}

impl<R> std::ops::Deref for Tracked<R> {
    type Target = R;

    fn deref(&self) -> &R {
        &self.request
    }
}

impl<R> Attempted for Tracked<R> {
    const CARRIES: bool = true;

    fn attempts(&self) -> Option<&Attempts> {
        self.attempts.as_ref()
    }

    fn set_attempts(&mut self, attempts: Attempts) {
        self.attempts = Some(attempts);
    }
}

impl PartialEq for Attempts {
    /// Two handles are equal when they share one record.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.record, &other.record)
    }
}

impl Eq for Attempts {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_shared_and_remember_the_last_eight() {
        let a = Attempts::new();
        let b = a.clone();
        assert!(!a.tried(7));
        b.record(7);
        assert!(a.tried(7), "one record behind both handles");
        for id in 100..110 {
            a.record(id);
        }
        assert_eq!(a.sent(), 11);
        assert!(!a.tried(7) && !a.tried(100) && !a.tried(101));
        assert!((102..110).all(|id| b.tried(id)));
    }

    #[test]
    fn carriers_keep_the_record_and_plain_values_carry_none() {
        let a = Attempts::new();
        let mut req = http::Request::new(());
        assert!(req.attempts().is_none());
        req.set_attempts(a.clone());
        assert_eq!(req.attempts(), Some(&a));

        let mut t = Tracked::new(5u32);
        t.set_attempts(a.clone());
        assert_eq!(t.attempts(), Some(&a));
        assert_eq!(*t, 5);

        let mut n = 5u32;
        n.set_attempts(a);
        assert!(n.attempts().is_none());
    }

    #[test]
    fn ids_are_never_zero() {
        let stats = Arc::new(0u64);
        assert_ne!(endpoint_id(&stats), 0);
    }
}
