//! Cost of applying a discovery update of 1000 endpoints, from the update
//! arriving to the new snapshot being published (with a least-in-flight
//! balancer subscribed, so its picker is rebuilt too), against tower's p2c
//! taking in the same 1000 services from its `Discover` — the work each
//! does when the endpoint set changes. `target/criterion/update/<impl>/1000`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tower::balance::p2c;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::{Layer, Service, service_fn};
use tower_lb::Endpoint;
use tower_lb::balance::{BalanceLayer, LeastInFlight};
use tower_lb::discover::{Registry, Update, channel};
use tower_lb::pool::{DiscoverLayer, Pool};

const N: usize = 1000;

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

fn endpoints(generation: u64) -> Vec<Endpoint> {
    (0..N)
        .map(|i| {
            let port = 10_000 + i as u16;
            // Every generation changes the weights, so each update is a
            // real change that must be published.
            Endpoint::new(([127, 0, 0, 1], port).into())
                .with_weight(1 + ((i as u64 + generation) % 4) as u32)
        })
        .collect()
}

fn connector()
-> impl Service<Endpoint, Response = Echo, Error = Infallible, Future = Ready<Result<Echo, Infallible>>>
+ Clone
+ Send
+ 'static {
    service_fn(|_: Endpoint| ready(Ok::<_, Infallible>(Echo)))
}

fn update_group(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("update");
    g.measurement_time(Duration::from_secs(3));

    // tower: a balancer taking in N services from its Discover.
    g.bench_with_input(BenchmarkId::new("tower_p2c_rebuild", N), &N, |b, _| {
        let mut cx = Context::from_waker(Waker::noop());
        b.iter(|| {
            let list = ServiceList::new(vec![Echo; N]);
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

    // tower-lb: a snapshot pushed through a channel source.
    let (tx, source) = channel();
    let pool: Pool<Echo> = Pool::spawn(source, connector(), Default::default());
    let _lb = BalanceLayer::new(LeastInFlight).layer(pool.clone());
    // Two sets that differ in every weight, built once (endpoints clone
    // by one reference count), so only applying is timed.
    let sets = [endpoints(0), endpoints(1)];
    let mut generation = 0u64;
    g.bench_with_input(BenchmarkId::new("lb_channel_publish", N), &N, |b, _| {
        b.iter(|| {
            generation += 1;
            let set = sets[(generation % 2) as usize].clone();
            assert!(
                tx.send(Update::snapshot(generation, set)).is_ok(),
                "the pool is alive"
            );
            rt.block_on(pool.applied(generation));
        })
    });

    // tower-lb: the in-process registry, one re-announce of each instance
    // batched into one watch snapshot.
    let registry = Registry::new();
    let registrations: Vec<_> = endpoints(0)
        .into_iter()
        .map(|e| registry.register("svc", e).expect("register"))
        .collect();
    let watched = DiscoverLayer::new(registry.watch("svc").expect("watch")).layer(connector());
    let _lb2 = BalanceLayer::new(LeastInFlight).layer(watched.clone());
    rt.block_on(watched.applied(registry.revision_of("svc")));
    let mut flip = 0u32;
    g.bench_with_input(BenchmarkId::new("lb_registry_publish", N), &N, |b, _| {
        b.iter(|| {
            // One weight change, then the watch publishes the whole set.
            flip += 1;
            registrations[(flip as usize) % N].set_weight(1 + flip % 4);
            rt.block_on(watched.applied(registry.revision_of("svc")));
        })
    });
    g.finish();
}

criterion_group!(benches, update_group);
criterion_main!(benches);
