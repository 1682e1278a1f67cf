use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use tower_service::Service;

use super::future::{Failure, InFlight, ResponseFuture, Started};
use super::hash::{KeyHash, KeyOf, NoKey, mix};
use super::upstream::{Eligible, Upstream};
use super::{BuildContext, Classify, ErrorsAreFailures, PickContext, Picker, Strategy};
use crate::PickRng;
use crate::attempt::{Attempted, Attempts};
use crate::error::{BoxError, Error};
use crate::failover::{HealthReport, OnTrial};
use crate::pool::{Member, Members, Pool, Sampling, Snapshot};
use crate::trace::{self, SpanSlot, span};
use crate::util::clock::{LatencyClock, inv_tau_ns};
use crate::util::publish::lock;
use crate::util::rng::one_in_pow2;

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
    /// Wait, up to this long, only while discovery has not delivered its
    /// first update (start-up, or a source still connecting); once it has
    /// and the pool is empty, fail at once with [`Error::NoEndpoints`]. A
    /// request waiting when discovery delivers an empty set fails then.
    UntilDiscovered(Duration),
}

impl Default for WhenEmpty {
    /// `UntilDiscovered(5 s)`: a request sent while the pool starts waits
    /// for its first endpoints, but an empty registry answers at once.
    fn default() -> Self {
        WhenEmpty::UntilDiscovered(Duration::from_secs(5))
    }
}

impl WhenEmpty {
    /// Whether a request that finds the pool empty fails now, given
    /// whether discovery has delivered an update.
    pub(super) fn fails_now(self, discovered: bool) -> bool {
        match self {
            WhenEmpty::FailFast => true,
            WhenEmpty::Wait(_) => false,
            WhenEmpty::UntilDiscovered(_) => discovered,
        }
    }

    /// How long a request may wait for an endpoint.
    pub(super) fn limit(self) -> Duration {
        match self {
            WhenEmpty::FailFast => Duration::ZERO,
            WhenEmpty::Wait(limit) | WhenEmpty::UntilDiscovered(limit) => limit,
        }
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
///
/// When the pool is a failover view split into groups (priority tiers),
/// the balancer first draws a group by its share of traffic, then picks
/// within it. The classifier `C` decides which outcomes count as the
/// endpoint's failures in its stats. The key extractor `K` gives each
/// request the key a hash strategy routes by (see
/// [`hash`](super::hash)); a keyed request also draws its group by its
/// key, so it stays in one tier while the traffic split is unchanged.
pub struct Balance<S, St: Strategy, C = ErrorsAreFailures, K = NoKey> {
    upstream: Upstream<S>,
    shared: Arc<Shared<S, St::Picker>>,
    classify: C,
    key: K,
}

pub(super) struct Shared<S, P> {
    pub(super) routing: Arc<ArcSwap<Routing<S, P>>>,
    pub(super) rng: Arc<PickRng>,
    pub(super) when_empty: WhenEmpty,
    /// The strategy's [`Strategy::key_hash`].
    pub(super) key_hash: KeyHash,
    /// The strategy's [`Strategy::name`].
    pub(super) strategy: &'static str,
    /// The pool's: whether its endpoints keep latency histograms, and one
    /// request in how many a strategy that does not time for Peak-EWMA
    /// times for them.
    latency: Arc<Sampling>,
}

impl<S, P> Shared<S, P> {
    /// The start of a request a strategy does not time for Peak-EWMA:
    /// timed only while the pool keeps latency histograms, and then one in
    /// as many as the pool samples.
    #[inline(always)]
    fn histogram_start(&self, routing: &Routing<S, P>) -> Option<Started> {
        let shift = self.latency.shift()?;
        if !one_in_pow2(shift) {
            return None;
        }
        Some(histogram_started(
            routing.clock,
            routing.eligible.snapshot().epoch(),
            shift,
        ))
    }
}

/// Now, as the start of a request timed only for its endpoint's latency
/// histogram, where it counts `2^weight_shift` times. Out of line: the pick
/// path only reads the pool's sampling and, when it samples, draws.
#[cold]
#[inline(never)]
fn histogram_started(
    clock: LatencyClock,
    epoch: tokio::time::Instant,
    weight_shift: u8,
) -> Started {
    Started {
        start_ns: clock.now_ns(epoch),
        timing: Timing {
            clock,
            ewma: false,
            weight_shift,
            inv_tau_ns: 0.0,
        },
    }
}

/// What picks come from and the pickers built for it, published together.
pub(super) struct Routing<S, P> {
    pub(super) eligible: Eligible<S>,
    /// One per group, in priority order, with or without a share of
    /// traffic.
    lanes: Box<[Lane<P>]>,
    /// The one lane with a share, when only one has: no draw needed.
    only: Option<usize>,
    /// `Some` when responses feed Peak-EWMA.
    pub(super) ewma: Option<Timing>,
    /// What requests are timed with when they are timed only for an
    /// endpoint's latency histogram.
    clock: LatencyClock,
}

/// How a balancer times a request: for Peak-EWMA, or only for the
/// endpoint's latency histogram.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub(super) clock: LatencyClock,
    /// Whether the latency feeds Peak-EWMA; when not, the request is timed
    /// only for its endpoint's latency histogram. Beside `clock`, in the
    /// padding before `inv_tau_ns`, so a request in flight is no larger.
    pub(super) ewma: bool,
    /// How many answers its latency stands for in the histogram: `2^n`
    /// (0 when every request is timed). Also in the padding.
    pub(super) weight_shift: u8,
    /// `1 / tau`, the decay's time constant, in nanoseconds.
    pub(super) inv_tau_ns: f64,
}

/// A group of the snapshot and its picker.
struct Lane<P> {
    /// Draws up to and including this value (of a `u32`) take this lane.
    until: u32,
    /// Its share of first attempts; 0 for a tier that only takes retries
    /// which found nothing untried in the tiers before it.
    share: u32,
    /// The group's members in the full snapshot.
    members: Range<usize>,
    picker: P,
}

impl<S, P: Picker> Routing<S, P> {
    fn build<St: Strategy<Picker = P>>(
        eligible: Eligible<S>,
        strategy: &St,
        rng: &PickRng,
        clock: LatencyClock,
    ) -> Self {
        let all = eligible.snapshot().view();
        let ctx = BuildContext::with_clock(rng, eligible.snapshot().epoch(), clock);
        let mut lanes = Vec::new();
        let mut until: u32 = 0;
        for group in eligible.groups() {
            let range = group.members();
            let Some(run) = all.get_range(range.clone()).filter(|r| !r.is_empty()) else {
                continue;
            };
            until = until.saturating_add(group.share);
            lanes.push(Lane {
                until,
                share: group.share,
                picker: strategy.build(run, &ctx),
                members: range,
            });
        }
        // Rounding must never leave a draw without a lane: the last lane
        // with a share takes what is left.
        if let Some(last) = lanes.iter_mut().rev().find(|l| l.share > 0) {
            last.until = u32::MAX;
        } else if let Some(first) = lanes.first_mut() {
            first.until = u32::MAX;
            first.share = u32::MAX;
        } else {
            lanes.push(Lane {
                until: u32::MAX,
                share: u32::MAX,
                picker: strategy.build(all, &ctx),
                members: 0..all.len(),
            });
        }
        let mut shared = lanes.iter().enumerate().filter(|(_, l)| l.share > 0);
        let only = match (shared.next(), shared.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        };
        let ewma = lanes[0].picker.ewma_decay().map(|d| Timing {
            clock: ctx.latency_clock(),
            ewma: true,
            weight_shift: 0,
            inv_tau_ns: inv_tau_ns(d),
        });
        Routing {
            eligible,
            lanes: lanes.into(),
            only,
            ewma,
            clock,
        }
    }
}

impl<S, P> Routing<S, P> {
    /// The lane for this request, by its index: no draw when only one
    /// has a share, and a draw from the key when there is one.
    #[inline]
    fn lane(&self, rng: &PickRng, key: Option<u64>) -> usize {
        if let Some(only) = self.only {
            return only;
        }
        let draw = match key {
            Some(key) => (mix(key, 0x1A4E) >> 32) as u32,
            None => rng.next_u64() as u32,
        };
        self.lanes
            .iter()
            .position(|l| l.share > 0 && draw <= l.until)
            .unwrap_or(self.lanes.len() - 1)
    }

    /// A lane's members in the snapshot.
    #[inline]
    fn members_of(&self, lane: &Lane<P>) -> Members<'_, S> {
        let all = self.eligible.snapshot().view();
        all.get_range(lane.members.clone())
            .unwrap_or_else(|| all.get_range(0..0).unwrap_or(all))
    }
}

/// How many more picks (further along the request's fallback order) a
/// retry gets to find an endpoint it has not tried, before falling back to
/// a scan of the group.
const AVOID_TRIES: usize = 3;

/// The outcome of one pick attempt.
pub(super) enum Pick<S> {
    Picked(S, InFlight),
    /// The pool is empty; `discovered` when discovery has delivered an
    /// update (so it is empty for a reason, not still starting).
    Empty {
        discovered: bool,
    },
    NoneEligible(usize),
}

impl<S, St: Strategy, C: Clone, K: Clone> Clone for Balance<S, St, C, K> {
    fn clone(&self) -> Self {
        Balance {
            upstream: self.upstream.clone(),
            shared: self.shared.clone(),
            classify: self.classify.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S, St: Strategy, C, K> fmt::Debug for Balance<S, St, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("strategy", &std::any::type_name::<St>())
            .field("key", &std::any::type_name::<K>())
            .field("upstream", &self.upstream)
            .field("when_empty", &self.shared.when_empty)
            .finish()
    }
}

impl<S, St> Balance<S, St>
where
    S: Clone + Send + Sync + 'static,
    St: Strategy,
{
    /// Balances over `upstream` (a [`Pool`], or a
    /// [`Failover`](crate::failover::Failover) view of one) with
    /// `strategy`, entropy-seeded randomness, the default [`WhenEmpty`]
    /// policy and [`ErrorsAreFailures`].
    pub fn new(upstream: impl Into<Upstream<S>>, strategy: St) -> Self {
        Self::with_options(
            upstream.into(),
            strategy,
            Options {
                rng: PickRng::from_entropy(),
                when_empty: WhenEmpty::default(),
                classify: ErrorsAreFailures,
                key: NoKey,
                rebuild_delay: None,
            },
        )
    }
}

impl<S, St, C, K> Balance<S, St, C, K>
where
    S: Clone + Send + Sync + 'static,
    St: Strategy,
{
    pub(super) fn with_options(
        upstream: Upstream<S>,
        strategy: St,
        options: Options<C, K>,
    ) -> Self {
        let rng = Arc::new(options.rng);
        // Chosen once, here, rather than each time pickers are rebuilt
        // under the pool's subscriber lock.
        let clock = LatencyClock::detect();
        let latency = upstream.pool().latency_sampling().clone();
        let key_hash = strategy.key_hash();
        let strategy_name = strategy.name();
        let routing = Arc::new(ArcSwap::from_pointee(Routing::build(
            upstream.eligible(),
            &strategy,
            &rng,
            clock,
        )));
        let rebuild = Arc::new(Rebuild {
            routing: Arc::downgrade(&routing),
            strategy,
            rng: rng.clone(),
            clock,
            delay: options.rebuild_delay,
            pending: Mutex::new(None),
        });
        upstream.subscribe(move |eligible| rebuild.offer(eligible));
        Balance {
            upstream,
            shared: Arc::new(Shared {
                routing,
                rng,
                when_empty: options.when_empty,
                key_hash,
                strategy: strategy_name,
                latency,
            }),
            classify: options.classify,
            key: options.key,
        }
    }
}

/// How a [`Balance`] is made, besides its upstream and strategy.
pub(super) struct Options<C, K> {
    pub(super) rng: PickRng,
    pub(super) when_empty: WhenEmpty,
    pub(super) classify: C,
    pub(super) key: K,
    /// `None`: the strategy's [`Strategy::rebuild_delay`].
    pub(super) rebuild_delay: Option<Duration>,
}

/// Rebuilds a balancer's pickers when what it picks from changes: at once,
/// or, for a strategy with a [rebuild delay](Strategy::rebuild_delay),
/// once that delay after the first change of a burst, from the newest set.
struct Rebuild<S, St: Strategy> {
    routing: Weak<ArcSwap<Routing<S, St::Picker>>>,
    strategy: St,
    rng: Arc<PickRng>,
    clock: LatencyClock,
    /// The layer's override of the strategy's
    /// [`rebuild_delay`](Strategy::rebuild_delay), if any.
    delay: Option<Duration>,
    /// The newest set not built yet, while a rebuild is scheduled. Held
    /// while building, so two builds never race to publish.
    pending: Mutex<Option<Eligible<S>>>,
}

impl<S, St> Rebuild<S, St>
where
    S: Clone + Send + Sync + 'static,
    St: Strategy,
{
    /// Takes a new set from the upstream; `false` once the balancer is
    /// gone (which unsubscribes).
    fn offer(self: &Arc<Self>, eligible: Eligible<S>) -> bool {
        let Some(routing) = self.routing.upgrade() else {
            return false;
        };
        // Locked first, so a scheduled build cannot publish in between.
        let mut pending = lock(&self.pending);
        let current = routing.load();
        if Arc::ptr_eq(current.eligible.snapshot(), eligible.snapshot()) {
            return true;
        }
        // A set that was or becomes empty is built at once: requests may be
        // waiting for the first endpoints, and an empty table is cheap.
        let runtime = tokio::runtime::Handle::try_current();
        let delay = self
            .delay
            .unwrap_or_else(|| self.strategy.rebuild_delay(eligible.snapshot().view()));
        let defer = !delay.is_zero()
            && !current.eligible.snapshot().is_empty()
            && !eligible.snapshot().is_empty();
        match runtime {
            Ok(runtime) if defer => {
                if pending.replace(eligible).is_none() {
                    // Lives for the delay (at most a second), then ends,
                    // whether or not the balancer still exists.
                    let this = Arc::clone(self);
                    runtime.spawn(async move {
                        tokio::time::sleep(delay).await;
                        this.flush();
                    });
                }
            }
            _ => {
                *pending = None;
                self.rebuild(&routing, eligible);
            }
        }
        true
    }

    /// Builds the newest pending set, if a build since has not taken it.
    fn flush(&self) {
        let Some(routing) = self.routing.upgrade() else {
            return;
        };
        let mut pending = lock(&self.pending);
        if let Some(eligible) = pending.take() {
            self.rebuild(&routing, eligible);
        }
    }

    /// Builds pickers for `eligible` and publishes them.
    fn rebuild(&self, routing: &ArcSwap<Routing<S, St::Picker>>, eligible: Eligible<S>) {
        let next = Routing::build(eligible, &self.strategy, &self.rng, self.clock);
        routing.store(Arc::new(next));
    }
}

impl<S, St: Strategy, C, K> Balance<S, St, C, K> {
    /// The pool discovery feeds (for a failover view, the pool it views).
    pub fn pool(&self) -> &Pool<S> {
        self.upstream.pool()
    }

    /// What this balancer picks from.
    pub fn upstream(&self) -> &Upstream<S> {
        &self.upstream
    }

    /// The endpoints the current pickers were built for (for a failover
    /// view, the eligible ones).
    pub fn snapshot(&self) -> Arc<Snapshot<S>> {
        self.shared.routing.load().eligible.snapshot().clone()
    }

    /// Failover's report behind the current pickers, when picks come from
    /// a failover view.
    pub fn health(&self) -> Option<Arc<HealthReport>> {
        self.shared.routing.load().eligible.health()
    }

    /// The strategy's [`name`](Strategy::name).
    pub fn strategy_name(&self) -> &'static str {
        self.shared.strategy
    }

    /// Whether the strategy times every request anyway (Peak-EWMA), so
    /// that latency histograms count every answer whatever the pool
    /// samples.
    pub(crate) fn times_every_request(&self) -> bool {
        self.shared.routing.load().ewma.is_some()
    }

    /// The policy for an empty pool.
    pub fn when_empty(&self) -> WhenEmpty {
        self.shared.when_empty
    }

    /// The classifier that decides which outcomes are failures.
    pub fn classify(&self) -> &C {
        &self.classify
    }

    /// The key extractor.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// Picks an endpoint without sending anything: its index in
    /// [`snapshot`](Balance::snapshot) order at the time of the pick. For
    /// tests and diagnostics; requests go through `call`.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn pick_index(&self) -> Option<usize> {
        self.pick_index_keyed(None, 0)
    }

    /// As [`pick_index`](Balance::pick_index), for a request whose key
    /// hashed (with the strategy's [`KeyHash`](super::KeyHash)) to `key`,
    /// taking the `n`th choice of its fallback order (0: the first).
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn pick_index_keyed(&self, key: Option<u64>, n: usize) -> Option<usize> {
        let routing = self.shared.routing.load();
        let lane = &routing.lanes[routing.lane(&self.shared.rng, key)];
        let members = routing.members_of(lane);
        let ctx = PickContext::new(&self.shared.rng).with_key(key);
        lane.picker
            .pick_nth(members, &ctx, n)
            .map(|i| lane.members.start + i)
    }

    /// The hash of `req`'s key for this balancer's strategy, if it has one.
    #[inline]
    pub(super) fn key_of<Req>(&self, req: &Req) -> Option<u64>
    where
        K: KeyOf<Req>,
    {
        self.key.key_of(req, self.shared.key_hash)
    }

    /// Picks an endpoint for a request whose key hashed to `key`, avoiding
    /// the endpoints in `attempts` while others are eligible, and records
    /// the one it chose there.
    #[inline(always)]
    pub(super) fn try_pick(&self, key: Option<u64>, attempts: Option<&Attempts>) -> Pick<S>
    where
        S: Clone,
    {
        let routing = self.shared.routing.load();
        let index = routing.lane(&self.shared.rng, key);
        let lane = &routing.lanes[index];
        // One clock read serves both the picker and the request's timing.
        let timing = match routing.ewma {
            Some(t) => Some(Started {
                start_ns: t.clock.now_ns(routing.eligible.snapshot().epoch()),
                timing: t,
            }),
            None => self.shared.histogram_start(&routing),
        };
        let mut ctx = PickContext::new(&self.shared.rng).with_key(key);
        ctx.now_ns = timing.map(|t| t.start_ns);
        let members = routing.members_of(lane);
        if let Some(on_trial) = take_trial(routing.eligible.trials(), attempts) {
            let member = &on_trial.member;
            let n = attempts.map(|a| a.record(member.stats().id()));
            let mut in_flight = InFlight::start(member.stats().start_request(), timing)
                .deciding(on_trial.trial.clone());
            attempt_span(&mut in_flight, member, attempts, n, true);
            return Pick::Picked(member.service().clone(), in_flight);
        }
        let mut chosen = lane.picker.pick(members, &ctx).and_then(|i| members.get(i));
        if let Some(attempts) = attempts {
            if chosen.is_none_or(|m| attempts.tried(m.stats().id())) {
                chosen = avoid_tried(&routing, index, &ctx, attempts).or(chosen);
            }
        }
        match chosen {
            Some(member) => {
                let n = attempts.map(|a| a.record(member.stats().id()));
                let mut in_flight = InFlight::start(member.stats().start_request(), timing);
                attempt_span(&mut in_flight, member, attempts, n, false);
                Pick::Picked(member.service().clone(), in_flight)
            }
            None if routing.eligible.upstream_len() == 0 => Pick::Empty {
                discovered: routing.eligible.snapshot().discovered(),
            },
            // A view that filtered everything out (failover closed), or a
            // picker that found nothing to pick.
            None => Pick::NoneEligible(routing.eligible.upstream_len()),
        }
    }
}

/// The span of one attempt, sent to `member` (a `debug` span named
/// `attempt`, target `tower_lb::balance::service`): the endpoint's key and
/// tier; the attempt's number (from 1) and kind (`first`, `retry` or
/// `hedge`) when the request carries a retry layer's record (attempt `n`
/// from 0); whether it is an ejected endpoint's trial request; and, once
/// it ends, its `outcome` (`success`, `failure`, `unreachable` or
/// `cancelled`). Nothing is computed unless a subscriber wants the span.
#[inline(always)]
fn attempt_span<S>(
    in_flight: &mut InFlight,
    member: &Member<S>,
    attempts: Option<&Attempts>,
    n: Option<u32>,
    trial: bool,
) {
    // Only a request with a retry layer's record gets a span: one whose
    // type carries none (the benches' numbers) skips even the level check.
    if let Some(n) = n {
        if trace::debug_spans() {
            let span = make_attempt_span(member, attempts, n, trial);
            if span.is_some() {
                in_flight.set_span(span);
            }
        }
    }
}

#[cold]
#[inline(never)]
fn make_attempt_span<S>(
    member: &Member<S>,
    attempts: Option<&Attempts>,
    n: u32,
    trial: bool,
) -> SpanSlot {
    span!(
        debug_span,
        "attempt",
        endpoint = member.endpoint().key(),
        tier = member.endpoint().priority(),
        attempt = n + 1,
        kind = attempt_kind(attempts, n),
        trial,
        outcome = tracing::field::Empty,
    )
}

/// `first`, `retry` or `hedge`.
#[cfg(feature = "tracing")]
fn attempt_kind(attempts: Option<&Attempts>, n: u32) -> &'static str {
    match n {
        0 => "first",
        n if attempts.is_some_and(|a| a.is_hedge(n)) => "hedge",
        _ => "retry",
    }
}

/// An endpoint on trial whose one trial request this is: the first one on
/// offer that the request has not tried. Out of the picker's sight, so an
/// endpoint back from an ejection gets one request, and its outcome decides,
/// instead of a full share while its history is stale.
#[inline]
fn take_trial<'r, S>(
    trials: &'r [OnTrial<S>],
    attempts: Option<&Attempts>,
) -> Option<&'r OnTrial<S>> {
    if trials.is_empty() {
        return None;
    }
    trials
        .iter()
        .find(|t| attempts.is_none_or(|a| !a.tried(t.member.stats().id())) && t.trial.take())
}

/// A member no attempt of this request has been sent to: further along the
/// request's fallback order in its own lane (the key's next endpoints, or
/// fresh draws), then any in that lane, then the next tiers' lanes in
/// priority order, then the tiers before it (Envoy's `previous_hosts` and
/// `previous_priorities`). `None` when every eligible endpoint was tried.
fn avoid_tried<'r, S, P: Picker>(
    routing: &'r Routing<S, P>,
    index: usize,
    ctx: &PickContext<'_>,
    attempts: &Attempts,
) -> Option<&'r Member<S>> {
    let untried = |m: &&Member<S>| !attempts.tried(m.stats().id());
    let lane = &routing.lanes[index];
    let members = routing.members_of(lane);
    for n in 1..=AVOID_TRIES {
        if let Some(m) = lane
            .picker
            .pick_nth(members, ctx, n)
            .and_then(|i| members.get(i))
            .filter(untried)
        {
            return Some(m);
        }
    }
    if let Some(m) = members.iter().find(untried) {
        return Some(m);
    }
    let lanes = &routing.lanes;
    let others = lanes[index + 1..].iter().chain(&lanes[..index]);
    for other in others {
        let members = routing.members_of(other);
        let first = other.picker.pick(members, ctx).and_then(|i| members.get(i));
        if let Some(m) = first
            .filter(untried)
            .or_else(|| members.iter().find(untried))
        {
            return Some(m);
        }
    }
    None
}

impl<S, St, C, K, Req> Service<Req> for Balance<S, St, C, K>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    St: Strategy,
    C: Classify<S::Response, S::Error>,
    K: KeyOf<Req>,
    Req: Attempted,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, St, Req, C, K>;

    /// Always ready: the endpoint is chosen, and its readiness awaited, per
    /// request.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = self.key_of(&req);
        match self.try_pick(key, req.attempts()) {
            Pick::Picked(service, in_flight) => {
                ResponseFuture::ready(service, req, in_flight, self.classify.clone())
            }
            Pick::NoneEligible(total) => ResponseFuture::failed(
                Failure::NoneEligible(total, self.health()),
                self.classify.clone(),
            ),
            Pick::Empty { discovered } if self.shared.when_empty.fails_now(discovered) => {
                ResponseFuture::failed(Failure::NoEndpoints, self.classify.clone())
            }
            Pick::Empty { .. } => {
                let limit = self.shared.when_empty.limit();
                ResponseFuture::waiting(self.clone(), req, key, limit)
            }
        }
    }
}
