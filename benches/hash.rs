//! Consistent hashing: the cost of one keyed pick, key hashing included
//! (`pick/<algorithm>/<N>`), and of building a picker when the endpoint
//! set changes (`update/<algorithm>_build/<N>`), for Maglev, the ketama
//! ring and rendezvous side by side.
//!
//! Rendezvous hashes every endpoint per pick, so its pick is `O(N)`; it is
//! measured up to N = 10 000 anyway, to show where it stops being cheap.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, service_fn};
use tower_lb::Endpoint;
use tower_lb::PickRng;
use tower_lb::balance::{
    BuildContext, KeyHash, Maglev, PickContext, Picker, Rendezvous, Ring, Strategy,
};
use tower_lb::discover::StaticSource;
use tower_lb::pool::{DiscoverLayer, Snapshot};

/// A trivially ready endpoint service (never called here).
#[derive(Clone, Copy)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req))
    }
}

fn snapshot(n: usize) -> Arc<Snapshot<Echo>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let endpoints = (0..n).map(|i| {
            Endpoint::new(
                format!("10.{}.{}.{}:80", i >> 16, (i >> 8) & 255, i & 255)
                    .parse()
                    .unwrap(),
            )
        });
        let connector = service_fn(|_: Endpoint| ready(Ok::<_, Infallible>(Echo)));
        let pool = DiscoverLayer::new(StaticSource::new(endpoints)).layer(connector);
        assert!(pool.applied(1).await);
        pool.snapshot()
    })
}

fn build<St: Strategy>(strategy: &St, snap: &Snapshot<Echo>) -> St::Picker {
    let rng = PickRng::seeded(1);
    strategy.build(snap.members(), &BuildContext::new(&rng, snap.epoch()))
}

/// Request keys as a user-id header would carry them.
fn user_ids() -> Vec<String> {
    (0..1024).map(|i| format!("user-{:08}", i * 7919)).collect()
}

fn bench_pick<P: Picker>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    n: usize,
    picker: &P,
    snap: &Snapshot<Echo>,
) {
    let keys = user_ids();
    let rng = PickRng::seeded(1);
    let members = snap.members();
    group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 1023;
            let key = P::KEY_HASH.hash(black_box(keys[i].as_bytes()));
            let ctx = PickContext::new(&rng).with_key(Some(key));
            black_box(picker.pick(members, &ctx))
        })
    });
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [10, 100, 1000, 10_000] {
        let snap = snapshot(n);
        bench_pick(
            &mut group,
            "maglev",
            n,
            &build(&Maglev::new(), &snap),
            &snap,
        );
        bench_pick(&mut group, "ring", n, &build(&Ring::new(), &snap), &snap);
        bench_pick(
            &mut group,
            "rendezvous",
            n,
            &build(&Rendezvous::new(), &snap),
            &snap,
        );
    }
    group.finish();
    // The key hashes alone, for reference.
    let keys = user_ids();
    let mut group = c.benchmark_group("key_hash");
    for (name, hash) in [("xxh64", KeyHash::Xxh64), ("crc32", KeyHash::Crc32)] {
        group.bench_function(name, |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(hash.hash(black_box(keys[i].as_bytes())))
            })
        });
    }
    group.finish();
}

fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    group.sample_size(20);
    for n in [100, 1000] {
        let snap = snapshot(n);
        group.bench_with_input(BenchmarkId::new("maglev_build", n), &n, |b, _| {
            b.iter(|| build(&Maglev::new(), &snap))
        });
        group.bench_with_input(BenchmarkId::new("ring_build", n), &n, |b, _| {
            b.iter(|| build(&Ring::new(), &snap))
        });
        group.bench_with_input(BenchmarkId::new("rendezvous_build", n), &n, |b, _| {
            b.iter(|| build(&Rendezvous::new(), &snap))
        });
    }
    group.finish();
}

criterion_group!(benches, pick, update);
criterion_main!(benches);
