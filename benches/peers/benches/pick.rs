//! What one pick costs in pingora-load-balancing (`LoadBalancer::select`,
//! which also checks the backend's health) beside the equivalent tower-lb
//! picks, over N backends of weight 1, in one group:
//! `benches/peers/target/criterion/pick_vs_pingora/<implementation>/<N>`.
//!
//! pingora's `RoundRobin` and `Random` are weighted (a backend of weight w
//! appears w times in their table), so both our plain and our weighted
//! strategies sit beside them. `pingora_consistent` (ketama) and our
//! `ring` (the same ketama layout) and `maglev` are timed over 1024
//! different keys in turn, each hashing the key.

#[path = "../../support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pingora_load_balancing::LoadBalancer;
use pingora_load_balancing::selection::{
    BackendIter, BackendSelection, Consistent, Random, RoundRobin,
};
use support::{Routed, SIZES, Weights};
use tower_lb::balance::{self as lb, Strategy};

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// How far `select` may search for a healthy backend (every one is).
const MAX_ITERATIONS: usize = 256;

fn pingora<S>(n: usize) -> LoadBalancer<S>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let lb = LoadBalancer::<S>::try_from_iter((0..n).map(support::address))
        .expect("literal socket addresses");
    assert_eq!(lb.backends().get_backend().len(), n);
    lb
}

fn bench_pingora<S>(g: &mut Group<'_>, name: &str, n: usize, keys: &[Vec<u8>])
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let lb = pingora::<S>(n);
    assert!(
        lb.select(&keys[0], MAX_ITERATIONS).is_some(),
        "{name} selects"
    );
    let mut next = 0usize;
    g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        b.iter(|| {
            next = (next + 1) % keys.len();
            black_box(lb.select(&keys[next], MAX_ITERATIONS))
        })
    });
}

fn bench_ours<St: Strategy>(
    g: &mut Group<'_>,
    pool: &tower_lb::pool::Pool<support::Echo>,
    name: &str,
    strategy: St,
) {
    let routed = Routed::new(pool, strategy);
    let n = routed.len();
    assert!(routed.pick().is_some_and(|i| i < n), "{name}/{n} picks");
    g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        b.iter(|| black_box(routed.pick()))
    });
}

/// A hash strategy's pick over the keys in turn.
fn bench_keyed<St: Strategy>(
    g: &mut Group<'_>,
    pool: &tower_lb::pool::Pool<support::Echo>,
    name: &str,
    strategy: St,
    keys: &[Vec<u8>],
) {
    let routed = Routed::new(pool, strategy);
    let n = routed.len();
    assert!(
        routed.pick_key(&keys[0]).is_some_and(|i| i < n),
        "{name}/{n} picks"
    );
    let mut next = 0usize;
    g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        b.iter(|| {
            next = (next + 1) % keys.len();
            black_box(routed.pick_key(&keys[next]))
        })
    });
}

/// How much cheaper is each of our picks than pingora's `select` with the
/// same selection?
fn pick_group(c: &mut Criterion) {
    let rt = support::runtime();
    let keys: Vec<Vec<u8>> = (0..1024)
        .map(|i| format!("user-{i}").into_bytes())
        .collect();
    let mut g = c.benchmark_group("pick_vs_pingora");
    for n in SIZES {
        let pool = support::pool(&rt, n, Weights::Uniform);
        bench_ours(&mut g, &pool, "round_robin", lb::RoundRobin);
        bench_ours(
            &mut g,
            &pool,
            "weighted_round_robin",
            lb::WeightedRoundRobin,
        );
        bench_ours(&mut g, &pool, "random", lb::Random);
        bench_ours(&mut g, &pool, "weighted_random", lb::WeightedRandom);
        bench_keyed(&mut g, &pool, "ring", lb::Ring::new(), &keys);
        bench_keyed(&mut g, &pool, "maglev", lb::Maglev::new(), &keys);
        bench_pingora::<RoundRobin>(&mut g, "pingora_round_robin", n, &keys[..1]);
        bench_pingora::<Random>(&mut g, "pingora_random", n, &keys[..1]);
        bench_pingora::<Consistent>(&mut g, "pingora_consistent", n, &keys);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = pick_group
}
criterion_main!(benches);
