//! The balancer's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::service::{Balance, Pick, Timing};
use super::{Classify, ErrorsAreFailures, NoKey, Strategy};
use crate::attempt::{Attempted, Attempts};
use crate::error::{BoxError, Error};
use crate::failover::{HealthReport, Trial};
use crate::pool::EndpointStats;
use crate::trace::SpanSlot;

/// When a timed request started, and how to time it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Started {
    /// On `timing`'s clock.
    pub(super) start_ns: u64,
    pub(super) timing: Timing,
}

/// Counts a request against its endpoint from pick to completion; it stops
/// counting as in flight when the request finishes or its future is
/// dropped (its reference to the stats goes with it).
pub(super) struct InFlight {
    /// `None` once the outcome has been recorded.
    stats: Option<Arc<EndpointStats>>,
    /// When the request was picked and how to time it, when its latency
    /// feeds Peak-EWMA.
    started: Option<Started>,
    /// What few requests carry, boxed so that the rest stay small.
    extra: Option<Box<Extra>>,
}

/// The rare parts of a request in flight.
#[derive(Default)]
struct Extra {
    /// The trial this request decides, when it took one.
    trial: Option<Arc<Trial>>,
    /// The attempt's span, when a subscriber wants it.
    span: SpanSlot,
}

impl Extra {
    /// Ends the trial and the span, after the outcome was recorded.
    #[cold]
    #[inline(never)]
    fn finish(self, outcome: Outcome, stats: &EndpointStats) {
        self.span.record("outcome", outcome.as_str());
        if let Some(trial) = self.trial {
            // After the outcome, which the trial's end publishes; then wake
            // failover to judge it.
            trial.end();
            stats.wake();
        }
    }
}

impl InFlight {
    /// Counts a request against `stats` (the reference from
    /// [`StatsHandle::start_request`](crate::pool::StatsHandle), which is
    /// what makes it in flight); `started` is set when its latency feeds
    /// Peak-EWMA.
    #[inline]
    pub(super) fn start(stats: Arc<EndpointStats>, started: Option<Started>) -> Self {
        InFlight {
            stats: Some(stats),
            started,
            extra: None,
        }
    }

    /// Gives the attempt its span.
    #[cold]
    #[inline(never)]
    pub(super) fn set_span(&mut self, span: SpanSlot) {
        self.extra.get_or_insert_default().span = span;
    }

    /// The attempt's span, when it has one.
    #[inline]
    fn span(&self) -> Option<&SpanSlot> {
        self.extra.as_ref().map(|e| &e.span).filter(|s| s.is_some())
    }

    /// Makes this the request that decides `trial`: it ends the trial when
    /// it finishes or is dropped.
    pub(super) fn deciding(mut self, trial: Arc<Trial>) -> Self {
        self.extra.get_or_insert_default().trial = Some(trial);
        self
    }

    /// Records the outcome.
    ///
    /// Always inlined, as the P2C pick is (`Pair::pick` in `p2c.rs` says
    /// why).
    #[inline(always)]
    fn finish(&mut self, outcome: Outcome) {
        let Some(stats) = self.stats.take() else {
            return;
        };
        if let Some(Started { start_ns, timing }) = self.started {
            let Timing {
                clock,
                ewma,
                weight_shift,
                inv_tau_ns,
            } = timing;
            let now = clock.now_ns(stats.epoch());
            let rtt_ns = now.saturating_sub(start_ns);
            let rtt = rtt_ns as f64;
            if !matches!(outcome, Outcome::Cancelled) {
                stats.record_answer(now);
                stats.record_latency(rtt_ns, weight_shift);
            }
            if ewma {
                match outcome {
                    Outcome::Success => stats.record_rtt(rtt, now, inv_tau_ns),
                    // A failure never makes the endpoint look faster; the
                    // time a cancelled attempt ran is a lower bound of its
                    // latency.
                    Outcome::Failure { .. } => {
                        stats.record_rtt_at_least(rtt, now, inv_tau_ns, false)
                    }
                    Outcome::Cancelled => stats.record_rtt_at_least(rtt, now, inv_tau_ns, true),
                }
            }
        }
        match outcome {
            Outcome::Success => stats.record_success(),
            Outcome::Failure { unreachable } => stats.record_failure(unreachable),
            Outcome::Cancelled => {}
        }
        if let Some(extra) = self.extra.take() {
            extra.finish(outcome, &stats);
        }
        // Dropping `stats` ends the request's time in flight.
    }
}

impl Drop for InFlight {
    /// A request dropped before it finished (a timeout above, a hedge that
    /// lost, a caller that went away) is scored at the time it had run.
    #[inline]
    fn drop(&mut self) {
        if self.stats.is_some() {
            self.finish(Outcome::Cancelled);
        }
    }
}

/// How an attempt ended, for its endpoint's stats.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Success,
    Failure {
        /// The endpoint could not be reached.
        unreachable: bool,
    },
    Cancelled,
}

impl Outcome {
    /// The attempt span's `outcome`.
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure { unreachable: false } => "failure",
            Outcome::Failure { unreachable: true } => "unreachable",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// Why a request failed before reaching an endpoint; kept small so the
/// response future stays small.
#[derive(Debug, Clone)]
pub(super) enum Failure {
    NoEndpoints,
    /// How many endpoints the view's source holds, and the view's health
    /// report (which says why none is eligible).
    NoneEligible(usize, Option<Arc<HealthReport>>),
}

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Failure::NoEndpoints => Error::NoEndpoints,
            Failure::NoneEligible(total, health) => Error::none_eligible(total, health.as_deref()),
        }
    }
}

pin_project! {
    /// Waits for an endpoint to appear in an empty pool. Boxed, so the
    /// common path's future stays small.
    struct Wait<S, St: Strategy, C, K> {
        balance: Balance<S, St, C, K>,
        // The request's hashed key, taken when it arrived.
        key: Option<u64>,
        #[pin]
        notified: OwnedNotified,
        #[pin]
        deadline: Option<Sleep>,
        limit: Duration,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, St, Req, C, K>
    where
        S: Service<Req>,
        St: Strategy,
    {
        Waiting {
            wait: Pin<Box<Wait<S, St, C, K>>>,
            req: Option<Req>,
        },
        Ready {
            service: S,
            req: Option<Req>,
        },
        Calling {
            #[pin]
            future: S::Future,
        },
        Failed {
            failure: Failure,
        },
    }
}

pin_project! {
    /// The future returned by [`Balance`]'s `call`.
    pub struct ResponseFuture<S, St, Req, C = ErrorsAreFailures, K = NoKey>
    where
        S: Service<Req>,
        St: Strategy,
    {
        #[pin]
        state: State<S, St, Req, C, K>,
        in_flight: Option<InFlight>,
        classify: C,
    }
}

impl<S, St, Req, C, K> fmt::Debug for ResponseFuture<S, St, Req, C, K>
where
    S: Service<Req>,
    St: Strategy,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting for an endpoint",
            State::Ready { .. } => "waiting for the endpoint to be ready",
            State::Calling { .. } => "calling",
            State::Failed { .. } => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, St, Req, C, K> ResponseFuture<S, St, Req, C, K>
where
    S: Service<Req>,
    St: Strategy,
    C: Clone,
{
    pub(super) fn ready(service: S, req: Req, in_flight: InFlight, classify: C) -> Self {
        ResponseFuture {
            state: State::Ready {
                service,
                req: Some(req),
            },
            in_flight: Some(in_flight),
            classify,
        }
    }

    pub(super) fn failed(failure: Failure, classify: C) -> Self {
        ResponseFuture {
            state: State::Failed { failure },
            in_flight: None,
            classify,
        }
    }

    pub(super) fn waiting(
        balance: Balance<S, St, C, K>,
        req: Req,
        key: Option<u64>,
        limit: Duration,
    ) -> Self {
        let notified = balance.upstream().notify().clone().notified_owned();
        let deadline = Instant::now()
            .checked_add(limit)
            .map(tokio::time::sleep_until);
        let classify = balance.classify().clone();
        ResponseFuture {
            state: State::Waiting {
                wait: Box::pin(Wait {
                    balance,
                    key,
                    notified,
                    deadline,
                    limit,
                }),
                req: Some(req),
            },
            in_flight: None,
            classify,
        }
    }
}

impl<S: Clone, St: Strategy, C, K> Wait<S, St, C, K> {
    /// Picks as soon as an endpoint appears: the endpoint, or the error the
    /// policy for an empty pool calls for.
    fn poll_pick(
        self: Pin<&mut Self>,
        attempts: Option<&Attempts>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(S, InFlight), Error>> {
        let mut w = self.project();
        loop {
            match w.balance.try_pick(*w.key, attempts) {
                Pick::Picked(service, in_flight) => return Poll::Ready(Ok((service, in_flight))),
                Pick::NoneEligible(total) => {
                    let health = w.balance.health();
                    return Poll::Ready(Err(Error::none_eligible(total, health.as_deref())));
                }
                Pick::Empty { discovered } => {
                    if w.balance.when_empty().fails_now(discovered) {
                        return Poll::Ready(Err(Error::NoEndpoints));
                    }
                    if w.notified.as_mut().poll(cx).is_ready() {
                        // Re-arm before looking again, so a publish
                        // between the look and the next poll wakes us.
                        let fresh = w.balance.upstream().notify().clone().notified_owned();
                        w.notified.set(fresh);
                        continue;
                    }
                    if let Some(deadline) = w.deadline.as_pin_mut() {
                        if deadline.poll(cx).is_ready() {
                            return Poll::Ready(Err(Error::NoEndpointsWithin { waited: *w.limit }));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S, St, Req, C, K> Future for ResponseFuture<S, St, Req, C, K>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    St: Strategy,
    C: Classify<S::Response, S::Error>,
    Req: Attempted,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Waiting { wait, req } => {
                    let attempts = req.as_ref().and_then(|r| r.attempts());
                    let (service, in_flight) = ready!(wait.as_mut().poll_pick(attempts, cx))?;
                    *this.in_flight = Some(in_flight);
                    State::Ready {
                        service,
                        req: req.take(),
                    }
                }
                StateProj::Ready { service, req } => {
                    if let Err(e) = ready!(service.poll_ready(cx)) {
                        // An endpoint whose service cannot become ready
                        // cannot be reached.
                        if let Some(f) = this.in_flight {
                            f.finish(Outcome::Failure { unreachable: true });
                        }
                        return Poll::Ready(Err(Error::Inner(e.into())));
                    }
                    match req.take() {
                        // In the attempt's span, when it has one, so that
                        // what the endpoint's service logs is inside it.
                        Some(req) => State::Calling {
                            future: match this.in_flight.as_ref().and_then(InFlight::span) {
                                None => service.call(req),
                                Some(span) => span.in_scope(|| service.call(req)),
                            },
                        },
                        None => return Poll::Ready(Err(Error::none_eligible(0, None))),
                    }
                }
                StateProj::Calling { future } => {
                    let polled = match this.in_flight.as_ref().and_then(InFlight::span) {
                        None => future.poll(cx),
                        Some(span) => span.in_scope(|| future.poll(cx)),
                    };
                    return Poll::Ready(match ready!(polled) {
                        Ok(response) => {
                            if let Some(f) = this.in_flight {
                                f.finish(if this.classify.is_failure(Ok(&response)) {
                                    Outcome::Failure { unreachable: false }
                                } else {
                                    Outcome::Success
                                });
                            }
                            Ok(response)
                        }
                        Err(e) => {
                            let failure = this.classify.is_failure(Err(&e));
                            let e: BoxError = e.into();
                            if let Some(f) = this.in_flight {
                                let unreachable = this.classify.is_unreachable(&*e);
                                f.finish(if failure || unreachable {
                                    Outcome::Failure { unreachable }
                                } else {
                                    Outcome::Success
                                });
                            }
                            Err(Error::Inner(e))
                        }
                    });
                }
                StateProj::Failed { failure } => {
                    return Poll::Ready(Err(failure.clone().into_error()));
                }
            };
            this.state.set(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_a_request_costs_no_more_room_than_its_start_and_clock() {
        // The start, then the clock and the Peak-EWMA flag in the padding
        // before `1 / tau`: three words, as before the flag.
        assert_eq!(std::mem::size_of::<Started>(), 24);
        assert_eq!(std::mem::size_of::<Option<Started>>(), 24);
    }
}
