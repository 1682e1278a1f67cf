//! The retry layer over mock services, on a paused tokio clock: budgets in
//! a total outage, retries that avoid the endpoint that failed (through
//! `Balance`), `Retry-After`, hedging and its budget, the overall
//! deadline, bodies too large to replay, and typed errors.
//!
//! Time is virtual (`start_paused`), so waits are exact and cost nothing:
//! timing assertions state their tolerance, which is zero or the backoff
//! cap unless a comment says otherwise. Randomness is seeded ([`SEED`]).
//! Every request is bounded by [`LIMIT`] of virtual time and must end in a
//! response or a typed `tower_lb::Error`; one that does not fails the test.

#[path = "support/mock.rs"]
mod mock;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header::RETRY_AFTER};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_lb::attempt::Tracked;
use tower_lb::balance::{Balance, BalanceLayer, LeastInFlight, WhenEmpty};
use tower_lb::discover::{StaticSource, Update, channel};
use tower_lb::pool::DiscoverLayer;
use tower_lb::retry::{
    Backoff, Hedge, HttpPolicy, ReplayBody, Retry, RetryBudget, RetryErrors, RetryLayer,
};
use tower_lb::{BoxError, Error};

use mock::{Backend, Backends, Behaviour, SharedSource, ep, key, untracked};

/// The seed of every retry layer and balancer here.
const SEED: u64 = 7;

/// No request may take longer than this (virtual time); one that does
/// counts as lost.
const LIMIT: Duration = Duration::from_secs(60);

/// A budget that never runs out in these tests.
fn plenty() -> RetryBudget {
    RetryBudget::new(Duration::from_secs(10), 10.0, 1000)
}

/// A short backoff: pauses of at most 4 ms.
fn quick() -> Backoff {
    Backoff::new(Duration::from_millis(1), Duration::from_millis(4))
}

/// Awaits `future`, failing the test if it has not ended within [`LIMIT`].
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match timeout(LIMIT, future).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: no answer or error within {LIMIT:?}: the request was lost"),
    }
}

/// Calls of a mock, and which of them finished or were dropped unfinished.
#[derive(Clone, Debug, Default)]
struct Calls {
    started: Arc<AtomicU64>,
    finished: Arc<AtomicU64>,
    cancelled: Arc<AtomicU64>,
}

impl Calls {
    /// Counts a call; the guard counts it as cancelled if it is dropped
    /// before [`Running::finish`].
    fn start(&self) -> (u64, Running) {
        let n = self.started.fetch_add(1, SeqCst);
        (
            n,
            Running {
                calls: self.clone(),
                done: false,
            },
        )
    }

    fn started(&self) -> u64 {
        self.started.load(SeqCst)
    }

    fn finished(&self) -> u64 {
        self.finished.load(SeqCst)
    }

    fn cancelled(&self) -> u64 {
        self.cancelled.load(SeqCst)
    }
}

/// One call in progress (a drop guard).
struct Running {
    calls: Calls,
    done: bool,
}

impl Running {
    fn finish(mut self) {
        self.done = true;
        self.calls.finished.fetch_add(1, SeqCst);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            self.calls.cancelled.fetch_add(1, SeqCst);
        }
    }
}

/// A service of `u32` requests where call `n` sleeps `delay(n)` and then
/// answers `outcome(n)`, counting calls in `calls`.
fn scripted<D, O>(
    calls: &Calls,
    delay: D,
    outcome: O,
) -> impl Service<u32, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static
where
    D: Fn(u64) -> Duration + Clone + Send + Sync + 'static,
    O: Fn(u64) -> Result<u64, &'static str> + Clone + Send + Sync + 'static,
{
    let calls = calls.clone();
    service_fn(move |_req: u32| {
        let (n, running) = calls.start();
        let wait = delay(n);
        let out = outcome(n);
        async move {
            if !wait.is_zero() {
                sleep(wait).await;
            }
            running.finish();
            out.map_err(BoxError::from)
        }
    })
}

/// The rendered `source()` chain of an error.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

// ---------------------------------------------------------------------------
// Budget

/// A total outage of a service that errors: 4 clones of one client send
/// 125 requests each, paced 80 ms apart (about 50 a second for 10 s). With
/// 3 attempts per request and no budget that would be 1500 attempts; the
/// budget (1 s window, ratio 0.1, floor 2/s) allows at most
/// `requests × 1.1 + 2 × seconds`, plus the one window's allowance at the
/// edges that the `RetryBudget` docs state (`0.1 × requests per window +
/// 2 × 1 s`). Requests whose retry was refused end in
/// `Error::BudgetExhausted` carrying the last inner error; the others used
/// all three attempts and end in `Error::Inner`.
#[tokio::test(start_paused = true)]
async fn a_total_outage_of_errors_stays_within_the_budget() {
    outage(Clones::PerRequest).await;
}

/// The same outage, each task sending through one long-lived clone, which
/// counts its requests on a lane of its own after its first 16: the budget
/// counts them all the same.
#[tokio::test(start_paused = true)]
async fn a_total_outage_through_long_lived_clones_stays_within_the_budget() {
    outage(Clones::PerTask).await;
}

/// How a test's tasks hold the client.
#[derive(Clone, Copy, Debug)]
enum Clones {
    /// A clone per request (`client.clone().oneshot(req)`).
    PerRequest,
    /// One clone per task, kept for all its requests.
    PerTask,
}

async fn outage(clones: Clones) {
    const WINDOW: Duration = Duration::from_secs(1);
    const RATIO: f64 = 0.1;
    const MIN_PER_SECOND: u32 = 2;
    const TASKS: u64 = 4;
    const PER_TASK: u64 = 125;
    const PACE: Duration = Duration::from_millis(80);

    let calls = Calls::default();
    let failing = scripted(&calls, |_| Duration::ZERO, |_| Err("unavailable"));
    let client = ServiceBuilder::new()
        .layer(
            RetryLayer::new(RetryErrors::new())
                .budget(RetryBudget::new(WINDOW, RATIO, MIN_PER_SECOND))
                .backoff(quick())
                .max_attempts(3)
                .seed(SEED),
        )
        .service(failing);

    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            // (exhausted, attempts of exhausted requests, inner)
            let mut tally = (0u64, 0u64, 0u64);
            for i in 0..PER_TASK {
                let out = match clones {
                    Clones::PerRequest => {
                        within("outage request", client.clone().oneshot(i as u32)).await
                    }
                    Clones::PerTask => {
                        within("outage request", async {
                            client.ready().await?.call(i as u32).await
                        })
                        .await
                    }
                };
                match out {
                    Err(Error::BudgetExhausted { attempts, last }) => {
                        assert!(
                            matches!(*last, Error::Inner(ref e) if e.to_string() == "unavailable"),
                            "task {t}: the last error is kept typed: {last:?}"
                        );
                        assert!((1..3).contains(&attempts), "attempts {attempts}");
                        tally.0 += 1;
                        tally.1 += u64::from(attempts);
                    }
                    Err(Error::Inner(e)) => {
                        assert_eq!(e.to_string(), "unavailable");
                        tally.2 += 1;
                    }
                    other => panic!("task {t}: unexpected outcome {other:?}"),
                }
                sleep(PACE).await;
            }
            tally
        }));
    }
    let (mut exhausted, mut exhausted_attempts, mut inner) = (0, 0, 0);
    for task in tasks {
        let (e, a, i) = task.await.expect("task");
        exhausted += e;
        exhausted_attempts += a;
        inner += i;
    }
    let seconds = start.elapsed().as_secs_f64();
    let requests = TASKS * PER_TASK;
    let attempts = calls.started();
    let stats = client.stats();

    assert_eq!(exhausted + inner, requests, "every request ended typed");
    assert_eq!(
        exhausted_attempts + 3 * inner,
        attempts,
        "attempts reported in errors match those the service saw"
    );
    assert_eq!(stats.requests, requests);
    assert_eq!(stats.requests + stats.retries, attempts);
    assert_eq!(stats.budget_exhausted, exhausted);
    assert!(stats.budget_exhausted > 0, "the budget refused retries");
    assert!(stats.retries > 0, "the budget allowed some retries");

    let per_window = requests as f64 / seconds * WINDOW.as_secs_f64();
    let edge = RATIO * per_window + f64::from(MIN_PER_SECOND) * WINDOW.as_secs_f64();
    let bound = requests as f64 * (1.0 + RATIO) + f64::from(MIN_PER_SECOND) * seconds + edge;
    assert!(
        attempts as f64 <= bound,
        "{attempts} attempts for {requests} requests over {seconds:.1} s; the budget allows {bound:.0}"
    );
}

/// Two retry layers may share one budget (the `budget` docs say so); each
/// layer's `stats()` still describes that layer: its `requests` are the
/// requests it was given.
#[tokio::test(start_paused = true)]
async fn stats_of_layers_sharing_a_budget_count_their_own_requests() {
    let budget = plenty();
    let calls = Calls::default();
    let ok = scripted(&calls, |_| Duration::ZERO, Ok);
    let a = RetryLayer::new(RetryErrors::new())
        .budget(budget.clone())
        .layer(ok.clone());
    let b = RetryLayer::new(RetryErrors::new())
        .budget(budget.clone())
        .layer(ok);
    for i in 0..3 {
        within("a", a.clone().oneshot(i)).await.expect("ok");
    }
    for i in 0..5 {
        within("b", b.clone().oneshot(i)).await.expect("ok");
    }
    assert_eq!(budget.stats().requests, 8, "the budget sees both layers");
    assert_eq!(a.stats().requests, 3, "layer a was given 3 requests");
    assert_eq!(b.stats().requests, 5, "layer b was given 5 requests");

    // A long-lived clone counts on a lane of its own after 16 requests;
    // its counts show while it lives and stay when it is dropped.
    let mut long = a.clone();
    for i in 0..40 {
        within("long", async { long.ready().await?.call(i).await })
            .await
            .expect("ok");
    }
    assert_eq!(a.stats().requests, 43);
    assert_eq!(long.stats().requests, 43, "every clone reads the same");
    assert_eq!(budget.stats().requests, 48);
    let mut other = long.clone(); // a clone of it starts without a lane
    for i in 0..20 {
        within("other", async { other.ready().await?.call(i).await })
            .await
            .expect("ok");
    }
    drop(long);
    assert_eq!(a.stats().requests, 63, "a dropped clone's lane is kept");
    drop(other);
    within("b", b.clone().oneshot(0)).await.expect("ok");
    assert_eq!(a.stats().requests, 63);
    assert_eq!(b.stats().requests, 6);
    assert_eq!(budget.stats().requests, 69);
}

/// Clients on several threads, each with its own long-lived clone (and so
/// a lane of its own), and clones per request beside them: no request goes
/// uncounted, and the budget still grants retries from those counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_from_many_threads_are_all_counted() {
    const TASKS: u32 = 4;
    const PER_TASK: u32 = 500;
    let calls = Calls::default();
    let ok = scripted(&calls, |_| Duration::ZERO, Ok);
    // No floor: every retry granted comes from counted requests.
    let budget = RetryBudget::new(Duration::from_secs(60), 0.5, 0);
    let client = RetryLayer::new(RetryErrors::new())
        .budget(budget.clone())
        .layer(ok);
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                if i % 10 == t {
                    client.clone().oneshot(i).await.expect("ok");
                } else {
                    client
                        .ready()
                        .await
                        .expect("ready")
                        .call(i)
                        .await
                        .expect("ok");
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let requests = u64::from(TASKS * PER_TASK);
    assert_eq!(calls.started(), requests);
    assert_eq!(client.stats().requests, requests);
    assert_eq!(budget.stats().requests, requests);
    let mut granted = 0;
    while budget.withdraw() {
        granted += 1;
    }
    assert_eq!(
        granted,
        requests / 2,
        "half the requests counted, as retries"
    );
}

// ---------------------------------------------------------------------------
// Another endpoint

/// A balancer over mock endpoints on ports 1..=`n`.
async fn balancer(n: u16) -> (Balance<Backend, LeastInFlight>, Backends) {
    let backends = Backends::new();
    let pool = DiscoverLayer::new(StaticSource::new((1..=n).map(ep))).layer(backends.connector());
    assert!(pool.applied(1).await, "the static list was applied");
    let lb = BalanceLayer::new(LeastInFlight)
        .seed(SEED)
        .when_empty(WhenEmpty::FailFast)
        .layer(pool);
    (lb, backends)
}

/// Retry over `Balance` for a request type that is not HTTP, wrapped in
/// `Tracked` to carry its attempts: one of three endpoints always fails. With only two attempts, a request whose retry
/// went back to the failing endpoint would fail, so 300 successes mean
/// every retry went elsewhere; the failing endpoint got exactly one
/// attempt per retried request.
#[tokio::test(start_paused = true)]
async fn retries_through_balance_avoid_the_endpoint_that_failed() {
    const REQUESTS: u64 = 300;
    let backends = Backends::new();
    let pool = DiscoverLayer::new(StaticSource::new((1..=3).map(ep))).layer(untracked(&backends));
    assert!(pool.applied(1).await, "the static list was applied");
    let lb = BalanceLayer::new(LeastInFlight)
        .seed(SEED)
        .when_empty(WhenEmpty::FailFast)
        .layer(pool);
    backends.set(&key(1), Behaviour::Fail);
    let client = RetryLayer::new(RetryErrors::new())
        .budget(plenty())
        .backoff(quick())
        .max_attempts(2)
        .seed(SEED)
        .layer(lb);

    for i in 0..REQUESTS {
        let answer = within(
            "request",
            client.clone().oneshot(Tracked::new(Behaviour::Answer)),
        )
        .await
        .unwrap_or_else(|e| panic!("request {i} failed: {}", chain(&e)));
        assert_ne!(answer, key(1), "the failing endpoint never answers");
    }
    let stats = client.stats();
    let failed = backends.calls(&key(1));
    assert!(failed > 0, "the failing endpoint was picked at times");
    assert_eq!(stats.retries, failed, "one retry per attempt that failed");
    assert_eq!(backends.total_calls(), REQUESTS + failed);
    assert_eq!(
        backends.calls(&key(2)) + backends.calls(&key(3)),
        REQUESTS,
        "exactly one successful attempt per request"
    );
}

/// Requests sent before discovery has found any endpoint wait in the
/// balancer and pick once endpoints appear; their retries must still avoid
/// the endpoint that first attempt went to. 40 requests wait; then two
/// endpoints appear, one of which fails: with two attempts each, every
/// request succeeds only if no retry goes back to the failing endpoint.
#[tokio::test(start_paused = true)]
async fn retries_of_requests_that_waited_for_discovery_avoid_the_endpoint_that_failed() {
    const REQUESTS: usize = 40;
    let (tx, source) = channel();
    let backends = Backends::new();
    let pool = DiscoverLayer::new(SharedSource::new(source)).layer(untracked(&backends));
    let lb = BalanceLayer::new(LeastInFlight)
        .seed(SEED)
        .when_empty(WhenEmpty::Wait(Duration::from_secs(5)))
        .layer(pool.clone());
    backends.set(&key(1), Behaviour::Fail);
    let client = RetryLayer::new(RetryErrors::new())
        .budget(plenty())
        .backoff(quick())
        .max_attempts(2)
        .seed(SEED)
        .layer(lb);
    let mut tasks = Vec::new();
    for _ in 0..REQUESTS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            within("request", client.oneshot(Tracked::new(Behaviour::Answer))).await
        }));
    }
    // Let every request reach the balancer and start waiting.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(backends.total_calls(), 0, "nothing to call yet");
    tx.send(Update::snapshot(1, vec![ep(1), ep(2)]))
        .expect("the pool listens");
    let mut failed = Vec::new();
    for task in tasks {
        if let Err(e) = task.await.expect("task") {
            failed.push(chain(&e));
        }
    }
    let first_failures = backends.calls(&key(1));
    assert!(
        first_failures > 0,
        "some first attempts hit the failing endpoint"
    );
    assert!(
        failed.is_empty(),
        "{} of {REQUESTS} requests were retried on the endpoint that had just failed \
         ({first_failures} attempts there): {:?}",
        failed.len(),
        failed.first()
    );
}

// ---------------------------------------------------------------------------
// Plain services and typed errors

/// A service that fails its first two calls, then succeeds.
fn fails_twice(calls: &Calls) -> impl Service<u32, Response = u64, Error = BoxError> + Clone {
    scripted(
        calls,
        |_| Duration::ZERO,
        |n| if n < 2 { Err("not yet") } else { Ok(n) },
    )
}

#[tokio::test(start_paused = true)]
async fn a_plain_service_is_retried_until_it_succeeds() {
    let calls = Calls::default();
    let client = RetryLayer::new(RetryErrors::new())
        .max_attempts(3)
        .backoff(quick())
        .seed(SEED)
        .layer(fails_twice(&calls));
    let out = within("request", client.clone().oneshot(1)).await;
    assert_eq!(out.expect("third attempt succeeds"), 2, "call #2 answered");
    assert_eq!(calls.started(), 3);
    let stats = client.stats();
    assert_eq!((stats.requests, stats.retries), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn out_of_attempts_the_inner_error_comes_back_typed() {
    let calls = Calls::default();
    let client = RetryLayer::new(RetryErrors::new())
        .max_attempts(2)
        .backoff(quick())
        .seed(SEED)
        .layer(fails_twice(&calls));
    match within("request", client.clone().oneshot(1)).await {
        Err(Error::Inner(e)) => assert_eq!(e.to_string(), "not yet"),
        other => panic!("expected Error::Inner(\"not yet\"), got {other:?}"),
    }
    assert_eq!(calls.started(), 2, "max_attempts(2) means two calls");
    assert_eq!(client.stats().retries, 1);
    assert_eq!(client.stats().budget_exhausted, 0);

    // An error of this crate from below keeps its variant.
    let ours = service_fn(|_: u32| async { Err::<u32, _>(Error::NoEndpoints) });
    let client = RetryLayer::new(RetryErrors::new())
        .backoff(quick())
        .layer(ours);
    assert!(matches!(
        within("request", client.oneshot(1)).await,
        Err(Error::NoEndpoints)
    ));
}

// ---------------------------------------------------------------------------
// Retry-After

/// A mock HTTP service: call `n` answers `status(n)`, with `Retry-After`
/// when given; it records when each call arrived.
fn http_mock(
    arrivals: &Arc<Mutex<Vec<Instant>>>,
    answer: impl Fn(usize) -> (u16, Option<&'static str>) + Clone + Send + 'static,
) -> impl Service<Request<()>, Response = Response<()>, Error = std::io::Error, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    let arrivals = arrivals.clone();
    service_fn(move |_req: Request<()>| {
        let n = {
            let mut seen = arrivals.lock().unwrap();
            seen.push(Instant::now());
            seen.len() - 1
        };
        let (status, retry_after) = answer(n);
        let mut res = Response::builder().status(status);
        if let Some(value) = retry_after {
            res = res.header(RETRY_AFTER, value);
        }
        let res = res.body(()).expect("a valid response");
        async move { Ok::<_, std::io::Error>(res) }
    })
}

fn gaps(arrivals: &Mutex<Vec<Instant>>) -> Vec<Duration> {
    let seen = arrivals.lock().unwrap();
    seen.windows(2).map(|w| w[1] - w[0]).collect()
}

/// `Retry-After: 2` puts the second attempt no sooner than 2 s after the
/// first (and no later than 2 s plus the 4 ms backoff cap: the pause is the
/// larger of the two).
#[tokio::test(start_paused = true)]
async fn retry_after_in_seconds_delays_the_next_attempt() {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let svc = http_mock(&arrivals, |n| {
        if n == 0 {
            (503, Some("2"))
        } else {
            (200, None)
        }
    });
    let client = RetryLayer::new(HttpPolicy::new())
        .backoff(quick())
        .seed(SEED)
        .layer(svc);
    let res = within("request", client.oneshot(Request::new(()))).await;
    assert_eq!(res.expect("answered").status(), StatusCode::OK);
    let gaps = gaps(&arrivals);
    assert_eq!(gaps.len(), 1, "two attempts");
    assert!(
        gaps[0] >= Duration::from_secs(2) && gaps[0] <= Duration::from_millis(2004),
        "second attempt {:?} after the first",
        gaps[0]
    );
}

/// An HTTP-date in the past asks for no pause: only the backoff (≤ 4 ms).
#[tokio::test(start_paused = true)]
async fn retry_after_as_a_past_date_adds_no_wait() {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let svc = http_mock(&arrivals, |n| {
        if n == 0 {
            (503, Some("Sun, 06 Nov 1994 08:49:37 GMT"))
        } else {
            (200, None)
        }
    });
    let client = RetryLayer::new(HttpPolicy::new())
        .backoff(quick())
        .seed(SEED)
        .layer(svc);
    let res = within("request", client.oneshot(Request::new(()))).await;
    assert_eq!(res.expect("answered").status(), StatusCode::OK);
    let gaps = gaps(&arrivals);
    assert_eq!(gaps.len(), 1, "two attempts");
    assert!(gaps[0] <= Duration::from_millis(4), "waited {:?}", gaps[0]);
}

/// A `Retry-After` longer than what is left of the deadline ends the
/// request at once with the server's answer: no futile wait.
#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_deadline_returns_the_answer_at_once() {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let svc = http_mock(&arrivals, |_| (503, Some("2")));
    let client = RetryLayer::new(HttpPolicy::new())
        .backoff(quick())
        .deadline(Duration::from_secs(1))
        .seed(SEED)
        .layer(svc);
    let start = Instant::now();
    let res = within("request", client.oneshot(Request::new(()))).await;
    assert_eq!(
        res.expect("answered").status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(start.elapsed(), Duration::ZERO, "no wait at all");
    assert_eq!(arrivals.lock().unwrap().len(), 1);
}

// ---------------------------------------------------------------------------
// Hedging

/// The first call takes 1 s, later ones 5 ms; a hedge after 20 ms answers
/// at 25 ms (exactly, on the paused clock), and the slow first call is
/// dropped unfinished.
#[tokio::test(start_paused = true)]
async fn a_hedge_answers_for_a_slow_attempt_which_is_cancelled() {
    let calls = Calls::default();
    let svc = scripted(
        &calls,
        |n| Duration::from_millis(if n == 0 { 1000 } else { 5 }),
        Ok,
    );
    let client = RetryLayer::new(RetryErrors::new().hedging())
        .hedge(Hedge::after(Duration::from_millis(20)))
        .budget(plenty())
        .seed(SEED)
        .layer(svc);
    let start = Instant::now();
    let out = within("hedged request", client.clone().oneshot(1)).await;
    assert_eq!(out.expect("answered"), 1, "the hedge (call #1) answered");
    assert_eq!(start.elapsed(), Duration::from_millis(25));
    assert_eq!(client.stats().hedges, 1);
    assert_eq!(calls.cancelled(), 1, "the slow attempt was dropped");
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        (calls.started(), calls.finished(), calls.cancelled()),
        (2, 1, 1),
        "nothing ran on after the answer"
    );
}

/// Requests the policy does not call hedgeable are never hedged: plain
/// `RetryErrors` without `.hedging()`, and a POST under
/// `HttpPolicy::hedging(true)`.
#[tokio::test(start_paused = true)]
async fn only_hedgeable_requests_are_hedged() {
    let calls = Calls::default();
    let slow = scripted(&calls, |_| Duration::from_millis(100), Ok);
    let client = RetryLayer::new(RetryErrors::new())
        .hedge(Hedge::after(Duration::from_millis(10)))
        .budget(plenty())
        .layer(slow);
    within("request", client.clone().oneshot(1))
        .await
        .expect("ok");
    assert_eq!((calls.started(), client.stats().hedges), (1, 0));

    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let svc = http_mock(&arrivals, |_| (200, None));
    let slow_http = tower::ServiceBuilder::new()
        .layer_fn(|s| Delayed(s, Duration::from_millis(100)))
        .service(svc);
    let client = RetryLayer::new(HttpPolicy::new().hedging(true))
        .hedge(Hedge::after(Duration::from_millis(10)))
        .budget(plenty())
        .layer(slow_http);
    let post = Request::builder()
        .method(Method::POST)
        .body(())
        .expect("request");
    within("post", client.clone().oneshot(post))
        .await
        .expect("ok");
    assert_eq!(arrivals.lock().unwrap().len(), 1, "the POST was not hedged");
    let get = Request::new(());
    within("get", client.clone().oneshot(get))
        .await
        .expect("ok");
    assert_eq!(arrivals.lock().unwrap().len(), 3, "the GET was hedged");
    assert_eq!(client.stats().hedges, 1);
}

/// Delays each response of the wrapped service.
#[derive(Clone)]
struct Delayed<S>(S, Duration);

impl<S, R> Service<R> for Delayed<S>
where
    S: Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let future = self.0.call(req);
        let delay = self.1;
        Box::pin(async move {
            sleep(delay).await;
            future.await
        })
    }
}

/// Hedges spend from the budget: with ratio 0 and a floor of 1 per second
/// over a 1 s window, 30 requests of 100 ms each (3 s) may hedge at most
/// once per window, plus the one window at the edge: ≤ 4. Every request
/// still succeeds; each hedge the budget refused is counted.
#[tokio::test(start_paused = true)]
async fn hedges_stop_when_the_budget_is_empty() {
    const REQUESTS: u64 = 30;
    let calls = Calls::default();
    let slow = scripted(&calls, |_| Duration::from_millis(100), Ok);
    let client = RetryLayer::new(RetryErrors::new().hedging())
        .hedge(Hedge::after(Duration::from_millis(10)))
        .budget(RetryBudget::new(Duration::from_secs(1), 0.0, 1))
        .seed(SEED)
        .layer(slow);
    let start = Instant::now();
    for i in 0..REQUESTS {
        within("request", client.clone().oneshot(i as u32))
            .await
            .expect("every request succeeds");
    }
    let seconds = start.elapsed().as_secs_f64();
    let stats = client.stats();
    let allowed = (seconds / 1.0).ceil() as u64 + 1;
    assert!(stats.hedges >= 1, "hedging happened at all");
    assert!(
        stats.hedges <= allowed,
        "{} hedges over {seconds:.1} s; the floor allows {allowed}",
        stats.hedges
    );
    assert_eq!(stats.budget_exhausted, REQUESTS - stats.hedges);
    assert_eq!(calls.started(), REQUESTS + stats.hedges);
}

/// `max_attempts` counts the first attempt and every copy: with
/// `max_attempts(1)` no hedge may be sent (gRPC's hedging policy bounds
/// hedged attempts by `maxAttempts` the same way).
#[tokio::test(start_paused = true)]
async fn max_attempts_also_bounds_hedges() {
    let calls = Calls::default();
    let slow = scripted(&calls, |_| Duration::from_millis(100), Ok);
    let client = RetryLayer::new(RetryErrors::new().hedging())
        .hedge(Hedge::after(Duration::from_millis(10)))
        .max_attempts(1)
        .budget(plenty())
        .layer(slow);
    within("request", client.clone().oneshot(1))
        .await
        .expect("ok");
    assert_eq!(
        (calls.started(), client.stats().hedges),
        (1, 0),
        "max_attempts(1) means one attempt"
    );
}

// ---------------------------------------------------------------------------
// Deadline

/// Every call fails after 400 ms; pauses are at most 50 ms; the deadline is
/// 1 s. Attempts start at 0, by 450 ms and by 900 ms, so the third is in
/// flight when the deadline passes: the request fails at exactly 1 s with
/// `DeadlineExceeded { attempts: 3 }`, and that attempt is dropped.
#[tokio::test(start_paused = true)]
async fn the_deadline_covers_attempts_and_pauses_and_cancels_the_attempt_in_flight() {
    let calls = Calls::default();
    let slow_failure = scripted(&calls, |_| Duration::from_millis(400), |_| Err("slow"));
    let client = RetryLayer::new(RetryErrors::new())
        .deadline(Duration::from_secs(1))
        .max_attempts(10)
        .backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(50),
        ))
        .budget(plenty())
        .seed(SEED)
        .layer(slow_failure);
    let start = Instant::now();
    let out = within("request", client.clone().oneshot(1)).await;
    let elapsed = start.elapsed();
    match out {
        Err(Error::DeadlineExceeded {
            deadline,
            attempts,
            last,
        }) => {
            assert_eq!(deadline, Duration::from_secs(1));
            assert_eq!(attempts, 3);
            assert!(
                last.is_some(),
                "the failed attempts before it are the cause"
            );
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    assert_eq!(elapsed, Duration::from_secs(1), "not a moment later");
    assert_eq!(client.stats().deadlines_exceeded, 1);
    assert_eq!(
        (calls.started(), calls.finished(), calls.cancelled()),
        (3, 2, 1)
    );
    sleep(Duration::from_secs(5)).await;
    assert_eq!(calls.started(), 3, "no attempt after the deadline");
}

/// With a hedge out as well, the deadline cancels both attempts.
#[tokio::test(start_paused = true)]
async fn the_deadline_cancels_a_hedge_and_the_first_attempt() {
    let calls = Calls::default();
    let stuck = scripted(&calls, |_| Duration::from_secs(3600), Ok);
    let client = RetryLayer::new(RetryErrors::new().hedging())
        .deadline(Duration::from_millis(300))
        .hedge(Hedge::after(Duration::from_millis(100)))
        .budget(plenty())
        .layer(stuck);
    let start = Instant::now();
    let out = within("request", client.clone().oneshot(1)).await;
    assert!(
        matches!(out, Err(Error::DeadlineExceeded { attempts: 2, .. })),
        "{out:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!((calls.started(), calls.cancelled()), (2, 2));
}

// ---------------------------------------------------------------------------
// Bodies that cannot be replayed

/// A streaming body of unknown length, fed through a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
    }
}

/// A body that grows past the replay cap while the first attempt streams
/// it cannot be sent again: the caller gets that attempt's 503 at once,
/// and no retry is taken from the budget.
#[tokio::test(start_paused = true)]
async fn a_body_over_the_replay_cap_is_sent_once_without_spending_the_budget() {
    const CAP: usize = 64 * 1024;
    let budget = plenty();
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = received.clone();
    let svc = service_fn(move |req: Request<ReplayBody<ChannelBody>>| {
        let seen = seen.clone();
        async move {
            let body = req.into_body().collect().await?.to_bytes();
            seen.lock().unwrap().push(body.len());
            Ok::<_, BoxError>(
                Response::builder()
                    .status(503)
                    .body(())
                    .expect("a response"),
            )
        }
    });
    let client: Retry<_, HttpPolicy> = RetryLayer::new(HttpPolicy::new())
        .budget(budget.clone())
        .backoff(Backoff::new(Duration::from_secs(1), Duration::from_secs(1)))
        .seed(SEED)
        .layer(IoErrors(svc));
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        for i in 0..100u8 {
            if tx.send(Bytes::from(vec![i; 1000])).await.is_err() {
                return;
            }
        }
    });
    let req = Request::put("/")
        .body(ReplayBody::new(ChannelBody(rx), CAP))
        .expect("request");
    let start = Instant::now();
    let res = within("upload", client.clone().oneshot(req)).await;
    assert_eq!(res.expect("answered").status(), 503);
    assert_eq!(*received.lock().unwrap(), vec![100_000], "sent once, whole");
    assert_eq!(client.stats().retries, 0);
    let waited = start.elapsed();
    assert_eq!(
        budget.stats().retries,
        0,
        "a retry that could not be sent was taken from the budget (and the answer waited {waited:?})"
    );
    assert_eq!(waited, Duration::ZERO, "no pause before giving up");
}

/// Turns a `BoxError` service into one with a concrete `std::error::Error`
/// type, as `HttpPolicy` needs.
#[derive(Clone)]
struct IoErrors<S>(S);

impl<S, R> Service<R> for IoErrors<S>
where
    S: Service<R, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        self.0.poll_ready(cx).map_err(std::io::Error::other)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let future = self.0.call(req);
        Box::pin(async move { future.await.map_err(std::io::Error::other) })
    }
}

// ---------------------------------------------------------------------------
// Nothing is lost

/// 200 concurrent requests over four endpoints (one answers in 10 ms, one
/// fails, one takes 500 ms, one never answers), with a small budget, a
/// 300 ms deadline, hedging after 50 ms and three attempts: each ends in an
/// answer or one of the retry layer's typed errors, the counters agree
/// with the outcomes, and no attempt is left in flight on any endpoint.
#[tokio::test(start_paused = true)]
async fn every_request_ends_with_an_answer_or_a_typed_error() {
    const REQUESTS: usize = 200;
    let (lb, backends) = balancer(4).await;
    backends.set(&key(1), Behaviour::After(Duration::from_millis(10)));
    backends.set(&key(2), Behaviour::Fail);
    backends.set(&key(3), Behaviour::After(Duration::from_millis(500)));
    backends.set(&key(4), Behaviour::Never);
    let pool = lb.pool().clone();
    let client = RetryLayer::new(RetryErrors::new().hedging())
        .budget(RetryBudget::new(Duration::from_secs(1), 0.1, 5))
        .backoff(quick())
        .max_attempts(3)
        .deadline(Duration::from_millis(300))
        .hedge(Hedge::after(Duration::from_millis(50)))
        .seed(SEED)
        .layer(lb);

    let mut tasks = Vec::new();
    for _ in 0..REQUESTS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let out = within("request", client.oneshot(Behaviour::Answer)).await;
            (out, start.elapsed())
        }));
    }
    let (mut ok, mut exhausted, mut deadline, mut inner) = (0, 0, 0, 0);
    for task in tasks {
        let (out, took) = task.await.expect("task");
        assert!(took <= Duration::from_millis(300), "took {took:?}");
        match out {
            Ok(answer) => {
                assert_eq!(answer, key(1));
                ok += 1;
            }
            Err(Error::BudgetExhausted { .. }) => exhausted += 1,
            Err(Error::DeadlineExceeded { .. }) => deadline += 1,
            Err(Error::Inner(_)) => inner += 1,
            Err(other) => panic!("unexpected error: {}", chain(&other)),
        }
    }
    assert_eq!(ok + exhausted + deadline + inner, REQUESTS);
    assert!(ok > 0, "some requests were answered");
    let stats = client.stats();
    assert_eq!(stats.requests, REQUESTS as u64);
    assert_eq!(stats.deadlines_exceeded, deadline as u64);
    assert!(stats.budget_exhausted >= exhausted as u64);
    for member in pool.snapshot().members() {
        assert_eq!(
            member.stats().in_flight(),
            0,
            "{} still counts requests in flight",
            member.endpoint().key()
        );
    }
}
