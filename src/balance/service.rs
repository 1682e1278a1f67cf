use std::fmt;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use tower_service::Service;

use super::future::{Failure, InFlight, ResponseFuture};
use super::p2c::nanos_since;
use super::{PickContext, PickRng, Picker, Strategy};
use crate::error::{BoxError, Error};
use crate::pool::{Pool, Snapshot};

/// What a balancer does when its pool has no endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhenEmpty {
    /// Fail at once with [`Error::NoEndpoints`].
    FailFast,
    /// Wait up to this long for an endpoint to appear, then fail with
    /// [`Error::NoEndpointsWithin`]. Waiting callers wake as soon as
    /// discovery publishes an endpoint, without needing another request.
    Wait(Duration),
}

impl Default for WhenEmpty {
    /// Wait up to 5 seconds: long enough for discovery to catch up at
    /// start-up, short enough that a missing service does not hang callers.
    fn default() -> Self {
        WhenEmpty::Wait(Duration::from_secs(5))
    }
}

/// A load balancer: a `Service<Req>` that sends each request to one
/// endpoint of a [`Pool`], chosen by a [`Strategy`].
///
/// `Balance` is `Clone`, `Send` and `Sync`; clones share the picker and its
/// counters, so it can be handed to many tasks without a `Buffer` or a
/// lock. A pick is one `arc_swap` load and a few atomics, with no
/// allocation. The endpoint is chosen in `call`, never in `poll_ready`
/// (which is always ready): nothing is cached between the two, so a
/// discovery update in between cannot misroute the request. The chosen
/// endpoint's own readiness is awaited inside the response future.
pub struct Balance<S, St: Strategy> {
    pool: Pool<S>,
    shared: Arc<Shared<S, St::Picker>>,
}

pub(super) struct Shared<S, P> {
    pub(super) routing: Arc<ArcSwap<Routing<S, P>>>,
    pub(super) rng: Arc<PickRng>,
    pub(super) when_empty: WhenEmpty,
}

/// A snapshot and the picker built for it, published together.
pub(super) struct Routing<S, P> {
    pub(super) snapshot: Arc<Snapshot<S>>,
    pub(super) picker: P,
    /// `Some(tau_ns)` when responses feed Peak-EWMA.
    pub(super) ewma_tau_ns: Option<f64>,
}

impl<S, P: Picker> Routing<S, P> {
    fn new(snapshot: Arc<Snapshot<S>>, picker: P) -> Self {
        let ewma_tau_ns = picker.ewma_decay().map(|d| (d.as_nanos() as f64).max(1.0));
        Routing {
            snapshot,
            picker,
            ewma_tau_ns,
        }
    }
}

/// The outcome of one pick attempt.
pub(super) enum Pick<S> {
    Picked(S, InFlight),
    Empty,
    NoneEligible(usize),
}

impl<S, St: Strategy> Clone for Balance<S, St> {
    fn clone(&self) -> Self {
        Balance {
            pool: self.pool.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, St: Strategy> fmt::Debug for Balance<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("strategy", &std::any::type_name::<St>())
            .field("pool", &self.pool)
            .field("when_empty", &self.shared.when_empty)
            .finish()
    }
}

impl<S, St> Balance<S, St>
where
    S: Send + Sync + 'static,
    St: Strategy,
{
    /// Balances over `pool` with `strategy`, entropy-seeded randomness and
    /// the default [`WhenEmpty`] policy.
    pub fn new(pool: Pool<S>, strategy: St) -> Self {
        Self::with_options(
            pool,
            strategy,
            PickRng::from_entropy(),
            WhenEmpty::default(),
        )
    }

    pub(super) fn with_options(
        pool: Pool<S>,
        strategy: St,
        rng: PickRng,
        when_empty: WhenEmpty,
    ) -> Self {
        let rng = Arc::new(rng);
        let first = pool.snapshot();
        let picker = strategy.build(&first, &rng);
        let routing = Arc::new(ArcSwap::from_pointee(Routing::new(first, picker)));
        let weak: Weak<ArcSwap<Routing<S, St::Picker>>> = Arc::downgrade(&routing);
        let build_rng = rng.clone();
        pool.subscribe(move |snapshot| match weak.upgrade() {
            Some(routing) => {
                if !Arc::ptr_eq(&routing.load().snapshot, snapshot) {
                    let picker = strategy.build(snapshot, &build_rng);
                    routing.store(Arc::new(Routing::new(snapshot.clone(), picker)));
                }
                true
            }
            None => false,
        });
        Balance {
            pool,
            shared: Arc::new(Shared {
                routing,
                rng,
                when_empty,
            }),
        }
    }
}

impl<S, St: Strategy> Balance<S, St> {
    /// The pool this balancer picks from.
    pub fn pool(&self) -> &Pool<S> {
        &self.pool
    }

    /// The snapshot the current picker was built for.
    pub fn snapshot(&self) -> Arc<Snapshot<S>> {
        self.shared.routing.load().snapshot.clone()
    }

    /// The policy for an empty pool.
    pub fn when_empty(&self) -> WhenEmpty {
        self.shared.when_empty
    }

    /// Picks an endpoint without sending anything: its index in
    /// [`snapshot`](Balance::snapshot) order at the time of the pick. For
    /// tests and diagnostics; requests go through `call`.
    pub fn pick_index(&self) -> Option<usize> {
        let routing = self.shared.routing.load();
        routing.picker.pick(&PickContext::new(&self.shared.rng))
    }

    pub(super) fn try_pick(&self) -> Pick<S>
    where
        S: Clone,
    {
        let routing = self.shared.routing.load();
        // One clock read serves both the picker and the request's timing.
        let timing = routing
            .ewma_tau_ns
            .map(|tau_ns| (nanos_since(routing.snapshot.epoch()), tau_ns));
        let mut ctx = PickContext::new(&self.shared.rng);
        ctx.now_ns = timing.map(|(start_ns, _)| start_ns);
        match routing.picker.pick(&ctx) {
            Some(i) => match routing.snapshot.members().get(i) {
                Some(member) => {
                    let in_flight = InFlight::start(member.stats().start_request(), timing);
                    Pick::Picked(member.service().clone(), in_flight)
                }
                // A picker that returns an index out of range is a bug in
                // the picker; fail the request rather than panic.
                None => Pick::NoneEligible(routing.snapshot.len()),
            },
            None if routing.snapshot.is_empty() => Pick::Empty,
            None => Pick::NoneEligible(routing.snapshot.len()),
        }
    }
}

impl<S, St, Req> Service<Req> for Balance<S, St>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    St: Strategy,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, St, Req>;

    /// Always ready: the endpoint is chosen, and its readiness awaited, per
    /// request.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.try_pick() {
            Pick::Picked(service, in_flight) => ResponseFuture::ready(service, req, in_flight),
            Pick::NoneEligible(total) => ResponseFuture::failed(Failure::NoneEligible(total)),
            Pick::Empty => match self.shared.when_empty {
                WhenEmpty::FailFast => ResponseFuture::failed(Failure::NoEndpoints),
                WhenEmpty::Wait(limit) => ResponseFuture::waiting(self.clone(), req, limit),
            },
        }
    }
}
