//! What one pick costs, with no service call: for every strategy, the
//! picker [`Strategy::build`](tower_lb::balance::Strategy::build) makes for
//! a pool snapshot, loaded through `arc_swap` with its snapshot as a
//! balancer holds it, then [`Picker::pick`](tower_lb::balance::Picker::pick).
//! The floor in the same group is the least any pick can cost: an
//! `arc_swap` load and one atomic `fetch_add` indexing into the snapshot.
//!
//! `target/criterion/pick/<implementation>/<N>`, N endpoints of weight 1
//! (rows ending `_weighted` use weights 1, 2, 3, 4, 1, …).

mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use support::{Floor, Routed, SIZES, Weights};
use tower_lb::balance::{
    LeastInFlight, PeakEwma, Random, RoundRobin, Strategy, WeightedRandom, WeightedRoundRobin,
};

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn bench_strategy<St: Strategy>(
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

fn pick_group(c: &mut Criterion) {
    let rt = support::runtime();
    let mut g = c.benchmark_group("pick");
    for n in SIZES {
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
