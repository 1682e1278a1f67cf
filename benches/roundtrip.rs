//! What one request costs through a balancer, `ready().await` then
//! `call().await`, over N trivially ready endpoints of equal weight, beside
//! tower 0.5's p2c balancer doing the same work.
//!
//! `target/criterion/roundtrip/<implementation>/<N>`; the cost of the
//! `metrics` feature in `target/criterion/roundtrip_metrics/`.

mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use metrics_exporter_prometheus::PrometheusBuilder;
use support::{Echo, SIZES, Weights, round_trip};
use tokio::runtime::Runtime;
use tower::balance::p2c;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover, PendingRequestsDiscover};
use tower::{Layer, Service};
use tower_lb::balance::{
    Balance, BalanceLayer, LeastInFlight, PeakEwma, Random, RoundRobin, Strategy, Upstream,
    WeightedRandom, WeightedRoundRobin,
};
use tower_lb::failover::{Failover, FailoverConfig, FailoverLayer};
use tower_lb::metrics::{MetricsConfig, MetricsExporter};
use tower_lb::pool::Pool;
use tower_lb::retry::{Retry, RetryErrors, RetryLayer};
use tower_lb::status::Observe;

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

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

/// `Balance` with `strategy` over `pool`, with default (per-thread,
/// entropy-seeded) randomness, as users run it.
fn balance<St: Strategy + Clone>(
    rt: &Runtime,
    pool: impl Into<Upstream<Echo>>,
    strategy: St,
) -> Balance<Echo, St> {
    let _guard = rt.enter();
    BalanceLayer::new(strategy).layer(pool.into())
}

/// `Retry` over `svc`; nothing fails, so it never retries.
fn retry<S: Clone>(svc: S) -> Retry<S, RetryErrors> {
    RetryLayer::new(RetryErrors::new()).layer(svc)
}

/// A `Failover` view of `pool`, evaluated once (nothing is ejected).
fn failover(rt: &Runtime, pool: &Pool<Echo>) -> Failover<Echo> {
    let _guard = rt.enter();
    let view = FailoverLayer::new(FailoverConfig::new()).layer(pool.clone());
    rt.block_on(view.changed(0));
    assert_eq!(view.snapshot().len(), pool.snapshot().len());
    view
}

/// How much cheaper is a round trip through our `Balance` (every strategy,
/// and the `Failover` and `Retry` layers over it) than through tower's p2c
/// balancer over `PendingRequests` and over `PeakEwma`? `raw` is the
/// endpoint service alone.
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
        let g = &mut g;
        let lif = balance(&rt, pool.clone(), LeastInFlight);
        bench_service(g, &rt, "least_in_flight", n, lif);
        let retry_lif = retry(balance(&rt, pool.clone(), LeastInFlight));
        bench_service(g, &rt, "retry_least_in_flight", n, retry_lif);
        let peak_ewma = balance(&rt, pool.clone(), PeakEwma::new());
        bench_service(g, &rt, "peak_ewma", n, peak_ewma);
        bench_service(
            g,
            &rt,
            "round_robin",
            n,
            balance(&rt, pool.clone(), RoundRobin),
        );
        bench_service(g, &rt, "random", n, balance(&rt, pool.clone(), Random));
        let wrr = balance(&rt, pool.clone(), WeightedRoundRobin);
        bench_service(g, &rt, "weighted_round_robin", n, wrr);
        let wr = balance(&rt, pool.clone(), WeightedRandom);
        bench_service(g, &rt, "weighted_random", n, wr);

        let view = failover(&rt, &pool);
        let failover_lif = balance(&rt, view.clone(), LeastInFlight);
        bench_service(g, &rt, "failover_least_in_flight", n, failover_lif);
        let full_stack = retry(balance(&rt, view.clone(), LeastInFlight));
        bench_service(g, &rt, "full_stack", n, full_stack);
        let full_stack_ewma = retry(balance(&rt, view.clone(), PeakEwma::new()));
        bench_service(g, &rt, "full_stack_peak_ewma", n, full_stack_ewma);
    }
    g.finish();
}

/// What the `metrics` feature costs a request: the full stack (least in
/// flight, and Peak-EWMA) as it is, with a `MetricsExporter` running on it
/// and no recorder installed (the facade's no-op), and with
/// `metrics-exporter-prometheus`'s recorder installed. The exporter runs
/// with its defaults (once a second, latency histograms on, so every
/// endpoint keeps one) on a runtime of its own thread, as it would on
/// another worker of an application's runtime; the bench's runtime has one
/// thread and never yields to it. At this rate, the default exporter has
/// least in flight time one answer in a few hundred for the histograms.
/// Last, least in flight with the Prometheus recorder and the histograms
/// off, and with every answer timed.
fn metrics_group(c: &mut Criterion) {
    let rt = support::runtime();
    let _guard = rt.enter();
    let exporter_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut g = c.benchmark_group("roundtrip_metrics");
    let sizes = [10, 1000];
    let stacks: Vec<_> = sizes
        .iter()
        .map(|&n| {
            let pool = support::pool(&rt, n, Weights::Uniform);
            let view = failover(&rt, &pool);
            let lif = retry(balance(&rt, view.clone(), LeastInFlight));
            let ewma = retry(balance(&rt, view.clone(), PeakEwma::new()));
            (n, lif, ewma)
        })
        .collect();
    // And stacks whose exporter leaves the latency histograms off, and
    // stacks whose exporter times every answer however many there are.
    let lif_stacks = || -> Vec<_> {
        sizes
            .iter()
            .map(|&n| {
                let pool = support::pool(&rt, n, Weights::Uniform);
                let view = failover(&rt, &pool);
                (n, retry(balance(&rt, view, LeastInFlight)))
            })
            .collect()
    };
    let plain = lif_stacks();
    let exact = lif_stacks();
    for (n, lif, ewma) in &stacks {
        bench_service(&mut g, &rt, "full_stack", *n, lif.clone());
        bench_service(&mut g, &rt, "full_stack_peak_ewma", *n, ewma.clone());
    }
    // From here on, every endpoint keeps a latency histogram.
    let mut exports = Vec::new();
    for (_, lif, ewma) in &stacks {
        let _in = exporter_rt.enter();
        exports.push(MetricsExporter::spawn(lif.clone(), MetricsConfig::new()));
        exports.push(MetricsExporter::spawn(ewma.clone(), MetricsConfig::new()));
        lif.record_latency();
        ewma.record_latency();
    }
    for (_, lif) in &plain {
        let _in = exporter_rt.enter();
        let config = MetricsConfig::new().latency_histograms(false);
        exports.push(MetricsExporter::spawn(lif.clone(), config));
    }
    for (_, lif) in &exact {
        let _in = exporter_rt.enter();
        let config = MetricsConfig::new().latency_samples_per_second(u32::MAX);
        exports.push(MetricsExporter::spawn(lif.clone(), config));
        lif.record_latency();
    }
    for (n, lif, ewma) in &stacks {
        bench_service(&mut g, &rt, "full_stack_metrics_noop", *n, lif.clone());
        let name = "full_stack_peak_ewma_metrics_noop";
        bench_service(&mut g, &rt, name, *n, ewma.clone());
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let render = recorder.handle();
    metrics::set_global_recorder(recorder).expect("no recorder installed yet");
    // Scraped once a second, as a server would be: the recorder keeps
    // every histogram sample until then.
    let scrape = {
        let render = render.clone();
        exporter_rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                black_box(render.render());
            }
        })
    };
    for (n, lif, ewma) in &stacks {
        bench_service(
            &mut g,
            &rt,
            "full_stack_metrics_prometheus",
            *n,
            lif.clone(),
        );
        let name = "full_stack_peak_ewma_metrics_prometheus";
        bench_service(&mut g, &rt, name, *n, ewma.clone());
    }
    for (n, lif) in &plain {
        let name = "full_stack_metrics_prometheus_no_histograms";
        bench_service(&mut g, &rt, name, *n, lif.clone());
    }
    for (n, lif) in &exact {
        let name = "full_stack_metrics_prometheus_every_answer";
        bench_service(&mut g, &rt, name, *n, lif.clone());
    }
    g.finish();
    scrape.abort();
    assert!(
        render
            .render()
            .contains("tower_lb_request_duration_seconds"),
        "the exporter exported"
    );
    drop(exports);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = roundtrip_group, metrics_group
}
criterion_main!(benches);
