//! The status report over real stacks on loopback: `http::Client` with a
//! backend that refuses connections (down), one that answers 503 (ejected),
//! a backup tier and a late joiner in slow start; and a plain pool and
//! balancer without failover. Every request is bounded in time.

mod support;

use std::time::Duration;

use hyper::StatusCode;
use tokio::time::{Instant, timeout};
use tower_lb::balance::RoundRobin;
use tower_lb::discover::Registry;
use tower_lb::failover::{FailoverConfig, SlowStart};
use tower_lb::http::Client;
use tower_lb::status::{EndpointState, Observe, Status};

use support::{Backend, client_try_get, closed_endpoint};

const SERVICE: &str = "api";
const REQUEST_LIMIT: Duration = Duration::from_secs(5);

fn state_of(status: &Status, key: &str) -> EndpointState {
    status
        .endpoint(key)
        .unwrap_or_else(|| panic!("{key} missing:\n{status}"))
        .state
}

/// Primary tier: `a` healthy, `b` answering 503, `dead` refusing
/// connections, and `late` joining after the pool filled; backup tier:
/// `c`. With the defaults (and a slow-start window, which is opt-in as in
/// Envoy), traffic makes `b` ejected and `dead` down; the report then
/// shows every endpoint, each state with its reason, the tiers' split and
/// the retries, and its JSON reads back equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_shows_down_ejected_backup_and_slow_start_endpoints_with_reasons() {
    let a = Backend::start("a").await.unwrap();
    let b = Backend::start("b").await.unwrap();
    b.set_status(StatusCode::SERVICE_UNAVAILABLE);
    let c = Backend::start("c").await.unwrap();
    let late = Backend::start("late").await.unwrap();
    let dead = closed_endpoint().await.unwrap();

    let registry = Registry::new();
    let mut regs = vec![
        registry.register(SERVICE, a.endpoint()).unwrap(),
        registry.register(SERVICE, b.endpoint()).unwrap(),
        registry.register(SERVICE, dead.clone()).unwrap(),
        registry
            .register(SERVICE, c.endpoint().with_priority(1))
            .unwrap(),
    ];
    let client: Client = Client::builder()
        .failover(FailoverConfig::new().slow_start(SlowStart::new(Duration::from_secs(120))))
        .build(registry.watch(SERVICE).unwrap());
    let pool = client.balance().pool().clone();
    timeout(Duration::from_secs(5), pool.changed(0))
        .await
        .expect("the pool fills");
    regs.push(registry.register(SERVICE, late.endpoint()).unwrap());
    let revision = registry.revision_of(SERVICE);
    assert!(
        timeout(Duration::from_secs(5), pool.applied(revision))
            .await
            .unwrap()
    );

    let (key_a, key_b, key_c) = (a.endpoint(), b.endpoint(), c.endpoint());
    let (key_a, key_b, key_c) = (key_a.key(), key_b.key(), key_c.key());
    let key_dead = dead.key();
    let key_late = late.endpoint().key().to_owned();

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    let status = loop {
        assert!(
            Instant::now() < deadline && sent < 2_000,
            "after {sent} requests, b is not ejected or dead not down:\n{}",
            client.status()
        );
        let answer = client_try_get(&client).await;
        assert!(answer.is_ok(), "request {sent}: {answer:?}");
        sent += 1;
        let status = client.status();
        if state_of(&status, key_b) == EndpointState::Ejected
            && state_of(&status, key_dead) == EndpointState::Down
        {
            break status;
        }
    };

    println!("after {sent} requests:\n{status}");
    assert_eq!(status.service, SERVICE);
    assert_eq!(status.strategy.as_deref(), Some("p2c_peak_ewma"));
    assert!(status.failover);
    assert_eq!(status.endpoints.len(), 5, "{status}");
    assert!(status.discovery.updates_applied >= 2, "{status}");

    let e = status.endpoint(key_b).unwrap();
    assert_eq!(
        e.reason.as_deref(),
        Some("consecutive failures"),
        "{status}"
    );
    assert!(e.time_left_ms.is_some_and(|ms| ms <= 3_000), "{status}");
    assert!(e.failures >= 5 && e.times_ejected >= 1, "{status}");

    let e = status.endpoint(key_dead).unwrap();
    assert!(
        e.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("unreachable")),
        "{status}"
    );
    assert!(e.failures >= 1, "{status}");

    let e = status.endpoint(&key_late).unwrap();
    assert_eq!(e.state, EndpointState::SlowStart, "{status}");
    assert!(e.weight_factor < 1.0, "{status}");
    assert!(
        e.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("slow start")),
        "{status}"
    );
    assert!(e.time_left_ms.is_some_and(|ms| ms > 100_000), "{status}");

    assert_eq!(state_of(&status, key_a), EndpointState::Healthy, "{status}");
    let backup = status.endpoint(key_c).unwrap();
    assert_eq!(
        (backup.state, backup.priority),
        (EndpointState::Healthy, 1),
        "{status}"
    );

    // Tier 0: a and late in rotation, b ejected, dead down; its health is
    // short of 100 %, so the backup tier takes a share.
    assert_eq!(status.tiers.len(), 2, "{status}");
    let t0 = &status.tiers[0];
    assert_eq!(
        (t0.endpoints, t0.healthy, t0.slow_start, t0.ejected, t0.down),
        (4, 1, 1, 1, 1),
        "{status}"
    );
    let load: Vec<f64> = status
        .tiers
        .iter()
        .map(|t| t.load_percent.unwrap())
        .collect();
    assert!(
        load[1] > 0.0 && (load[0] + load[1] - 100.0).abs() < 1e-6,
        "{status}"
    );
    assert!(status.ejections >= 1 && status.downs >= 1, "{status}");

    let retry = status.retry.as_ref().expect("the client retries");
    assert_eq!(retry.requests, sent, "{status}");
    assert!(retry.retries >= 1, "{status}");

    let table = status.to_string();
    for text in [
        "ejected",
        "down",
        "slow start",
        "healthy",
        "consecutive failures",
        "unreachable",
    ] {
        assert!(table.contains(text), "{text:?} missing:\n{table}");
    }

    let json = serde_json::to_string_pretty(&status).unwrap();
    let back: Status = serde_json::from_str(&json).unwrap();
    assert_eq!(back, status);
    // Exact only with serde_json's `float_roundtrip`: without it, this
    // latency (seen in a run) reads back one ulp off.
    let ms: f64 = serde_json::from_str("1.571632").unwrap();
    assert_eq!(ms, 1.571632);
    drop(regs);
}

/// Without failover, a plain pool and balancer report every endpoint as
/// healthy or draining, one group with no tier split, the strategy, and
/// the service name set on the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_and_balancer_without_failover_report_too() {
    let a = Backend::start("a").await.unwrap();
    let b = Backend::start("b").await.unwrap();
    let registry = Registry::new();
    let _a = registry.register(SERVICE, a.endpoint()).unwrap();
    let _b = registry
        .register(SERVICE, b.endpoint().with_weight(0))
        .unwrap();
    let lb = support::balancer(registry.watch(SERVICE).unwrap(), RoundRobin);
    timeout(Duration::from_secs(5), lb.pool().changed(0))
        .await
        .unwrap();
    for _ in 0..4 {
        let reply = timeout(REQUEST_LIMIT, support::get(&lb)).await.unwrap();
        assert_eq!(reply.unwrap().status, StatusCode::OK);
    }

    let pool = Status::of(lb.pool());
    assert_eq!(pool.service, SERVICE);
    assert_eq!(pool.strategy, None);
    let status = Status::of(&lb);
    assert_eq!(status.strategy.as_deref(), Some("round_robin"));
    assert!(!status.failover && status.retry.is_none());
    assert_eq!(
        state_of(&status, a.endpoint().key()),
        EndpointState::Healthy
    );
    assert_eq!(
        state_of(&status, b.endpoint().key()),
        EndpointState::Draining
    );
    assert_eq!(status.tiers.len(), 1);
    assert_eq!(status.tiers[0].load_percent, None);
    assert_eq!(status.tiers[0].health_percent, 100.0);
    let served: u64 = status.endpoints.iter().map(|e| e.successes).sum();
    assert_eq!(served, 4, "{status}");
}

/// The name set on the client wins over the source's.
#[tokio::test]
async fn the_service_name_set_on_the_client_is_the_reports() {
    let registry = Registry::new();
    let named: Client = Client::builder()
        .service("checkout")
        .build(registry.watch(SERVICE).unwrap());
    assert_eq!(named.status().service, "checkout");
    let unnamed: Client = Client::builder().build(registry.watch(SERVICE).unwrap());
    assert_eq!(unnamed.status().service, SERVICE);
    assert_eq!(Observe::status(&unnamed).service, SERVICE);
}
