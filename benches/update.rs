//! What applying a discovery update of N endpoints costs, from the update
//! arriving to the new snapshot being published (with a least-in-flight
//! balancer subscribed, so its picker is rebuilt too), against tower's p2c
//! taking in the same N services from its `Discover` — the work each does
//! when the endpoint set changes. `target/criterion/update/<impl>/<N>`.
//!
//! The `*_decode_publish` rows add the decoding a source does before it
//! publishes: a file source's JSON document, and (with `--features etcd`)
//! one JSON value per etcd key.

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
use tower_lb::discover::bench::decode_file;
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

/// The JSON record of endpoint `i` of generation `generation`.
fn record(i: usize, generation: u64) -> String {
    let weight = 1 + (i as u64 + generation) % 4;
    format!(
        r#"{{"address": "{}", "weight": {weight}}}"#,
        support::address(i)
    )
}

/// tower-lb: a file source's document decoded, as `FileSource` does once
/// it has read the file, then published.
fn bench_file(g: &mut Group<'_>, rt: &Runtime, n: usize) {
    let mut channel = ChannelPublish::new(rt, n);
    let documents = [0, 1].map(|generation| {
        let records: Vec<String> = (0..n).map(|i| record(i, generation)).collect();
        format!(r#"{{"endpoints": [{}]}}"#, records.join(", "))
    });
    assert_eq!(decode_file(documents[0].as_bytes()).len(), n);
    let mut flip = 0usize;
    g.bench_with_input(BenchmarkId::new("lb_file_decode_publish", n), &n, |b, _| {
        b.iter(|| {
            flip += 1;
            let set = decode_file(documents[flip % 2].as_bytes());
            channel.publish_set(rt, set);
        })
    });
}

/// tower-lb: a listing of one etcd value per key decoded, as `EtcdSource`
/// does, then published.
#[cfg(feature = "etcd")]
fn bench_etcd(g: &mut Group<'_>, rt: &Runtime, n: usize) {
    use tower_lb::discover::bench::decode_etcd;
    let mut channel = ChannelPublish::new(rt, n);
    let listings = [0, 1].map(|generation| {
        (0..n)
            .map(|i| (format!("/services/svc/{i}"), record(i, generation)))
            .collect::<Vec<_>>()
    });
    let kvs =
        |l: &[(String, String)]| decode_etcd(l.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    assert_eq!(kvs(&listings[0]).len(), n);
    let mut flip = 0usize;
    g.bench_with_input(BenchmarkId::new("lb_etcd_decode_publish", n), &n, |b, _| {
        b.iter(|| {
            flip += 1;
            channel.publish_set(rt, kvs(&listings[flip % 2]));
        })
    });
}

/// How much cheaper is applying a new set of N endpoints (published by a
/// channel, the registry, a file or etcd) than tower's p2c taking in N
/// services?
fn update_group(c: &mut Criterion) {
    let rt = support::runtime();
    let mut g = c.benchmark_group("update");
    for n in SIZES {
        bench_tower(&mut g, n);
        bench_channel(&mut g, &rt, n);
        bench_registry(&mut g, &rt, n);
        bench_file(&mut g, &rt, n);
        #[cfg(feature = "etcd")]
        bench_etcd(&mut g, &rt, n);
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
