//! Counters return to zero under cancellation, checked with proptest:
//! whatever mix of requests answer, fail, answer late, wait, time out above
//! the client or are dropped mid-flight, through `Balance` alone or `Retry`
//! over it, no endpoint is left counting a request in flight, and each
//! endpoint's successes and failures are exactly the attempts that
//! finished there.
//!
//! Each case runs on its own current-thread runtime with a paused clock,
//! and every check is exact (no tolerance). Balancers and retry layers are
//! seeded from the case (`seed`), so a failing case, which proptest prints
//! and saves in `tests/properties_counters.proptest-regressions`, replays
//! exactly.

#[path = "support/mock.rs"]
mod mock;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use proptest::prelude::*;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_lb::attempt::Tracked;
use tower_lb::balance::{self, Balance, BalanceLayer, LeastInFlight, PeakEwma, WhenEmpty};
use tower_lb::discover::StaticSource;
use tower_lb::pool::DiscoverLayer;
use tower_lb::retry::{Backoff, Hedge, RetryBudget, RetryErrors, RetryLayer};
use tower_lb::{BoxError, Endpoint, Error};

use mock::{Backend, Backends, Behaviour, Gate, name, paused_runtime as runtime};

/// Cases per property.
const CASES: u32 = 32;

// ---------------------------------------------------------------------------
// Counters return to zero under cancellation

/// Attempts that finished at each endpoint (by key): successes, failures.
/// A cancelled attempt's future is dropped before it finishes and is not
/// counted.
#[derive(Debug, Clone, Default)]
struct Finished(Arc<Mutex<HashMap<String, (u64, u64)>>>);

impl Finished {
    fn record(&self, key: &str, ok: bool) {
        let mut map = self.0.lock().unwrap();
        let entry = map.entry(key.to_owned()).or_default();
        if ok {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    fn of(&self, key: &str) -> (u64, u64) {
        self.0.lock().unwrap().get(key).copied().unwrap_or_default()
    }
}

/// A mock backend that notes each attempt that finishes.
#[derive(Clone, Debug)]
struct Counting {
    key: String,
    backend: Backend,
    finished: Finished,
}

type CountingFuture = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

impl Counting {
    fn send(&mut self, behaviour: Behaviour) -> CountingFuture {
        let attempt = self.backend.call(behaviour);
        let (key, finished) = (self.key.clone(), self.finished.clone());
        Box::pin(async move {
            let out = attempt.await;
            finished.record(&key, out.is_ok());
            out
        })
    }
}

impl Service<Behaviour> for Counting {
    type Response = String;
    type Error = BoxError;
    type Future = CountingFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Behaviour) -> CountingFuture {
        self.send(req)
    }
}

/// The form in which a retried request carries the record of its
/// attempts.
impl Service<Tracked<Behaviour>> for Counting {
    type Response = String;
    type Error = BoxError;
    type Future = CountingFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Tracked<Behaviour>) -> CountingFuture {
        self.send(req.into_inner())
    }
}

/// What one request asks its backend to do.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Answer,
    Fail,
    /// Answer after this many milliseconds.
    After(u64),
    /// Answer when this gate (of [`GATES`]) opens.
    Held(usize),
    Never,
}

const GATES: usize = 3;

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Start a request, bounded by a timeout above the client when given.
    Send(Kind, Option<u64>),
    /// Drop the future of the `i`th request still running (modulo their
    /// number), wherever it is.
    Cancel(usize),
    Open(usize),
    /// Let tokio time pass.
    Advance(u64),
}

#[derive(Debug, Clone)]
struct CancelCase {
    /// Endpoints, and which of them fail whatever they are asked.
    failing: Vec<bool>,
    ops: Vec<Op>,
    /// For `Retry` over `Balance`: hedge after this many milliseconds.
    hedge: Option<u64>,
    seed: u64,
}

fn cancel_cases() -> impl Strategy<Value = CancelCase> {
    let kind = prop_oneof![
        3 => Just(Kind::Answer),
        2 => Just(Kind::Fail),
        2 => (1..=50_u64).prop_map(Kind::After),
        2 => (0..GATES).prop_map(Kind::Held),
        1 => Just(Kind::Never),
    ];
    let op = prop_oneof![
        6 => (kind, prop::option::of(1..=60_u64)).prop_map(|(k, t)| Op::Send(k, t)),
        2 => any::<usize>().prop_map(Op::Cancel),
        1 => (0..GATES).prop_map(Op::Open),
        2 => (0..=40_u64).prop_map(Op::Advance),
    ];
    (
        prop::collection::vec(prop::bool::weighted(0.25), 1..=5),
        prop::collection::vec(op, 1..=60),
        prop::option::of(1..=20_u64),
        any::<u64>(),
    )
        .prop_map(|(failing, ops, hedge, seed)| CancelCase {
            failing,
            ops,
            hedge,
            seed,
        })
}

/// How the requests of a case ended, as their callers saw it.
#[derive(Debug, Default)]
struct Ends {
    answered: u64,
    /// `Error::Inner`: an attempt's own failure, returned as the answer.
    failed: u64,
    /// Anything else: timed out above, dropped, or a typed error of the
    /// retry layer.
    other: u64,
}

type Outcome = Option<Result<String, Error>>;

/// A balancer over endpoints `ep-0…` whose attempts are counted in
/// `finished`; the endpoints in `failing` fail every request.
async fn counted<St>(
    strategy: St,
    failing: &[bool],
    seed: u64,
) -> (Balance<Counting, St>, Backends, Finished)
where
    St: balance::Strategy + Clone,
{
    let backends = Backends::new();
    let finished = Finished::default();
    for (i, _) in failing.iter().enumerate().filter(|(_, f)| **f) {
        backends.set(&name(i), Behaviour::Fail);
    }
    let (b, f) = (backends.clone(), finished.clone());
    let connector = service_fn(move |ep: Endpoint| {
        let (mut inner, finished) = (b.connector(), f.clone());
        async move {
            let backend = inner.call(ep.clone()).await?;
            Ok::<_, BoxError>(Counting {
                key: ep.key().to_owned(),
                backend,
                finished,
            })
        }
    });
    let endpoints = (0..failing.len()).map(|i| Endpoint::builder(name(i)).build().unwrap());
    let pool = DiscoverLayer::new(StaticSource::new(endpoints)).layer(connector);
    assert!(pool.applied(1).await, "the static list was applied");
    let lb = BalanceLayer::new(strategy)
        .seed(seed)
        .when_empty(WhenEmpty::FailFast)
        .layer(pool);
    (lb, backends, finished)
}

/// Plays `case.ops`, starting each request with `start`; at the end every
/// request still running is dropped. Returns how the requests ended.
async fn play<F>(case: &CancelCase, mut start: impl FnMut(Behaviour) -> F) -> Ends
where
    F: Future<Output = Result<String, Error>> + Send + 'static,
{
    let gates: Vec<Gate> = (0..GATES).map(|_| Gate::new()).collect();
    let mut running: Vec<JoinHandle<Outcome>> = Vec::new();
    let mut ends = Ends::default();
    let mut tally = |out: Result<Outcome, tokio::task::JoinError>| match out {
        Ok(Some(Ok(_))) => ends.answered += 1,
        Ok(Some(Err(Error::Inner(_)))) => ends.failed += 1,
        _ => ends.other += 1,
    };
    for &op in &case.ops {
        match op {
            Op::Send(kind, limit) => {
                let behaviour = match kind {
                    Kind::Answer => Behaviour::Answer,
                    Kind::Fail => Behaviour::Fail,
                    Kind::After(ms) => Behaviour::After(Duration::from_millis(ms)),
                    Kind::Held(g) => Behaviour::When(gates[g].clone()),
                    Kind::Never => Behaviour::Never,
                };
                let request = start(behaviour);
                running.push(tokio::spawn(async move {
                    match limit {
                        Some(ms) => timeout(Duration::from_millis(ms), request).await.ok(),
                        None => Some(request.await),
                    }
                }));
                // Let it reach its endpoint.
                tokio::task::yield_now().await;
            }
            Op::Cancel(i) if !running.is_empty() => {
                let task = running.remove(i % running.len());
                task.abort();
                tally(task.await);
            }
            Op::Cancel(_) => {}
            Op::Open(g) => gates[g].open(),
            Op::Advance(ms) => sleep(Duration::from_millis(ms)).await,
        }
    }
    for task in running {
        task.abort();
        tally(task.await);
    }
    ends
}

/// Nothing in flight, and each endpoint's successes and failures are the
/// attempts that finished there.
fn check_counters<St: balance::Strategy>(
    lb: &Balance<Counting, St>,
    finished: &Finished,
) -> Result<(u64, u64), TestCaseError> {
    let (mut successes, mut failures) = (0, 0);
    for m in lb.pool().snapshot().members() {
        let key = m.endpoint().key();
        let stats = m.stats();
        prop_assert_eq!(
            stats.in_flight(),
            0,
            "{} still counts requests in flight",
            key
        );
        prop_assert_eq!(
            (stats.successes(), stats.failures()),
            finished.of(key),
            "{}: (successes, failures) against the attempts that finished there",
            key
        );
        successes += stats.successes();
        failures += stats.failures();
    }
    Ok((successes, failures))
}

async fn cancel_through_balance<St>(strategy: St, case: &CancelCase) -> Result<(), TestCaseError>
where
    St: balance::Strategy + Clone,
{
    let (lb, _backends, finished) = counted(strategy, &case.failing, case.seed).await;
    let ends = play(case, |b| lb.clone().oneshot(b)).await;
    let (successes, failures) = check_counters(&lb, &finished)?;
    // One attempt per request: each answer is a success, each failure
    // returned a failure.
    prop_assert_eq!(
        (successes, failures),
        (ends.answered, ends.failed),
        "{:?}",
        ends
    );
    Ok(())
}

async fn cancel_through_retry<St>(strategy: St, case: &CancelCase) -> Result<(), TestCaseError>
where
    St: balance::Strategy + Clone,
{
    let (lb, _backends, finished) = counted(strategy, &case.failing, case.seed).await;
    let mut layer = RetryLayer::new(RetryErrors::new().hedging())
        .budget(RetryBudget::new(Duration::from_secs(10), 10.0, 1_000))
        .backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(4),
        ))
        .max_attempts(3)
        .seed(case.seed);
    if let Some(ms) = case.hedge {
        layer = layer.hedge(Hedge::after(Duration::from_millis(ms)));
    }
    let client = layer.layer(lb.clone());
    let ends = play(case, |b| client.clone().oneshot(Tracked::new(b))).await;
    let (successes, _) = check_counters(&lb, &finished)?;
    // Each answer is one successful attempt; without hedging there is no
    // other (a hedge that lost may have succeeded too).
    if case.hedge.is_none() {
        prop_assert_eq!(successes, ends.answered, "{:?}", ends);
    } else {
        prop_assert!(successes >= ends.answered, "{} < {:?}", successes, ends);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Random requests that answer, fail, answer late, wait for a gate or
    /// never answer, some under a timeout above the client, some dropped
    /// mid-flight, against endpoints some of which always fail: at the end
    /// no endpoint counts a request in flight, and each one's successes
    /// and failures are exactly the attempts that finished there (and,
    /// with one attempt per request, the answers and failures the callers
    /// got). Through `Balance` under LeastInFlight and Peak-EWMA, and
    /// through `Retry` (three attempts, hedging when `hedge` is set) over
    /// `Balance`. Exact.
    #[test]
    fn counters_return_to_zero_under_cancellation(case in cancel_cases()) {
        runtime().block_on(async {
            cancel_through_balance(LeastInFlight, &case).await?;
            cancel_through_balance(PeakEwma::new(), &case).await?;
            cancel_through_retry(LeastInFlight, &case).await?;
            cancel_through_retry(PeakEwma::new(), &case).await
        })?;
    }
}
