use std::time::Duration;

/// What a [`Policy`] says about one attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Return this outcome to the caller.
    Accept,
    /// Try again (budget, attempts and deadline permitting), not sooner
    /// than `after` if the server asked for a pause (`Retry-After`).
    Retry {
        /// The server's requested pause.
        after: Option<Duration>,
    },
}

/// Decides what is retried, and copies requests for further attempts.
///
/// A retry layer keeps one copy of each request (from
/// [`clone_request`](Policy::clone_request)) for its next attempt; a
/// request that cannot be copied is sent once.
pub trait Policy<Req, Res, E>: Clone + Send + Sync + 'static {
    /// A copy of `req` for another attempt, or `None` when it cannot be
    /// repeated (a body that was not buffered, a request that must not be
    /// retried at all).
    fn clone_request(&self, req: &Req) -> Option<Req>;

    /// Whether the outcome of an attempt of `req` should be retried.
    fn decide(&self, req: &Req, outcome: Result<&Res, &E>) -> Decision;

    /// Whether `req` may be hedged: sent a second time, to another
    /// endpoint, while the first attempt is still running. Only for
    /// requests that are safe to run twice. `false` by default.
    fn hedgeable(&self, req: &Req) -> bool {
        let _ = req;
        false
    }
}

/// The generic policy: retry any `Err` from the inner service, for
/// requests that are `Clone`; responses are accepted.
///
/// Use it for services whose requests are safe to repeat. For HTTP,
/// [`HttpPolicy`](super::HttpPolicy) knows methods, statuses and whether a
/// request was sent at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryErrors {
    hedge: bool,
}

impl RetryErrors {
    /// Retries errors; no hedging.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also allows hedging every request.
    #[must_use]
    pub fn hedging(mut self) -> Self {
        self.hedge = true;
        self
    }
}

impl<Req: Clone, Res, E> Policy<Req, Res, E> for RetryErrors {
    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }

    fn decide(&self, _req: &Req, outcome: Result<&Res, &E>) -> Decision {
        match outcome {
            Ok(_) => Decision::Accept,
            Err(_) => Decision::Retry { after: None },
        }
    }

    fn hedgeable(&self, _req: &Req) -> bool {
        self.hedge
    }
}
