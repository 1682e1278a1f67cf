use std::fmt;

/// Decides whether a finished request counts as a failure of its endpoint.
///
/// The verdict feeds the endpoint's stats (successes, failures, consecutive
/// failures), which failover's outlier detection reads. It never changes
/// what the caller receives. Classifiers are cloned into every response
/// future, so keep them cheap to clone (the built-ins are zero-sized).
pub trait Classify<Res, E>: Clone + Send + Sync + 'static {
    /// Whether this outcome is the endpoint's failure.
    fn is_failure(&self, outcome: Result<&Res, &E>) -> bool;
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
