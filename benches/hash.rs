//! What building a consistent-hash picker costs when the endpoint set
//! changes (off the request path: the pool builds it once per snapshot),
//! for Maglev, the ketama ring and rendezvous side by side; their picks
//! are in the `pick` bench.
//!
//! `target/criterion/hash_build/<algorithm>/<N>`, N = 100, 1000 and 10 000.

mod support;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use support::{Echo, Weights};
use tower_lb::PickRng;
use tower_lb::balance::{BuildContext, Maglev, Rendezvous, Ring, Strategy};
use tower_lb::pool::Snapshot;

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn bench_build<St: Strategy>(g: &mut Group<'_>, name: &str, strategy: St, snap: &Snapshot<Echo>) {
    let n = snap.len();
    let rng = PickRng::seeded(1);
    g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        b.iter(|| strategy.build(snap.view(), &BuildContext::new(&rng, snap.epoch())))
    });
}

/// How long does each hash strategy take to build its picker for N
/// endpoints?
fn build_group(c: &mut Criterion) {
    let rt = support::runtime();
    let mut g = c.benchmark_group("hash_build");
    g.sample_size(20);
    for n in [100, 1000, 10_000] {
        let snap = support::pool(&rt, n, Weights::Uniform).snapshot();
        bench_build(&mut g, "maglev", Maglev::new(), &snap);
        bench_build(&mut g, "ring", Ring::new(), &snap);
        bench_build(&mut g, "rendezvous", Rendezvous::new(), &snap);
    }
    g.finish();
}

criterion_group!(benches, build_group);
criterion_main!(benches);
