use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::Policy;
use super::future::ResponseFuture;
use super::layer::{Config, RetryStats};
use crate::error::{BoxError, Error};

/// Retries requests through any service: a budget shared by all clones,
/// backoff with jitter, a different endpoint for each attempt, hedging
/// and an overall deadline. Built by [`RetryLayer`](super::RetryLayer).
///
/// Errors of the inner service reach the caller as [`Error`]: one of
/// this crate's errors (from a balancer below) as it is, any other as
/// [`Error::Inner`].
///
/// A request that succeeds first time costs one atomic add (the budget's
/// count) and a copy of the request kept in case it must be repeated: the
/// service is not cloned per request. Retries and hedges call a clone of
/// the service the layer wrapped.
#[derive(Debug)]
pub struct Retry<S, P> {
    inner: S,
    shared: Arc<Shared<S, P>>,
}

/// What every request of a client shares.
#[derive(Debug)]
pub(crate) struct Shared<S, P> {
    /// Cloned for retries and hedges.
    pub(crate) proto: S,
    pub(crate) policy: P,
    pub(crate) config: Config,
}

impl<S: Clone, P> Clone for Retry<S, P> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: Clone, P> Retry<S, P> {
    pub(crate) fn from_parts(inner: S, policy: P, config: Config) -> Self {
        Retry {
            shared: Arc::new(Shared {
                proto: inner.clone(),
                policy,
                config,
            }),
            inner,
        }
    }
}

impl<S, P> Retry<S, P> {
    /// Counters shared by every clone of this client.
    pub fn stats(&self) -> RetryStats {
        self.shared.config.stats()
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P, Req> Service<Req> for Retry<S, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: Policy<Req, S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, P, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.shared;
        let config = &shared.config;
        config.budget.deposit();
        let template = (config.max_attempts > 1 || config.hedge.is_some())
            .then(|| shared.policy.clone_request(&req))
            .flatten();
        let hedge = config
            .hedge
            .as_ref()
            .filter(|_| template.is_some() && shared.policy.hedgeable(&req));
        let started =
            (config.deadline.is_some() || hedge.is_some_and(|h| h.learns())).then(Instant::now);
        let hedge_delay = hedge.map(|h| h.delay(&config.latencies));
        if let Some(own) = &config.requests {
            own.fetch_add(1, Relaxed);
        }
        // A first attempt has nothing to avoid; the endpoint it reaches is
        // reported back when it ends.
        let future = self.inner.call(req);
        ResponseFuture::new(shared.clone(), template, future, started, hedge_delay)
    }
}
