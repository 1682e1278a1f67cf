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
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use support::{ChannelPublish, Echo};
use tokio::runtime::Runtime;
use tokio::time::Instant;
use tower::balance::p2c;
use tower::discover::{Change as TowerChange, ServiceList};
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::{Layer, Service};
use tower_lb::Endpoint;
use tower_lb::balance::{
    Balance, BalanceLayer, BuildContext, LeastInFlight, Maglev, PeakEwma, REBUILD_DELAY, Strategy,
    WeightedRandom, WeightedRoundRobin,
};
use tower_lb::discover::bench::decode_file;
use tower_lb::discover::{ManualSource, Registration, Registry, RegistrySource, Source};
use tower_lb::failover::{FailoverConfig, FailoverLayer};
use tower_lb::pool::{DiscoverLayer, Members, Pool};

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

/// How many endpoints the `delta` and `burst` groups' pools hold.
const LARGE: usize = 10_000;

/// A `Discover` fed from a channel, for tower's balancer.
struct Changes(tokio::sync::mpsc::UnboundedReceiver<TowerChange<usize, Echo>>);

impl futures_core::Stream for Changes {
    type Item = Result<TowerChange<usize, Echo>, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|c| c.map(Ok))
    }
}

/// tower: a p2c balancer of N services taking in one more, or letting the
/// one it took go, on each iteration.
fn bench_tower_delta(g: &mut Group<'_>, n: usize) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for k in 0..n {
        tx.send(TowerChange::Insert(k, Echo)).expect("open");
    }
    let mut lb = p2c::Balance::new(PendingRequestsDiscover::new(
        Changes(rx),
        CompleteOnResponse::default(),
    ));
    let mut cx = Context::from_waker(Waker::noop());
    let mut ready = |lb: &mut p2c::Balance<_, u64>| {
        assert!(matches!(
            Service::<u64>::poll_ready(lb, &mut cx),
            Poll::Ready(Ok(()))
        ));
    };
    ready(&mut lb);
    let mut flip = 0usize;
    g.bench_with_input(BenchmarkId::new("tower_p2c_one_change", n), &n, |b, _| {
        b.iter(|| {
            flip += 1;
            let change = match flip % 2 {
                1 => TowerChange::Insert(n, Echo),
                _ => TowerChange::Remove(n),
            };
            tx.send(change).expect("open");
            ready(&mut lb);
        })
    });
    assert_eq!(lb.len(), n + flip % 2);
}

/// `St`, counting the pickers it builds.
#[derive(Clone)]
struct Counting<St> {
    inner: St,
    builds: Arc<AtomicUsize>,
}

impl<St: Strategy> Strategy for Counting<St> {
    type Picker = St::Picker;

    fn build<S>(&self, members: Members<'_, S>, ctx: &BuildContext<'_>) -> St::Picker {
        self.builds.fetch_add(1, Relaxed);
        self.inner.build(members, ctx)
    }

    fn rebuild_delay<S>(&self, members: Members<'_, S>) -> Duration {
        self.inner.rebuild_delay(members)
    }
}

/// A pool of N endpoints fed by a manual source, with a balancer of
/// strategy `St` over it (or over a failover view of it) whose builds are
/// counted.
struct Fed<St: Strategy> {
    source: ManualSource,
    lb: Balance<Echo, Counting<St>>,
    builds: Arc<AtomicUsize>,
}

impl<St: Strategy + Clone> Fed<St> {
    fn new(rt: &Runtime, n: usize, strategy: St, delay: Option<Duration>) -> Self {
        Self::over(rt, n, strategy, delay, false)
    }

    fn over(rt: &Runtime, n: usize, strategy: St, delay: Option<Duration>, failover: bool) -> Self {
        let _guard = rt.enter();
        let (source, rx) = ManualSource::new();
        let pool: Pool<Echo> = Pool::spawn(rx, support::connector(), Default::default());
        let builds = Arc::new(AtomicUsize::new(0));
        let layer = BalanceLayer::new(Counting {
            inner: strategy,
            builds: builds.clone(),
        });
        let layer = match delay {
            Some(d) => layer.rebuild_delay(d),
            None => layer,
        };
        let lb = match failover {
            true => layer.layer(FailoverLayer::new(FailoverConfig::new()).layer(pool.clone())),
            false => layer.layer(pool.clone()),
        };
        let fed = Fed { source, lb, builds };
        fed.wait(rt, fed.source.set(support::generation(n, 0)));
        assert_eq!(fed.lb.snapshot().len(), n);
        fed
    }

    /// Until the pool has applied `revision` and the balancer has been
    /// offered what follows from it (for a failover view, the view
    /// evaluated since).
    fn wait(&self, rt: &Runtime, revision: u64) {
        assert!(rt.block_on(self.lb.upstream().applied(revision)));
    }

    /// Endpoint `i` added when `add`, else removed.
    fn change(&self, i: usize, add: bool) -> u64 {
        let endpoint = Endpoint::new(support::address(i));
        match add {
            true => self.source.add([endpoint]),
            false => self.source.remove([endpoint.key().to_owned()]),
        }
    }

    fn builds(&self) -> usize {
        self.builds.load(Relaxed)
    }
}

/// tower-lb: one endpoint added to (or removed from) a pool of N, from the
/// update arriving to the pool's snapshot and the balancer's picker
/// published (rebuilt at once: no rebuild delay), beside a new set of N
/// endpoints with every weight changed (a full rebuild).
fn bench_delta<St: Strategy + Clone>(g: &mut Group<'_>, rt: &Runtime, name: &str, strategy: St) {
    bench_delta_over(g, rt, name, strategy, false);
}

fn bench_delta_over<St: Strategy + Clone>(
    g: &mut Group<'_>,
    rt: &Runtime,
    name: &str,
    strategy: St,
    failover: bool,
) {
    let fed = Fed::over(rt, LARGE, strategy, Some(Duration::ZERO), failover);
    let mut flip = 0usize;
    g.bench_with_input(
        BenchmarkId::new(format!("lb_one_change_{name}"), LARGE),
        &LARGE,
        |b, _| {
            b.iter(|| {
                flip += 1;
                fed.wait(rt, fed.change(LARGE, flip % 2 == 1));
            })
        },
    );
    let sets = [support::generation(LARGE, 1), support::generation(LARGE, 2)];
    g.bench_with_input(
        BenchmarkId::new(format!("lb_full_rebuild_{name}"), LARGE),
        &LARGE,
        |b, _| {
            b.iter(|| {
                flip += 1;
                fed.wait(rt, fed.source.set(sets[flip % 2].clone()));
            })
        },
    );
}

/// One change in a pool of 10 000: what it costs tower-lb, per strategy,
/// against tower's p2c, and against a full rebuild of the same pool.
fn delta_group(c: &mut Criterion) {
    let rt = support::runtime();
    let mut g = c.benchmark_group("delta");
    bench_tower_delta(&mut g, LARGE);
    bench_delta(&mut g, &rt, "least_in_flight", LeastInFlight);
    bench_delta(&mut g, &rt, "weighted_round_robin", WeightedRoundRobin);
    bench_delta(&mut g, &rt, "alias", WeightedRandom);
    bench_delta(&mut g, &rt, "maglev", Maglev::new());
    // The README's stack: Peak-EWMA over a failover view.
    bench_delta_over(&mut g, &rt, "failover_peak_ewma", PeakEwma::new(), true);
    g.finish();
}

/// Changes in one burst: endpoints 10 000..10 500 added, then removed.
const BURST: usize = 1000;

/// One burst of [`BURST`] changes to a pool of 10 000 under Maglev, applied
/// one by one and then waited out until the balancer has built the last
/// set, on a runtime whose clock is paused (so the wait for the rebuild
/// delay takes no time and each row is the CPU time of the work). The
/// rebuilds per burst are asserted: one when coalesced, one per change
/// with no delay.
fn bench_burst(g: &mut Group<'_>, name: &str, delay: Duration, rebuilds: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    let fed = Fed::new(&rt, LARGE, Maglev::new(), Some(delay));
    g.bench_with_input(BenchmarkId::new(name, BURST), &BURST, |b, _| {
        b.iter(|| {
            let before = fed.builds();
            let mut last = 0;
            for k in 0..BURST {
                let (i, add) = (LARGE + k % (BURST / 2), k < BURST / 2);
                last = fed.change(i, add);
                fed.wait(&rt, last);
            }
            // Past the rebuild's deadline (no time passed while changing: the
            // clock is paused), so the rebuild has run.
            rt.block_on(async { tokio::time::sleep(delay * 2).await });
            fed.wait(&rt, last);
            assert_eq!(
                fed.builds() - before,
                rebuilds,
                "{name}: rebuilds per burst"
            );
        })
    });
}

/// A burst of 1000 changes under Maglev: coalesced into one rebuild (the
/// default) against one rebuild per change.
fn burst_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("burst");
    g.sample_size(10);
    bench_burst(&mut g, "maglev_coalesced", REBUILD_DELAY, 1);
    bench_burst(&mut g, "maglev_each_change", Duration::ZERO, BURST);
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = update_group, registry_group, delta_group, burst_group
}
criterion_main!(benches);
