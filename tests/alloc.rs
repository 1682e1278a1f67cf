//! The request path makes no heap allocation of its own: after warm-up, a
//! request through `Balance` — `ready().await`, `call().await` — allocates
//! nothing, for every strategy, nor through `Balance` over a `Failover`
//! view, nor through the full stack (`Retry` + `Failover` + `Balance`) when
//! nothing fails (nor through a clone of `Retry` made per request), nor
//! with a request key for a hash strategy, nor through the full stack with
//! metrics on (latency histograms kept, the exporter running). Counted with
//! a global allocator, so this file holds one test (a second would race on
//! the counter).

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::future::ready;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use tower::{Layer, Service, ServiceExt, service_fn};
use tower_lb::Endpoint;
use tower_lb::balance::{
    BalanceLayer, KeyHash, KeyOf, LeastInFlight, Maglev, PeakEwma, Random, Rendezvous, Ring,
    RoundRobin, Strategy, Upstream, WeightedRandom, WeightedRoundRobin,
};
use tower_lb::discover::StaticSource;
use tower_lb::failover::{FailoverConfig, FailoverLayer};
use tower_lb::metrics::{MetricsConfig, MetricsExporter};
use tower_lb::pool::DiscoverLayer;
use tower_lb::retry::{RetryErrors, RetryLayer};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(SeqCst) {
            ALLOCATIONS.fetch_add(1, SeqCst);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(SeqCst) {
            ALLOCATIONS.fetch_add(1, SeqCst);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Which layers sit over the pool.
#[derive(Clone, Copy, Debug)]
enum Stack {
    /// `Balance` alone.
    Balance,
    /// `Retry` over `Balance` (nothing fails, so nothing is retried).
    Retry,
    /// `Balance` over a `Failover` view (nothing is ejected).
    Failover,
    /// `Retry` over `Balance` over a `Failover` view.
    Full,
    /// `Retry` over `Balance`, called through a fresh clone per request
    /// (`client.clone().oneshot(req)`), as many tower stacks call theirs.
    RetryClonePerRequest,
    /// `Full` with a metrics exporter running on it, which has every
    /// endpoint keep a latency histogram.
    FullWithMetrics,
}

async fn allocations_per_1000<St: Strategy + Clone>(strategy: St) -> u64 {
    allocations_per_1000_with(strategy, Stack::Balance).await
}

/// Requests through `stack` over 50 endpoints of mixed weights.
async fn allocations_per_1000_with<St: Strategy + Clone>(strategy: St, stack: Stack) -> u64 {
    let endpoints = (0..50).map(|i| {
        Endpoint::new(format!("127.0.0.1:{}", 20_000 + i).parse().unwrap()).with_weight(1 + i % 3)
    });
    let connector = service_fn(|_: Endpoint| {
        ready(Ok::<_, Infallible>(service_fn(|x: u64| {
            ready(Ok::<_, Infallible>(x))
        })))
    });
    let pool = DiscoverLayer::new(StaticSource::new(endpoints)).layer(connector);
    assert!(pool.applied(1).await);
    let pool: Upstream<_> = match stack {
        Stack::Balance | Stack::Retry | Stack::RetryClonePerRequest => pool.into(),
        Stack::Failover | Stack::Full | Stack::FullWithMetrics => {
            let view = FailoverLayer::new(FailoverConfig::new()).layer(pool);
            assert!(view.applied(1).await);
            assert_eq!(view.snapshot().len(), 50, "nothing is ejected");
            view.into()
        }
    };
    let lb = BalanceLayer::new(strategy).layer(pool);
    match stack {
        Stack::Balance | Stack::Failover => count(lb).await,
        Stack::Retry | Stack::Full => count(RetryLayer::new(RetryErrors::new()).layer(lb)).await,
        Stack::RetryClonePerRequest => {
            count_clones(RetryLayer::new(RetryErrors::new()).layer(lb)).await
        }
        Stack::FullWithMetrics => {
            let stack = RetryLayer::new(RetryErrors::new()).layer(lb);
            let _export = MetricsExporter::spawn(
                stack.clone(),
                MetricsConfig::new()
                    .interval(Duration::from_millis(1))
                    .per_endpoint(100),
            );
            // The exporter's first tick turns the histograms on.
            while stack
                .status()
                .endpoints
                .iter()
                .any(|e| e.latency_histogram.is_none())
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let n = count(stack.clone()).await;
            let timed: u64 = stack
                .status()
                .endpoints
                .iter()
                .filter_map(|e| e.latency_histogram.as_ref())
                .map(|h| h.count())
                .sum();
            assert!(timed >= 2000, "every request was timed: {timed}");
            n
        }
    }
}

/// Keys each request by its value modulo 64, hashing its bytes in place.
#[derive(Debug, Clone, Copy)]
struct ByValue;

impl KeyOf<u64> for ByValue {
    fn key_of(&self, req: &u64, hash: KeyHash) -> Option<u64> {
        Some(hash.hash(&(req % 64).to_le_bytes()))
    }
}

/// Keyed requests through `Balance` with a hash strategy (and through
/// `Retry` over it when `retry`).
async fn keyed_allocations_per_1000<St: Strategy + Clone>(strategy: St, retry: bool) -> u64 {
    let endpoints = (0..50).map(|i| {
        Endpoint::new(format!("127.0.0.1:{}", 21_000 + i).parse().unwrap()).with_weight(1 + i % 3)
    });
    let connector = service_fn(|_: Endpoint| {
        ready(Ok::<_, Infallible>(service_fn(|x: u64| {
            ready(Ok::<_, Infallible>(x))
        })))
    });
    let pool = DiscoverLayer::new(StaticSource::new(endpoints)).layer(connector);
    assert!(pool.applied(1).await);
    let lb = BalanceLayer::new(strategy).key(ByValue).layer(pool);
    if retry {
        count(RetryLayer::new(RetryErrors::new()).layer(lb)).await
    } else {
        count(lb).await
    }
}

async fn count<S>(mut svc: S) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    for i in 0..1000 {
        assert_eq!(svc.ready().await.unwrap().call(i).await.unwrap(), i);
    }
    ALLOCATIONS.store(0, SeqCst);
    COUNTING.store(true, SeqCst);
    for i in 0..1000 {
        let out = svc.ready().await.unwrap().call(i).await;
        assert!(matches!(out, Ok(x) if x == i));
    }
    COUNTING.store(false, SeqCst);
    ALLOCATIONS.load(SeqCst)
}

/// Like [`count`], each request through a clone of `svc` made for it.
async fn count_clones<S>(svc: S) -> u64
where
    S: Service<u64, Response = u64> + Clone,
    S::Error: std::fmt::Debug,
{
    for i in 0..1000 {
        assert_eq!(svc.clone().oneshot(i).await.unwrap(), i);
    }
    ALLOCATIONS.store(0, SeqCst);
    COUNTING.store(true, SeqCst);
    for i in 0..1000 {
        let out = svc.clone().oneshot(i).await;
        assert!(matches!(out, Ok(x) if x == i));
    }
    COUNTING.store(false, SeqCst);
    ALLOCATIONS.load(SeqCst)
}

#[test]
fn steady_state_requests_do_not_allocate() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The counter sees allocations at all: a control.
    ALLOCATIONS.store(0, SeqCst);
    COUNTING.store(true, SeqCst);
    drop(std::hint::black_box(Box::new(7u64)));
    COUNTING.store(false, SeqCst);
    assert_eq!(ALLOCATIONS.load(SeqCst), 1);

    rt.block_on(async {
        let counts = [
            ("round_robin", allocations_per_1000(RoundRobin).await),
            ("random", allocations_per_1000(Random).await),
            (
                "weighted_round_robin",
                allocations_per_1000(WeightedRoundRobin).await,
            ),
            (
                "weighted_random",
                allocations_per_1000(WeightedRandom).await,
            ),
            ("least_in_flight", allocations_per_1000(LeastInFlight).await),
            ("peak_ewma", allocations_per_1000(PeakEwma::new()).await),
            (
                "keyed maglev",
                keyed_allocations_per_1000(Maglev::new(), false).await,
            ),
            (
                "keyed maglev, bounded load",
                keyed_allocations_per_1000(Maglev::new().bounded_load(1.25), false).await,
            ),
            (
                "keyed ring",
                keyed_allocations_per_1000(Ring::new(), false).await,
            ),
            (
                "keyed rendezvous",
                keyed_allocations_per_1000(Rendezvous::new(), false).await,
            ),
            (
                "retry over keyed maglev",
                keyed_allocations_per_1000(Maglev::new(), true).await,
            ),
            (
                "retry over least_in_flight",
                allocations_per_1000_with(LeastInFlight, Stack::Retry).await,
            ),
            (
                "retry over least_in_flight, a clone per request",
                allocations_per_1000_with(LeastInFlight, Stack::RetryClonePerRequest).await,
            ),
            (
                "least_in_flight over failover",
                allocations_per_1000_with(LeastInFlight, Stack::Failover).await,
            ),
            (
                "full stack, least_in_flight",
                allocations_per_1000_with(LeastInFlight, Stack::Full).await,
            ),
            (
                "full stack, peak_ewma",
                allocations_per_1000_with(PeakEwma::new(), Stack::Full).await,
            ),
            (
                "full stack, round_robin",
                allocations_per_1000_with(RoundRobin, Stack::Full).await,
            ),
            (
                "full stack, weighted_round_robin",
                allocations_per_1000_with(WeightedRoundRobin, Stack::Full).await,
            ),
            (
                "full stack, weighted_random",
                allocations_per_1000_with(WeightedRandom, Stack::Full).await,
            ),
            (
                "full stack, random",
                allocations_per_1000_with(Random, Stack::Full).await,
            ),
            (
                "full stack with metrics, peak_ewma",
                allocations_per_1000_with(PeakEwma::new(), Stack::FullWithMetrics).await,
            ),
            (
                "full stack with metrics, least_in_flight",
                allocations_per_1000_with(LeastInFlight, Stack::FullWithMetrics).await,
            ),
        ];
        for (name, n) in counts {
            assert_eq!(n, 0, "{name}: {n} allocations in 1000 requests");
        }
    });
}
