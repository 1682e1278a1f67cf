//! What a pick costs each thread when two threads pick from the same
//! picker at once, beside the same pick on one thread. Both run in the
//! same harness: the threads start together at a barrier, each does
//! `iters` picks, and the time reported is the slower thread's, so it reads
//! as the cost of one pick on one thread.
//!
//! `target/criterion/contention/<implementation>/100` (one thread) and
//! `target/criterion/contention/<implementation>_2_threads/100`.
//!
//! Whole round trips too, `ready().await` then `call().await`, through
//! `Balance` and through `Retry` over `Balance`, both least-in-flight: each
//! thread runs its own clone of one client on its own runtime, as a
//! multi-threaded server's tasks do (`roundtrip_<stack>/<N>` and
//! `roundtrip_<stack>_2_threads/<N>`, at N = 2, 100 and 10 000 endpoints;
//! each one-thread row runs just before its two-thread row). At N = 2 the
//! threads mostly share the endpoint they pick; at 10 000 they seldom do,
//! so what is left there is what every request writes whatever it picks.
//! `roundtrip_bare/1` and `roundtrip_bare_2_threads/1` make the same round
//! trips to an endpoint service with no balancer in front: what two threads
//! cost on this machine when they share nothing.

mod support;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use support::{Floor, Routed, Weights, round_trip};
use tokio::time::Instant;
use tower::{Layer, Service};
use tower_lb::balance::{
    BalanceLayer, LeastInFlight, PeakEwma, Random, RoundRobin, Strategy, WeightedRoundRobin,
};
use tower_lb::retry::{RetryErrors, RetryLayer};

/// Endpoints the pick rows pick from.
const N: usize = 100;

/// Endpoints the round-trip rows run at.
const ROUND_TRIP_SIZES: [usize; 3] = [2, 100, 10_000];

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// The longest time any of `workers` took.
fn slowest(workers: Vec<std::thread::ScopedJoinHandle<'_, Duration>>) -> Duration {
    workers
        .into_iter()
        .map(|w| w.join().expect("a bench thread panicked"))
        .max()
        .unwrap_or_default()
}

/// `threads` threads released together, each calling `pick` `iters` times;
/// the slowest one's time.
fn per_thread(threads: usize, iters: u64, pick: &(impl Fn() -> Option<usize> + Sync)) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(pick());
                    }
                    start.elapsed()
                })
            })
            .collect();
        slowest(workers)
    })
}

fn bench_threads(g: &mut Group<'_>, name: &str, pick: &(impl Fn() -> Option<usize> + Sync)) {
    assert!(pick().is_some_and(|i| i < N), "{name} picks");
    for threads in [1, 2] {
        let id = match threads {
            1 => name.to_owned(),
            t => format!("{name}_{t}_threads"),
        };
        g.bench_with_input(BenchmarkId::new(id, N), &N, |b, _| {
            b.iter_custom(|iters| per_thread(threads, iters, pick))
        });
    }
}

/// Round trips each clone makes before it is timed: enough for a
/// long-lived clone to settle (a retry client takes its own lane after 16).
const WARM_UP: u64 = 100;

/// `threads` threads, each with its own clone of `svc` on its own runtime,
/// released together for `iters` round trips each; the slowest one's time.
fn round_trips<S>(threads: usize, iters: u64, svc: &S) -> Duration
where
    S: Service<u64> + Clone + Send,
{
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let mut svc = svc.clone();
                let barrier = &barrier;
                s.spawn(move || {
                    support::runtime().block_on(async {
                        for _ in 0..WARM_UP {
                            assert!(round_trip(&mut svc).await, "a warm-up request fails");
                        }
                        barrier.wait();
                        let start = Instant::now();
                        for _ in 0..iters {
                            black_box(round_trip(&mut svc).await);
                        }
                        start.elapsed()
                    })
                })
            })
            .collect();
        slowest(workers)
    })
}

/// One client's round trips on one thread, then on two, over `n`
/// endpoints: the rows compared with each other run back to back.
fn bench_round_trips<S>(g: &mut Group<'_>, name: &str, n: usize, svc: &S)
where
    S: Service<u64> + Clone + Send,
{
    for threads in [1, 2] {
        let id = match threads {
            1 => format!("roundtrip_{name}"),
            t => format!("roundtrip_{name}_{t}_threads"),
        };
        g.bench_with_input(BenchmarkId::new(id, n), &n, |b, _| {
            b.iter_custom(|iters| round_trips(threads, iters, svc))
        });
    }
}

fn bench_strategy<St: Strategy>(
    g: &mut Group<'_>,
    pool: &tower_lb::pool::Pool<support::Echo>,
    name: &str,
    strategy: St,
) {
    let routed = Routed::new(pool, strategy);
    bench_threads(g, name, &|| routed.pick());
}

/// Does a second thread slow each thread's pick, or its round trip (each
/// thread with its own clone of the client), against one thread alone?
fn contention_group(c: &mut Criterion) {
    let rt = support::runtime();
    let pool = support::pool(&rt, N, Weights::Uniform);
    let mut g = c.benchmark_group("contention");
    let floor = Floor::new(&pool);
    bench_threads(&mut g, "floor", &|| floor.pick());
    bench_strategy(&mut g, &pool, "round_robin", RoundRobin);
    bench_strategy(&mut g, &pool, "weighted_round_robin", WeightedRoundRobin);
    bench_strategy(&mut g, &pool, "random", Random);
    bench_strategy(&mut g, &pool, "least_in_flight", LeastInFlight);
    bench_strategy(&mut g, &pool, "peak_ewma", PeakEwma::new());

    // The machine's own two-thread cost: a round trip to an endpoint
    // service with no balancer (it holds no state, so nothing is shared).
    bench_round_trips(&mut g, "bare", 1, &support::Echo);
    for n in ROUND_TRIP_SIZES {
        let pool = support::pool(&rt, n, Weights::Uniform);
        let lb = {
            let _guard = rt.enter();
            BalanceLayer::new(LeastInFlight).layer(pool)
        };
        let retry = RetryLayer::new(RetryErrors::new()).layer(lb.clone());
        bench_round_trips(&mut g, "least_in_flight", n, &lb);
        bench_round_trips(&mut g, "retry_least_in_flight", n, &retry);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = contention_group
}
criterion_main!(benches);
