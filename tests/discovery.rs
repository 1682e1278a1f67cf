//! Discovery feeding a pool: the in-process registry (TTL, guards,
//! revisions), how the pool treats stale, duplicate, empty and failing
//! updates, stats across a re-announce, the tower `Discover` adapter, and
//! the pool's driver stopping with the pool.
//!
//! Time-dependent tests run on a paused tokio clock.

#[path = "support/mock.rs"]
mod mock;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_test::{assert_pending, task};
use tower::balance::p2c;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::{Layer, ServiceExt};
use tower_lb::balance::{BalanceLayer, RoundRobin, WeightedRoundRobin, WhenEmpty};
use tower_lb::discover::{
    Registry, RegistrySource, Source, TowerDiscover, Update, UpdateSender, channel,
};
use tower_lb::endpoint::weight_from_f64;
use tower_lb::pool::{DiscoverLayer, Pool, StatsHandle};
use tower_lb::{DiscoveryError, Endpoint, Error, InvalidEndpoint};

use mock::{Backend, Backends, Behaviour, Gate, SharedSource, ep, key, settle, tally};

/// The keys in the pool's current snapshot, in member order.
fn keys<S>(pool: &Pool<S>) -> Vec<String> {
    pool.snapshot()
        .members()
        .iter()
        .map(|m| m.endpoint().key().to_owned())
        .collect()
}

/// A pool fed by a `channel()` source through `DiscoverLayer`.
fn channel_pool(keep_last_on_empty: bool) -> (UpdateSender, Pool<Backend>, Backends) {
    let (tx, source) = channel();
    let backends = Backends::new();
    let pool = DiscoverLayer::new(SharedSource::new(source))
        .keep_last_on_empty(keep_last_on_empty)
        .layer(backends.connector());
    (tx, pool, backends)
}

/// A pool following `service` in `registry`, caught up with it.
async fn registry_pool(registry: &Registry, service: &str) -> (Pool<Backend>, Backends) {
    let backends = Backends::new();
    let pool = DiscoverLayer::new(registry.watch(service).unwrap()).layer(backends.connector());
    assert!(pool.applied(registry.revision_of(service)).await);
    (pool, backends)
}

// ---------------------------------------------------------------------------
// Registry

#[tokio::test(start_paused = true)]
async fn a_silent_instance_expires_from_the_pool_on_its_own() {
    let registry = Registry::new();
    let ttl = Duration::from_secs(1);
    let _silent = registry.register_with_ttl("api", ep(1), ttl).unwrap();
    let _static = registry.register("api", ep(2)).unwrap();
    let (pool, _backends) = registry_pool(&registry, "api").await;
    assert_eq!(keys(&pool), [key(1), key(2)]);

    // Nothing touches the registry from here: the watch's own timer must
    // expire the instance.
    tokio::time::sleep(ttl - Duration::from_millis(10)).await;
    assert_eq!(keys(&pool), [key(1), key(2)], "expired before its TTL");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(keys(&pool), [key(2)]);
    assert_eq!(registry.instances("api"), [ep(2)]);
}

#[tokio::test(start_paused = true)]
async fn a_heartbeating_instance_stays_and_a_late_heartbeat_does_not_revive() {
    let registry = Registry::new();
    let ttl = Duration::from_secs(1);
    let alive = registry.register_with_ttl("api", ep(1), ttl).unwrap();
    let silent = registry.register_with_ttl("api", ep(2), ttl).unwrap();
    let (pool, _backends) = registry_pool(&registry, "api").await;

    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(alive.heartbeat());
    }
    // Four seconds on: four TTLs.
    assert_eq!(keys(&pool), [key(1)]);
    assert!(
        !silent.heartbeat(),
        "a late heartbeat does not bring it back"
    );
    assert_eq!(registry.instances("api"), [ep(1)]);
}

#[tokio::test]
async fn dropping_a_registration_deregisters_but_an_older_guard_does_not() {
    let registry = Registry::new();
    let first = registry.register("api", ep(1)).unwrap();
    let (pool, _backends) = registry_pool(&registry, "api").await;
    assert_eq!(keys(&pool), [key(1)]);

    drop(first);
    assert!(registry.instances("api").is_empty());
    assert!(pool.applied(registry.revision_of("api")).await);
    assert!(keys(&pool).is_empty());

    // Re-registering a key replaces the instance; the older guard then no
    // longer owns it.
    let old = registry.register("api", ep(1)).unwrap();
    let new = registry.register("api", ep(1).with_weight(2)).unwrap();
    drop(old);
    assert_eq!(registry.instances("api"), [ep(1).with_weight(2)]);
    assert!(pool.applied(registry.revision_of("api")).await);
    assert_eq!(keys(&pool), [key(1)]);
    assert_eq!(pool.snapshot().members()[0].endpoint().weight(), 2);

    new.deregister();
    assert!(registry.instances("api").is_empty());
}

#[tokio::test]
async fn watch_revisions_are_monotonic_and_only_for_the_watched_service() {
    let registry = Registry::new();
    let mut watch = registry.watch("api").unwrap();
    let mut revisions = Vec::new();
    let next = async |watch: &mut RegistrySource| {
        let update = watch.next_update().await.unwrap().unwrap();
        assert_eq!(update.revision(), registry.revision_of("api"));
        update.revision()
    };
    revisions.push(next(&mut watch).await);

    let a = registry.register("api", ep(1)).unwrap();
    revisions.push(next(&mut watch).await);

    // A change to another service moves the registry's revision, but the
    // watch of "api" has nothing new.
    let _db = registry.register("db", ep(9)).unwrap();
    {
        let mut poll = task::spawn(watch.next_update());
        assert_pending!(poll.poll());
    }

    let b = registry.register("api", ep(2)).unwrap();
    revisions.push(next(&mut watch).await);
    assert!(a.set_weight(3));
    revisions.push(next(&mut watch).await);
    drop(b);
    revisions.push(next(&mut watch).await);

    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "not increasing: {revisions:?}"
    );
}

#[test]
fn invalid_service_names_and_zero_ttl_are_typed_errors() {
    let registry = Registry::new();
    let too_long = "a".repeat(254);
    for bad in ["", "has space", "tab\there", "new\nline", too_long.as_str()] {
        assert!(
            matches!(
                registry.register(bad, ep(1)),
                Err(DiscoveryError::InvalidServiceName { ref name }) if name == bad
            ),
            "register {bad:?}"
        );
        assert!(
            matches!(
                registry.watch(bad),
                Err(DiscoveryError::InvalidServiceName { .. })
            ),
            "watch {bad:?}"
        );
    }
    assert!(registry.register(&"a".repeat(253), ep(1)).is_ok());
    assert!(matches!(
        registry.register_with_ttl("api", ep(1), Duration::ZERO),
        Err(DiscoveryError::ZeroTtl)
    ));
    assert!(registry.instances("api").is_empty());
}

// ---------------------------------------------------------------------------
// How a pool applies updates

#[tokio::test]
async fn stale_updates_are_ignored() {
    let (tx, pool, _backends) = channel_pool(false);
    tx.send(Update::snapshot(5, vec![ep(1), ep(2)])).unwrap();
    assert!(pool.applied(5).await);

    tx.send(Update::snapshot(3, vec![ep(3)])).unwrap();
    settle("the stale update is seen", || {
        pool.discovery().stale_ignored == 1
    })
    .await;
    assert_eq!(keys(&pool), [key(1), key(2)]);
    assert_eq!(pool.snapshot().revision(), 5);
    assert_eq!(pool.discovery().applied_revision, Some(5));
}

#[tokio::test]
async fn duplicates_in_one_update_resolve_by_key_last_wins() {
    let (tx, pool, _backends) = channel_pool(false);
    let dupes = vec![
        ep(1).with_weight(1),
        ep(1).with_weight(5),
        ep(1).with_weight(7),
    ];
    tx.send(Update::snapshot(1, dupes)).unwrap();
    assert!(pool.applied(1).await);
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot.get(&key(1)).unwrap().endpoint().weight(), 7);

    // The same within a delta's upserts.
    let upserts = vec![ep(1).with_weight(2), ep(1).with_weight(9)];
    tx.send(Update::delta(2, upserts, vec![])).unwrap();
    assert!(pool.applied(2).await);
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot.get(&key(1)).unwrap().endpoint().weight(), 9);
}

#[tokio::test]
async fn an_empty_update_empties_the_pool_by_default() {
    let (tx, pool, _backends) = channel_pool(false);
    tx.send(Update::snapshot(1, vec![ep(1)])).unwrap();
    assert!(pool.applied(1).await);

    tx.send(Update::snapshot(2, vec![])).unwrap();
    assert!(pool.applied(2).await);
    assert!(pool.snapshot().is_empty());
    assert_eq!(pool.discovery().empty_ignored, 0);

    let lb = BalanceLayer::new(RoundRobin)
        .when_empty(WhenEmpty::FailFast)
        .layer(pool);
    let err = lb.oneshot(Behaviour::Answer).await.unwrap_err();
    assert!(matches!(err, Error::NoEndpoints), "{err:?}");
}

#[tokio::test]
async fn keep_last_on_empty_keeps_the_last_set() {
    let (tx, pool, _backends) = channel_pool(true);
    tx.send(Update::snapshot(1, vec![ep(1)])).unwrap();
    assert!(pool.applied(1).await);

    tx.send(Update::snapshot(2, vec![])).unwrap();
    assert!(pool.applied(2).await);
    assert_eq!(keys(&pool), [key(1)]);
    assert_eq!(pool.discovery().empty_ignored, 1);

    // A delta removing everything counts as empty too.
    tx.send(Update::delta(3, vec![], vec![key(1)])).unwrap();
    assert!(pool.applied(3).await);
    assert_eq!(keys(&pool), [key(1)]);
    assert_eq!(pool.discovery().empty_ignored, 2);

    let lb = BalanceLayer::new(RoundRobin)
        .when_empty(WhenEmpty::FailFast)
        .layer(pool);
    assert_eq!(lb.oneshot(Behaviour::Answer).await.unwrap(), key(1));
}

#[tokio::test]
async fn a_source_that_fails_then_ends_leaves_the_last_good_set() {
    let (tx, pool, _backends) = channel_pool(false);
    tx.send(Update::snapshot(1, vec![ep(1), ep(2)])).unwrap();
    assert!(tx.send_error(DiscoveryError::Source("registry unreachable".into())));
    drop(tx);

    // `applied` returns false once the source has ended short of revision 2.
    assert!(!pool.applied(2).await);
    let status = pool.discovery();
    assert_eq!(status.applied_revision, Some(1));
    assert_eq!(status.errors, 1);
    assert_eq!(
        status.last_error.as_deref(),
        Some("discovery source failed: registry unreachable")
    );
    assert!(status.ended);
    assert_eq!(keys(&pool), [key(1), key(2)]);

    let mut lb = BalanceLayer::new(RoundRobin)
        .when_empty(WhenEmpty::FailFast)
        .layer(pool);
    let hits = tally(&mut lb, 10).await;
    assert_eq!((hits[&key(1)], hits[&key(2)]), (5, 5));
}

// ---------------------------------------------------------------------------
// Bad input

#[test]
fn invalid_float_weights_are_typed_errors_at_construction() {
    let build = |w: f64| Endpoint::builder("a").weight_f64(w).build();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, -0.5] {
        assert!(
            matches!(build(bad), Err(InvalidEndpoint::WeightNotFinite { .. })),
            "{bad}"
        );
    }
    // The largest weight that rounds into u32, and the first that does not.
    assert_eq!(build(4_294_967_295.4).unwrap().weight(), u32::MAX);
    for big in [4_294_967_295.6, 4_294_967_296.0, 1e20, f64::MAX] {
        assert!(
            matches!(build(big), Err(InvalidEndpoint::WeightTooLarge { .. })),
            "{big}"
        );
    }
    assert_eq!(
        build(0.2).unwrap().weight(),
        1,
        "a small weight never drains"
    );
    assert_eq!(weight_from_f64(0.0), Ok(0));
}

#[tokio::test]
async fn delta_removals_of_unknown_keys_are_ignored() {
    let (tx, pool, _backends) = channel_pool(false);
    tx.send(Update::snapshot(1, vec![ep(1), ep(2)])).unwrap();
    assert!(pool.applied(1).await);

    tx.send(Update::delta(2, vec![], vec!["nope".into(), key(3)]))
        .unwrap();
    assert!(pool.applied(2).await);
    assert_eq!(keys(&pool), [key(1), key(2)]);

    tx.send(Update::delta(3, vec![], vec![key(1), "nope".into()]))
        .unwrap();
    assert!(pool.applied(3).await);
    assert_eq!(keys(&pool), [key(2)]);
    assert_eq!(pool.discovery().errors, 0);
}

/// The weights of the pool's members, in member order.
fn weights<S>(pool: &Pool<S>) -> Vec<u32> {
    let snapshot = pool.snapshot();
    snapshot
        .members()
        .iter()
        .map(|m| m.endpoint().weight())
        .collect()
}

#[tokio::test]
async fn a_delta_upserts_then_removes_and_the_last_member_fills_each_hole() {
    let (tx, pool, _backends) = channel_pool(false);
    tx.send(Update::snapshot(1, (1..=5).map(ep).collect()))
        .unwrap();
    assert!(pool.applied(1).await);
    let stats_of = |k: u16| pool.snapshot().get(&key(k)).unwrap().stats().clone();
    let (two, four) = (stats_of(2), stats_of(4));

    // Re-weighted twice (the last wins), upserted and removed (removal
    // wins), added and removed in the same delta (never appears), added.
    let upserts = vec![
        ep(2).with_weight(3),
        ep(2).with_weight(4),
        ep(3).with_weight(9),
        ep(7),
        ep(6).with_weight(2),
    ];
    let removals = vec![key(3), key(7), key(1)];
    tx.send(Update::delta(2, upserts, removals)).unwrap();
    assert!(pool.applied(2).await);
    // Members keep their places; removals, from the back, move the last
    // member into the hole (5 into 3's, then 4 into 1's); 6 goes last.
    assert_eq!(keys(&pool), [key(4), key(2), key(5), key(6)]);
    assert_eq!(weights(&pool), [1, 4, 1, 2]);
    assert!(
        StatsHandle::ptr_eq(&stats_of(2), &two),
        "a re-weighted endpoint keeps its stats"
    );

    // The places found for the next deltas follow the removals.
    tx.send(Update::delta(3, vec![ep(5).with_weight(8)], vec![]))
        .unwrap();
    assert!(pool.applied(3).await);
    assert_eq!(weights(&pool), [1, 4, 8, 2]);
    tx.send(Update::delta(
        4,
        vec![ep(8), ep(4).with_weight(6)],
        vec![key(2)],
    ))
    .unwrap();
    assert!(pool.applied(4).await);
    assert_eq!(keys(&pool), [key(4), key(6), key(5), key(8)]);
    assert_eq!(weights(&pool), [6, 2, 8, 1]);
    assert!(StatsHandle::ptr_eq(&stats_of(4), &four));

    // A delta that changes nothing publishes nothing.
    let before = pool.snapshot();
    tx.send(Update::delta(5, vec![ep(8)], vec![key(9)]))
        .unwrap();
    assert!(pool.applied(5).await);
    assert!(Arc::ptr_eq(&before, &pool.snapshot()));
}

#[tokio::test]
async fn registry_input_is_typed_so_only_weights_and_duplicates_can_be_odd() {
    // The registry takes built endpoints: a NaN, negative or huge float
    // weight fails at the builder and never reaches it.
    assert!(
        Endpoint::builder(key(9))
            .weight_f64(f64::NAN)
            .build()
            .is_err()
    );
    let registry = Registry::new();
    let _drained = registry.register("api", ep(1).with_weight(0)).unwrap();
    let _heavy = registry
        .register("api", ep(2).with_weight(u32::MAX))
        .unwrap();
    let _light = registry.register("api", ep(3)).unwrap();
    // The same key again replaces it: one instance, the newer weight.
    let _again = registry.register("api", ep(2).with_weight(3)).unwrap();
    assert_eq!(registry.instances("api").len(), 3);
    let (pool, _backends) = registry_pool(&registry, "api").await;
    let weights: Vec<u32> = pool
        .snapshot()
        .members()
        .iter()
        .map(|m| m.endpoint().weight())
        .collect();
    assert_eq!(weights, [0, 3, 1]);
    let mut lb = BalanceLayer::new(WeightedRoundRobin)
        .when_empty(WhenEmpty::FailFast)
        .layer(pool.clone());
    let hits = tally(&mut lb, 40).await;
    assert_eq!(
        hits.get(&key(1)),
        None,
        "a drained endpoint is never picked"
    );
    assert_eq!((hits[&key(2)], hits[&key(3)]), (30, 10));

    // Every instance gone: a registry has no invalid records, so an empty
    // service is an empty set.
    for port in 1..=3 {
        assert!(registry.deregister("api", &key(port)));
    }
    assert!(pool.applied(registry.revision_of("api")).await);
    assert!(pool.snapshot().is_empty());
    assert_eq!(pool.discovery().errors, 0);
}

/// The revision lag: a registry watch tells the pool its service's newest
/// revision. While the driver is still connecting to an endpoint of a newer
/// set, the pool is behind by the revisions since; once it catches up, by
/// none.
#[tokio::test]
async fn the_revision_lag_counts_what_the_pool_has_not_applied_yet() {
    let registry = Registry::new();
    let _a = registry.register("api", ep(1)).unwrap();
    let (open, gate) = tokio::sync::watch::channel(false);
    let connector = tower::service_fn(move |e: Endpoint| {
        let mut gate = gate.clone();
        async move {
            if e.key() == key(2) {
                let _ = gate.wait_for(|open| *open).await;
            }
            Ok::<_, std::convert::Infallible>(())
        }
    });
    let pool = DiscoverLayer::new(registry.watch("api").unwrap()).layer(connector);
    assert!(pool.applied(registry.revision_of("api")).await);
    let d = pool.discovery();
    assert_eq!(d.source_revision, Some(registry.revision_of("api")));
    assert_eq!(d.revision_lag(), Some(0), "{d:?}");

    // The driver waits on the connector for `2`; `3` comes after.
    let _b = registry.register("api", ep(2)).unwrap();
    let _c = registry.register("api", ep(3)).unwrap();
    tokio::task::yield_now().await;
    let d = pool.discovery();
    assert_eq!(d.source_revision, Some(registry.revision_of("api")));
    assert_eq!(d.revision_lag(), Some(2), "{d:?}");
    assert_eq!(pool.snapshot().len(), 1);

    open.send_replace(true);
    assert!(pool.applied(registry.revision_of("api")).await);
    assert_eq!(pool.discovery().revision_lag(), Some(0));
    assert_eq!(pool.snapshot().len(), 3);
}

/// A source that cannot tell its newest revision has no lag to report.
#[tokio::test]
async fn a_source_without_a_probe_reports_no_lag() {
    let (tx, pool, _backends) = channel_pool(false);
    tx.send(Update::snapshot(1, vec![ep(1)])).unwrap();
    assert!(pool.applied(1).await);
    let d = pool.discovery();
    assert_eq!((d.source_revision, d.revision_lag()), (None, None));
}

// ---------------------------------------------------------------------------
// Stats across a re-announce

#[tokio::test]
async fn stats_survive_a_reannounce_with_a_new_weight() {
    let registry = Registry::new();
    let registration = registry.register("api", ep(1)).unwrap();
    let (pool, backends) = registry_pool(&registry, "api").await;
    let mut lb = BalanceLayer::new(WeightedRoundRobin)
        .when_empty(WhenEmpty::FailFast)
        .layer(pool.clone());

    tally(&mut lb, 3).await;
    let gate = Gate::new();
    let held = tokio::spawn(lb.clone().oneshot(Behaviour::When(gate.clone())));
    settle("the held request reaches the endpoint", || {
        backends.calls(&key(1)) == 4
    })
    .await;
    let before = pool.snapshot().get(&key(1)).unwrap().stats().clone();
    assert_eq!((before.successes(), before.in_flight()), (3, 1));

    assert!(registration.set_weight(5));
    assert!(pool.applied(registry.revision_of("api")).await);
    let snapshot = pool.snapshot();
    let member = snapshot.get(&key(1)).unwrap();
    assert_eq!(member.endpoint().weight(), 5);
    assert!(
        StatsHandle::ptr_eq(member.stats(), &before),
        "stats were replaced"
    );
    assert_eq!((before.successes(), before.in_flight()), (3, 1));
    assert_eq!(backends.connects(), 1, "same address: the service is kept");

    gate.open();
    assert_eq!(held.await.unwrap().unwrap(), key(1));
    assert_eq!((before.successes(), before.in_flight()), (4, 0));
}

#[tokio::test]
async fn an_address_change_reconnects_but_keeps_stats() {
    let named = |port| {
        Endpoint::builder("cache-1")
            .address(mock::addr(port))
            .build()
            .unwrap()
    };
    let (tx, pool, backends) = channel_pool(false);
    tx.send(Update::snapshot(1, vec![named(1)])).unwrap();
    assert!(pool.applied(1).await);
    let before = pool.snapshot().get("cache-1").unwrap().stats().clone();

    tx.send(Update::snapshot(2, vec![named(2)])).unwrap();
    assert!(pool.applied(2).await);
    let snapshot = pool.snapshot();
    let member = snapshot.get("cache-1").unwrap();
    assert_eq!(member.endpoint().address(), Some(mock::addr(2)));
    assert!(StatsHandle::ptr_eq(member.stats(), &before));
    assert_eq!(backends.connects(), 2, "a new address gets a new service");
}

#[tokio::test]
async fn a_connector_failure_leaves_the_endpoint_out_until_the_next_update() {
    let (tx, pool, backends) = channel_pool(false);
    backends.refuse(&key(2));
    tx.send(Update::snapshot(1, vec![ep(1), ep(2)])).unwrap();
    assert!(pool.applied(1).await);
    assert_eq!(keys(&pool), [key(1)]);
    let status = pool.discovery();
    assert_eq!(status.connect_failures, 1);
    let last_error = status.last_error.unwrap();
    assert!(
        last_error.contains(&key(2)) && last_error.contains("connection refused"),
        "{last_error}"
    );

    // The next update that lists it tries again.
    backends.accept(&key(2));
    tx.send(Update::snapshot(2, vec![ep(1), ep(2)])).unwrap();
    assert!(pool.applied(2).await);
    assert_eq!(keys(&pool), [key(1), key(2)]);
}

// ---------------------------------------------------------------------------
// tower's Discover

#[tokio::test]
async fn tower_p2c_balances_over_a_registry_watch_and_drops_removed_endpoints() {
    let registry = Registry::new();
    let _a = registry.register("api", ep(1)).unwrap();
    let b = registry.register("api", ep(2)).unwrap();
    let _c = registry.register("api", ep(3)).unwrap();
    let backends = Backends::new();
    let discover = PendingRequestsDiscover::new::<Behaviour>(
        TowerDiscover::new(registry.watch("api").unwrap(), backends.connector()),
        CompleteOnResponse::default(),
    );
    let mut lb = p2c::Balance::new(discover);

    let hits = tally(&mut lb, 300).await;
    assert_eq!(lb.len(), 3);
    for port in 1..=3 {
        assert!(hits.get(&key(port)).is_some_and(|&n| n > 0), "{hits:?}");
    }

    // The balancer polls discovery in `poll_ready`, so the next request
    // already sees the removal.
    drop(b);
    let hits = tally(&mut lb, 300).await;
    assert_eq!(lb.len(), 2);
    assert_eq!(hits.get(&key(2)), None, "removed endpoint still used");
    assert_eq!(hits[&key(1)] + hits[&key(3)], 300);
}

// ---------------------------------------------------------------------------
// The driver stops with the pool

#[tokio::test]
async fn the_driver_stops_when_the_last_pool_clone_is_dropped() {
    let (tx, pool, _backends) = channel_pool(false);
    tx.send(Update::snapshot(1, vec![ep(1)])).unwrap();
    assert!(pool.applied(1).await);
    let lb = BalanceLayer::new(RoundRobin).layer(pool.clone());
    assert_eq!(lb.clone().oneshot(Behaviour::Answer).await.unwrap(), key(1));

    // The balancer still holds a clone: discovery keeps running.
    drop(pool);
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(
        !tx.is_closed(),
        "the driver stopped while a clone was alive"
    );

    drop(lb);
    settle("the driver drops its source", || tx.is_closed()).await;
    assert!(tx.send(Update::snapshot(2, vec![])).is_err());
}

/// A registry watch that counts its live copies.
#[derive(Debug)]
struct CountedWatch {
    inner: RegistrySource,
    live: Arc<AtomicUsize>,
}

impl CountedWatch {
    fn new(inner: RegistrySource, live: Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        CountedWatch { inner, live }
    }
}

impl Clone for CountedWatch {
    fn clone(&self) -> Self {
        CountedWatch::new(self.inner.clone(), self.live.clone())
    }
}

impl Drop for CountedWatch {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Source for CountedWatch {
    fn poll_update(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Update, DiscoveryError>>> {
        self.inner.poll_update(cx)
    }
}

#[tokio::test]
async fn a_dropped_pool_stops_watching_the_registry() {
    let registry = Registry::new();
    let _a = registry.register("api", ep(1)).unwrap();
    let live = Arc::new(AtomicUsize::new(0));
    let layer = DiscoverLayer::new(CountedWatch::new(
        registry.watch("api").unwrap(),
        live.clone(),
    ));
    let backends = Backends::new();
    let pool = layer.layer(backends.connector());
    drop(layer);
    assert!(pool.applied(registry.revision_of("api")).await);
    assert_eq!(live.load(Ordering::SeqCst), 1, "the driver's watch");

    drop(pool);
    settle("the driver drops its watch", || {
        live.load(Ordering::SeqCst) == 0
    })
    .await;
    // The registry carries on without the watcher.
    let _b = registry.register("api", ep(2)).unwrap();
    assert_eq!(registry.instances("api").len(), 2);
    assert_eq!(backends.connects(), 1);
}

#[tokio::test]
async fn a_pool_catches_up_with_its_service_while_others_change() {
    let registry = Registry::new();
    let _a = registry.register("a", ep(1)).unwrap();
    let (pool, _backends) = registry_pool(&registry, "a").await;
    let _b = registry.register("b", ep(2)).unwrap();
    assert!(registry.revision() > registry.revision_of("a"));
    // The service's own revision is reached; the registry-wide one is not
    // what a watch of "a" carries.
    let caught_up = tokio::time::timeout(
        Duration::from_secs(5),
        pool.applied(registry.revision_of("a")),
    )
    .await;
    assert_eq!(caught_up.ok(), Some(true));
    assert_eq!(registry.revision_of("missing"), 0);
}

#[tokio::test]
async fn pool_spawn_takes_a_source_that_cannot_be_cloned() {
    let (tx, source) = channel();
    let backends = Backends::new();
    let pool = Pool::spawn(
        source,
        backends.connector(),
        tower_lb::pool::PoolConfig::new().keep_last_on_empty(true),
    );
    tx.send(Update::snapshot(1, vec![ep(1)])).unwrap();
    assert!(pool.applied(1).await);
    tx.send(Update::snapshot(2, vec![])).unwrap();
    assert!(pool.applied(2).await);
    assert_eq!(keys(&pool), [key(1)], "kept the last good set");
    assert_eq!(pool.discovery().empty_ignored, 1);
    drop(pool);
    for _ in 0..100 {
        if tx.is_closed() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(tx.is_closed(), "dropping the pool stops its driver");
}

#[tokio::test]
async fn dropped_watches_leave_no_wakers_behind() {
    let registry = Registry::new();
    let _a = registry.register("api", ep(1)).unwrap();
    for _ in 0..50 {
        let mut watch = registry.watch("api").unwrap();
        let mut task = task::spawn(async move {
            watch.next_update().await;
            watch.next_update().await
        });
        assert_pending!(task.poll());
    }
    assert_eq!(registry.waiting_watches("api"), 0);
    let mut watch = registry.watch("api").unwrap();
    watch.next_update().await.unwrap().unwrap();
    let mut task = task::spawn(watch.next_update());
    assert_pending!(task.poll());
    assert_pending!(task.poll());
    assert_eq!(registry.waiting_watches("api"), 1, "one waker per watch");
}

#[tokio::test]
async fn a_pool_follows_discovery_without_any_request() {
    // A balancer that sees no traffic must still be current when the next
    // request arrives: discovery is applied by the pool's driver, not by
    // requests.
    let registry = Registry::new();
    let first = registry.register("api", ep(1)).unwrap();
    let (pool, backends) = registry_pool(&registry, "api").await;
    let mut lb = BalanceLayer::new(RoundRobin).layer(pool.clone());
    tally(&mut lb, 1).await;
    let mut guards = Vec::new();
    for i in 2..=20 {
        guards.push(registry.register("api", ep(i)).unwrap());
    }
    drop(first);
    assert!(pool.applied(registry.revision_of("api")).await);
    assert_eq!(lb.snapshot().len(), 19);
    assert!(lb.snapshot().get(&key(1)).is_none());
    tally(&mut lb, 38).await;
    assert_eq!(
        backends.calls(&key(1)),
        1,
        "nothing more to the removed endpoint"
    );
    for i in 2..=20 {
        assert_eq!(backends.calls(&key(i)), 2, "endpoint {i}");
    }
}
