use std::fmt;

/// Decides whether a finished request counts as a failure of its endpoint.
///
/// The verdict feeds the endpoint's stats (successes, failures, consecutive
/// failures), which failover's outlier detection reads. It never changes
/// what the caller receives. Classifiers are cloned into every response
/// future, so keep them cheap to clone (the built-ins are zero-sized).
///
/// It also tells **unreachable** endpoints apart from misbehaving ones
/// ([`is_unreachable`](Classify::is_unreachable)): an endpoint that cannot
/// be reached is marked down by failover at once, without the outlier
/// detector's cap, and probed back with backoff.
pub trait Classify<Res, E>: Clone + Send + Sync + 'static {
    /// Whether this outcome is the endpoint's failure.
    fn is_failure(&self, outcome: Result<&Res, &E>) -> bool;

    /// Whether an error of the endpoint's service shows that the endpoint
    /// cannot be reached at all (as opposed to answering badly). By
    /// default [`unreachable()`](unreachable()): connection refused or reset before an
    /// answer, a connect timeout, and the like, anywhere in the error's
    /// `source()` chain — which covers `std::io` errors, hyper-util's
    /// connect errors and tonic's transport errors, all of which chain to
    /// the `io::Error` underneath. An endpoint service whose `poll_ready`
    /// fails is always taken as unreachable.
    fn is_unreachable(&self, error: &(dyn std::error::Error + 'static)) -> bool {
        unreachable(error)
    }
}

/// Whether `error`, or an error in its `source()` chain, is an
/// [`io::Error`](std::io::Error) of a kind that means the endpoint could
/// not be reached: `ConnectionRefused`, `ConnectionReset`,
/// `ConnectionAborted`, `NotConnected`, `BrokenPipe`, `AddrNotAvailable`,
/// `HostUnreachable`, `NetworkUnreachable`, `TimedOut`. An error from the
/// call's future comes before the response head, so a reset there is a
/// reset before any answer; a request timeout of a layer such as
/// `tower::timeout` is not an `io::Error` and does not count.
///
/// A connection closed cleanly before the answer (hyper's "connection
/// closed before message completed", which carries no `io::Error`) is
/// not unreachable either: a server closing an idle keep-alive connection
/// as a request goes out gives the same error, and marking a live
/// endpoint down for that race would take it out for a second. It is
/// still a failure, and a process that died refuses the next connection,
/// which is unreachable. `tests/transport_errors.rs` checks these cases
/// against hyper-util's client and tonic's channel.
pub fn unreachable(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | NotConnected
                    | BrokenPipe
                    | AddrNotAvailable
                    | HostUnreachable
                    | NetworkUnreachable
                    | TimedOut
            ) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// The generic default: an `Err` from the endpoint's service is a failure,
/// any response a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsAreFailures;

impl<Res, E> Classify<Res, E> for ErrorsAreFailures {
    #[inline]
    fn is_failure(&self, outcome: Result<&Res, &E>) -> bool {
        outcome.is_err()
    }
}

/// A classifier from a function.
#[derive(Clone, Copy)]
pub struct ClassifyFn<F>(pub F);

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClassifyFn(..)")
    }
}

impl<F, Res, E> Classify<Res, E> for ClassifyFn<F>
where
    F: Fn(Result<&Res, &E>) -> bool + Clone + Send + Sync + 'static,
{
    #[inline]
    fn is_failure(&self, outcome: Result<&Res, &E>) -> bool {
        (self.0)(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug)]
    struct Wrapper(io::Error);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("client error (Connect)")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn unreachable_looks_down_the_source_chain() {
        let refused = Wrapper(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(unreachable(&refused));
        assert!(unreachable(&io::Error::from(
            io::ErrorKind::ConnectionReset
        )));
        assert!(!unreachable(&io::Error::from(io::ErrorKind::InvalidData)));
        let plain: crate::BoxError = "500".into();
        assert!(!unreachable(&*plain));
        assert!(<ErrorsAreFailures as Classify<(), ()>>::is_unreachable(
            &ErrorsAreFailures,
            &refused
        ));
    }
}
