//! What applying a discovery update of N endpoints costs, from the update
//! arriving to the new snapshot being published (with a least-in-flight
//! balancer subscribed, so its picker is rebuilt too), against tower's p2c
//! taking in the same N services from its `Discover` — the work each does
//! when the endpoint set changes. `target/criterion/update/<impl>/<N>`.

mod support;

use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use support::{ChannelPublish, Echo};
use tokio::runtime::Runtime;
use tower::balance::p2c;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::{Layer, Service};
use tower_lb::balance::{BalanceLayer, LeastInFlight};
use tower_lb::discover::Registry;
use tower_lb::pool::DiscoverLayer;

const SIZES: [usize; 3] = [100, 1000, 10_000];

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// tower: a balancer taking in N services from its `Discover`.
fn bench_tower(g: &mut Group<'_>, n: usize) {
    g.bench_with_input(BenchmarkId::new("tower_p2c_rebuild", n), &n, |b, _| {
        let mut cx = Context::from_waker(Waker::noop());
        b.iter(|| {
            let list = ServiceList::new(vec![Echo; n]);
            let mut lb = p2c::Balance::new(PendingRequestsDiscover::new(
                list,
                CompleteOnResponse::default(),
            ));
            assert!(matches!(
                Service::<u64>::poll_ready(&mut lb, &mut cx),
                Poll::Ready(Ok(()))
            ));
            lb
        })
    });
}

/// tower-lb: a snapshot pushed through a channel source.
fn bench_channel(g: &mut Group<'_>, rt: &Runtime, n: usize) {
    let mut channel = ChannelPublish::new(rt, n);
    g.bench_with_input(BenchmarkId::new("lb_channel_publish", n), &n, |b, _| {
        b.iter(|| channel.publish(rt))
    });
}

/// tower-lb: the in-process registry, one re-announce of an instance
/// batched into one watch snapshot of the whole set.
fn bench_registry(g: &mut Group<'_>, rt: &Runtime, n: usize) {
    let _guard = rt.enter();
    let registry = Registry::new();
    let registrations: Vec<_> = support::generation(n, 0)
        .into_iter()
        .map(|e| registry.register("svc", e).expect("register"))
        .collect();
    let watched =
        DiscoverLayer::new(registry.watch("svc").expect("watch")).layer(support::connector());
    let _lb = BalanceLayer::new(LeastInFlight).layer(watched.clone());
    rt.block_on(watched.applied(registry.revision_of("svc")));
    assert_eq!(watched.snapshot().len(), n);
    let mut flip = 0usize;
    g.bench_with_input(BenchmarkId::new("lb_registry_publish", n), &n, |b, _| {
        b.iter(|| {
            // One weight change, then the watch publishes the whole set.
            flip += 1;
            registrations[flip % n].set_weight(1 + (flip % 4) as u32);
            rt.block_on(watched.applied(registry.revision_of("svc")));
        })
    });
}

fn update_group(c: &mut Criterion) {
    let rt = support::runtime();
    let mut g = c.benchmark_group("update");
    for n in SIZES {
        bench_tower(&mut g, n);
        bench_channel(&mut g, &rt, n);
        bench_registry(&mut g, &rt, n);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = update_group
}
criterion_main!(benches);
