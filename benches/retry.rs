//! What `Retry` adds to a round trip through least-in-flight `Balance`
//! when nothing fails, measured as a ratio in one loop.
//!
//! Two rows timed in loops of their own move apart on a busy machine by
//! more than Retry's cost, so `Retry` + `Balance` and `Balance` alone,
//! sharing one pool, run in alternating blocks of [`BLOCK`] requests
//! inside one timed loop, and the row records the ratio of their times,
//! not a time (criterion prints it as `x`):
//! `target/criterion/retry/retry_least_in_flight/<N>`.

mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use support::{SIZES, Weights, round_trip};
use tower::Layer;
use tower_lb::balance::{BalanceLayer, LeastInFlight};
use tower_lb::retry::{RetryErrors, RetryLayer};

/// Requests per block (about 70 µs), alternating between the two stacks.
const BLOCK: u64 = 1024;

/// A criterion measurement whose value is a ratio, not a time: a sample of
/// `iters` iterations is worth `iters × (Retry's time / Balance's time)`,
/// so the per-iteration estimate criterion reports is the ratio itself.
struct Ratio;

impl Measurement for Ratio {
    type Intermediate = ();
    type Value = f64;

    // Only `iter_custom` is used: it returns the value itself.
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

    fn formatter(&self) -> &dyn ValueFormatter {
        self
    }
}

impl ValueFormatter for Ratio {
    fn scale_values(&self, _: f64, _: &mut [f64]) -> &'static str {
        "x"
    }

    fn scale_throughputs(&self, _: f64, _: &Throughput, _: &mut [f64]) -> &'static str {
        "x"
    }

    fn scale_for_machines(&self, _: &mut [f64]) -> &'static str {
        "x"
    }
}

/// How many times a round trip through `Balance` does one through `Retry`
/// + `Balance` take, the two measured in one loop?
fn retry_group(c: &mut Criterion<Ratio>) {
    let rt = support::runtime();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("retry");
    for n in [2].into_iter().chain(SIZES) {
        let pool = support::pool(&rt, n, Weights::Uniform);
        let balance = || BalanceLayer::new(LeastInFlight).layer(pool.clone());
        let mut base = balance();
        let mut stack = RetryLayer::new(RetryErrors::new()).layer(balance());
        assert!(rt.block_on(round_trip(&mut base)), "Balance/{n} fails");
        assert!(rt.block_on(round_trip(&mut stack)), "Retry/{n} fails");
        g.bench_with_input(BenchmarkId::new("retry_least_in_flight", n), &n, |b, _| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let (mut t_base, mut t_stack) = (Duration::ZERO, Duration::ZERO);
                    for r in 0..iters.div_ceil(BLOCK) {
                        // Which goes first alternates, so drift within a
                        // round falls on both alike.
                        for base_first in [r % 2 == 0, r % 2 != 0] {
                            let start = tokio::time::Instant::now();
                            if base_first {
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
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .with_measurement(Ratio)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = retry_group
}
criterion_main!(benches);
