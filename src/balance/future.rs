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

use super::Strategy;
use super::p2c::nanos_since;
use super::service::{Balance, Pick};
use crate::error::{BoxError, Error};
use crate::pool::EndpointStats;

/// Counts a request against its endpoint from pick to completion; the
/// in-flight counter goes back down when the request finishes or its
/// future is dropped.
pub(super) struct InFlight {
    /// `None` once the outcome has been recorded.
    stats: Option<Arc<EndpointStats>>,
    timing: Option<Timing>,
}

/// What Peak-EWMA needs to time a request.
#[derive(Clone, Copy)]
pub(super) struct Timing {
    /// When the request was picked, in nanoseconds since `epoch`.
    pub(super) start_ns: u64,
    pub(super) epoch: Instant,
    pub(super) tau_ns: f64,
}

impl InFlight {
    #[inline]
    pub(super) fn start(stats: Arc<EndpointStats>, timing: Option<Timing>) -> Self {
        stats.start();
        InFlight {
            stats: Some(stats),
            timing,
        }
    }

    #[inline]
    fn finish(&mut self, ok: bool) {
        let Some(stats) = self.stats.take() else {
            return;
        };
        if let Some(t) = self.timing {
            let now = nanos_since(t.epoch);
            stats.record_rtt(now.saturating_sub(t.start_ns) as f64, now, t.tau_ns);
        }
        if ok {
            stats.finish_success();
        } else {
            stats.finish_failure();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Cancelled before an outcome: only the in-flight count changes.
        if let Some(stats) = &self.stats {
            stats.finish();
        }
    }
}

pin_project! {
    /// Waits for an endpoint to appear in an empty pool.
    struct Wait {
        #[pin]
        notified: OwnedNotified,
        #[pin]
        deadline: Option<Sleep>,
        limit: Duration,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, St, Req>
    where
        S: Service<Req>,
        St: Strategy,
    {
        Waiting {
            balance: Balance<S, St>,
            wait: Pin<Box<Wait>>,
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
            error: Option<Error>,
        },
    }
}

pin_project! {
    /// The future returned by [`Balance`]'s `call`.
    pub struct ResponseFuture<S, St, Req>
    where
        S: Service<Req>,
        St: Strategy,
    {
        #[pin]
        state: State<S, St, Req>,
        in_flight: Option<InFlight>,
    }
}

impl<S, St, Req> fmt::Debug for ResponseFuture<S, St, Req>
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

impl<S, St, Req> ResponseFuture<S, St, Req>
where
    S: Service<Req>,
    St: Strategy,
{
    pub(super) fn ready(service: S, req: Req, in_flight: InFlight) -> Self {
        ResponseFuture {
            state: State::Ready {
                service,
                req: Some(req),
            },
            in_flight: Some(in_flight),
        }
    }

    pub(super) fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            in_flight: None,
        }
    }

    pub(super) fn waiting(balance: Balance<S, St>, req: Req, limit: Duration) -> Self {
        let notified = balance.pool().notify().clone().notified_owned();
        let deadline = Instant::now()
            .checked_add(limit)
            .map(tokio::time::sleep_until);
        ResponseFuture {
            state: State::Waiting {
                balance,
                wait: Box::pin(Wait {
                    notified,
                    deadline,
                    limit,
                }),
                req: Some(req),
            },
            in_flight: None,
        }
    }
}

impl<S, St, Req> Future for ResponseFuture<S, St, Req>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    St: Strategy,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Waiting { balance, wait, req } => {
                    match balance.try_pick() {
                        Pick::Picked(service, in_flight) => {
                            *this.in_flight = Some(in_flight);
                            State::Ready {
                                service,
                                req: req.take(),
                            }
                        }
                        Pick::NoneEligible(total) => {
                            return Poll::Ready(Err(Error::NoneEligible { total }));
                        }
                        Pick::Empty => {
                            let mut w = wait.as_mut().project();
                            if w.notified.as_mut().poll(cx).is_ready() {
                                // Re-arm before looking again, so a publish
                                // between the look and the next poll wakes us.
                                let fresh = balance.pool().notify().clone().notified_owned();
                                w.notified.set(fresh);
                                continue;
                            }
                            if let Some(deadline) = w.deadline.as_pin_mut() {
                                if deadline.poll(cx).is_ready() {
                                    return Poll::Ready(Err(Error::NoEndpointsWithin {
                                        waited: *w.limit,
                                    }));
                                }
                            }
                            return Poll::Pending;
                        }
                    }
                }
                StateProj::Ready { service, req } => {
                    if let Err(e) = ready!(service.poll_ready(cx)) {
                        if let Some(f) = this.in_flight {
                            f.finish(false);
                        }
                        return Poll::Ready(Err(Error::Inner(e.into())));
                    }
                    match req.take() {
                        Some(req) => State::Calling {
                            future: service.call(req),
                        },
                        None => return Poll::Ready(Err(Error::NoneEligible { total: 0 })),
                    }
                }
                StateProj::Calling { future } => {
                    let out = ready!(future.poll(cx));
                    if let Some(f) = this.in_flight {
                        f.finish(out.is_ok());
                    }
                    return Poll::Ready(out.map_err(|e| Error::Inner(e.into())));
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or(Error::NoEndpoints)));
                }
            };
            this.state.set(next);
        }
    }
}
