//! The retry layer's response future.
//!
//! The first attempt lives in the future itself. While it is all there is
//! to drive (no deadline, no hedge) the future is that attempt and a judge
//! of its outcome, and a request that succeeds first time allocates
//! nothing. Anything more (the deadline, a hedge, backoff, further
//! attempts) lives in a boxed [`Cold`] part, whose state machine is in
//! [`state`](super::state).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::service::Local;
use super::state::Cold;
use super::{Decision, Policy};
use crate::attempt::{Attempted, Attempts};
use crate::error::{BoxError, Error};
use crate::trace::SpanSlot;

pin_project! {
    /// The future returned by [`Retry`](super::Retry)'s `call`.
    #[project = Proj]
    pub struct ResponseFuture<S, P, Req>
    where
        S: Service<Req>,
    {
        // The first attempt. Once it has ended it is not polled again,
        // and stays in place until this future is dropped, as a finished
        // future does; while `cold` is `None` it is still running.
        #[pin]
        first: S::Future,
        // The client's settings, through the clone that sent the request.
        local: Arc<Local<S, P>>,
        // The request as first sent: what the policy judges, and where
        // further attempts are copied from.
        template: Option<Req>,
        // The deadline, a hedge, later attempts and a service to send them
        // with: boxed, and only when a deadline, a hedge or a retry needs
        // them, so a request that succeeds first time allocates nothing
        // and stays small.
        cold: Option<Pin<Box<Cold<S, Req>>>>,
        // The record the first attempt carries, until `cold` holds it.
        tried: Option<Attempts>,
    }
}

impl<S, P, Req> fmt::Debug for ResponseFuture<S, P, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cold = self.cold.as_deref();
        f.debug_struct("ResponseFuture")
            .field("attempts", &cold.map_or(1, Cold::attempts))
            .field("in_flight", &cold.is_none_or(Cold::in_flight))
            .finish_non_exhaustive()
    }
}

impl<S, P, Req> ResponseFuture<S, P, Req>
where
    S: Service<Req>,
{
    /// The future of a request whose first attempt `call` makes with
    /// `req`.
    #[inline]
    pub(super) fn new(
        local: &Arc<Local<S, P>>,
        template: Option<Req>,
        started: Option<Instant>,
        hedge_delay: Option<Duration>,
        span: SpanSlot,
        mut req: Req,
        call: impl FnOnce(Req) -> S::Future,
    ) -> Self
    where
        Req: Attempted,
    {
        // Only a timed request can have a deadline: an untimed one does
        // not reach into the settings here.
        let deadline = started.and_then(|s| local.shared.config.deadline.map(|d| s + d));
        // A request that may be repeated carries the record of where its
        // attempts went from the first one on, so a retry or a hedge
        // avoids it; a type that cannot carry one skips this.
        let mut tried = (Req::CARRIES && template.is_some()).then(|| {
            let tried = Attempts::new();
            req.set_attempts(tried.clone());
            tried
        });
        // A request in a span is driven by the boxed part, which holds the
        // span: only a subscriber that wants spans pays for it.
        let traced = span.is_some();
        let cold = (deadline.is_some() || hedge_delay.is_some() || traced).then(|| {
            Box::pin(Cold::timed(tried.take(), started, deadline, hedge_delay).in_span(span))
        });
        // The first attempt is made here, last, so the inner future is
        // written straight into this one rather than copied in; the
        // reference to the settings is taken after it (taken before, its
        // atomic add measured slower).
        ResponseFuture {
            first: call(req),
            local: local.clone(),
            template,
            cold,
            tried,
        }
    }
}

impl<S, P, Req> Future for ResponseFuture<S, P, Req>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: Policy<Req, S::Response, S::Error>,
    Req: Attempted,
{
    type Output = Result<S::Response, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The common case first, kept small: the first attempt in flight
        // and nothing else (no timer, no hedge, no deadline).
        if let Some(cold) = this.cold.as_mut() {
            return cold
                .as_mut()
                .drive(this.first, this.local, this.template, None, cx);
        }
        // The outcome is taken apart at once, so only the response moves
        // on (not the whole result, which an error makes several times
        // larger).
        let landed = match ready!(this.first.as_mut().poll(cx)) {
            Ok(response) => match judge(this.local, this.template, Ok(&response)) {
                Decision::Accept => return Poll::Ready(Ok(response)),
                retry => (Ok(response), retry),
            },
            Err(e) => match judge(this.local, this.template, Err(&e)) {
                Decision::Accept => return Poll::Ready(Err(Error::from_inner(e))),
                retry => (Err(e), retry),
            },
        };
        let cold = this
            .cold
            .insert(Box::pin(Cold::after_first(this.tried.take())));
        cold.as_mut()
            .drive(this.first, this.local, this.template, Some(landed), cx)
    }
}

/// The policy's decision on an outcome; a request that could not be
/// copied is never repeated, so its outcome is accepted unjudged.
#[inline]
pub(super) fn judge<S, P, Req>(
    local: &Local<S, P>,
    template: &Option<Req>,
    outcome: Result<&S::Response, &S::Error>,
) -> Decision
where
    S: Service<Req>,
    P: Policy<Req, S::Response, S::Error>,
{
    match template {
        Some(req) => local.shared.policy.decide(req, outcome),
        None => Decision::Accept,
    }
}
