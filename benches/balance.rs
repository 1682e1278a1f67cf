//! Round-trip cost of one request through a balancer, `ready().await` then
//! `call().await`, over N trivially ready endpoints. tower's own p2c
//! balancer and the raw inner service run in the same group, so ratios read
//! straight off one run:
//! `target/criterion/round_trip/<implementation>/<N>`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tower::balance::p2c;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover, PendingRequestsDiscover};
use tower::{Layer, Service, ServiceExt};
use tower_lb::Endpoint;
use tower_lb::balance::{
    BalanceLayer, LeastInFlight, PeakEwma, Random, RoundRobin, Strategy, WeightedRandom,
    WeightedRoundRobin,
};
use tower_lb::discover::StaticSource;
use tower_lb::failover::bench::Republish;
use tower_lb::failover::{FailoverConfig, FailoverLayer};
use tower_lb::pool::{DiscoverLayer, Pool};
use tower_lb::retry::{RetryErrors, RetryLayer};

const SIZES: [usize; 4] = [2, 10, 100, 1000];

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// The endpoint service: always ready, answers at once.
#[derive(Clone, Copy)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req))
    }
}

/// One request: `ready().await` then `call().await`.
async fn round_trip<S>(svc: &mut S) -> bool
where
    S: Service<u64>,
{
    match svc.ready().await {
        Ok(svc) => svc.call(black_box(1)).await.is_ok(),
        Err(_) => false,
    }
}

/// Times `round_trip` on `svc`, after checking that it works.
fn bench_service<S>(g: &mut Group<'_>, rt: &Runtime, name: &str, n: usize, mut svc: S)
where
    S: Service<u64>,
{
    assert!(rt.block_on(round_trip(&mut svc)), "{name}/{n} fails");
    g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        // One `block_on` per batch; the service is borrowed, not cloned.
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = tokio::time::Instant::now();
                for _ in 0..iters {
                    black_box(round_trip(&mut svc).await);
                }
                start.elapsed()
            })
        })
    });
}

fn pool(rt: &Runtime, n: usize) -> Pool<Echo> {
    let _guard = rt.enter();
    let endpoints = (0..n).map(|i| {
        let addr = format!("127.0.0.1:{}", 10_000 + i).parse().unwrap();
        Endpoint::new(addr).with_weight(1 + (i % 4) as u32)
    });
    let connector = tower::service_fn(|_: Endpoint| ready(Ok::<_, Infallible>(Echo)));
    let pool = DiscoverLayer::new(StaticSource::new(endpoints)).layer(connector);
    rt.block_on(pool.applied(1));
    assert_eq!(pool.snapshot().len(), n);
    pool
}

/// `Balance` over a `Failover` view of the pool, with nothing ejected.
fn bench_failover<St: Strategy + Clone>(
    g: &mut Group<'_>,
    rt: &Runtime,
    name: &str,
    strategy: St,
    n: usize,
) {
    let _guard = rt.enter();
    let view = FailoverLayer::new(FailoverConfig::new()).layer(pool(rt, n));
    rt.block_on(view.changed(0));
    assert_eq!(view.snapshot().len(), n);
    let lb = BalanceLayer::new(strategy).layer(view);
    bench_service(g, rt, name, n, lb);
}

/// `Retry` (nothing fails, so it never retries) over `Balance`.
fn bench_retry<St: Strategy + Clone>(
    g: &mut Group<'_>,
    rt: &Runtime,
    name: &str,
    strategy: St,
    n: usize,
) {
    let _guard = rt.enter();
    let lb = BalanceLayer::new(strategy).layer(pool(rt, n));
    let retry = RetryLayer::new(RetryErrors::new()).layer(lb);
    bench_service(g, rt, name, n, retry);
}

fn bench_ours<St: Strategy + Clone>(
    g: &mut Group<'_>,
    rt: &Runtime,
    name: &str,
    strategy: St,
    n: usize,
) {
    let _guard = rt.enter();
    // Default (per-thread, entropy-seeded) randomness, as users run it.
    let lb = BalanceLayer::new(strategy).layer(pool(rt, n));
    bench_service(g, rt, name, n, lb);
}

fn round_trip_group(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("round_trip");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for n in SIZES {
        bench_service(&mut g, &rt, "raw", n, Echo);

        let list = ServiceList::new(vec![Echo; n]);
        let tower_pending = p2c::Balance::new(PendingRequestsDiscover::new(
            list,
            CompleteOnResponse::default(),
        ));
        bench_service(&mut g, &rt, "tower_p2c_pending", n, tower_pending);

        let list = ServiceList::new(vec![Echo; n]);
        let tower_ewma = p2c::Balance::new(PeakEwmaDiscover::new(
            list,
            Duration::from_millis(30),
            Duration::from_secs(10),
            CompleteOnResponse::default(),
        ));
        bench_service(&mut g, &rt, "tower_p2c_peak_ewma", n, tower_ewma);

        bench_ours(&mut g, &rt, "lb_least_in_flight", LeastInFlight, n);
        bench_failover(&mut g, &rt, "lb_failover_least_in_flight", LeastInFlight, n);
        bench_retry(&mut g, &rt, "lb_retry_least_in_flight", LeastInFlight, n);
        bench_ours(&mut g, &rt, "lb_peak_ewma", PeakEwma::new(), n);
        bench_ours(&mut g, &rt, "lb_round_robin", RoundRobin, n);
        bench_ours(&mut g, &rt, "lb_random", Random, n);
        bench_ours(
            &mut g,
            &rt,
            "lb_weighted_round_robin",
            WeightedRoundRobin,
            n,
        );
        bench_ours(&mut g, &rt, "lb_weighted_random", WeightedRandom, n);
    }
    g.finish();
}

/// One republish of the failover view: health evaluation, the view, and
/// the subscribed balancer's new picker.
fn republish_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("failover_republish");
    for n in [10, 100, 1000] {
        let mut r = Republish::new(n);
        // Every fifth endpoint is a backup and gets nothing while all are healthy.
        assert_eq!(r.run(), n - n / 5);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(r.run()))
        });
    }
    g.finish();
}

criterion_group!(benches, round_trip_group, republish_group);
criterion_main!(benches);
