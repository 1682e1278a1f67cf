//! The retry layer's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep, sleep_until};
use tower_service::Service;

use super::layer::Config;
use super::service::Local;
use super::{Decision, Policy};
use crate::attempt::{Attempted, Attempts};
use crate::error::{BoxError, Error};
use crate::trace::event;

/// What the timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    None,
    /// Pausing before the next attempt.
    Backoff,
    /// Waiting to send a hedged copy.
    Hedge,
}

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
        // Timers, a hedge, later attempts and a service to send them
        // with: boxed, and only when a deadline, a hedge or a retry needs
        // them, so a request that succeeds first time allocates nothing
        // and stays small.
        cold: Option<Pin<Box<Cold<S, Req>>>>,
        // The record the first attempt carries, until `cold` holds it.
        tried: Option<Attempts>,
    }
}

pin_project! {
    #[project = ColdProj]
    struct Cold<S, Req>
    where
        S: Service<Req>,
    {
        // The attempt after the first, while it runs.
        #[pin]
        retry: Option<S::Future>,
        #[pin]
        hedge: Option<S::Future>,
        #[pin]
        timer: Option<Sleep>,
        #[pin]
        deadline: Option<Sleep>,
        timer_kind: Timer,
        // A clone of the wrapped service, for attempts after the first.
        service: Option<S>,
        // The outcome of a finished attempt while another still runs.
        last: Option<Result<S::Response, S::Error>>,
        // The copy the next retry sends, made before the budget is asked.
        next: Option<Req>,
        // Where this request's attempts were sent, filled in by the
        // balancer below as each is sent; attached to every attempt.
        tried: Attempts,
        started: Option<Instant>,
        // Whether the first attempt still runs.
        first_running: bool,
        // Attempts sent so far, hedges included.
        attempts: u32,
    }
}

impl<S: Service<Req>, Req> Cold<S, Req> {
    fn new(first_running: bool, tried: Option<Attempts>) -> Self {
        Cold {
            retry: None,
            hedge: None,
            timer: None,
            deadline: None,
            timer_kind: Timer::None,
            service: None,
            last: None,
            next: None,
            tried: tried.unwrap_or_default(),
            started: None,
            first_running,
            attempts: 1,
        }
    }

    /// Whether the first attempt or a retry is in flight.
    fn attempt_running(&self) -> bool {
        self.first_running || self.retry.is_some()
    }
}

impl<S, P, Req> fmt::Debug for ResponseFuture<S, P, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cold = self.cold.as_deref();
        f.debug_struct("ResponseFuture")
            .field("attempts", &cold.map_or(1, |c| c.attempts))
            .field(
                "in_flight",
                &cold.is_none_or(|c| c.attempt_running() || c.hedge.is_some()),
            )
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
        let cold = (deadline.is_some() || hedge_delay.is_some()).then(|| {
            let mut cold = Cold::new(true, tried.take());
            cold.started = started;
            cold.deadline = deadline.map(sleep_until);
            if let Some(d) = hedge_delay {
                cold.timer = Some(sleep(d));
                cold.timer_kind = Timer::Hedge;
            }
            Box::pin(cold)
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

/// Whether another attempt follows an outcome the policy would retry.
enum Plan {
    Retry,
    /// The outcome goes back to the caller; `exhausted` when only the
    /// budget stood in the way.
    GiveUp {
        exhausted: bool,
    },
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
        if this.cold.is_some() {
            return poll_slow(this, cx, None);
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
        *this.cold = Some(Box::pin(Cold::new(false, this.tried.take())));
        poll_slow(this, cx, Some(landed))
    }
}

/// The policy's decision on an outcome; a request that could not be
/// copied is never repeated, so its outcome is accepted unjudged.
#[inline]
fn judge<S, P, Req>(
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

/// Everything but a first attempt that is accepted: deadlines, hedges,
/// backoff timers and further attempts, all of which live in `cold`.
/// `landed` is an outcome the fast path already has, with the policy's
/// decision on it.
#[allow(clippy::type_complexity)]
fn poll_slow<S, P, Req>(
    this: Proj<'_, S, P, Req>,
    cx: &mut Context<'_>,
    mut landed: Option<(Result<S::Response, S::Error>, Decision)>,
) -> Poll<Result<S::Response, Error>>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: Policy<Req, S::Response, S::Error>,
    Req: Attempted,
{
    let Some(cold) = this.cold.as_mut() else {
        // `poll` sets `cold` before it comes here; nothing to drive.
        return Poll::Pending;
    };
    let mut c = cold.as_mut().project();
    let mut first = this.first;
    let shared = &*this.local.shared;
    let config = &shared.config;
    loop {
        // The deadline beats everything; dropping attempts cancels them
        // (the first one goes with this future).
        if let Some(deadline) = c.deadline.as_mut().as_pin_mut() {
            if deadline.poll(cx).is_ready() {
                stop(&mut c);
                config.stats.deadlines.fetch_add(1, Relaxed);
                let limit = config.deadline.unwrap_or_default();
                event!(
                    warn,
                    attempts = *c.attempts,
                    deadline_ms = limit.as_millis() as u64,
                    "request deadline exceeded"
                );
                // The last attempt that failed is the cause.
                let last = match c.last.take() {
                    Some(Err(e)) => Some(Box::new(Error::from_inner(e))),
                    _ => None,
                };
                return Poll::Ready(Err(Error::DeadlineExceeded {
                    deadline: limit,
                    attempts: *c.attempts,
                    last,
                }));
            }
        }

        // Whichever attempt finishes first and is accepted wins; the
        // others are cancelled.
        let mut finished = landed.take().map(|(out, d)| (out, Some(d)));
        if finished.is_none() && *c.first_running {
            if let Poll::Ready(out) = first.as_mut().poll(cx) {
                *c.first_running = false;
                finished = Some((out, None));
            }
        }
        for mut slot in [c.retry.as_mut(), c.hedge.as_mut()] {
            if finished.is_some() {
                break;
            }
            if let Some(f) = slot.as_mut().as_pin_mut() {
                if let Poll::Ready(out) = f.poll(cx) {
                    slot.set(None);
                    finished = Some((out, None));
                }
            }
        }
        if let Some((out, decided)) = finished {
            let still_running = c.attempt_running() || c.hedge.is_some();
            let decision =
                decided.unwrap_or_else(|| judge(this.local, this.template, out.as_ref()));
            let after = match decision {
                Decision::Accept => {
                    stop(&mut c);
                    if let (Some(start), Some(h)) = (*c.started, &config.hedge) {
                        if h.learns() && out.is_ok() {
                            config.latencies.record(start.elapsed());
                        }
                    }
                    return Poll::Ready(out.map_err(Error::from_inner));
                }
                Decision::Retry { after } => after,
            };
            if still_running {
                // Another attempt may still succeed.
                *c.last = Some(out);
                continue;
            }
            let deadline = c.deadline.as_ref().as_pin_ref().map(|d| d.deadline());
            // The copy first: a request that cannot be repeated costs
            // no budget and no pause.
            if *c.attempts < config.max_attempts {
                *c.next = this
                    .template
                    .as_ref()
                    .and_then(|t| shared.policy.clone_request(t));
            }
            match plan(config, c.next.is_some(), *c.attempts, after, deadline) {
                Plan::Retry => {}
                Plan::GiveUp { exhausted } => {
                    return Poll::Ready(match out {
                        Err(e) if exhausted => Err(Error::BudgetExhausted {
                            attempts: *c.attempts,
                            last: Box::new(Error::from_inner(e)),
                        }),
                        out => out.map_err(Error::from_inner),
                    });
                }
            }
            let jitter = config.backoff.delay(*c.attempts, &config.rng);
            let delay = after.map_or(jitter, |a| a.max(jitter));
            event!(
                debug,
                attempt = *c.attempts + 1,
                delay_ms = delay.as_millis() as u64,
                "retrying"
            );
            c.timer.set(Some(sleep(delay)));
            *c.timer_kind = Timer::Backoff;
            *c.last = Some(out);
            continue;
        }

        let attempt_running = c.attempt_running();
        let Some(timer) = c.timer.as_mut().as_pin_mut() else {
            if !attempt_running && c.hedge.is_none() {
                // Nothing runs and nothing is due (a policy that asked
                // for a retry it could not copy): report what we have.
                let out = c.last.take();
                return Poll::Ready(match out {
                    Some(out) => out.map_err(Error::from_inner),
                    None => Err(Error::none_eligible(0, None)),
                });
            }
            return Poll::Pending;
        };
        if timer.poll(cx).is_pending() {
            return Poll::Pending;
        }
        let kind = *c.timer_kind;
        let wanted = match kind {
            Timer::Backoff => true,
            // Hedge only while an attempt still runs, and only if the
            // budget allows.
            Timer::Hedge => {
                attempt_running
                    && c.hedge.is_none()
                    && *c.attempts < config.max_attempts
                    && {
                        *c.next = this
                            .template
                            .as_ref()
                            .and_then(|t| shared.policy.clone_request(t));
                        c.next.is_some()
                    }
                    && if config.budget.withdraw() {
                        true
                    } else {
                        config.stats.budget_exhausted.fetch_add(1, Relaxed);
                        event!(debug, "hedge skipped: retry budget exhausted");
                        false
                    }
            }
            Timer::None => false,
        };
        if !wanted {
            c.timer.set(None);
            *c.timer_kind = Timer::None;
            continue;
        }
        // The timer stays armed (and ready) until the service is.
        let service = c.service.get_or_insert_with(|| shared.proto.clone());
        if let Err(e) = ready!(service.poll_ready(cx)) {
            stop(&mut c);
            return Poll::Ready(Err(Error::from_inner(e)));
        }
        c.timer.set(None);
        *c.timer_kind = Timer::None;
        let Some(mut req) = c.next.take() else {
            continue;
        };
        req.set_attempts(c.tried.clone());
        let future = service.call(req);
        *c.attempts += 1;
        match kind {
            Timer::Hedge => {
                config.stats.hedges.fetch_add(1, Relaxed);
                event!(debug, attempt = *c.attempts, "hedged request sent");
                c.hedge.set(Some(future));
            }
            _ => {
                config.stats.retries.fetch_add(1, Relaxed);
                c.retry.set(Some(future));
            }
        }
    }
}

impl<S: Service<Req>, Req> ColdProj<'_, S, Req> {
    /// Whether the first attempt or a retry is in flight.
    fn attempt_running(&self) -> bool {
        *self.first_running || self.retry.is_some()
    }
}

/// Cancels the attempts in flight as the future returns: later ones are
/// dropped now, the first (which lives in the future itself) is no longer
/// polled and goes when the future is dropped.
fn stop<S: Service<Req>, Req>(c: &mut ColdProj<'_, S, Req>) {
    *c.first_running = false;
    c.retry.set(None);
    c.hedge.set(None);
    c.timer.set(None);
}

/// Attempts left, a request to repeat, a pause that fits the deadline, and
/// the budget (asked last, so a refusal for other reasons costs nothing).
fn plan(
    config: &Config,
    repeatable: bool,
    attempts: u32,
    after: Option<Duration>,
    deadline: Option<Instant>,
) -> Plan {
    if !repeatable || attempts >= config.max_attempts {
        return Plan::GiveUp { exhausted: false };
    }
    if let (Some(deadline), Some(after)) = (deadline, after) {
        // The server asks for a longer pause than the request has left.
        if Instant::now() + after >= deadline {
            return Plan::GiveUp { exhausted: false };
        }
    }
    if !config.budget.withdraw() {
        config.stats.budget_exhausted.fetch_add(1, Relaxed);
        event!(
            warn,
            attempts,
            "retry budget exhausted; returning the last outcome"
        );
        return Plan::GiveUp { exhausted: true };
    }
    Plan::Retry
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::retry::{Hedge, RetryBudget, RetryErrors, RetryLayer};

    /// Answers call `i` after `script[i].0` ms, with `n + i` or an error
    /// (`script[i].1` false); once it has been called, its `poll_ready`
    /// says "not yet" `not_ready` times (waking the task each time).
    #[derive(Clone)]
    struct Scripted {
        script: Arc<[(u64, bool)]>,
        calls: Arc<AtomicU32>,
        not_ready: Arc<AtomicU32>,
    }

    impl Scripted {
        fn new(script: &[(u64, bool)], not_ready: u32) -> Self {
            Scripted {
                script: script.into(),
                calls: Arc::default(),
                not_ready: Arc::new(AtomicU32::new(not_ready)),
            }
        }
    }

    impl Service<u32> for Scripted {
        type Response = u32;
        type Error = BoxError;
        type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            let busy = self.calls.load(SeqCst) > 0
                && self
                    .not_ready
                    .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                    .is_ok();
            if busy {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, n: u32) -> Self::Future {
            let i = self.calls.fetch_add(1, SeqCst);
            let (ms, ok) = self.script[i as usize];
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if ok { Ok(n + i) } else { Err("failed".into()) }
            })
        }
    }

    fn hedging(budget: &RetryBudget) -> RetryLayer<RetryErrors> {
        RetryLayer::new(RetryErrors::new().hedging())
            .budget(budget.clone())
            .hedge(Hedge::after(Duration::from_millis(10)))
            .seed(1)
    }

    fn budget() -> RetryBudget {
        RetryBudget::new(Duration::from_secs(10), 0.0, 100)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_hedge_leaves_the_first_attempt_to_answer_and_no_other_hedge() {
        let budget = budget();
        let service = Scripted::new(&[(100, true), (0, false)], 0);
        let client = hedging(&budget).layer(service.clone());
        assert_eq!(client.clone().oneshot(7).await.unwrap(), 7, "the first");
        let stats = client.stats();
        assert_eq!((stats.hedges, stats.retries), (1, 0));
        assert_eq!(service.calls.load(SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_first_attempt_leaves_the_hedge_to_answer() {
        let budget = budget();
        let service = Scripted::new(&[(50, false), (100, true)], 0);
        let client = hedging(&budget).layer(service.clone());
        assert_eq!(client.clone().oneshot(7).await.unwrap(), 8, "the hedge");
        let stats = client.stats();
        assert_eq!((stats.hedges, stats.retries), (1, 0));
        assert_eq!(service.calls.load(SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn when_both_fail_a_retry_follows_and_its_answer_returns() {
        let budget = budget();
        let service = Scripted::new(&[(50, false), (0, false), (0, true)], 0);
        let client = hedging(&budget).layer(service.clone());
        assert_eq!(client.clone().oneshot(7).await.unwrap(), 9, "the retry");
        let stats = client.stats();
        assert_eq!((stats.hedges, stats.retries), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_time_the_last_failure_is_the_cause() {
        let service = Scripted::new(&[(0, false), (1000, true)], 0);
        let client = RetryLayer::new(RetryErrors::new())
            .deadline(Duration::from_millis(100))
            .seed(1)
            .layer(service);
        match client.oneshot(7).await {
            Err(Error::DeadlineExceeded { attempts, last, .. }) => {
                assert_eq!(attempts, 2);
                assert!(last.is_some(), "the first attempt's error");
            }
            other => panic!("expected a deadline, got {other:?}"),
        }
    }
}
