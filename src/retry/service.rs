use crate::trace::{self, SpanSlot, span};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::Policy;
use super::future::ResponseFuture;
use super::layer::{Config, RetryStats};
use super::tally::Lane;
use crate::attempt::Attempted;
use crate::error::{BoxError, Error};

/// Retries requests through any service: a budget shared by all clones,
/// backoff with jitter, a different endpoint for each attempt, hedging
/// and an overall deadline. Built by [`RetryLayer`](super::RetryLayer).
///
/// Errors of the inner service reach the caller as [`Error`]: one of
/// this crate's errors (from a balancer below) as it is, any other as
/// [`Error::Inner`].
///
/// A request that succeeds first time costs a count for the budget, a
/// reference to the client's settings for its future, and a copy of the
/// request kept in case it must be repeated: the service is not cloned per
/// request. Retries and hedges call a clone of the service the layer
/// wrapped.
///
/// # Many threads
///
/// A clone that has served 16 requests takes a
/// counter and a reference of its own, each on its own cache line (one
/// allocation, once): from then on its requests write nothing that other
/// clones write, so clients on many threads, each with its own clone, do
/// not slow each other down. Clones made for a single request (as
/// `ServiceExt::oneshot` on a clone does) never take one, and cost what
/// they did: one atomic add on the budget's shared counter.
#[derive(Debug)]
pub struct Retry<S, P> {
    inner: S,
    /// What clones without a lane of their own share.
    root: Arc<Local<S, P>>,
    /// This clone's own lane, once it has served `LANE_AFTER` requests.
    own: Option<Own<S, P>>,
    /// Requests served without a lane of its own, up to `LANE_AFTER`.
    calls: u32,
    /// What `call` needs of the settings, kept here so it does not reach
    /// through the shared settings for it.
    plan: CallPlan,
}

/// What each request needs of the client's settings at `call`.
#[derive(Debug, Clone, Copy)]
struct CallPlan {
    /// Whether a copy of the request is kept for later attempts.
    copies: bool,
    /// Whether hedging is on.
    hedges: bool,
    /// Whether requests have a deadline.
    deadline: bool,
}

impl CallPlan {
    fn of(config: &Config) -> Self {
        CallPlan {
            copies: config.max_attempts > 1 || config.hedge.is_some(),
            hedges: config.hedge.is_some(),
            deadline: config.deadline.is_some(),
        }
    }
}

/// Requests a clone serves before it takes a lane of its own.
const LANE_AFTER: u32 = 16;

/// What every request of a client shares.
#[derive(Debug)]
pub(crate) struct Shared<S, P> {
    /// Cloned for retries and hedges.
    pub(crate) proto: S,
    pub(crate) policy: P,
    pub(crate) config: Config,
}

/// What a request's future holds to reach the client's settings: one per
/// clone with a lane of its own, so that futures of different clones
/// count references on different cache lines (it fills its line, so
/// nothing else shares it).
#[derive(Debug)]
#[repr(align(64))]
pub(crate) struct Local<S, P> {
    pub(crate) shared: Arc<Shared<S, P>>,
}

/// A clone's own lane of the request count and its own [`Local`].
#[derive(Debug)]
struct Own<S, P> {
    local: Arc<Local<S, P>>,
    lane: Lane,
}

impl<S, P> Own<S, P> {
    /// Joins a new lane to the budget (and to the layer's own count).
    fn join(shared: &Arc<Shared<S, P>>) -> Self {
        let lane = Lane::new();
        for tally in shared.config.tallies() {
            tally.join(&lane);
        }
        Own {
            local: Arc::new(Local {
                shared: shared.clone(),
            }),
            lane,
        }
    }
}

impl<S, P> Drop for Own<S, P> {
    fn drop(&mut self) {
        // The clone is done counting: keep what it counted.
        for tally in self.local.shared.config.tallies() {
            tally.leave(&self.lane);
        }
    }
}

impl<S: Clone, P> Clone for Retry<S, P> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            root: self.root.clone(),
            own: None,
            calls: 0,
            plan: self.plan,
        }
    }
}

impl<S: Clone, P> Retry<S, P> {
    pub(crate) fn from_parts(inner: S, policy: P, config: Config) -> Self {
        let plan = CallPlan::of(&config);
        let shared = Arc::new(Shared {
            proto: inner.clone(),
            policy,
            config,
        });
        Retry {
            inner,
            root: Arc::new(Local { shared }),
            own: None,
            calls: 0,
            plan,
        }
    }
}

impl<S, P> Retry<S, P> {
    /// Counters shared by every clone of this client.
    pub fn stats(&self) -> RetryStats {
        self.root.shared.config.stats()
    }

    /// The retry budget the layer draws on (shared by its clones, and by
    /// every layer given the same budget).
    pub fn budget(&self) -> &crate::retry::RetryBudget {
        &self.root.shared.config.budget
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
    Req: Attempted,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, P, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let local = match &mut self.own {
            Some(own) => {
                own.lane.add();
                &own.local
            }
            None => {
                for tally in self.root.shared.config.tallies() {
                    tally.add();
                }
                self.calls += 1;
                if self.calls >= LANE_AFTER {
                    // From the next request on.
                    self.own = Some(Own::join(&self.root.shared));
                }
                &self.root
            }
        };
        let shared = &*local.shared;
        let plan = self.plan;
        let template = plan
            .copies
            .then(|| shared.policy.clone_request(&req))
            .flatten();
        let config = &shared.config;
        let hedge = if plan.hedges {
            config
                .hedge
                .as_ref()
                .filter(|_| template.is_some() && shared.policy.hedgeable(&req))
        } else {
            None
        };
        let started = (plan.deadline || hedge.is_some_and(|h| h.learns())).then(Instant::now);
        let hedge_delay = hedge.map(|h| h.delay(&config.latencies));
        // A first attempt has nothing to avoid; with a deadline or a hedge
        // it carries the request's record, so the balancer notes where it
        // went.
        let inner = &mut self.inner;
        if trace::debug_spans() {
            return traced_call(local, template, started, hedge_delay, req, inner);
        }
        ResponseFuture::new(
            local,
            template,
            started,
            hedge_delay,
            SpanSlot::none(),
            req,
            |req| inner.call(req),
        )
    }
}

/// `call` for a request that a subscriber may want a span of: the first
/// attempt is sent inside the request's span, so the balancer's attempt
/// span is its child. Out of line, so that `call` stays as small as it was
/// without spans.
#[cold]
#[inline(never)]
fn traced_call<S, P, Req>(
    local: &Arc<Local<S, P>>,
    template: Option<Req>,
    started: Option<Instant>,
    hedge_delay: Option<std::time::Duration>,
    req: Req,
    inner: &mut S,
) -> ResponseFuture<S, P, Req>
where
    S: Service<Req>,
    Req: Attempted,
{
    let span = request_span();
    let _entered = span.enter_owned();
    ResponseFuture::new(local, template, started, hedge_delay, span, req, |req| {
        inner.call(req)
    })
}

/// The span of one request through the retry layer (a `debug` span named
/// `request`, target `tower_lb::retry::service`), given the number of
/// `attempts` and its `outcome` (`ok` or `error`) when it ends; the
/// balancer's attempt spans are its children.
#[cold]
#[inline(never)]
fn request_span() -> SpanSlot {
    span!(
        debug_span,
        "request",
        attempts = tracing::field::Empty,
        outcome = tracing::field::Empty,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::Layer;
    use tower::util::ServiceFn;

    use super::*;
    use crate::retry::{Hedge, RetryErrors, RetryLayer};

    type Echo = ServiceFn<fn(u64) -> std::future::Ready<Result<u64, BoxError>>>;

    fn echo() -> Echo {
        tower::service_fn(|n| std::future::ready(Ok(n)))
    }

    /// The plan `call` reads, as each client and its clones hold it.
    fn plan_of(layer: RetryLayer<RetryErrors>) -> [(bool, bool, bool); 2] {
        let client = layer.layer(echo());
        let clone = client.clone();
        [client.plan, clone.plan].map(|p| (p.copies, p.hedges, p.deadline))
    }

    #[test]
    fn the_call_plan_follows_the_settings_and_clones_keep_it() {
        let base = || RetryLayer::new(RetryErrors::new());
        // (copies the request, hedges, has a deadline)
        assert_eq!(plan_of(base()), [(true, false, false); 2]);
        assert_eq!(plan_of(base().max_attempts(1)), [(false, false, false); 2]);
        assert_eq!(
            plan_of(
                base()
                    .max_attempts(1)
                    .hedge(Hedge::after(Duration::from_millis(5)))
            ),
            [(true, true, false); 2],
            "a hedge needs a copy even without retries"
        );
        assert_eq!(
            plan_of(base().deadline(Duration::from_secs(1))),
            [(true, false, true); 2]
        );
    }
}
