//! What one request costs through a balancer, `ready().await` then
//! `call().await`, over N trivially ready endpoints of equal weight: every
//! strategy through `Balance`; least-in-flight through `Retry` + `Balance`,
//! through tower's own `Retry` over the same `Balance`, and through a layer
//! that does nothing (the cost of any layer); least-in-flight `Balance`
//! again in a loop of its own (`least_in_flight_control`: how far the same
//! work measures apart); `Failover` + `Balance` and
//! the full stack (`Retry` + `Failover` + `Balance`); tower's own p2c
//! balancer over `PendingRequests` and over `PeakEwma`; and the raw
//! endpoint service, all in one group so ratios read straight off one run:
//! `target/criterion/roundtrip/<implementation>/<N>`.

mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use support::{Echo, SIZES, Weights, round_trip};
use tokio::runtime::Runtime;
use tower::balance::p2c;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover, PendingRequestsDiscover};
use tower::util::MapErrLayer;
use tower::{Layer, Service};
use tower_lb::balance::{
    BalanceLayer, LeastInFlight, PeakEwma, Random, RoundRobin, Strategy, WeightedRandom,
    WeightedRoundRobin,
};
use tower_lb::failover::{FailoverConfig, FailoverLayer};
use tower_lb::pool::Pool;
use tower_lb::retry::{RetryErrors, RetryLayer};

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Times `round_trip` on `svc`, after checking that it works.
fn bench_service<S>(g: &mut Group<'_>, rt: &Runtime, name: &str, n: usize, svc: S)
where
    S: Service<u64>,
{
    bench_service_then(g, rt, name, n, svc, |_| {});
}

/// Times `round_trip` on `svc` followed by `then(i)` for the `i`th
/// request, after checking that it works. Each `then` gets a loop of its
/// own.
fn bench_service_then<S>(
    g: &mut Group<'_>,
    rt: &Runtime,
    name: &str,
    n: usize,
    mut svc: S,
    then: impl Fn(u64),
) where
    S: Service<u64>,
{
    assert!(rt.block_on(round_trip(&mut svc)), "{name}/{n} fails");
    g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        // One `block_on` per batch; the service is borrowed, not cloned.
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = tokio::time::Instant::now();
                for i in 0..iters {
                    black_box(round_trip(&mut svc).await);
                    then(i);
                }
                start.elapsed()
            })
        })
    });
}

/// A `Failover` view of `pool`, evaluated once (nothing is ejected).
fn failover(rt: &Runtime, pool: &Pool<Echo>) -> Pool<Echo> {
    let _guard = rt.enter();
    let view = FailoverLayer::new(FailoverConfig::new()).layer(pool.clone());
    rt.block_on(view.changed(0));
    assert_eq!(view.snapshot().len(), pool.snapshot().len());
    view
}

/// `Balance` over `pool`, with default (per-thread, entropy-seeded)
/// randomness, as users run it.
fn bench_balance<St: Strategy + Clone>(
    g: &mut Group<'_>,
    rt: &Runtime,
    name: &str,
    pool: &Pool<Echo>,
    strategy: St,
) {
    let _guard = rt.enter();
    let n = pool.snapshot().len();
    let lb = BalanceLayer::new(strategy).layer(pool.clone());
    bench_service(g, rt, name, n, lb);
}

/// Least-in-flight `Balance` again, in a loop of its own that also passes
/// one number through `black_box` per request: the same work as
/// `least_in_flight`, compiled and placed apart from it. How far the two
/// differ is how far this bench can be trusted to tell a layer's cost at
/// that N: at N = 10 000 every pick misses the cache, and how much of
/// that the CPU overlaps depends on where the loop's code lands.
fn bench_control(g: &mut Group<'_>, rt: &Runtime, pool: &Pool<Echo>) {
    let _guard = rt.enter();
    let n = pool.snapshot().len();
    let lb = BalanceLayer::new(LeastInFlight).layer(pool.clone());
    bench_service_then(g, rt, "least_in_flight_control", n, lb, |i| {
        black_box(i);
    });
}

/// `Retry` (nothing fails, so it never retries) over `Balance` over
/// `pool` (a `Failover` view for the full stack).
fn bench_full_stack<St: Strategy + Clone>(
    g: &mut Group<'_>,
    rt: &Runtime,
    name: &str,
    view: &Pool<Echo>,
    strategy: St,
) {
    let _guard = rt.enter();
    let n = view.snapshot().len();
    let lb = BalanceLayer::new(strategy).layer(view.clone());
    let retry = RetryLayer::new(RetryErrors::new()).layer(lb);
    bench_service(g, rt, name, n, retry);
}

/// A layer that does nothing (tower's `MapErr` with the identity) over
/// least-in-flight `Balance`: what wrapping the balancer in any layer
/// costs, the yardstick for what `Retry` adds.
fn bench_noop_layer(g: &mut Group<'_>, rt: &Runtime, pool: &Pool<Echo>) {
    let _guard = rt.enter();
    let n = pool.snapshot().len();
    let lb = BalanceLayer::new(LeastInFlight).layer(pool.clone());
    let noop = MapErrLayer::new(|e: tower_lb::Error| e).layer(lb);
    bench_service(g, rt, "noop_layer_least_in_flight", n, noop);
}

/// tower's own `Retry` over the same least-in-flight `Balance`, with the
/// simplest policy: errors are retried up to twice more, with no budget
/// and no pause. Nothing fails, so it never retries: this is what tower's
/// layer costs per request.
fn bench_tower_retry(g: &mut Group<'_>, rt: &Runtime, pool: &Pool<Echo>) {
    let _guard = rt.enter();
    let n = pool.snapshot().len();
    let lb = BalanceLayer::new(LeastInFlight).layer(pool.clone());
    let retry = tower::retry::RetryLayer::new(RetryErrorsTwice(2)).layer(lb);
    bench_service(g, rt, "tower_retry_least_in_flight", n, retry);
}

/// A tower retry policy: retry an error while attempts remain.
#[derive(Clone, Copy, Debug)]
struct RetryErrorsTwice(u32);

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for RetryErrorsTwice {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match result {
            Err(_) if self.0 > 0 => {
                self.0 -= 1;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

fn roundtrip_group(c: &mut Criterion) {
    let rt = support::runtime();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("roundtrip");
    // Two endpoints as well: P2C's smallest case.
    for n in [2].into_iter().chain(SIZES) {
        bench_service(&mut g, &rt, "raw", n, Echo);

        let tower_pending = p2c::Balance::new(PendingRequestsDiscover::new(
            ServiceList::new(vec![Echo; n]),
            CompleteOnResponse::default(),
        ));
        bench_service(&mut g, &rt, "tower_p2c_pending", n, tower_pending);

        let tower_ewma = p2c::Balance::new(PeakEwmaDiscover::new(
            ServiceList::new(vec![Echo; n]),
            Duration::from_millis(30),
            Duration::from_secs(10),
            CompleteOnResponse::default(),
        ));
        bench_service(&mut g, &rt, "tower_p2c_peak_ewma", n, tower_ewma);

        let pool = support::pool(&rt, n, Weights::Uniform);
        bench_balance(&mut g, &rt, "least_in_flight", &pool, LeastInFlight);
        // The layers over it right after it, so the rows compared with it
        // run back to back.
        bench_full_stack(&mut g, &rt, "retry_least_in_flight", &pool, LeastInFlight);
        bench_noop_layer(&mut g, &rt, &pool);
        bench_tower_retry(&mut g, &rt, &pool);
        bench_control(&mut g, &rt, &pool);
        bench_balance(&mut g, &rt, "peak_ewma", &pool, PeakEwma::new());
        bench_balance(&mut g, &rt, "round_robin", &pool, RoundRobin);
        bench_balance(&mut g, &rt, "random", &pool, Random);
        bench_balance(
            &mut g,
            &rt,
            "weighted_round_robin",
            &pool,
            WeightedRoundRobin,
        );
        bench_balance(&mut g, &rt, "weighted_random", &pool, WeightedRandom);

        let view = failover(&rt, &pool);
        bench_balance(
            &mut g,
            &rt,
            "failover_least_in_flight",
            &view,
            LeastInFlight,
        );
        bench_full_stack(&mut g, &rt, "full_stack", &view, LeastInFlight);
        bench_full_stack(&mut g, &rt, "full_stack_peak_ewma", &view, PeakEwma::new());
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = roundtrip_group
}
criterion_main!(benches);
