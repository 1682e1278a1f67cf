//! What a request does past its first attempt alone: a state machine.
//!
//! A request with a deadline or a hedge, or whose first attempt is to be
//! retried, gets a boxed [`Cold`] part (a request that succeeds first
//! time never does; see [`ResponseFuture`](super::ResponseFuture)). Its
//! [`State`] says what the request is doing, and each state has one
//! function that polls what it waits on and says where to go next:
//!
//! ```text
//! First     ── the first fails ─────────────────────▶ Backoff
//! First     ── hedge timer, hedge paid for ─────────▶ HedgeDue   (not paid: First, no timer)
//! HedgeDue  ── the first fails ─────────────────────▶ Backoff
//! HedgeDue  ── service ready, hedge sent ───────────▶ Later { first: true }
//! Later     ── the first fails, the hedge runs on ──▶ Later { first: false }
//! Later     ── the hedge fails, the first runs on ──▶ First       (no timer)
//! Later     ── its attempt fails, alone ────────────▶ Backoff
//! Backoff   ── pause over, service ready, retry sent ▶ Later { first: false }
//! any       ── accepted, given up, service error, deadline ▶ Done
//! ```
//!
//! An attempt "fails" when the policy would retry its outcome; where the
//! attempts, the budget or the deadline allow no retry, `Backoff` is
//! `Done` instead, and the outcome (or [`Error::BudgetExhausted`]) goes
//! back. The deadline is checked before every step; when it passes,
//! whatever runs is cancelled and the request fails with
//! [`Error::DeadlineExceeded`], whose source is the last failure.

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep, sleep_until};
use tower_service::Service;

use super::future::judge;
use super::layer::Config;
use super::service::Local;
use super::{Decision, Policy};
use crate::attempt::{Attempted, Attempts};
use crate::error::{BoxError, Error};
use crate::trace::{SpanSlot, event};

/// One attempt's outcome, as the wrapped service gives it.
pub(super) type Outcome<S, Req> = Result<<S as Service<Req>>::Response, <S as Service<Req>>::Error>;

pin_project! {
    /// What a request does once it needs more than its first attempt.
    #[project = ColdProj]
    pub(super) struct Cold<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future, Req>,
        #[pin]
        deadline: Option<Sleep>,
        progress: Progress<S, Req>,
    }
}

pin_project! {
    /// Where a request is, past the first attempt alone.
    #[project = StateProj]
    #[project_replace = StateTaken]
    enum State<F, Req> {
        /// Only the first attempt runs (in the future itself); `hedge`
        /// counts down to a hedged copy, while one may still be sent.
        First {
            #[pin]
            hedge: Option<Sleep>,
        },
        /// The hedge is due and paid for: `req` waits for the service to
        /// be ready, while the first attempt runs on.
        HedgeDue { req: Req },
        /// An attempt after the first runs, a retry or the hedge; while
        /// `first` is true, the first attempt runs beside it.
        Later {
            #[pin]
            attempt: F,
            first: bool,
        },
        /// Nothing runs: the pause before `req` is sent, then the wait for
        /// the service to be ready (the elapsed timer stays ready).
        Backoff {
            #[pin]
            timer: Sleep,
            req: Req,
        },
        /// The outcome has gone back to the caller; nothing runs.
        Done,
    }
}

/// What every state of a request shares.
struct Progress<S: Service<Req>, Req> {
    // A clone of the wrapped service, for attempts after the first.
    service: Option<S>,
    // The last failure, while another attempt runs or is due.
    last: Option<Outcome<S, Req>>,
    // Where this request's attempts were sent, filled in by the balancer
    // below as each is sent; attached to every attempt.
    tried: Attempts,
    // When the request started, if its deadline or a learning hedge needs
    // to know.
    started: Option<Instant>,
    // Attempts sent so far, hedges included.
    attempts: u32,
    // The request's span, when a subscriber wants it: entered while the
    // request is driven, given its outcome when it ends.
    span: SpanSlot,
}

impl<S: Service<Req>, Req> Cold<S, Req> {
    /// The part of a request with a deadline or a hedge, from its start:
    /// the first attempt runs, and a hedge follows `hedge_delay` later.
    pub(super) fn timed(
        tried: Option<Attempts>,
        started: Option<Instant>,
        deadline: Option<Instant>,
        hedge_delay: Option<Duration>,
    ) -> Self {
        let first = State::First {
            hedge: hedge_delay.map(sleep),
        };
        Cold::new(first, tried, started, deadline)
    }

    /// The part of a request with neither, whose first attempt has just
    /// ended: nothing runs until [`drive`](Cold::drive) settles its
    /// outcome.
    pub(super) fn after_first(tried: Option<Attempts>) -> Self {
        Cold::new(State::Done, tried, None, None)
    }

    fn new(
        state: State<S::Future, Req>,
        tried: Option<Attempts>,
        started: Option<Instant>,
        deadline: Option<Instant>,
    ) -> Self {
        Cold {
            state,
            deadline: deadline.map(sleep_until),
            progress: Progress {
                service: None,
                last: None,
                tried: tried.unwrap_or_default(),
                started,
                attempts: 1,
                span: SpanSlot::none(),
            },
        }
    }

    /// Gives the request its span.
    pub(super) fn in_span(mut self, span: SpanSlot) -> Self {
        self.progress.span = span;
        self
    }

    /// Attempts sent so far, hedges included.
    pub(super) fn attempts(&self) -> u32 {
        self.progress.attempts
    }

    /// Whether an attempt is in flight.
    pub(super) fn in_flight(&self) -> bool {
        matches!(
            self.state,
            State::First { .. } | State::HedgeDue { .. } | State::Later { .. }
        )
    }

    /// Drives everything but a first attempt that is accepted: the
    /// deadline, a hedge, backoff and further attempts. `landed` is an
    /// outcome the caller already has, with the policy's decision on it.
    pub(super) fn drive<P>(
        self: Pin<&mut Self>,
        first: Pin<&mut S::Future>,
        local: &Local<S, P>,
        template: &Option<Req>,
        landed: Option<(Outcome<S, Req>, Decision)>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, Error>>
    where
        S: Clone,
        S::Error: Into<BoxError>,
        P: Policy<Req, S::Response, S::Error>,
        Req: Attempted,
    {
        let ColdProj {
            mut state,
            mut deadline,
            progress,
        } = self.project();
        // A handle, as `progress` is lent to the driver below.
        let _entered = progress.span.enter_owned();
        let mut driver = Driver {
            first,
            local,
            template,
            deadline: deadline.as_ref().as_pin_ref().map(|d| d.deadline()),
            progress,
        };
        let mut step = match landed {
            Some((out, decision)) => driver.settle(out, decision),
            None => Step::Again,
        };
        loop {
            match step {
                Step::Pending => return Poll::Pending,
                Step::Again => {}
                Step::To(next) => state.set(next),
                Step::Send(sent) => driver.send(state.as_mut(), sent),
                Step::Ready(out) => {
                    // Dropping what runs cancels it; the first attempt is
                    // no longer polled, and goes with the future.
                    state.set(State::Done);
                    driver.progress.ended(out.is_ok());
                    return Poll::Ready(out);
                }
            }
            // The deadline beats everything.
            if let Some(timer) = deadline.as_mut().as_pin_mut() {
                if timer.poll(cx).is_ready() {
                    state.set(State::Done);
                    driver.progress.ended(false);
                    return Poll::Ready(Err(driver.deadline_exceeded()));
                }
            }
            step = driver.step(state.as_mut(), cx);
        }
    }
}

impl<S: Service<Req>, Req> Progress<S, Req> {
    /// Gives the request's span its `attempts` and `outcome` (`ok` or
    /// `error`).
    fn ended(&self, ok: bool) {
        if self.span.is_some() {
            self.span.record_u64("attempts", u64::from(self.attempts));
            self.span.record("outcome", if ok { "ok" } else { "error" });
        }
    }
}

/// What a step of the state machine leads to.
enum Step<S: Service<Req>, Req> {
    /// Waiting on an attempt, a timer or the service.
    Pending,
    /// The state changed in place: step again.
    Again,
    /// On to another state.
    To(State<S::Future, Req>),
    /// The service is ready: send the request the state holds.
    Send(Sent),
    /// The request is over.
    Ready(Result<S::Response, Error>),
}

/// What kind of attempt a request sends after its first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Retry,
    Hedge,
}

/// A request's parts, borrowed for one poll, with one function per state.
struct Driver<'a, S: Service<Req>, P, Req> {
    first: Pin<&'a mut S::Future>,
    local: &'a Local<S, P>,
    template: &'a Option<Req>,
    deadline: Option<Instant>,
    progress: &'a mut Progress<S, Req>,
}

impl<S, P, Req> Driver<'_, S, P, Req>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: Policy<Req, S::Response, S::Error>,
    Req: Attempted,
{
    fn config(&self) -> &Config {
        &self.local.shared.config
    }

    /// One step in the current state.
    fn step(
        &mut self,
        state: Pin<&mut State<S::Future, Req>>,
        cx: &mut Context<'_>,
    ) -> Step<S, Req> {
        match state.project() {
            StateProj::First { hedge } => self.first_alone(hedge, cx),
            StateProj::HedgeDue { .. } => self.hedge_due(cx),
            StateProj::Later { attempt, first } => self.later(attempt, first, cx),
            StateProj::Backoff { timer, .. } => self.backoff(timer, cx),
            StateProj::Done => self.done(),
        }
    }

    /// The first attempt, alone until the hedge timer fires.
    fn first_alone(
        &mut self,
        hedge: Pin<&mut Option<Sleep>>,
        cx: &mut Context<'_>,
    ) -> Step<S, Req> {
        if let Poll::Ready(out) = self.first.as_mut().poll(cx) {
            return self.ended(out);
        }
        let Some(timer) = hedge.as_pin_mut() else {
            return Step::Pending;
        };
        if timer.poll(cx).is_pending() {
            return Step::Pending;
        }
        Step::To(match self.hedge_copy() {
            Some(req) => State::HedgeDue { req },
            None => State::First { hedge: None },
        })
    }

    /// The first attempt runs on while the service gets ready for the
    /// hedge.
    fn hedge_due(&mut self, cx: &mut Context<'_>) -> Step<S, Req> {
        if let Poll::Ready(out) = self.first.as_mut().poll(cx) {
            return self.ended(out);
        }
        self.ready_to_send(Sent::Hedge, cx)
    }

    /// An attempt after the first, and the first beside it while it runs:
    /// whichever ends first and is accepted wins.
    fn later(
        &mut self,
        attempt: Pin<&mut S::Future>,
        first: &mut bool,
        cx: &mut Context<'_>,
    ) -> Step<S, Req> {
        if *first {
            if let Poll::Ready(out) = self.first.as_mut().poll(cx) {
                *first = false;
                return self.ended_beside(out, Step::Again);
            }
        }
        let Poll::Ready(out) = attempt.poll(cx) else {
            return Step::Pending;
        };
        if *first {
            // The first attempt runs on, with no more hedging.
            self.ended_beside(out, Step::To(State::First { hedge: None }))
        } else {
            self.ended(out)
        }
    }

    /// The pause before a retry, then the wait for the service.
    fn backoff(&mut self, timer: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Step<S, Req> {
        if timer.poll(cx).is_pending() {
            return Step::Pending;
        }
        self.ready_to_send(Sent::Retry, cx)
    }

    /// Polled after its outcome: what is left of it.
    fn done(&mut self) -> Step<S, Req> {
        Step::Ready(match self.progress.last.take() {
            Some(out) => out.map_err(Error::from_inner),
            None => Err(Error::none_eligible(0, None)),
        })
    }

    /// An attempt ended with nothing else in flight.
    fn ended(&mut self, out: Outcome<S, Req>) -> Step<S, Req> {
        let decision = judge(self.local, self.template, out.as_ref());
        self.settle(out, decision)
    }

    /// An attempt ended while another runs on: accepted, it wins (and the
    /// other is cancelled); otherwise it is the last failure so far, and
    /// the request goes on to `then`.
    fn ended_beside(&mut self, out: Outcome<S, Req>, then: Step<S, Req>) -> Step<S, Req> {
        match judge(self.local, self.template, out.as_ref()) {
            Decision::Accept => self.accept(out),
            Decision::Retry { .. } => {
                self.progress.last = Some(out);
                then
            }
        }
    }

    /// The outcome of the last attempt in flight, with the policy's
    /// decision on it: accepted, retried after a pause, or given back.
    fn settle(&mut self, out: Outcome<S, Req>, decision: Decision) -> Step<S, Req> {
        let after = match decision {
            Decision::Accept => return self.accept(out),
            Decision::Retry { after } => after,
        };
        let attempts = self.progress.attempts;
        // The copy first: a request that cannot be repeated costs no
        // budget and no pause.
        let next = self.copy();
        let req = match plan(self.config(), next, attempts, after, self.deadline) {
            Plan::Retry { req } => req,
            Plan::GiveUp { exhausted } => {
                return Step::Ready(match out {
                    Err(e) if exhausted => Err(Error::BudgetExhausted {
                        attempts,
                        last: Box::new(Error::from_inner(e)),
                    }),
                    out => out.map_err(Error::from_inner),
                });
            }
        };
        let config = self.config();
        let jitter = config.backoff.delay(attempts, &config.rng);
        let delay = after.map_or(jitter, |a| a.max(jitter));
        event!(
            debug,
            attempt = attempts + 1,
            delay_ms = delay.as_millis() as u64,
            "retrying"
        );
        self.progress.last = Some(out);
        Step::To(State::Backoff {
            timer: sleep(delay),
            req,
        })
    }

    /// An accepted outcome goes back to the caller; a success teaches a
    /// learning hedge how long requests take.
    fn accept(&mut self, out: Outcome<S, Req>) -> Step<S, Req> {
        let config = self.config();
        if let (Some(start), Some(h)) = (self.progress.started, &config.hedge) {
            if h.learns() && out.is_ok() {
                config.latencies.record(start.elapsed());
            }
        }
        Step::Ready(out.map_err(Error::from_inner))
    }

    /// A copy of the request for another attempt, while attempts are left.
    fn copy(&self) -> Option<Req> {
        if self.progress.attempts >= self.config().max_attempts {
            return None;
        }
        let template = self.template.as_ref()?;
        self.local.shared.policy.clone_request(template)
    }

    /// The copy a hedge sends, if attempts are left and the budget allows
    /// one.
    fn hedge_copy(&mut self) -> Option<Req> {
        let req = self.copy()?;
        let config = self.config();
        if !config.budget.withdraw() {
            config.stats.budget_exhausted.fetch_add(1, Relaxed);
            event!(debug, "hedge skipped: retry budget exhausted");
            return None;
        }
        Some(req)
    }

    /// Waits for the service, for an attempt of kind `sent`.
    fn ready_to_send(&mut self, sent: Sent, cx: &mut Context<'_>) -> Step<S, Req> {
        match self.service().poll_ready(cx) {
            Poll::Pending => Step::Pending,
            Poll::Ready(Ok(())) => Step::Send(sent),
            Poll::Ready(Err(e)) => Step::Ready(Err(Error::from_inner(e))),
        }
    }

    /// The clone of the wrapped service that sends attempts after the first.
    fn service(&mut self) -> &mut S {
        let shared = &self.local.shared;
        self.progress
            .service
            .get_or_insert_with(|| shared.proto.clone())
    }

    /// Sends the request `state` holds, the service being ready, and moves
    /// on to the attempt it makes.
    fn send(&mut self, mut state: Pin<&mut State<S::Future, Req>>, sent: Sent) {
        let mut req = match state.as_mut().project_replace(State::Done) {
            StateTaken::HedgeDue { req } | StateTaken::Backoff { req, .. } => req,
            // No other state holds a request to send; `Done` reports.
            _ => return,
        };
        req.set_attempts(self.progress.tried.clone());
        if matches!(sent, Sent::Hedge) {
            self.progress.tried.mark_next_hedge();
        }
        let attempt = self.service().call(req);
        self.progress.attempts += 1;
        let stats = &self.config().stats;
        match sent {
            Sent::Hedge => {
                stats.hedges.fetch_add(1, Relaxed);
                event!(
                    debug,
                    attempt = self.progress.attempts,
                    "hedged request sent"
                );
            }
            Sent::Retry => {
                stats.retries.fetch_add(1, Relaxed);
            }
        }
        state.set(State::Later {
            attempt,
            first: sent == Sent::Hedge,
        });
    }

    /// The error of a request out of time: the last attempt that failed is
    /// its cause.
    fn deadline_exceeded(&mut self) -> Error {
        let config = self.config();
        config.stats.deadlines.fetch_add(1, Relaxed);
        let limit = config.deadline.unwrap_or_default();
        let attempts = self.progress.attempts;
        event!(
            warn,
            attempts,
            deadline_ms = limit.as_millis() as u64,
            "request deadline exceeded"
        );
        let last = match self.progress.last.take() {
            Some(Err(e)) => Some(Box::new(Error::from_inner(e))),
            _ => None,
        };
        Error::DeadlineExceeded {
            deadline: limit,
            attempts,
            last,
        }
    }
}

/// Whether another attempt follows an outcome the policy would retry.
enum Plan<Req> {
    /// Send `req` after a pause.
    Retry { req: Req },
    /// The outcome goes back to the caller; `exhausted` when only the
    /// budget stood in the way.
    GiveUp { exhausted: bool },
}

/// A copy to send (`next`, `None` when no attempt is left or the request
/// cannot be repeated), a pause that fits the deadline, and the budget
/// (asked last, so a refusal for other reasons costs nothing).
fn plan<Req>(
    config: &Config,
    next: Option<Req>,
    attempts: u32,
    after: Option<Duration>,
    deadline: Option<Instant>,
) -> Plan<Req> {
    let Some(req) = next else {
        return Plan::GiveUp { exhausted: false };
    };
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
    Plan::Retry { req }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
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
    async fn a_hedge_that_waits_for_the_service_is_paid_for_once() {
        let budget = budget();
        let service = Scripted::new(&[(1000, true), (5, true)], 3);
        let client = hedging(&budget).layer(service.clone());
        assert_eq!(client.clone().oneshot(7).await.unwrap(), 8, "the hedge");
        assert_eq!(client.stats().hedges, 1);
        assert_eq!(budget.stats().retries, 1, "one withdrawal for one hedge");
        assert_eq!(service.not_ready.load(SeqCst), 0, "it did wait");
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
