//! What one pick costs, with no service call: for every strategy, the
//! picker [`Strategy::build`](tower_lb::balance::Strategy::build) makes for
//! a pool snapshot, loaded through `arc_swap` with its snapshot as a
//! balancer holds it, then [`Picker::pick`](tower_lb::balance::Picker::pick).
//! The hash strategies (Maglev, the ketama ring, rendezvous) pick for 1024
//! different keys in turn, hashing each. Rows starting `any_` pick through
//! an `AnyStrategy` parsed from the strategy's name.
//!
//! `target/criterion/pick/<implementation>/<N>`, N endpoints of weight 1
//! (rows ending `_weighted` use weights 1, 2, 3, 4, 1, …), at the sizes of
//! the other scaling benches and at N = 100 000.

mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use support::{Echo, Floor, Routed, SIZES, Weights};
use tower_lb::balance::{
    AnyStrategy, LeastInFlight, Maglev, PeakEwma, Random, Rendezvous, Ring, RoundRobin, Strategy,
    WeightedRandom, WeightedRoundRobin,
};
use tower_lb::pool::Pool;

/// The size only this bench adds: picks at the scale the registry and the
/// pool are tested at (`tests/registry_at_scale.rs`).
const LARGE: usize = 100_000;

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn bench_strategy<St: Strategy>(g: &mut Group<'_>, pool: &Pool<Echo>, name: &str, strategy: St) {
    let routed = Routed::new(pool, strategy);
    let n = routed.len();
    assert!(routed.pick().is_some_and(|i| i < n), "{name}/{n} picks");
    g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        b.iter(|| black_box(routed.pick()))
    });
}

/// A hash strategy's pick for each of `keys` in turn.
fn bench_keyed<St: Strategy>(
    g: &mut Group<'_>,
    pool: &Pool<Echo>,
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
            black_box(routed.pick_key(black_box(&keys[next])))
        })
    });
}

/// How close does each strategy's pick come to the floor (one `arc_swap`
/// load and one atomic `fetch_add`, the least any pick can cost), and
/// does it stay flat as N grows?
fn pick_group(c: &mut Criterion) {
    let rt = support::runtime();
    // Request keys as a user-id header would carry them.
    let keys: Vec<Vec<u8>> = (0..1024)
        .map(|i| format!("user-{:08}", i * 7919).into_bytes())
        .collect();
    let mut g = c.benchmark_group("pick");
    for n in SIZES.into_iter().chain([LARGE]) {
        let pool = support::pool(&rt, n, Weights::Uniform);
        let floor = Floor::new(&pool);
        assert!(floor.pick().is_some());
        g.bench_with_input(BenchmarkId::new("floor", n), &n, |b, _| {
            b.iter(|| black_box(floor.pick()))
        });
        bench_strategy(&mut g, &pool, "round_robin", RoundRobin);
        bench_strategy(&mut g, &pool, "random", Random);
        bench_strategy(&mut g, &pool, "weighted_round_robin", WeightedRoundRobin);
        bench_strategy(&mut g, &pool, "weighted_random", WeightedRandom);
        bench_strategy(&mut g, &pool, "least_in_flight", LeastInFlight);
        bench_strategy(&mut g, &pool, "peak_ewma", PeakEwma::new());
        bench_keyed(&mut g, &pool, "maglev", Maglev::new(), &keys);
        bench_keyed(&mut g, &pool, "ring", Ring::new(), &keys);
        // Hashes every endpoint per pick (`O(N)`), up to N = 100 000 anyway,
        // to show where it stops being cheap.
        bench_keyed(&mut g, &pool, "rendezvous", Rendezvous::new(), &keys);
        // The same strategies chosen at run time: one branch more a pick.
        let any = |name: &str| name.parse::<AnyStrategy>().expect("a strategy name");
        bench_strategy(&mut g, &pool, "any_round_robin", any("round_robin"));
        bench_strategy(&mut g, &pool, "any_peak_ewma", any("p2c_peak_ewma"));
        bench_keyed(&mut g, &pool, "any_maglev", any("maglev"), &keys);

        // Unequal weights take the weighted paths (stride schedule, alias
        // table, weight-proportional first draw).
        let weighted = support::pool(&rt, n, Weights::Mixed);
        bench_strategy(
            &mut g,
            &weighted,
            "weighted_round_robin_weighted",
            WeightedRoundRobin,
        );
        bench_strategy(
            &mut g,
            &weighted,
            "weighted_random_weighted",
            WeightedRandom,
        );
        bench_strategy(&mut g, &weighted, "least_in_flight_weighted", LeastInFlight);
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
