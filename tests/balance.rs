//! Balancing through the `Balance` service: how requests are shared out by
//! each strategy, how load and latency steer P2C, what happens to
//! in-flight counts on cancellation, the zero-endpoint policies, and how
//! inner errors surface.
//!
//! Statistical tests use the fixed seed [`SEED`] and state their tolerance
//! in absolute share points ([`TOLERANCE`]). Tests that involve time run
//! on a paused tokio clock, so they neither sleep for real nor depend on
//! the speed of the machine.

#[path = "support/mock.rs"]
mod mock;

use std::time::Duration;

use tokio::time::{Instant, timeout};
use tokio_test::{assert_pending, assert_ready_err, task};
use tower::{Layer, Service, ServiceExt};
use tower_lb::balance::{
    Balance, BalanceLayer, LeastInFlight, PeakEwma, Random, RoundRobin, Strategy, WeightedRandom,
    WeightedRoundRobin, WhenEmpty,
};
use tower_lb::discover::{StaticSource, Update, UpdateSender, channel};
use tower_lb::pool::{DiscoverLayer, StatsHandle};
use tower_lb::{Endpoint, Error};

use mock::{Backend, Backends, Behaviour, Gate, SharedSource, ep, key, settle, tally};

/// The seed of every balancer in this suite.
const SEED: u64 = 42;

/// Requests per distribution test.
const REQUESTS: usize = 100_000;

/// How far a share may be from the expected one, in absolute share points
/// (0.02 = ±2 %). At 100 000 requests one standard deviation of a share
/// is at most 0.16 points, so this is > 12 sigma for the random strategies.
const TOLERANCE: f64 = 0.02;

/// Weights for the distribution tests; endpoint `i` listens on port `i + 1`.
/// The last one is drained.
const WEIGHTS: [u32; 5] = [1, 2, 3, 4, 0];

fn endpoints(weights: &[u32]) -> Vec<Endpoint> {
    (1..)
        .zip(weights)
        .map(|(port, &w)| ep(port).with_weight(w))
        .collect()
}

/// A balancer over a fixed list of endpoints, with the pool already filled.
async fn balancer<St>(strategy: St, endpoints: Vec<Endpoint>) -> (Balance<Backend, St>, Backends)
where
    St: Strategy + Clone,
{
    let backends = Backends::new();
    let pool = DiscoverLayer::new(StaticSource::new(endpoints)).layer(backends.connector());
    assert!(pool.applied(1).await);
    let lb = BalanceLayer::new(strategy)
        .seed(SEED)
        .when_empty(WhenEmpty::FailFast)
        .layer(pool);
    (lb, backends)
}

/// A balancer over a pool fed by a `channel()` source, initially empty.
fn channel_balancer<St>(
    strategy: St,
    when_empty: WhenEmpty,
) -> (UpdateSender, Balance<Backend, St>, Backends)
where
    St: Strategy + Clone,
{
    let (tx, source) = channel();
    let backends = Backends::new();
    let pool = DiscoverLayer::new(SharedSource::new(source)).layer(backends.connector());
    let lb = BalanceLayer::new(strategy)
        .seed(SEED)
        .when_empty(when_empty)
        .layer(pool);
    (tx, lb, backends)
}

fn stats<St: Strategy>(lb: &Balance<Backend, St>, port: u16) -> StatsHandle {
    lb.pool()
        .snapshot()
        .get(&key(port))
        .expect("endpoint in the pool")
        .stats()
        .clone()
}

/// Sends `REQUESTS` requests over endpoints with `weights` and returns each
/// endpoint's share, in port order.
async fn shares<St: Strategy + Clone>(strategy: St, weights: &[u32]) -> Vec<f64> {
    let (mut lb, _backends) = balancer(strategy, endpoints(weights)).await;
    let hits = tally(&mut lb, REQUESTS).await;
    let total: usize = hits.values().sum();
    assert_eq!(total, REQUESTS);
    (1..=weights.len() as u16)
        .map(|port| hits.get(&key(port)).copied().unwrap_or(0) as f64 / REQUESTS as f64)
        .collect()
}

/// Asserts each share is within `TOLERANCE` of the expected one, and that
/// an expected share of zero is exactly zero.
fn assert_shares(strategy: &str, actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{strategy}: endpoint count");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        if e == 0.0 {
            assert_eq!(a, 0.0, "{strategy}: endpoint {i} must get nothing");
        } else {
            assert!(
                (a - e).abs() <= TOLERANCE,
                "{strategy}: endpoint {i} got {a:.4}, expected {e:.4} ± {TOLERANCE}; all: {actual:.4?}"
            );
        }
    }
}

/// Shares proportional to `weights`.
fn proportional(weights: &[u32]) -> Vec<f64> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    weights
        .iter()
        .map(|&w| f64::from(w) / total as f64)
        .collect()
}

// ---------------------------------------------------------------------------
// Distribution

#[tokio::test(start_paused = true)]
async fn round_robin_ignores_weights_and_skips_drained_endpoints() {
    let (mut lb, _backends) = balancer(RoundRobin, endpoints(&WEIGHTS)).await;
    let hits = tally(&mut lb, REQUESTS).await;
    // Four live endpoints in turn: exactly a quarter each.
    for port in 1..=4 {
        assert_eq!(hits[&key(port)], REQUESTS / 4, "{hits:?}");
    }
    assert_eq!(hits.get(&key(5)), None, "the weight-0 endpoint is skipped");
}

#[tokio::test(start_paused = true)]
async fn random_ignores_weights_and_skips_drained_endpoints() {
    let actual = shares(Random, &WEIGHTS).await;
    assert_shares("Random", &actual, &[0.25, 0.25, 0.25, 0.25, 0.0]);
}

#[tokio::test(start_paused = true)]
async fn weighted_round_robin_is_exact_over_whole_cycles() {
    let (mut lb, _backends) = balancer(WeightedRoundRobin, endpoints(&WEIGHTS)).await;
    // A cycle is 1 + 2 + 3 + 4 = 10 picks; REQUESTS is a whole number of
    // cycles, so each endpoint gets exactly its weight per cycle.
    let hits = tally(&mut lb, REQUESTS).await;
    for (port, &w) in (1..).zip(&WEIGHTS[..4]) {
        assert_eq!(hits[&key(port)], REQUESTS / 10 * w as usize, "{hits:?}");
    }
    assert_eq!(hits.get(&key(5)), None, "the weight-0 endpoint is skipped");
}

#[tokio::test(start_paused = true)]
async fn weighted_random_follows_weights() {
    let actual = shares(WeightedRandom, &WEIGHTS).await;
    assert_shares("WeightedRandom", &actual, &proportional(&WEIGHTS));
}

#[tokio::test(start_paused = true)]
async fn least_in_flight_follows_weights_when_idle() {
    // Sequential requests: every endpoint has 0 in flight at each pick.
    let actual = shares(LeastInFlight, &WEIGHTS).await;
    assert_shares("LeastInFlight", &actual, &proportional(&WEIGHTS));
}

/// Peak-EWMA where latency cannot tell endpoints apart: on the paused
/// clock every answer takes 0 ns (recorded as 1 ns), and an endpoint with
/// no sample is costed at its rival's estimate. Only weight (and load) are
/// left to decide.
#[tokio::test(start_paused = true)]
async fn peak_ewma_follows_weights_when_latencies_are_equal() {
    let actual = shares(PeakEwma::new(), &WEIGHTS).await;
    assert_shares("PeakEwma", &actual, &proportional(&WEIGHTS));
}

/// An endpoint that has never answered must not be costed above the
/// others' measured latency: P2C draws two distinct endpoints, so once all
/// but one have a sample the last one would always lose. Equal endpoints
/// must share evenly.
#[tokio::test(start_paused = true)]
async fn peak_ewma_tries_every_endpoint() {
    let actual = shares(PeakEwma::new(), &[1, 1, 1, 1]).await;
    assert_shares("PeakEwma", &actual, &[0.25; 4]);
}

/// The same cold start, as it happens in production: a service running
/// on one instance scales out to two, and the new one must get its share.
/// Both answer in 5 ms, under the 30 ms default.
#[tokio::test(start_paused = true)]
async fn peak_ewma_sends_traffic_to_a_newly_added_endpoint() {
    let (tx, mut lb, backends) = channel_balancer(PeakEwma::new(), WhenEmpty::FailFast);
    for port in [1, 2] {
        backends.set(&key(port), Behaviour::After(Duration::from_millis(5)));
    }
    tx.send(Update::snapshot(1, vec![ep(1)])).unwrap();
    assert!(lb.pool().applied(1).await);
    tally(&mut lb, 100).await;

    tx.send(Update::snapshot(2, vec![ep(1), ep(2)])).unwrap();
    assert!(lb.pool().applied(2).await);
    let hits = tally(&mut lb, 2_000).await;
    // Two equal, equally fast endpoints: about 1 000 each. Require a tenth
    // of the traffic, far below that.
    let to_new = hits.get(&key(2)).copied().unwrap_or(0);
    assert!(
        to_new >= 200,
        "the new endpoint got {to_new} of 2000: {hits:?}"
    );
}

/// When every endpoint is draining, the set still serves, uniformly
/// (the fail-open rule of `Active` in `src/balance/strategy.rs`).
#[tokio::test(start_paused = true)]
async fn all_drained_endpoints_still_serve_uniformly() {
    let drained = [0; 4];
    let even = [0.25; 4];
    assert_shares("RoundRobin", &shares(RoundRobin, &drained).await, &even);
    assert_shares("Random", &shares(Random, &drained).await, &even);
    assert_shares(
        "WeightedRoundRobin",
        &shares(WeightedRoundRobin, &drained).await,
        &even,
    );
    assert_shares(
        "WeightedRandom",
        &shares(WeightedRandom, &drained).await,
        &even,
    );
    assert_shares(
        "LeastInFlight",
        &shares(LeastInFlight, &drained).await,
        &even,
    );
    assert_shares("PeakEwma", &shares(PeakEwma::new(), &drained).await, &even);
}

/// Weights at `u32::MAX` must not overflow any strategy's arithmetic; the
/// `MAX` endpoints split the traffic evenly and the weight-1 one gets
/// (next to) nothing: its exact share is 1 / (3·2³² + 1), and WRR gives it
/// one slot in a cycle of about 65 536.
#[tokio::test(start_paused = true)]
async fn huge_weights_do_not_overflow_and_split_evenly() {
    let weights = [u32::MAX, u32::MAX, u32::MAX, 1];
    let third = [1.0 / 3.0; 3];
    let check = |name: &str, actual: Vec<f64>| {
        assert_shares(name, &actual[..3], &third);
        assert!(actual[3] < 0.001, "{name}: weight 1 got {:.5}", actual[3]);
    };
    check(
        "WeightedRoundRobin",
        shares(WeightedRoundRobin, &weights).await,
    );
    check("WeightedRandom", shares(WeightedRandom, &weights).await);
    check("LeastInFlight", shares(LeastInFlight, &weights).await);
    check("PeakEwma", shares(PeakEwma::new(), &weights).await);
    // The unweighted strategies see four equal endpoints.
    assert_shares(
        "RoundRobin",
        &shares(RoundRobin, &weights).await,
        &[0.25; 4],
    );
    assert_shares("Random", &shares(Random, &weights).await, &[0.25; 4]);
}

// ---------------------------------------------------------------------------
// Smooth weighted round robin

/// The longest run of consecutive picks of each endpoint in `picks`.
fn max_runs(picks: &[usize], n: usize) -> Vec<usize> {
    let mut best = vec![0; n];
    let mut run = 0;
    for (k, &m) in picks.iter().enumerate() {
        run = if k > 0 && picks[k - 1] == m {
            run + 1
        } else {
            1
        };
        best[m] = best[m].max(run);
    }
    best
}

/// Sends `cycles` whole cycles through a WRR balancer and checks the burst
/// bound documented in `src/balance/weighted_round_robin.rs`: a run of
/// endpoint `i` is at most `1 + ⌈wᵢ / wⱼ⌉` for the heaviest other `j`.
/// Returns the longest runs.
async fn wrr_runs(weights: &[u32], cycles: usize) -> Vec<usize> {
    let (mut lb, _backends) = balancer(WeightedRoundRobin, endpoints(weights)).await;
    let cycle: usize = weights.iter().map(|&w| w as usize).sum();
    let mut picks = Vec::new();
    for _ in 0..cycle * cycles {
        let answer = lb.ready().await.unwrap().call(Behaviour::Answer).await;
        let port: usize = answer.unwrap().rsplit(':').next().unwrap().parse().unwrap();
        picks.push(port - 1);
    }
    // Exact shares in every whole cycle, wherever the rotation started.
    for window in picks.chunks(cycle) {
        for (i, &w) in weights.iter().enumerate() {
            let got = window.iter().filter(|&&m| m == i).count();
            assert_eq!(got, w as usize, "weights {weights:?}, cycle {window:?}");
        }
    }
    let runs = max_runs(&picks, weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let heaviest_other = (0..weights.len())
            .filter(|&j| j != i)
            .map(|j| weights[j])
            .max()
            .unwrap();
        let bound = 1 + w.div_ceil(heaviest_other) as usize;
        assert!(
            runs[i] <= bound,
            "weights {weights:?}: endpoint {i} ran {} > {bound}; picks {picks:?}",
            runs[i]
        );
    }
    runs
}

#[tokio::test(start_paused = true)]
async fn smooth_wrr_bursts_stay_within_the_documented_bound() {
    let runs = wrr_runs(&[5, 1, 1], 30).await;
    // The bound allows 6 for the heavy endpoint; the layout promises 3.
    assert!(runs[0] <= 3, "5:1:1 runs {runs:?}");
    wrr_runs(&[10, 3, 1, 1], 30).await;
}

// ---------------------------------------------------------------------------
// P2C under load

/// Holds `HELD` requests open on endpoint 1 (alone in the pool at first),
/// then adds endpoints 2 and 3 and sends 200 requests that complete at
/// once. P2C draws two *distinct* endpoints, so endpoint 1 is always
/// compared with one that has nothing in flight (and, for Peak-EWMA, no
/// worse latency) and must never win: exactly 0 new requests reach it.
async fn loaded_endpoint_gets_no_new_requests<St: Strategy + Clone>(strategy: St) {
    const HELD: u64 = 10;
    let (tx, mut lb, backends) = channel_balancer(strategy, WhenEmpty::FailFast);
    tx.send(Update::snapshot(1, vec![ep(1)])).unwrap();
    assert!(lb.pool().applied(1).await);

    let gate = Gate::new();
    let held: Vec<_> = (0..HELD)
        .map(|_| tokio::spawn(lb.clone().oneshot(Behaviour::When(gate.clone()))))
        .collect();
    settle("held requests reach endpoint 1", || {
        backends.calls(&key(1)) == HELD
    })
    .await;
    let loaded = stats(&lb, 1);
    assert_eq!(loaded.in_flight(), HELD);

    tx.send(Update::snapshot(2, vec![ep(1), ep(2), ep(3)]))
        .unwrap();
    assert!(lb.pool().applied(2).await);
    let hits = tally(&mut lb, 200).await;
    assert_eq!(
        hits.get(&key(1)),
        None,
        "the loaded endpoint was picked: {hits:?}"
    );
    assert!(hits[&key(2)] > 0 && hits[&key(3)] > 0, "{hits:?}");
    assert_eq!(backends.calls(&key(1)), HELD);

    gate.open();
    for h in held {
        assert_eq!(h.await.unwrap().unwrap(), key(1));
    }
    assert_eq!((loaded.in_flight(), loaded.successes()), (0, HELD));
}

#[tokio::test(start_paused = true)]
async fn least_in_flight_avoids_an_endpoint_with_requests_held_open() {
    loaded_endpoint_gets_no_new_requests(LeastInFlight).await;
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_avoids_an_endpoint_with_requests_held_open() {
    loaded_endpoint_gets_no_new_requests(PeakEwma::new()).await;
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_sends_little_to_a_slow_endpoint() {
    // An endpoint with no sample is costed at its rival's estimate, so both
    // are tried at once.
    let (mut lb, backends) = balancer(PeakEwma::new(), vec![ep(1), ep(2)]).await;
    backends.set(&key(1), Behaviour::After(Duration::from_millis(100)));
    backends.set(&key(2), Behaviour::After(Duration::from_millis(1)));

    tally(&mut lb, 10).await;
    let slow = stats(&lb, 1);
    let fast = stats(&lb, 2);
    assert!(slow.successes() >= 1, "warm-up measured the slow endpoint");
    assert!(slow.ewma_latency().unwrap() >= Duration::from_millis(100));
    assert!(fast.ewma_latency().unwrap() < Duration::from_millis(5));

    // 1 000 fast requests take about 1-2 s of tokio time; the slow
    // estimate (100 ms, decaying with τ = 10 s) stays far above the fast
    // one (~1 ms) for ~46 s, so the slow endpoint should get nothing. Allow
    // 1 % in case of an early retry.
    let before = slow.successes();
    let hits = tally(&mut lb, 1_000).await;
    let to_slow = hits.get(&key(1)).copied().unwrap_or(0);
    assert!(to_slow <= 10, "slow endpoint got {to_slow} of 1000");
    assert_eq!(slow.successes() - before, to_slow as u64);
}

// ---------------------------------------------------------------------------
// Cancellation

#[tokio::test(start_paused = true)]
async fn dropping_a_request_future_releases_its_in_flight_slot() {
    let (mut lb, backends) = balancer(RoundRobin, vec![ep(1)]).await;
    let stats = stats(&lb, 1);

    lb.ready().await.unwrap();
    let mut call = task::spawn(lb.call(Behaviour::Never));
    assert_pending!(call.poll());
    assert_eq!(
        backends.calls(&key(1)),
        1,
        "the request reached the endpoint"
    );
    assert_eq!(stats.in_flight(), 1);

    drop(call);
    assert_eq!(stats.in_flight(), 0);
    // Cancelled is neither a success nor a failure.
    assert_eq!((stats.successes(), stats.failures()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn requests_cancelled_by_a_timeout_release_their_in_flight_slots() {
    let (lb, _backends) = balancer(LeastInFlight, vec![ep(1), ep(2), ep(3)]).await;
    let in_flight = |lb: &Balance<Backend, LeastInFlight>| -> u64 {
        lb.pool()
            .snapshot()
            .report()
            .iter()
            .map(|r| r.in_flight)
            .sum()
    };

    // Half the requests never answer and are cut off by a timeout; the
    // other half answer at once.
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let lb = lb.clone();
            let behaviour = if i % 2 == 0 {
                Behaviour::Answer
            } else {
                Behaviour::Never
            };
            tokio::spawn(timeout(Duration::from_secs(1), lb.oneshot(behaviour)))
        })
        .collect();
    settle("50 stuck requests in flight", || in_flight(&lb) == 50).await;

    let mut timed_out = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(reply) => {
                reply.unwrap();
            }
            Err(_elapsed) => timed_out += 1,
        }
    }
    assert_eq!(timed_out, 50);
    assert_eq!(in_flight(&lb), 0);
    let report = lb.pool().snapshot().report();
    assert_eq!(report.iter().map(|r| r.successes).sum::<u64>(), 50);
    assert_eq!(report.iter().map(|r| r.failures).sum::<u64>(), 0);
}

// ---------------------------------------------------------------------------
// Zero endpoints

#[tokio::test(start_paused = true)]
async fn a_waiting_caller_is_served_as_soon_as_an_endpoint_appears() {
    let wait = WhenEmpty::Wait(Duration::from_secs(10));
    let (tx, lb, backends) = channel_balancer(RoundRobin, wait);
    let start = Instant::now();
    let caller = tokio::spawn(lb.clone().oneshot(Behaviour::Answer));

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !caller.is_finished(),
        "the caller waits while the pool is empty"
    );
    assert_eq!(backends.total_calls(), 0);

    tx.send(Update::snapshot(1, vec![ep(1)])).unwrap();
    // Nothing else is sent: publishing alone must wake the caller.
    let reply = timeout(Duration::from_millis(100), caller)
        .await
        .expect("the caller woke when the endpoint appeared")
        .unwrap();
    assert_eq!(reply.unwrap(), key(1));
    assert_eq!(backends.total_calls(), 1);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn waiting_ends_with_no_endpoints_within_at_the_deadline() {
    let limit = Duration::from_secs(2);
    let (_tx, lb, _backends) = channel_balancer(RoundRobin, WhenEmpty::Wait(limit));
    let start = Instant::now();
    let caller = tokio::spawn(lb.oneshot(Behaviour::Answer));

    tokio::time::sleep(limit - Duration::from_millis(10)).await;
    assert!(!caller.is_finished(), "gave up before the deadline");

    let err = caller.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::NoEndpointsWithin { waited } if waited == limit),
        "{err:?}"
    );
    let elapsed = start.elapsed();
    assert!(
        elapsed >= limit && elapsed < limit + Duration::from_millis(10),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn fail_fast_errors_at_once_with_no_endpoints() {
    let (_tx, mut lb, _backends) = channel_balancer(RoundRobin, WhenEmpty::FailFast);
    lb.ready().await.unwrap();
    let mut call = task::spawn(lb.call(Behaviour::Answer));
    let err = assert_ready_err!(call.poll());
    assert!(matches!(err, Error::NoEndpoints), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn the_default_policy_gives_up_after_five_seconds() {
    let (_tx, source) = channel();
    let pool = DiscoverLayer::new(SharedSource::new(source)).layer(Backends::new().connector());
    let lb = BalanceLayer::new(RoundRobin).layer(pool);
    let start = Instant::now();

    let reply = timeout(Duration::from_secs(6), lb.oneshot(Behaviour::Answer))
        .await
        .expect("the default policy must not wait forever");
    let err = reply.unwrap_err();
    let five = Duration::from_secs(5);
    assert!(
        matches!(err, Error::NoEndpointsWithin { waited } if waited == five),
        "{err:?}"
    );
    let elapsed = start.elapsed();
    assert!(
        elapsed >= five && elapsed < five + Duration::from_millis(10),
        "{elapsed:?}"
    );
}

// ---------------------------------------------------------------------------
// Inner errors

#[tokio::test(start_paused = true)]
async fn inner_errors_are_typed_and_counted() {
    let (mut lb, _backends) = balancer(RoundRobin, vec![ep(1)]).await;
    let stats = stats(&lb, 1);
    let mut send = async |behaviour| lb.ready().await.unwrap().call(behaviour).await;

    for _ in 0..3 {
        let err = send(Behaviour::Fail).await.unwrap_err();
        let Error::Inner(cause) = err else {
            panic!("expected Error::Inner, got {err:?}");
        };
        assert_eq!(cause.to_string(), format!("{} failed", key(1)));
    }
    assert_eq!(
        (
            stats.failures(),
            stats.consecutive_failures(),
            stats.successes()
        ),
        (3, 3, 0)
    );
    assert_eq!(stats.in_flight(), 0);

    send(Behaviour::Answer).await.unwrap();
    assert_eq!(
        (
            stats.failures(),
            stats.consecutive_failures(),
            stats.successes()
        ),
        (3, 0, 1),
        "a success resets the consecutive failures"
    );

    send(Behaviour::Fail).await.unwrap_err();
    assert_eq!((stats.failures(), stats.consecutive_failures()), (4, 1));
    assert_eq!(stats.in_flight(), 0);
}

/// `pick_index` agrees with where requests go, for a deterministic strategy.
#[tokio::test(start_paused = true)]
async fn pick_index_follows_the_rotation() {
    let (mut lb, _backends) = balancer(RoundRobin, endpoints(&[1, 1, 1])).await;
    let snapshot = lb.snapshot();
    let first = lb.pick_index().unwrap();
    let next = snapshot.members()[(first + 1) % 3]
        .endpoint()
        .key()
        .to_owned();
    let answered = lb.ready().await.unwrap().call(Behaviour::Answer).await;
    assert_eq!(answered.unwrap(), next);
}
