//! What one republish of the failover view costs: health evaluation
//! (outlier detection included), building the eligible view, and the
//! subscribed least-in-flight balancer rebuilding its picker, over N
//! endpoints in two tiers. `target/criterion/failover_republish/<N>`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tower_lb::balance::{Balance, LeastInFlight};
use tower_lb::failover::bench::Republish;

/// How long does one republish of the failover view take over N
/// endpoints? (No peer does this work.)
fn republish_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("failover_republish");
    for n in [10, 100, 1000] {
        let mut r = Republish::new(n);
        let _balance = Balance::new(r.view().clone(), LeastInFlight);
        // Every fifth endpoint is a backup and gets nothing while all are healthy.
        assert_eq!(r.run(), n - n / 5);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(r.run()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = republish_group
}
criterion_main!(benches);
