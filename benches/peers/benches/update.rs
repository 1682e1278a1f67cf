//! What applying a new set of N backends costs in pingora-load-balancing
//! (`LoadBalancer::update`: discovery returns the set, pingora diffs it
//! against the current one and rebuilds the selector) beside tower-lb
//! publishing a snapshot of N endpoints through a channel source (the
//! subscribed least-in-flight picker rebuilt too), in one group:
//! `benches/peers/target/criterion/update_vs_pingora/<implementation>/<N>`.
//! Consecutive sets differ in every weight, so each is a real change.

#[path = "../../support/mod.rs"]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use async_trait::async_trait;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::selection::{BackendIter, BackendSelection, Consistent, RoundRobin};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use support::ChannelPublish;

const SIZES: [usize; 3] = [100, 1000, 10_000];

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Discovery that answers with two sets in turn (as pingora's own static
/// discovery does, it hands out a clone of the set).
struct Alternating {
    sets: [BTreeSet<Backend>; 2],
    next: AtomicUsize,
}

#[async_trait]
impl ServiceDiscovery for Alternating {
    async fn discover(&self) -> pingora_error::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let i = self.next.fetch_add(1, Relaxed) % 2;
        Ok((self.sets[i].clone(), HashMap::new()))
    }
}

fn backends(n: usize, generation: u64) -> BTreeSet<Backend> {
    support::generation(n, generation)
        .iter()
        .map(|e| {
            let addr = e.address().expect("endpoints have addresses").to_string();
            Backend::new_with_weight(&addr, e.weight() as usize).expect("a socket address")
        })
        .collect()
}

fn bench_pingora<S>(g: &mut Group<'_>, rt: &tokio::runtime::Runtime, name: &str, n: usize)
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
{
    let discovery = Alternating {
        sets: [backends(n, 0), backends(n, 1)],
        next: AtomicUsize::new(0),
    };
    let lb = LoadBalancer::<S>::from_backends(Backends::new(Box::new(discovery)));
    rt.block_on(lb.update()).expect("the update applies");
    assert_eq!(lb.backends().get_backend().len(), n);
    g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        b.iter(|| rt.block_on(lb.update()).expect("the update applies"))
    });
}

/// How much cheaper is publishing a new set of N endpoints than pingora's
/// `update` with round robin (and, for scale, with consistent hashing)?
fn update_group(c: &mut Criterion) {
    let rt = support::runtime();
    let mut g = c.benchmark_group("update_vs_pingora");
    for n in SIZES {
        bench_pingora::<RoundRobin>(&mut g, &rt, "pingora_update", n);
        bench_pingora::<Consistent>(&mut g, &rt, "pingora_update_consistent", n);
        let mut channel = ChannelPublish::new(&rt, n);
        g.bench_with_input(BenchmarkId::new("lb_channel_publish", n), &n, |b, _| {
            b.iter(|| channel.publish(&rt))
        });
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
