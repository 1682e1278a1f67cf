//! Latency histograms that sample: with a strategy that does not time
//! requests anyway, a pool told to time one answer in `n` counts each
//! sample `n` times, so the histogram still estimates the answers, while
//! the request counters stay exact; Peak-EWMA, which times every request,
//! counts every answer once whatever the pool samples. The metrics
//! exporter turns sampling on under heavy traffic and off again when it
//! stops. In-process endpoints (`service_fn`), so that traffic is heavy
//! enough to sample; every loop is bounded in count and time.

use std::convert::Infallible;
use std::future::ready;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{Instant, sleep, timeout};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};
use tower_lb::Endpoint;
use tower_lb::balance::{Balance, BalanceLayer, LeastInFlight, PeakEwma, Strategy};
use tower_lb::discover::{Registry, StaticSource};
use tower_lb::metrics::{MetricsConfig, MetricsExporter};
use tower_lb::pool::{DiscoverLayer, Pool};
use tower_lb::status::Status;

type Svc = BoxCloneSyncService<u32, u32, Infallible>;

fn endpoint(i: u16) -> Endpoint {
    Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
}

fn connector()
-> impl Service<Endpoint, Response = Svc, Error = Infallible, Future: Send> + Clone + Send + 'static
{
    tower::service_fn(|_: Endpoint| {
        let svc: Svc = BoxCloneSyncService::new(tower::service_fn(|x: u32| ready(Ok(x))));
        ready(Ok::<_, Infallible>(svc))
    })
}

async fn pool(n: u16) -> Pool<Svc> {
    let endpoints: Vec<Endpoint> = (0..n).map(endpoint).collect();
    let pool = DiscoverLayer::new(StaticSource::new(endpoints)).layer(connector());
    assert!(
        timeout(Duration::from_secs(5), pool.applied(1))
            .await
            .unwrap()
    );
    pool
}

async fn send<St: Strategy>(balance: &mut Balance<Svc, St>, n: u32) {
    for i in 0..n {
        let answer = balance.ready().await.unwrap().call(i).await.unwrap();
        assert_eq!(answer, i);
    }
}

/// Histogram counts and successes, over all endpoints.
fn counted(status: &Status) -> (u64, u64) {
    let h = status
        .endpoints
        .iter()
        .map(|e| e.latency_histogram.as_ref().expect("kept").count())
        .sum();
    (h, status.endpoints.iter().map(|e| e.successes).sum())
}

#[tokio::test]
async fn a_sampled_histogram_estimates_the_answers_and_peak_ewma_counts_them_all() {
    const N: u32 = 80_000;
    let lif_pool = pool(4).await;
    let mut lif = BalanceLayer::new(LeastInFlight).layer(lif_pool.clone());
    lif_pool.record_latency();
    assert_eq!(lif.status().latency_one_in, Some(1));
    lif_pool.sample_latency(10);
    assert_eq!(lif_pool.latency_one_in(), Some(8), "rounded down");
    send(&mut lif, N).await;
    let status = lif.status();
    assert_eq!(status.latency_one_in, Some(8));
    let (histogram, successes) = counted(&status);
    assert_eq!(successes, u64::from(N), "the counters stay exact");
    // About 10 000 samples of 8: the estimate is within 5% (more than
    // five standard deviations).
    let error = (histogram as f64 - f64::from(N)).abs() / f64::from(N);
    assert!(error < 0.05, "{histogram} counted for {N} answers");
    for e in &status.endpoints {
        let h = e.latency_histogram.as_ref().unwrap();
        assert!(h.buckets.iter().all(|b| b.count % 8 == 0), "{h:?}");
    }

    // Back to every answer, exactly.
    lif_pool.sample_latency(1);
    send(&mut lif, 1_000).await;
    let (after, _) = counted(&lif.status());
    assert_eq!(after - histogram, 1_000);

    // Peak-EWMA times every request anyway: the pool's sampling does not
    // apply to it.
    let ewma_pool = pool(4).await;
    let mut ewma = BalanceLayer::new(PeakEwma::new()).layer(ewma_pool.clone());
    ewma_pool.record_latency();
    ewma_pool.sample_latency(64);
    send(&mut ewma, 1_000).await;
    let status = ewma.status();
    assert_eq!(status.latency_one_in, Some(1));
    assert_eq!(ewma_pool.status().latency_one_in, Some(64));
    assert_eq!(counted(&status), (1_000, 1_000));
}

#[tokio::test]
async fn sampling_is_not_turned_on_before_the_histograms() {
    let pool = pool(2).await;
    pool.sample_latency(16);
    assert_eq!(pool.latency_one_in(), None);
    assert_eq!(pool.status().latency_one_in, None);
    pool.record_latency();
    assert_eq!(pool.latency_one_in(), Some(1), "histograms start exact");
}

#[tokio::test]
async fn the_exporter_samples_under_heavy_traffic_and_times_all_again_when_it_stops() {
    let pool = pool(4).await;
    let mut balance = BalanceLayer::new(LeastInFlight).layer(pool.clone());
    let config = MetricsConfig::new()
        .interval(Duration::from_millis(50))
        .latency_samples_per_second(100);
    let _export = MetricsExporter::spawn(balance.clone(), config);

    // Heavy: as fast as this thread can, letting the exporter run every
    // thousand requests, until it samples (at most 10 s, 20 M requests).
    let start = Instant::now();
    let mut sent = 0u32;
    while balance.status().latency_one_in.is_none_or(|n| n == 1) {
        assert!(
            start.elapsed() < Duration::from_secs(10) && sent < 20_000_000,
            "no sampling after {sent} requests: {}",
            balance.status()
        );
        send(&mut balance, 1_000).await;
        sent += 1_000;
        tokio::task::yield_now().await;
    }
    let one_in = balance.status().latency_one_in.unwrap();
    assert!(one_in.is_power_of_two() && one_in > 1, "{one_in}");

    // Quiet: a few exports without traffic, and every answer counts once.
    let quiet = Instant::now();
    while balance.status().latency_one_in != Some(1) {
        assert!(
            quiet.elapsed() < Duration::from_secs(5),
            "{}",
            balance.status()
        );
        sleep(Duration::from_millis(20)).await;
    }
    let (before, _) = counted(&balance.status());
    send(&mut balance, 50).await;
    let (after, successes) = counted(&balance.status());
    assert_eq!(after - before, 50);
    assert_eq!(successes, u64::from(sent) + 50);
}

#[tokio::test]
async fn an_endpoint_that_joins_after_record_latency_keeps_a_histogram() {
    let registry = Registry::new();
    let _first = registry.register("api", endpoint(0)).unwrap();
    let pool = DiscoverLayer::new(registry.watch("api").unwrap()).layer(connector());
    let seen = timeout(Duration::from_secs(5), pool.changed(0))
        .await
        .unwrap();
    pool.record_latency();
    let _second = registry.register("api", endpoint(1)).unwrap();
    timeout(Duration::from_secs(5), pool.changed(seen))
        .await
        .unwrap();
    let status = pool.status();
    assert_eq!(status.endpoints.len(), 2);
    assert!(
        status
            .endpoints
            .iter()
            .all(|e| e.latency_histogram.is_some()),
        "{status}"
    );
}
