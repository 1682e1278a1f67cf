//! Shared by the benches (and by the peers crate under `benches/peers`): an
//! always-ready endpoint service, pools of N endpoints, pickers built the
//! way a balancer builds them, and the floor a pick is measured against.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};
use tower_lb::Endpoint;
use tower_lb::PickRng;
use tower_lb::balance::{Balance, BuildContext, PickContext, Picker, Strategy};
use tower_lb::discover::StaticSource;
use tower_lb::pool::{DiscoverLayer, Members, Pool, Snapshot};

/// The endpoint counts every scaling bench runs at.
pub const SIZES: [usize; 4] = [10, 100, 1000, 10_000];

/// The endpoint service: always ready, answers at once.
#[derive(Clone, Copy, Debug)]
pub struct Echo;

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

/// One request: `ready().await` then `call().await`; whether it succeeded.
pub async fn round_trip<S>(svc: &mut S) -> bool
where
    S: Service<u64>,
{
    match svc.ready().await {
        Ok(svc) => svc.call(std::hint::black_box(1)).await.is_ok(),
        Err(_) => false,
    }
}

/// A single-threaded runtime with timers, as the pools need.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The address of endpoint `i`: distinct for up to 2^24 endpoints.
pub fn address(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080))
}

/// How the endpoints of a bench pool are weighted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weights {
    /// All weight 1.
    Uniform,
    /// 1, 2, 3, 4, 1, 2, …
    Mixed,
}

impl Weights {
    /// The weight of endpoint `i`.
    pub fn of(self, i: usize) -> u32 {
        match self {
            Weights::Uniform => 1,
            Weights::Mixed => 1 + (i % 4) as u32,
        }
    }
}

/// `n` endpoints weighted by `weights`.
pub fn endpoints(n: usize, weights: Weights) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint::new(address(i)).with_weight(weights.of(i)))
        .collect()
}

/// A connector that makes an [`Echo`] for every endpoint.
pub fn connector()
-> impl Service<Endpoint, Response = Echo, Error = Infallible, Future = Ready<Result<Echo, Infallible>>>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|_: Endpoint| ready(Ok::<_, Infallible>(Echo)))
}

/// A pool of `n` [`Echo`] endpoints from a static source, fully applied.
pub fn pool(rt: &Runtime, n: usize, weights: Weights) -> Pool<Echo> {
    let _guard = rt.enter();
    let source = StaticSource::new(endpoints(n, weights));
    let pool = DiscoverLayer::new(source).layer(connector());
    assert!(rt.block_on(pool.applied(1)), "the static source applies");
    assert_eq!(pool.snapshot().len(), n);
    pool
}

/// A strategy that hands out a second picker built from the same members
/// and context as the one it gives the balancer, so a bench can time a
/// picker exactly as [`Strategy::build`] made it for a pool snapshot.
struct Capture<St: Strategy> {
    inner: St,
    slot: Arc<Mutex<Option<St::Picker>>>,
}

impl<St: Strategy> Strategy for Capture<St> {
    type Picker = St::Picker;

    fn build<S>(&self, members: Members<'_, S>, ctx: &BuildContext<'_>) -> St::Picker {
        let spare = self.inner.build(members, ctx);
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(spare);
        self.inner.build(members, ctx)
    }
    fn rebuild_delay<S>(&self, members: Members<'_, S>) -> std::time::Duration {
        self.inner.rebuild_delay(members)
    }
}

/// A picker and the snapshot it was built for, published together through
/// one `arc_swap`, as a balancer holds them: a pick is the load plus
/// [`Picker::pick`].
pub struct Routed<P> {
    routing: ArcSwap<(Arc<Snapshot<Echo>>, P)>,
    rng: PickRng,
}

impl<P: Picker> Routed<P> {
    /// Builds `strategy`'s picker for the current snapshot of `pool`.
    pub fn new<St: Strategy<Picker = P>>(pool: &Pool<Echo>, strategy: St) -> Self {
        let slot = Arc::new(Mutex::new(None));
        let balance = Balance::new(
            pool.clone(),
            Capture {
                inner: strategy,
                slot: slot.clone(),
            },
        );
        let snapshot = balance.snapshot();
        drop(balance);
        let picker = slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .expect("the balancer builds a picker at once");
        Routed {
            routing: ArcSwap::from_pointee((snapshot, picker)),
            rng: PickRng::from_entropy(),
        }
    }

    /// How many endpoints the picker picks from.
    pub fn len(&self) -> usize {
        self.routing.load().0.len()
    }

    /// One pick: the `arc_swap` load, then the picker.
    #[inline]
    pub fn pick(&self) -> Option<usize> {
        let routing = self.routing.load();
        routing
            .1
            .pick(routing.0.view(), &PickContext::new(&self.rng))
    }

    /// One pick for a request with `key`: the key hashed as the picker
    /// asks ([`Picker::KEY_HASH`]), the `arc_swap` load, then the picker.
    #[inline]
    pub fn pick_key(&self, key: &[u8]) -> Option<usize> {
        let hash = P::KEY_HASH.hash(key);
        let routing = self.routing.load();
        let ctx = PickContext::new(&self.rng).with_key(Some(hash));
        routing.1.pick(routing.0.view(), &ctx)
    }
}

/// The least a pick can cost: an `arc_swap` load of the snapshot and one
/// atomic `fetch_add` indexing into it.
pub struct Floor {
    snapshot: ArcSwap<Snapshot<Echo>>,
    next: AtomicUsize,
}

impl Floor {
    /// Over the current snapshot of `pool`.
    pub fn new(pool: &Pool<Echo>) -> Self {
        Floor {
            snapshot: ArcSwap::new(pool.snapshot()),
            next: AtomicUsize::new(0),
        }
    }

    /// The next index, in turn.
    #[inline]
    pub fn pick(&self) -> Option<usize> {
        let snapshot = self.snapshot.load();
        let members = snapshot.members();
        if members.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Relaxed) % members.len();
        members.get(i).map(|_| i)
    }
}

/// `n` endpoints whose weights depend on `generation`, so that consecutive
/// generations differ in every weight and each update is a real change.
pub fn generation(n: usize, generation: u64) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint::new(address(i)).with_weight(1 + ((i as u64 + generation) % 4) as u32))
        .collect()
}

/// A pool fed by a [`channel`](tower_lb::discover::channel) source with a
/// least-in-flight balancer subscribed: [`publish`](Self::publish) pushes a
/// full snapshot of `n` endpoints and waits until the pool has applied it
/// (the balancer's picker rebuilt with it).
pub struct ChannelPublish {
    tx: tower_lb::discover::UpdateSender,
    pool: Pool<Echo>,
    _balance: Balance<Echo, tower_lb::balance::LeastInFlight>,
    /// Two sets that differ in every weight, built once (endpoints clone
    /// by one reference count), so only applying is timed.
    sets: [Vec<Endpoint>; 2],
    revision: u64,
}

impl ChannelPublish {
    /// Spawns the pool on `rt`.
    pub fn new(rt: &Runtime, n: usize) -> Self {
        let _guard = rt.enter();
        let (tx, source) = tower_lb::discover::channel();
        let pool: Pool<Echo> = Pool::spawn(source, connector(), Default::default());
        let balance = Balance::new(pool.clone(), tower_lb::balance::LeastInFlight);
        let mut this = ChannelPublish {
            tx,
            pool,
            _balance: balance,
            sets: [generation(n, 0), generation(n, 1)],
            revision: 0,
        };
        this.publish(rt);
        assert_eq!(this.pool.snapshot().len(), n);
        this
    }

    /// Publishes the next set and waits until it is applied.
    pub fn publish(&mut self, rt: &Runtime) {
        let set = self.sets[((self.revision + 1) % 2) as usize].clone();
        self.publish_set(rt, set);
    }

    /// Publishes `set` and waits until it is applied.
    #[allow(dead_code)] // Used by some of the benches that include this module.
    pub fn publish_set(&mut self, rt: &Runtime, set: Vec<Endpoint>) {
        self.revision += 1;
        let update = tower_lb::discover::Update::snapshot(self.revision, set);
        assert!(self.tx.send(update).is_ok(), "the pool is alive");
        rt.block_on(self.pool.applied(self.revision));
    }
}
