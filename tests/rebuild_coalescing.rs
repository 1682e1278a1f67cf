//! Coalesced picker rebuilds: a table strategy (Maglev, Ring, the alias
//! table) rebuilds once per burst of discovery changes, within its rebuild
//! delay of the first, while picks keep using the previous picker; a set
//! that was or becomes empty is built at once. All under paused time, so
//! "within 10 ms" is exact.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service, ServiceExt, service_fn};
use tower_lb::Endpoint;
use tower_lb::balance::{
    Balance, BalanceLayer, BuildContext, LeastInFlight, MAX_REBUILD_DELAY, Maglev, REBUILD_DELAY,
    Ring, Strategy, WeightedRandom, WeightedRoundRobin,
};
use tower_lb::discover::ManualSource;
use tower_lb::pool::{Members, Pool};

/// A backend that answers with its own port.
#[derive(Clone)]
struct Port(u16);

impl Service<u64> for Port {
    type Response = u16;
    type Error = Infallible;
    type Future = Ready<Result<u16, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u64) -> Self::Future {
        ready(Ok(self.0))
    }
}

fn endpoint(i: usize) -> Endpoint {
    let port = 10_000 + u16::try_from(i).expect("fits a port");
    Endpoint::new(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

fn connector()
-> impl Service<Endpoint, Response = Port, Error = Infallible, Future = Ready<Result<Port, Infallible>>>
+ Send
+ 'static {
    service_fn(|e: Endpoint| {
        let port = e.address().map_or(0, |a| a.port());
        ready(Ok::<Port, Infallible>(Port(port)))
    })
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
        self.builds.fetch_add(1, SeqCst);
        self.inner.build(members, ctx)
    }

    fn rebuild_delay<S>(&self, members: Members<'_, S>) -> Duration {
        self.inner.rebuild_delay(members)
    }
}

/// A pool fed by a manual source and a balancer over it with `strategy`
/// (wrapped to count its builds), set up by `layer`.
struct Stack<St: Strategy> {
    /// Each endpoint's weight.
    weight: fn(usize) -> u32,
    source: ManualSource,
    pool: Pool<Port>,
    lb: Balance<Port, Counting<St>>,
    builds: Arc<AtomicUsize>,
}

impl<St: Strategy + Clone> Stack<St> {
    /// Endpoints `0..start` of weight 1.
    async fn new(
        strategy: St,
        layer: impl FnOnce(BalanceLayer<Counting<St>>) -> BalanceLayer<Counting<St>>,
        start: usize,
    ) -> Self {
        Self::weighted(strategy, layer, start, |_| 1).await
    }

    /// Endpoints `0..start` of weights `weight`.
    async fn weighted(
        strategy: St,
        layer: impl FnOnce(BalanceLayer<Counting<St>>) -> BalanceLayer<Counting<St>>,
        start: usize,
        weight: fn(usize) -> u32,
    ) -> Self {
        let (source, rx) = ManualSource::new();
        let pool: Pool<Port> = Pool::spawn(rx, connector(), Default::default());
        let builds = Arc::new(AtomicUsize::new(0));
        let counting = Counting {
            inner: strategy,
            builds: builds.clone(),
        };
        let lb = layer(BalanceLayer::new(counting)).layer(pool.clone());
        let stack = Stack {
            weight,
            source,
            pool,
            lb,
            builds,
        };
        let revision = stack.source.set((0..start).map(|i| stack.endpoint(i)));
        assert!(stack.pool.applied(revision).await);
        stack
    }

    fn endpoint(&self, i: usize) -> Endpoint {
        endpoint(i).with_weight((self.weight)(i))
    }

    fn builds(&self) -> usize {
        self.builds.load(SeqCst)
    }

    /// How many endpoints the balancer's pickers were built for.
    fn built_for(&self) -> usize {
        self.lb.snapshot().len()
    }

    async fn add(&self, i: usize) {
        let revision = self.source.add([self.endpoint(i)]);
        assert!(self.pool.applied(revision).await);
    }

    async fn remove(&self, i: usize) {
        let revision = self.source.remove([endpoint(i).key().to_owned()]);
        assert!(self.pool.applied(revision).await);
    }

    /// A request through the balancer, answered by the port it reached.
    async fn send(&self) -> u16 {
        let mut lb = self.lb.clone();
        lb.ready()
            .await
            .expect("ready")
            .call(0)
            .await
            .expect("answered")
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_1000_changes_in_5_ms_is_one_maglev_rebuild() {
    let stack = Stack::new(Maglev::new(), |l| l, 100).await;
    let before = stack.builds();
    let first = tokio::time::Instant::now();
    for i in 100..1100 {
        stack.add(i).await;
        tokio::time::advance(Duration::from_micros(5)).await;
    }
    assert_eq!(stack.pool.snapshot().len(), 1100, "the pool applied each");
    assert_eq!(
        stack.builds(),
        before,
        "nothing rebuilt within 5 ms of the first change"
    );
    assert_eq!(stack.built_for(), 100, "picks still use the previous set");
    let port = stack.send().await;
    assert!((10_000..10_100).contains(&port), "a request reached {port}");

    tokio::time::sleep_until(first + REBUILD_DELAY).await;
    tokio::task::yield_now().await;
    assert_eq!(stack.builds(), before + 1, "one rebuild for the burst");
    assert_eq!(stack.built_for(), 1100, "built from the newest set");
    tokio::time::sleep(REBUILD_DELAY * 5).await;
    assert_eq!(stack.builds(), before + 1, "and no rebuild after it");
}

/// Removes one of 10 endpoints (endpoint 0 weighing 1 000 times the
/// others, so weighted strategies need their tables) and checks the
/// balancer's pickers still have it 1 ms before the delay is up, and not
/// when it is.
async fn one_removal_lands_within_the_delay<St: Strategy + Clone>(name: &str, strategy: St) {
    let skewed = |i| if i == 0 { 1000 } else { 1 };
    let stack = Stack::weighted(strategy, |l| l, 10, skewed).await;
    let start = tokio::time::Instant::now();
    stack.remove(3).await;
    tokio::time::sleep(REBUILD_DELAY - Duration::from_millis(1)).await;
    assert_eq!(stack.built_for(), 10, "{name}: not yet rebuilt");
    tokio::time::sleep_until(start + REBUILD_DELAY).await;
    tokio::task::yield_now().await;
    assert_eq!(stack.built_for(), 9, "{name}: applied within the delay");
}

#[tokio::test(start_paused = true)]
async fn a_single_change_is_applied_within_the_delay() {
    one_removal_lands_within_the_delay("maglev", Maglev::new()).await;
    one_removal_lands_within_the_delay("ring", Ring::new()).await;
    one_removal_lands_within_the_delay("alias", WeightedRandom).await;
}

/// Adds 10 endpoints one by one and checks each is built at once.
async fn every_change_rebuilds<St: Strategy + Clone>(stack: Stack<St>) {
    let before = stack.builds();
    for i in 10..20 {
        stack.add(i).await;
        assert_eq!(stack.built_for(), i + 1, "rebuilt at once");
    }
    assert_eq!(stack.builds(), before + 10);
}

#[tokio::test(start_paused = true)]
async fn strategies_without_a_table_and_a_zero_delay_rebuild_on_every_change() {
    every_change_rebuilds(Stack::new(LeastInFlight, |l| l, 10).await).await;
    // Weighted round robin rebuilds its cycle at once; weighted random
    // needs no table for equal weights, nor for weights that differ by
    // little.
    let skewed = |i| if i == 0 { 1000 } else { 1 };
    every_change_rebuilds(Stack::weighted(WeightedRoundRobin, |l| l, 10, skewed).await).await;
    every_change_rebuilds(Stack::new(WeightedRandom, |l| l, 10).await).await;
    let mild = |i| 1 + (i % 4) as u32;
    every_change_rebuilds(Stack::weighted(WeightedRandom, |l| l, 10, mild).await).await;
    every_change_rebuilds(Stack::weighted(LeastInFlight, |l| l, 10, mild).await).await;
    every_change_rebuilds(Stack::new(Maglev::new(), |l| l.rebuild_delay(Duration::ZERO), 10).await)
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_set_that_was_or_becomes_empty_is_built_at_once() {
    let stack = Stack::new(Maglev::new(), |l| l, 0).await;
    stack.add(1).await;
    assert_eq!(
        stack.built_for(),
        1,
        "the first endpoint is pickable at once"
    );
    assert_eq!(stack.send().await, 10_001);
    stack.remove(1).await;
    assert_eq!(stack.built_for(), 0, "and the empty set is built at once");
}

#[tokio::test(start_paused = true)]
async fn a_longer_delay_is_configurable_and_bounded() {
    let stack = Stack::new(
        Maglev::new(),
        |l| l.rebuild_delay(Duration::from_millis(50)),
        10,
    )
    .await;
    stack.add(10).await;
    tokio::time::sleep(Duration::from_millis(49)).await;
    assert_eq!(stack.built_for(), 10);
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(stack.built_for(), 11);

    let layer = BalanceLayer::new(Maglev::new());
    let err = layer
        .clone()
        .try_rebuild_delay(MAX_REBUILD_DELAY + Duration::from_nanos(1))
        .expect_err("beyond the maximum");
    assert_eq!(err.setting(), "BalanceLayer::rebuild_delay");
    assert!(layer.try_rebuild_delay(MAX_REBUILD_DELAY).is_ok());
}
