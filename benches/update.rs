//! What applying a discovery update of N endpoints costs, from the update
//! arriving to the new snapshot being published (with a least-in-flight
//! balancer subscribed, so its picker is rebuilt too), against tower's p2c
//! taking in the same N services from its `Discover` — the work each does
//! when the endpoint set changes. `target/criterion/update/<impl>/<N>`.
//!
//! The `*_decode_publish` rows add the decoding a source does before it
//! publishes: a file source's JSON document, and (with `--features etcd`)
//! one JSON value per etcd key.
//!
//! The `registry` group asks what one register or deregister costs while
//! a registry is loaded with N instances one by one and emptied again,
//! `target/criterion/registry/{register,deregister}/<N>`: the same at
//! 100 000 as at 1000 if each is constant time.

mod support;

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use support::{ChannelPublish, Echo};
use tokio::runtime::Runtime;
use tokio::time::Instant;
use tower::balance::p2c;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::{Layer, Service};
use tower_lb::Endpoint;
use tower_lb::balance::{BalanceLayer, LeastInFlight};
use tower_lb::discover::bench::decode_file;
use tower_lb::discover::{Registration, Registry, RegistrySource, Source};
use tower_lb::pool::DiscoverLayer;

const SIZES: [usize; 3] = [100, 1000, 10_000];

/// How many instances the `registry` group loads.
const REGISTRY_SIZES: [usize; 3] = [1000, 10_000, 100_000];

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

/// A registry loaded one instance at a time up to N and emptied one guard
/// at a time, with a watch of the service that has taken its first
/// snapshot and is not polled again, as a pool's is while the code that
/// registers runs (so every change is logged for it). The load carries on
/// across criterion's calls, so the timed operations sweep the whole range
/// from 0 to N.
struct Loader {
    endpoints: Vec<Endpoint>,
    registry: Registry,
    _watch: RegistrySource,
    /// Live guards, oldest first.
    guards: VecDeque<Registration>,
    /// How many of `endpoints` this round has registered.
    next: usize,
}

impl Loader {
    fn new(n: usize) -> Self {
        let registry = Registry::new();
        let mut watch = registry.watch("svc").expect("watch");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            watch.poll_update(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        Loader {
            endpoints: support::generation(n, 0),
            _watch: watch,
            registry,
            guards: VecDeque::with_capacity(n),
            next: 0,
        }
    }

    /// Registers up to `k` more instances, one by one; how many (none once
    /// this round's N are in).
    fn register(&mut self, k: u64) -> u64 {
        let to = self.endpoints.len().min(self.next + k as usize);
        for e in &self.endpoints[self.next..to] {
            let guard = self.registry.register("svc", e.clone()).expect("register");
            self.guards.push_back(guard);
        }
        let done = to - self.next;
        self.next = to;
        done as u64
    }

    /// Drops up to `k` guards, oldest first; how many.
    fn deregister(&mut self, k: u64) -> u64 {
        let done = self.guards.len().min(k as usize);
        for guard in self.guards.drain(..done) {
            drop(guard);
        }
        done as u64
    }

    /// Empties the registry and starts a new round.
    fn empty(&mut self) {
        self.guards.clear();
        self.next = 0;
    }

    /// Empties the registry, then registers all N.
    fn fill(&mut self) {
        self.empty();
        self.register(self.endpoints.len() as u64);
    }
}

/// Times `iters` calls' worth of `op` (which does up to the number asked
/// and says how many), running `refill` untimed whenever `op` can do no
/// more.
fn sweep(
    iters: u64,
    loader: &mut Loader,
    op: fn(&mut Loader, u64) -> u64,
    refill: fn(&mut Loader),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let start = Instant::now();
        let done = op(loader, left);
        total += start.elapsed();
        if done == 0 {
            refill(loader);
        }
        left -= done;
    }
    total
}

/// What one register and one deregister cost, averaged over loading a
/// registry with N instances and emptying it again: the 100 000 row over
/// the 1000 row is how far from constant time they are.
fn registry_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("registry");
    for n in REGISTRY_SIZES {
        let mut loader = Loader::new(n);
        g.bench_with_input(BenchmarkId::new("register", n), &n, |b, _| {
            b.iter_custom(|iters| sweep(iters, &mut loader, Loader::register, Loader::empty))
        });
        let mut loader = Loader::new(n);
        loader.fill();
        g.bench_with_input(BenchmarkId::new("deregister", n), &n, |b, _| {
            b.iter_custom(|iters| sweep(iters, &mut loader, Loader::deregister, Loader::fill))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = update_group, registry_group
}
criterion_main!(benches);
