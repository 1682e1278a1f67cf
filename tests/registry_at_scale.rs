//! The in-process registry with a hundred thousand instances: TTL expiry
//! in waves, heartbeats, deregistration of every guard, and a pool that
//! follows it all; and the deltas a watch gets once it has the set.
//!
//! The clock is tokio's, paused; only the bound on the whole run reads the
//! OS clock.

#[path = "support/mock.rs"]
mod mock;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tower::Layer;
use tower_lb::Endpoint;
use tower_lb::discover::{Change, Registration, Registry, Source};
use tower_lb::pool::{DiscoverLayer, Pool};

use mock::{Backend, Backends, settle};

/// Instances per wave; four waves.
const WAVE: usize = 25_000;

/// Endpoint `i`: distinct for up to 2^24.
fn endpoint(i: usize) -> Endpoint {
    Endpoint::new(SocketAddr::from((
        [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
        8080,
    )))
}

/// The keys of the pool's current snapshot.
fn pool_keys(pool: &Pool<Backend>) -> HashSet<String> {
    let snapshot = pool.snapshot();
    snapshot
        .members()
        .iter()
        .map(|m| m.endpoint().key().to_owned())
        .collect()
}

/// The keys of the guards of waves `from..4`.
fn wave_keys(guards: &[Registration], from: usize) -> HashSet<String> {
    guards[from * WAVE..]
        .iter()
        .map(|g| g.key().to_owned())
        .collect()
}

/// Waits until the pool holds exactly waves `from..4`, then checks the
/// registry agrees.
async fn holds_waves(
    pool: &Pool<Backend>,
    registry: &Registry,
    guards: &[Registration],
    from: usize,
) {
    let want = (4 - from) * WAVE;
    settle("the pool drops the expired wave", || {
        pool.snapshot().len() == want
    })
    .await;
    assert_eq!(pool_keys(pool), wave_keys(guards, from), "waves {from}..4");
    assert_eq!(registry.instances("api").len(), want);
}

#[tokio::test(start_paused = true)]
async fn a_hundred_thousand_instances_expire_in_waves_and_deregister() {
    #[allow(
        clippy::disallowed_types,
        reason = "the bound is on real time; tokio's clock is paused"
    )]
    let started = std::time::Instant::now();
    let registry = Registry::new();
    let backends = Backends::new();
    let pool = DiscoverLayer::new(registry.watch("api").unwrap()).layer(backends.connector());

    // Wave w lives (w + 1) * 10 s unless it heartbeats.
    let ttl = |w: usize| Duration::from_secs(10 * (w as u64 + 1));
    let t0 = Instant::now();
    let guards: Vec<Registration> = (0..4 * WAVE)
        .map(|i| {
            let wave = i / WAVE;
            registry
                .register_with_ttl("api", endpoint(i), ttl(wave))
                .unwrap()
        })
        .collect();
    assert!(pool.applied(registry.revision_of("api")).await);
    assert_eq!(pool.snapshot().len(), 4 * WAVE);
    assert_eq!(pool_keys(&pool), wave_keys(&guards, 0));

    // Waves 0, 1 and 2 expire on their own, each on time: nothing but the
    // watch's timer touches the registry.
    let ms = Duration::from_millis(1);
    for wave in 0..3 {
        sleep_until(t0 + ttl(wave) - ms).await;
        assert_eq!(
            pool.snapshot().len(),
            (4 - wave) * WAVE,
            "wave {wave} expired early"
        );
        sleep_until(t0 + ttl(wave) + ms).await;
        holds_waves(&pool, &registry, &guards, wave + 1).await;
    }

    // Wave 3 heartbeats at 35 s, so it outlives its first deadline (40 s).
    sleep_until(t0 + Duration::from_secs(35)).await;
    assert!(guards[3 * WAVE..].iter().all(Registration::heartbeat));
    sleep_until(t0 + ttl(3) + ms).await;
    holds_waves(&pool, &registry, &guards, 3).await;
    assert!(
        guards[..WAVE].iter().all(|g| !g.heartbeat()),
        "expired instances stay expired"
    );

    // Dropping every guard deregisters what is left; the expired ones
    // remove nothing.
    drop(guards);
    assert!(registry.instances("api").is_empty());
    assert!(pool.applied(registry.revision_of("api")).await);
    assert!(pool.snapshot().is_empty());

    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(20),
        "took {elapsed:?}: registry work is no longer linear"
    );
}

#[tokio::test]
async fn a_watch_gets_the_set_once_then_deltas_of_what_changed() {
    let registry = Registry::new();
    let mut guards: Vec<_> = (0..10)
        .map(|i| registry.register("api", endpoint(i)).unwrap())
        .collect();
    let mut watch = registry.watch("api").unwrap();
    let first = watch.next_update().await.unwrap().unwrap();
    let all: Vec<Endpoint> = (0..10).map(endpoint).collect();
    assert_eq!(first.change(), &Change::Snapshot(all));

    // A register, a deregister and a weight change (twice) since: one
    // delta with each changed key once, at the service's revision.
    let _new = registry.register("api", endpoint(10)).unwrap();
    drop(guards.remove(3));
    assert!(guards[0].set_weight(2));
    assert!(guards[0].set_weight(3));
    let next = watch.next_update().await.unwrap().unwrap();
    assert_eq!(next.revision(), registry.revision_of("api"));
    assert_eq!(
        next.change(),
        &Change::Delta {
            upserts: vec![endpoint(10), endpoint(0).with_weight(3)],
            removals: vec![endpoint(3).key().to_owned()],
        }
    );

    // More changes than instances: the whole set again.
    let mut more: Vec<_> = (11..31)
        .map(|i| registry.register("api", endpoint(i)).unwrap())
        .collect();
    more.truncate(5);
    let next = watch.next_update().await.unwrap().unwrap();
    let Change::Snapshot(set) = next.change() else {
        panic!("expected a snapshot, got {next:?}");
    };
    assert_eq!(set.len(), 15);

    // Only a weight changed, no key came or went: the whole set, in the
    // order the watch has it.
    assert!(guards[1].set_weight(5));
    let next = watch.next_update().await.unwrap().unwrap();
    let Change::Snapshot(set) = next.change() else {
        panic!("expected a snapshot, got {next:?}");
    };
    assert_eq!(set[1], endpoint(1).with_weight(5));
    assert_eq!(set.len(), 15);
}
