//! `AnyStrategy`, a strategy chosen by name at run time, routes exactly as
//! the strategy it names, with the same seed, and round-trips through
//! serde as its name.

use std::convert::Infallible;
use std::future::ready;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::timeout;
use tower::{Layer, ServiceExt};
use tower_lb::Endpoint;
use tower_lb::balance::{
    AnyStrategy, Balance, BalanceLayer, LeastInFlight, Maglev, PeakEwma, Random, Rendezvous, Ring,
    RoundRobin, Strategy, WeightedRandom, WeightedRoundRobin, key_fn,
};
use tower_lb::discover::StaticSource;
use tower_lb::pool::{DiscoverLayer, Pool};

const SEED: u64 = 11;
const PICKS: usize = 300;

/// Twelve endpoints weighted 1, 2, 3, 4, 1, …, whose services answer with
/// their own key.
async fn pool() -> Pool<tower::util::BoxCloneSyncService<String, String, Infallible>> {
    let endpoints = (0..12u16).map(|i| {
        Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 7000 + i)))
            .with_weight(1 + u32::from(i % 4))
    });
    let connector = tower::service_fn(|e: Endpoint| {
        let key = e.key().to_owned();
        let svc = tower::service_fn(move |_: String| ready(Ok::<_, Infallible>(key.clone())));
        ready(Ok::<_, Infallible>(tower::util::BoxCloneSyncService::new(
            svc,
        )))
    });
    let pool = DiscoverLayer::new(StaticSource::new(endpoints)).layer(connector);
    let applied = timeout(Duration::from_secs(3), pool.applied(1)).await;
    assert_eq!(applied.ok(), Some(true), "discovery caught up");
    pool
}

/// `PICKS` picks (no request sent, so no load or latency moves them).
fn picks<St: Strategy + Clone>(
    pool: &Pool<tower::util::BoxCloneSyncService<String, String, Infallible>>,
    strategy: St,
) -> Vec<Option<usize>> {
    let lb: Balance<_, St> = BalanceLayer::new(strategy).seed(SEED).layer(pool.clone());
    (0..PICKS).map(|_| lb.pick_index()).collect()
}

/// The endpoint that answers each of `PICKS` keyed requests, sent through
/// a balancer keyed by the request itself.
async fn keyed<St: Strategy + Clone>(
    pool: &Pool<tower::util::BoxCloneSyncService<String, String, Infallible>>,
    strategy: St,
) -> Vec<String> {
    let lb = BalanceLayer::new(strategy)
        .seed(SEED)
        .key(key_fn(|r: &String| Some(r.as_bytes())))
        .layer(pool.clone());
    let mut served = Vec::with_capacity(PICKS);
    for i in 0..PICKS {
        let reply = lb.clone().oneshot(format!("user-{i}")).await;
        served.push(reply.expect("an answer"));
    }
    served
}

#[tokio::test]
async fn every_named_strategy_picks_as_its_generic_form_with_the_same_seed() {
    let pool = pool().await;
    let any = |name: &str| name.parse::<AnyStrategy>().expect("a known name");
    let cases: [(&str, Vec<Option<usize>>); 9] = [
        ("round_robin", picks(&pool, RoundRobin)),
        ("random", picks(&pool, Random)),
        ("weighted_round_robin", picks(&pool, WeightedRoundRobin)),
        ("weighted_random", picks(&pool, WeightedRandom)),
        ("p2c_least_in_flight", picks(&pool, LeastInFlight)),
        ("p2c_peak_ewma", picks(&pool, PeakEwma::new())),
        ("maglev", picks(&pool, Maglev::new())),
        ("ring", picks(&pool, Ring::new())),
        ("rendezvous", picks(&pool, Rendezvous::new())),
    ];
    assert_eq!(cases.len(), AnyStrategy::NAMES.len());
    for (name, generic) in cases {
        assert!(AnyStrategy::NAMES.contains(&name));
        let chosen = picks(&pool, any(name));
        assert_eq!(chosen, generic, "{name}: the same picks with the same seed");
        let distinct: std::collections::BTreeSet<_> = generic.iter().collect();
        assert!(
            distinct.len() > 1,
            "{name}: the picks spread ({distinct:?})"
        );
    }
}

/// Keyed requests reach the same endpoints: the balancer hashes each key
/// as the named strategy does (the ring with CRC-32, the others with
/// xxh64), so a ring chosen by name keeps nginx's and pingora's mapping.
#[tokio::test]
async fn keyed_requests_reach_the_same_endpoints_as_through_the_generic_form() {
    let pool = pool().await;
    let any = |name: &str| name.parse::<AnyStrategy>().expect("a known name");
    assert_eq!(
        keyed(&pool, any("ring")).await,
        keyed(&pool, Ring::new()).await
    );
    assert_eq!(
        keyed(&pool, any("maglev")).await,
        keyed(&pool, Maglev::new()).await
    );
    assert_eq!(
        keyed(&pool, any("rendezvous")).await,
        keyed(&pool, Rendezvous::new()).await
    );
    // The key decides: the same key twice reaches the same endpoint.
    let served = keyed(&pool, any("ring")).await;
    assert_eq!(served, keyed(&pool, any("ring")).await);
    let distinct: std::collections::BTreeSet<_> = served.iter().collect();
    assert!(distinct.len() > 1, "keys spread over endpoints");
}

#[test]
fn every_name_round_trips_through_serde() {
    for name in AnyStrategy::NAMES {
        let strategy: AnyStrategy = name.parse().expect("a known name");
        let json = serde_json::to_string(&strategy).expect("serializes");
        assert_eq!(json, format!("\"{name}\""));
        let back: AnyStrategy = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back.name(), name);
    }
    #[derive(serde::Deserialize)]
    struct Config {
        strategy: AnyStrategy,
    }
    let config: Config = serde_json::from_str(r#"{"strategy": "peak_ewma"}"#).expect("a config");
    assert_eq!(config.strategy.name(), "p2c_peak_ewma");
    let err = serde_json::from_str::<Config>(r#"{"strategy": "fastest"}"#)
        .err()
        .expect("an unknown name is refused");
    assert!(err.to_string().contains("AnyStrategy::from_str"), "{err}");
}
