use std::fmt;

use super::KeyHash;

/// Extracts a request's routing key for a hash strategy, hashed.
///
/// The balancer calls [`key_of`](KeyOf::key_of) once per request, before
/// the pick, with the hash the strategy needs; an extractor borrows the
/// key's bytes from the request and hashes them in place, so nothing is
/// allocated. `None` means the request has no key: the strategy's
/// fallback picks for it.
///
/// Ready-made: [`key_fn`] over a closure returning the key's bytes, and for
/// HTTP the extractors in [`crate::http`] (a header, a cookie, the path,
/// the authority).
pub trait KeyOf<Req>: Clone + Send + Sync + 'static {
    /// The hash of `req`'s key, or `None` when it has none.
    fn key_of(&self, req: &Req, hash: KeyHash) -> Option<u64>;
}

/// No key: every request goes to the strategy's fallback (a hash strategy)
/// or is picked as usual (any other). The default for a balancer.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKey;

impl<Req> KeyOf<Req> for NoKey {
    #[inline]
    fn key_of(&self, _req: &Req, _hash: KeyHash) -> Option<u64> {
        None
    }
}

/// A [`KeyOf`] from a closure returning the key's bytes; see [`key_fn`].
#[derive(Clone, Copy)]
pub struct KeyFn<F>(F);

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyFn")
            .field(&std::any::type_name::<F>())
            .finish()
    }
}

/// Keys requests by the bytes `f` borrows from them (`None`: no key).
///
/// ```
/// use tower_lb::balance::key_fn;
///
/// struct Job { tenant: String }
/// let by_tenant = key_fn(|job: &Job| Some(job.tenant.as_bytes()));
/// # let _ = by_tenant;
/// ```
pub fn key_fn<Req, F>(f: F) -> KeyFn<F>
where
    F: Fn(&Req) -> Option<&[u8]> + Clone + Send + Sync + 'static,
{
    KeyFn(f)
}

impl<Req, F> KeyOf<Req> for KeyFn<F>
where
    F: Fn(&Req) -> Option<&[u8]> + Clone + Send + Sync + 'static,
{
    #[inline]
    fn key_of(&self, req: &Req, hash: KeyHash) -> Option<u64> {
        (self.0)(req).map(|bytes| hash.hash(bytes))
    }
}
