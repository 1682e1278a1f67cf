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
//!
//! Rows measured apart drift apart on a busy machine (the control row shows
//! how far), so the layers are also measured paired: `paired/<layer>/<N>`
//! times a stack with the layer and the same stack without it in
//! alternating blocks of one loop, and its value is not a time but the
//! ratio of the two (criterion prints it as `x`). `paired/
//! least_in_flight_control` pairs least-in-flight `Balance` with a second
//! one just like it: how close to 1 that reads is how far the pairing can
//! be trusted. `arc_layer_least_in_flight` is a layer that does nothing
//! but hold one shared reference per request: what any retry layer that
//! still works after its client is dropped must pay at least.
//! `full_stack` there is paired with `Failover` + `Balance`,
//! every other row with least-in-flight `Balance`: each pair shares its
//! pool, so neither side's data pushes the other's out of the cache.
//! Rows of different balancers are not paired: alternating two working
//! sets measures each evicting the other (ours against tower's p2c read
//! 0.24× at N = 100 but 0.50× at N = 10 000 that way).

mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use support::{Echo, SIZES, Weights, round_trip};
use tokio::runtime::Runtime;
use tower::balance::p2c;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover, PendingRequestsDiscover};
use tower::util::{MapErrLayer, MapResponseLayer};
use tower::{Layer, Service};
use tower_lb::balance::{
    BalanceLayer, LeastInFlight, PeakEwma, Random, RoundRobin, Strategy, Upstream, WeightedRandom,
    WeightedRoundRobin,
};
use tower_lb::failover::{Failover, FailoverConfig, FailoverLayer};
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
fn failover(rt: &Runtime, pool: &Pool<Echo>) -> Failover<Echo> {
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
    pool: &Upstream<Echo>,
    strategy: St,
) {
    let _guard = rt.enter();
    let n = pool.pool().snapshot().len();
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
    view: &Upstream<Echo>,
    strategy: St,
) {
    let _guard = rt.enter();
    let n = view.pool().snapshot().len();
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
        bench_balance(
            &mut g,
            &rt,
            "least_in_flight",
            &pool.clone().into(),
            LeastInFlight,
        );
        // The layers over it right after it, so the rows compared with it
        // run back to back.
        bench_full_stack(
            &mut g,
            &rt,
            "retry_least_in_flight",
            &pool.clone().into(),
            LeastInFlight,
        );
        bench_noop_layer(&mut g, &rt, &pool);
        bench_tower_retry(&mut g, &rt, &pool);
        bench_control(&mut g, &rt, &pool);
        bench_balance(
            &mut g,
            &rt,
            "peak_ewma",
            &pool.clone().into(),
            PeakEwma::new(),
        );
        bench_balance(&mut g, &rt, "round_robin", &pool.clone().into(), RoundRobin);
        bench_balance(&mut g, &rt, "random", &pool.clone().into(), Random);
        bench_balance(
            &mut g,
            &rt,
            "weighted_round_robin",
            &pool.clone().into(),
            WeightedRoundRobin,
        );
        bench_balance(
            &mut g,
            &rt,
            "weighted_random",
            &pool.clone().into(),
            WeightedRandom,
        );

        let view = failover(&rt, &pool);
        bench_balance(
            &mut g,
            &rt,
            "failover_least_in_flight",
            &view.clone().into(),
            LeastInFlight,
        );
        bench_full_stack(
            &mut g,
            &rt,
            "full_stack",
            &view.clone().into(),
            LeastInFlight,
        );
        bench_full_stack(
            &mut g,
            &rt,
            "full_stack_peak_ewma",
            &view.clone().into(),
            PeakEwma::new(),
        );
    }
    g.finish();
}

/// Alternates blocks of `BLOCK` requests (about 70 µs) between a baseline
/// and a layered stack inside one timed loop, so both see the same moment
/// of the machine.
const BLOCK: u64 = 1024;

/// A criterion measurement whose value is a ratio, not a time: a sample of
/// `iters` iterations is worth `iters × (stack's time / baseline's time)`,
/// so the per-iteration estimate criterion reports is the ratio itself.
struct Ratio;

impl criterion::measurement::Measurement for Ratio {
    type Intermediate = ();
    type Value = f64;

    // Only `iter_custom` is used with this measurement: it returns the
    // value itself, so there is nothing to start or end.
    fn start(&self) {}

    fn end(&self, (): ()) -> f64 {
        0.0
    }

    fn add(&self, a: &f64, b: &f64) -> f64 {
        a + b
    }

    fn zero(&self) -> f64 {
        0.0
    }

    fn to_f64(&self, value: &f64) -> f64 {
        *value
    }

    fn formatter(&self) -> &dyn criterion::measurement::ValueFormatter {
        self
    }
}

impl criterion::measurement::ValueFormatter for Ratio {
    fn scale_values(&self, _: f64, _: &mut [f64]) -> &'static str {
        "x"
    }

    fn scale_throughputs(&self, _: f64, _: &criterion::Throughput, _: &mut [f64]) -> &'static str {
        "x"
    }

    fn scale_for_machines(&self, _: &mut [f64]) -> &'static str {
        "x"
    }
}

type PairedGroup<'a> = criterion::BenchmarkGroup<'a, Ratio>;

/// Times `stack` against `base` in alternating blocks of one loop and
/// records `stack`'s time over `base`'s: `paired/<name>/<n>`.
fn bench_paired<A, B>(
    g: &mut PairedGroup<'_>,
    rt: &Runtime,
    name: &str,
    n: usize,
    mut base: A,
    mut stack: B,
) where
    A: Service<u64>,
    B: Service<u64>,
{
    assert!(rt.block_on(round_trip(&mut base)), "{name}/{n}: base fails");
    assert!(
        rt.block_on(round_trip(&mut stack)),
        "{name}/{n}: stack fails"
    );
    g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let rounds = iters.div_ceil(BLOCK);
                let (mut t_base, mut t_stack) = (Duration::ZERO, Duration::ZERO);
                for r in 0..rounds {
                    // Which goes first alternates, so drift within a round
                    // falls on both alike.
                    for first in [r % 2 == 0, r % 2 != 0] {
                        let start = tokio::time::Instant::now();
                        if first {
                            for _ in 0..BLOCK {
                                black_box(round_trip(&mut base).await);
                            }
                            t_base += start.elapsed();
                        } else {
                            for _ in 0..BLOCK {
                                black_box(round_trip(&mut stack).await);
                            }
                            t_stack += start.elapsed();
                        }
                    }
                }
                iters as f64 * t_stack.as_secs_f64() / t_base.as_secs_f64()
            })
        })
    });
}

fn paired_group(c: &mut Criterion<Ratio>) {
    let rt = support::runtime();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("paired");
    for n in [2].into_iter().chain(SIZES) {
        let pool = support::pool(&rt, n, Weights::Uniform);
        let lif = || BalanceLayer::new(LeastInFlight).layer(pool.clone());
        bench_paired(&mut g, &rt, "least_in_flight_control", n, lif(), lif());
        bench_paired(
            &mut g,
            &rt,
            "retry_least_in_flight",
            n,
            lif(),
            RetryLayer::new(RetryErrors::new()).layer(lif()),
        );
        bench_paired(
            &mut g,
            &rt,
            "noop_layer_least_in_flight",
            n,
            lif(),
            MapErrLayer::new(|e: tower_lb::Error| e).layer(lif()),
        );
        // A layer that does nothing but hold one shared reference while
        // the request runs (tower's `MapResponse` with the identity, its
        // closure holding an `Arc`, cloned into each request's future):
        // the least a retry layer that can still retry after its client
        // is dropped must pay.
        let held = std::sync::Arc::new(0u64);
        bench_paired(
            &mut g,
            &rt,
            "arc_layer_least_in_flight",
            n,
            lif(),
            MapResponseLayer::new(move |r: u64| {
                black_box(&held);
                r
            })
            .layer(lif()),
        );
        bench_paired(
            &mut g,
            &rt,
            "tower_retry_least_in_flight",
            n,
            lif(),
            tower::retry::RetryLayer::new(RetryErrorsTwice(2)).layer(lif()),
        );
        let view = failover(&rt, &pool);
        let failover_lif = || BalanceLayer::new(LeastInFlight).layer(view.clone());
        bench_paired(
            &mut g,
            &rt,
            "full_stack",
            n,
            failover_lif(),
            RetryLayer::new(RetryErrors::new()).layer(failover_lif()),
        );
    }
    g.finish();
}

criterion_group! {
    name = paired;
    config = Criterion::default()
        .with_measurement(Ratio)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = paired_group
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = roundtrip_group
}
criterion_main!(benches, paired);
