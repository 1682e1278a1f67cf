//! Failover decisions through the whole stack, with mock backends on a
//! paused tokio clock: the ejection cap, panic mode (open and closed),
//! slow start, and the fail-back delay against a flapping primary.
//!
//! The stack is `Balance → FailoverLayer → DiscoverLayer(registry) →
//! mock connector`; a mock backend fails when told to
//! ([`Backends::set`]), which the default classifier counts against it.
//! Time only moves when the test sleeps, so intervals of a second and
//! ejections of many seconds cost nothing. Every request is bounded by
//! [`REQUEST_LIMIT`] of tokio time and must end in an answer or a typed
//! `tower_lb::Error`. Shares come from a fixed seed ([`SEED`]); each
//! assertion states its tolerance.

#[path = "support/mock.rs"]
mod mock;

use std::time::Duration;

use tokio::time::{Instant, sleep, timeout};
use tokio_test::{assert_ready_err, task};
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_lb::balance::{Balance, BalanceLayer, RoundRobin, Strategy, WeightedRoundRobin};
use tower_lb::discover::{Registration, Registry};
use tower_lb::failover::{
    EndpointHealth, Failover, FailoverConfig, FailoverLayer, HealthReport, OutlierDetection,
    PanicMode, SlowStart,
};
use tower_lb::pool::{DiscoverLayer, Pool};
use tower_lb::{Endpoint, Error};

use mock::{Backend, Backends, Behaviour, ep, key};

const SERVICE: &str = "svc";
/// The seed of every balancer in this suite.
const SEED: u64 = 42;
/// No request may take longer than this (tokio time).
const REQUEST_LIMIT: Duration = Duration::from_secs(5);
/// The default evaluation interval, which these tests keep.
const INTERVAL: Duration = Duration::from_secs(1);
/// Traffic is sent in steps this far apart.
const STEP: Duration = Duration::from_millis(100);

type Client<St> = Balance<Backend, St>;

/// `Balance(strategy, seeded) → Failover(config) → Pool(registry watch) →
/// mock connector`.
/// The failover view a balancer picks from.
fn view<S, St: Strategy, C, K>(lb: &Balance<S, St, C, K>) -> &Failover<S> {
    lb.upstream()
        .failover()
        .expect("a balancer over a failover view")
}

fn client<St: Strategy + Clone>(
    registry: &Registry,
    backends: &Backends,
    strategy: St,
    config: FailoverConfig,
) -> Client<St> {
    ServiceBuilder::new()
        .layer(BalanceLayer::new(strategy).seed(SEED))
        .layer(FailoverLayer::new(config))
        .layer(DiscoverLayer::new(registry.watch(SERVICE).expect("watch")))
        .service(backends.connector())
}

fn register(registry: &Registry, endpoint: Endpoint) -> Registration {
    registry.register(SERVICE, endpoint).expect("register")
}

/// Registers ports `1..=n` at priority 0, weight 1.
fn register_ports(registry: &Registry, n: u16) -> Vec<Registration> {
    (1..=n).map(|p| register(registry, ep(p))).collect()
}

/// How a batch of requests ended.
#[derive(Debug, Default)]
struct Outcomes {
    answered: u64,
    /// `Error::Inner`: the endpoint's own failure.
    inner: u64,
    /// `Error::NoneEligible`.
    none_eligible: u64,
    /// Any other error, rendered.
    other: Vec<String>,
}

impl Outcomes {
    fn total(&self) -> u64 {
        self.answered + self.inner + self.none_eligible + self.other.len() as u64
    }
}

/// Sends `n` requests one after another; each must end within
/// [`REQUEST_LIMIT`].
async fn burst<St: Strategy>(lb: &Client<St>, n: usize) -> Outcomes {
    let mut out = Outcomes::default();
    for _ in 0..n {
        let reply = timeout(REQUEST_LIMIT, lb.clone().oneshot(Behaviour::Answer))
            .await
            .unwrap_or_else(|_| {
                panic!("a request neither answered nor failed within {REQUEST_LIMIT:?}")
            });
        match reply {
            Ok(_) => out.answered += 1,
            Err(Error::Inner(_)) => out.inner += 1,
            Err(Error::NoneEligible { .. }) => out.none_eligible += 1,
            Err(e) => out.other.push(e.to_string()),
        }
    }
    assert_eq!(out.total(), n as u64);
    out
}

/// Calls each port's backend has received so far.
fn calls(backends: &Backends, ports: &[u16]) -> Vec<u64> {
    ports.iter().map(|&p| backends.calls(&key(p))).collect()
}

fn delta(before: &[u64], after: &[u64]) -> Vec<u64> {
    before.iter().zip(after).map(|(b, a)| a - b).collect()
}

fn report<S>(view: &Failover<S>) -> HealthReport {
    view.health().as_ref().clone()
}

/// Polls the view's report every millisecond of tokio time until `done`
/// holds; panics with `what` and the last report after `limit`.
async fn wait_report<S>(
    view: &Failover<S>,
    what: &str,
    limit: Duration,
    done: impl Fn(&HealthReport) -> bool,
) -> HealthReport {
    let start = Instant::now();
    loop {
        let r = view.health();
        if done(&r) {
            return r.as_ref().clone();
        }
        assert!(
            start.elapsed() <= limit,
            "{what}: not seen within {limit:?}; last report: {r:#?}"
        );
        sleep(Duration::from_millis(1)).await;
    }
}

fn health(r: &HealthReport, port: u16) -> &EndpointHealth {
    let k = key(port);
    r.endpoints
        .iter()
        .find(|e| *e.key == *k)
        .unwrap_or_else(|| panic!("{k} is not in the report: {r:#?}"))
}

fn ejected(r: &HealthReport) -> usize {
    r.endpoints
        .iter()
        .filter(|e| e.ejected_until.is_some() || e.on_trial)
        .count()
}

fn load_of(r: &HealthReport, priority: u8) -> f64 {
    r.tiers
        .iter()
        .find(|t| t.priority == priority)
        .map_or(0.0, |t| t.load_percent)
}

/// Ten endpoints all fail at once; over 70 s (two rounds of 30 s
/// ejections) no more than `cap` are ever ejected at the same time, and
/// the cap is reached.
async fn ejection_cap(outliers: OutlierDetection, cap: usize) {
    let registry = Registry::new();
    let _regs = register_ports(&registry, 10);
    let backends = Backends::new();
    for p in 1..=10 {
        backends.set(&key(p), Behaviour::Fail);
    }
    let config = FailoverConfig::new().outlier_detection(outliers);
    let lb = client(&registry, &backends, RoundRobin, config);
    wait_report(view(&lb), "ten endpoints in the view", INTERVAL, |r| {
        r.endpoints.len() == 10
    })
    .await;

    let mut most = 0;
    for second in 0..70 {
        // Two requests per endpoint per second: five in a row each within
        // three seconds.
        let out = burst(&lb, 20).await;
        assert_eq!(
            out.inner, 20,
            "every request fails with the endpoint's own error: {out:?}"
        );
        sleep(INTERVAL).await;
        let r = report(view(&lb));
        let now_out = ejected(&r);
        assert!(
            now_out <= cap,
            "{now_out} of 10 ejected at once after {second} s; the cap is {cap}: {r:#?}"
        );
        assert!(
            !r.panic,
            "{} of 10 healthy is not panic: {r:#?}",
            10 - now_out
        );
        most = most.max(now_out);
    }
    let r = report(view(&lb));
    assert_eq!(most, cap, "all ten failing: the cap ({cap}) is reached");
    assert!(
        r.ejections > cap as u64,
        "after the first ejections end (30 s) others are ejected in turn: {} ejections in 70 s",
        r.ejections
    );
}

#[tokio::test(start_paused = true)]
async fn at_most_ten_percent_of_a_tier_is_ejected_by_default() {
    // 10 % of 10 is 1.
    ejection_cap(OutlierDetection::new(), 1).await;
}

#[tokio::test(start_paused = true)]
async fn at_most_max_ejection_percent_of_a_tier_is_ejected() {
    // 30 % of 10 is 3.
    ejection_cap(OutlierDetection::new().max_ejection_percent(30), 3).await;
}

/// One endpoint that fails is ejected (one may always be), which leaves
/// the pool with nothing healthy: panic, fail open. Requests keep reaching
/// the endpoint rather than failing with nothing to pick.
#[tokio::test(start_paused = true)]
async fn a_lone_failing_endpoint_is_ejected_but_still_gets_requests() {
    let registry = Registry::new();
    let _regs = register_ports(&registry, 1);
    let backends = Backends::new();
    backends.set(&key(1), Behaviour::Fail);
    let lb = client(&registry, &backends, RoundRobin, FailoverConfig::new());
    wait_report(view(&lb), "the endpoint in the view", INTERVAL, |r| {
        r.endpoints.len() == 1
    })
    .await;

    let out = burst(&lb, 5).await;
    assert_eq!(out.inner, 5);
    let r = wait_report(
        view(&lb),
        "the failing endpoint ejected within 2 s",
        2 * INTERVAL,
        |r| ejected(r) == 1,
    )
    .await;
    assert!(r.panic, "nothing healthy: panic: {r:#?}");

    let before = backends.calls(&key(1));
    let out = burst(&lb, 10).await;
    assert_eq!(
        backends.calls(&key(1)) - before,
        10,
        "fail open: every request still reaches the ejected endpoint"
    );
    assert_eq!((out.inner, out.none_eligible), (10, 0), "{out:?}");

    // It recovers before its ejection ends: requests are answered.
    backends.unset(&key(1));
    let out = burst(&lb, 10).await;
    assert_eq!(out.answered, 10, "{out:?}");
}

/// Four endpoints, all failing, up to 100 % ejectable, ejected for 5 s.
/// Returns the client once all four are out.
async fn all_ejected(
    registry: &Registry,
    backends: &Backends,
    mode: PanicMode,
) -> Client<RoundRobin> {
    for p in 1..=4 {
        backends.set(&key(p), Behaviour::Fail);
    }
    let config = FailoverConfig::new().panic_mode(mode).outlier_detection(
        OutlierDetection::new()
            .max_ejection_percent(100)
            .base_ejection(Duration::from_secs(5))
            .max_ejection(Duration::from_secs(5)),
    );
    let lb = client(registry, backends, RoundRobin, config);
    wait_report(view(&lb), "four endpoints in the view", INTERVAL, |r| {
        r.endpoints.len() == 4
    })
    .await;
    let out = burst(&lb, 20).await;
    assert_eq!(out.inner, 20, "{out:?}");
    let r = wait_report(
        view(&lb),
        "all four ejected within 2 s",
        2 * INTERVAL,
        |r| ejected(r) == 4,
    )
    .await;
    assert!(r.panic, "no endpoint healthy: panic: {r:#?}");
    lb
}

/// Every endpoint failing: fail open, balancing over all of them.
#[tokio::test(start_paused = true)]
async fn when_every_endpoint_fails_panic_fails_open() {
    let registry = Registry::new();
    let _regs = register_ports(&registry, 4);
    let backends = Backends::new();
    let lb = all_ejected(&registry, &backends, PanicMode::FailOpen).await;

    let ports = [1, 2, 3, 4];
    let before = calls(&backends, &ports);
    let out = burst(&lb, 40).await;
    let got = delta(&before, &calls(&backends, &ports));
    assert_eq!(
        got,
        [10, 10, 10, 10],
        "fail open: round robin over every endpoint"
    );
    assert_eq!((out.inner, out.none_eligible), (40, 0), "{out:?}");
}

/// Every endpoint failing with `PanicMode::FailClosed`: requests fail at
/// once (on their first poll) with `NoneEligible`, and reach no backend.
#[tokio::test(start_paused = true)]
async fn when_every_endpoint_fails_panic_can_fail_closed() {
    let registry = Registry::new();
    let _regs = register_ports(&registry, 4);
    let backends = Backends::new();
    let lb = all_ejected(&registry, &backends, PanicMode::FailClosed).await;

    let before = backends.total_calls();
    for _ in 0..20 {
        let mut request = task::spawn(lb.clone().oneshot(Behaviour::Answer));
        let e = assert_ready_err!(request.poll(), "fail closed answers on the first poll");
        assert!(matches!(e, Error::NoneEligible { total: 4, .. }), "{e:?}");
    }
    assert_eq!(backends.total_calls(), before, "fail closed sends nothing");
}

/// Panic ends when the endpoints are healthy again. Here all four were
/// ejected and recovered meanwhile; when their ejections end (5 s) they
/// are all re-admitted and panic must end with them, within two
/// evaluation intervals. There is no lower tier to fail back from, so the
/// fail-back delay (10 s by default) has nothing to protect.
#[tokio::test(start_paused = true)]
async fn panic_ends_when_the_ejections_end() {
    let registry = Registry::new();
    let _regs = register_ports(&registry, 4);
    let backends = Backends::new();
    let lb = all_ejected(&registry, &backends, PanicMode::FailClosed).await;
    let r = report(view(&lb));
    let until = r
        .endpoints
        .iter()
        .filter_map(|e| e.ejected_until)
        .max()
        .expect("ejected");
    for p in 1..=4 {
        backends.unset(&key(p));
    }
    let limit = until.saturating_duration_since(Instant::now()) + 2 * INTERVAL;
    let r = wait_report(
        view(&lb),
        "all four on trial once their ejections end",
        limit,
        |r| r.endpoints.iter().all(|e| e.on_trial),
    )
    .await;
    assert!(r.panic, "on trial is not healthy yet: {r:#?}");
    // Even failing closed, each endpoint on trial takes one request.
    let before = calls(&backends, &[1, 2, 3, 4]);
    let out = burst(&lb, 4).await;
    assert_eq!(out.answered, 4, "the four trial requests: {out:?}");
    assert_eq!(
        delta(&before, &calls(&backends, &[1, 2, 3, 4])),
        [1, 1, 1, 1],
        "one trial request each"
    );
    let r = wait_report(
        view(&lb),
        "panic left at once when the trials pass (the outcomes wake failover)",
        Duration::from_millis(20),
        |r| !r.panic,
    )
    .await;
    assert_eq!(ejected(&r), 0, "{r:#?}");
    let out = burst(&lb, 20).await;
    assert_eq!(
        out.answered, 20,
        "out of panic, requests are served: {out:?}"
    );
}

/// Slow start: a fourth endpoint (weight 100, like the others) joins a
/// running pool and ramps linearly from 10 % of its weight to all of it
/// over 10 s; the three present from the start are never ramped.
#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_new_endpoint_up_over_its_window() {
    slow_start_ramp(100).await;
}

/// As [`slow_start_ramps_a_new_endpoint_up_over_its_window`], with the
/// default weight (1) that `Endpoint::new` gives every endpoint.
#[tokio::test(start_paused = true)]
async fn slow_start_ramps_an_endpoint_of_the_default_weight() {
    slow_start_ramp(1).await;
}

const WINDOW: Duration = Duration::from_secs(10);

/// The new endpoint's expected share when its ramp factor is `f` and the
/// others (three, at full weight `w`) are not ramping.
fn ramp_share(f: f64) -> f64 {
    let f = f.clamp(0.1, 1.0);
    f / (3.0 + f)
}

async fn slow_start_ramp(weight: u32) {
    let registry = Registry::new();
    let _regs: Vec<_> = (1..=3)
        .map(|p| register(&registry, ep(p).with_weight(weight)))
        .collect();
    let backends = Backends::new();
    let config = FailoverConfig::new().slow_start(SlowStart::new(WINDOW));
    let lb = client(&registry, &backends, WeightedRoundRobin, config);
    let r = wait_report(view(&lb), "three endpoints in the view", INTERVAL, |r| {
        r.endpoints.len() == 3
    })
    .await;
    assert!(
        r.endpoints.iter().all(|e| e.weight_factor == 1.0),
        "endpoints present at start are not ramped: {r:#?}"
    );
    let ports = [1, 2, 3, 4];

    // Before: a third each (smooth WRR over equal weights; ±0.02).
    let before = calls(&backends, &ports);
    for _ in 0..10 {
        burst(&lb, 30).await;
        sleep(STEP).await;
    }
    let got = delta(&before, &calls(&backends, &ports));
    for (i, &n) in got[..3].iter().enumerate() {
        let share = n as f64 / 300.0;
        assert!(
            (share - 1.0 / 3.0).abs() <= 0.02,
            "port {} share {share:.3} (1/3 ± 0.02)",
            i + 1
        );
    }

    let _new = register(&registry, ep(4).with_weight(weight));
    let r = wait_report(view(&lb), "the new endpoint in the view", INTERVAL, |r| {
        r.endpoints.len() == 4
    })
    .await;
    let joined = Instant::now();
    assert!(
        (health(&r, 4).weight_factor - 0.1).abs() < 1e-9,
        "a new endpoint starts at 10 % of its weight: {r:#?}"
    );

    // Twelve 1-second windows of 400 requests each.
    let mut shares = Vec::new();
    let mut factors = Vec::new();
    for _ in 0..12 {
        let before = calls(&backends, &ports);
        for _ in 0..10 {
            let out = burst(&lb, 40).await;
            assert_eq!(out.answered, 40, "{out:?}");
            sleep(STEP).await;
        }
        let got = delta(&before, &calls(&backends, &ports));
        shares.push(got[3] as f64 / got.iter().sum::<u64>() as f64);
        let r = report(view(&lb));
        for p in 1..=3 {
            assert_eq!(
                health(&r, p).weight_factor,
                1.0,
                "port {p} is never ramped: {r:#?}"
            );
        }
        factors.push(health(&r, 4).weight_factor);
    }
    let elapsed = joined.elapsed();
    let shown: Vec<String> = shares.iter().map(|s| format!("{s:.3}")).collect();

    // The view is re-evaluated every 500 ms (window / 20), so window k
    // (k..k+1 s after joining) sees ramp factors from (k - 0.5) / 10 to
    // (k + 1) / 10; allow 0.02 more for the rotation's phase.
    let fair = 0.25;
    assert!(
        shares[0] < fair / 2.0,
        "in its first second the new endpoint gets {:.3}, expected well below its fair share {fair} (~{:.3}): {shown:?}",
        shares[0],
        ramp_share(0.1)
    );
    for (k, &share) in shares.iter().enumerate().take(10) {
        let k = k as f64;
        let (lo, hi) = (ramp_share((k - 0.5) / 10.0), ramp_share((k + 1.0) / 10.0));
        assert!(
            share >= lo - 0.02 && share <= hi + 0.02,
            "window {k}: share {share:.3}, expected {lo:.3}..={hi:.3} ± 0.02 for a linear ramp: {shown:?}"
        );
    }
    for w in shares.windows(2) {
        assert!(
            w[1] >= w[0] - 0.02,
            "the share only rises (± 0.02): {shown:?}"
        );
    }
    assert!(
        (shares[11] - fair).abs() <= 0.02,
        "after the ramp the new endpoint gets its fair share {fair} ± 0.02, got {:.3}: {shown:?}",
        shares[11]
    );
    for w in factors.windows(2) {
        assert!(w[1] >= w[0], "weight_factor only rises: {factors:?}");
    }
    assert!(elapsed > WINDOW + STEP);
    assert_eq!(
        factors[11], 1.0,
        "weight_factor reaches 1.0 after the window: {factors:?}"
    );
    assert!(
        factors[4] > 0.3 && factors[4] < 0.7,
        "halfway through the ramp: {factors:?}"
    );
}

/// Sends `per_step` requests every [`STEP`] for `steps` steps, calling
/// `check` with the report after each; returns the calls per port and the
/// outcomes.
async fn drive<St: Strategy>(
    lb: &Client<St>,
    backends: &Backends,
    ports: &[u16],
    steps: usize,
    per_step: usize,
    mut check: impl FnMut(&HealthReport),
) -> (Vec<u64>, Outcomes) {
    let before = calls(backends, ports);
    let mut all = Outcomes::default();
    for _ in 0..steps {
        let out = burst(lb, per_step).await;
        all.answered += out.answered;
        all.inner += out.inner;
        all.none_eligible += out.none_eligible;
        all.other.extend(out.other);
        sleep(STEP).await;
        check(&report(view(lb)));
    }
    (delta(&before, &calls(backends, ports)), all)
}

/// Drives traffic until `done` holds for the report, at most `limit`.
async fn drive_until<St: Strategy>(
    lb: &Client<St>,
    what: &str,
    limit: Duration,
    done: impl Fn(&HealthReport) -> bool,
) -> HealthReport {
    let start = Instant::now();
    loop {
        let out = burst(lb, 20).await;
        assert!(out.other.is_empty() && out.none_eligible == 0, "{out:?}");
        let r = report(view(lb));
        if done(&r) {
            return r;
        }
        assert!(
            start.elapsed() <= limit,
            "{what}: not seen within {limit:?}: {r:#?}"
        );
        sleep(STEP).await;
    }
}

/// Fail-back with a flapping primary. Primaries A and B, backup K;
/// overprovisioning 1.4, so with B out the primaries' health is
/// 1/2 × 1.4 = 70 % and K takes 30 %. B goes down and comes back three
/// times, each time going down again within the 10 s fail-back delay. K
/// keeps its 30 % throughout, and traffic moves back to the primaries only
/// once B has stayed up for the whole delay after its last return.
#[tokio::test(start_paused = true)]
async fn a_flapping_primary_gets_traffic_back_only_after_staying_up_for_the_failback_delay() {
    const FAILBACK: Duration = Duration::from_secs(10);
    const EJECTION: Duration = Duration::from_secs(2);
    let (a, b, k) = (1u16, 2u16, 3u16);
    let registry = Registry::new();
    let _regs = [
        register(&registry, ep(a)),
        register(&registry, ep(b)),
        register(&registry, ep(k).with_priority(1)),
    ];
    let backends = Backends::new();
    let config = FailoverConfig::new()
        .overprovisioning(1.4)
        .failback_delay(FAILBACK)
        .outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(5)
                .base_ejection(EJECTION)
                .max_ejection(EJECTION),
        );
    let lb = client(&registry, &backends, RoundRobin, config);
    wait_report(view(&lb), "three endpoints in the view", INTERVAL, |r| {
        r.endpoints.len() == 3
    })
    .await;
    let ports = [a, b, k];
    let seventy = |r: &HealthReport| {
        (load_of(r, 0) - 70.0).abs() < 0.01 && (load_of(r, 1) - 30.0).abs() < 0.01
    };

    let (got, _) = drive(&lb, &backends, &ports, 10, 20, |r| {
        assert!((load_of(r, 0) - 100.0).abs() < 0.01, "{r:#?}");
    })
    .await;
    assert_eq!(
        got[2], 0,
        "all primaries up: the backup gets nothing: {got:?}"
    );

    let mut returns = Vec::new();
    for cycle in 0..3 {
        backends.set(&key(b), Behaviour::Fail);
        let r = drive_until(&lb, "B ejected within 2 s of failing", 2 * INTERVAL, |r| {
            health(r, b).ejected_until.is_some()
        })
        .await;
        assert!(
            seventy(&r),
            "cycle {cycle}: B out: 70 % / 30 % (± 0.01): {r:#?}"
        );
        backends.unset(&key(b));
        drive_until(
            &lb,
            "B re-admitted when its ejection ends",
            EJECTION + STEP,
            |r| health(r, b).ejected_until.is_none(),
        )
        .await;
        returns.push(Instant::now());
        // Up again, within the fail-back delay: the split stays.
        let (got, out) = drive(&lb, &backends, &ports, 30, 40, |r| {
            assert!(seventy(r), "cycle {cycle}: B back for less than the fail-back delay: 70 % / 30 % (± 0.01): {r:#?}");
        })
        .await;
        assert_eq!(out.answered, 1200, "{out:?}");
        let share = got[2] as f64 / got.iter().sum::<u64>() as f64;
        assert!(
            (share - 0.3).abs() <= 0.05,
            "cycle {cycle}: the backup's share is {share:.3} while B is back within the delay (0.30 ± 0.05): {got:?}"
        );
    }
    let first = returns[0];
    let last = *returns.last().expect("three cycles");
    assert!(
        last - first > FAILBACK,
        "the flapping lasts longer than the fail-back delay, so a timer that was not reset would have fired"
    );

    // B stays up. Until just before the delay has passed since its last
    // return, the backup keeps its 30 %.
    let until = last + FAILBACK - Duration::from_millis(500);
    let steps_left = (until - Instant::now()).as_millis() / STEP.as_millis();
    let (got, _) = drive(&lb, &backends, &ports, steps_left as usize, 40, |r| {
        assert!(
            seventy(r),
            "B up for less than the fail-back delay: 70 % / 30 % (± 0.01): {r:#?}"
        );
    })
    .await;
    let share = got[2] as f64 / got.iter().sum::<u64>() as f64;
    assert!(
        (share - 0.3).abs() <= 0.05,
        "just before the delay ends the backup still gets 0.30 ± 0.05, got {share:.3}"
    );

    let r = drive_until(
        &lb,
        "traffic back on the primaries",
        Duration::from_secs(2),
        |r| load_of(r, 0) > 99.99,
    )
    .await;
    assert!(
        Instant::now() >= last + FAILBACK,
        "traffic moved back {:?} after B's last return; the fail-back delay is {FAILBACK:?}",
        Instant::now() - last
    );
    assert!(load_of(&r, 1) < 0.01, "{r:#?}");
    let (got, out) = drive(&lb, &backends, &ports, 10, 40, |_| {}).await;
    assert_eq!(
        got[2], 0,
        "after the fail-back delay the backup gets nothing: {got:?}"
    );
    assert_eq!(out.answered, 400, "{out:?}");
}

/// Fail-back when the primary tier flaps in discovery rather than in
/// health: its only endpoint deregisters (a restart, a lapsed TTL) and
/// registers again. That is a tier recovering from zero, so traffic should
/// stay on the backup for the fail-back delay, as it does when the same
/// endpoint is ejected and re-admitted.
#[tokio::test(start_paused = true)]
async fn a_primary_that_leaves_discovery_and_returns_waits_for_the_failback_delay() {
    const FAILBACK: Duration = Duration::from_secs(10);
    let (a, k) = (1u16, 2u16);
    let registry = Registry::new();
    let primary = register(&registry, ep(a));
    let _backup = register(&registry, ep(k).with_priority(1));
    let backends = Backends::new();
    let config = FailoverConfig::new().failback_delay(FAILBACK);
    let lb = client(&registry, &backends, RoundRobin, config);
    wait_report(view(&lb), "both endpoints in the view", INTERVAL, |r| {
        r.endpoints.len() == 2
    })
    .await;
    let ports = [a, k];

    let (got, _) = drive(&lb, &backends, &ports, 10, 20, |_| {}).await;
    assert_eq!(got, [200, 0], "the primary takes everything");

    drop(primary);
    wait_report(view(&lb), "the primary gone from the view", INTERVAL, |r| {
        r.endpoints.len() == 1
    })
    .await;
    let (got, _) = drive(&lb, &backends, &ports, 10, 20, |_| {}).await;
    assert_eq!(got, [0, 200], "the backup takes everything");

    let _primary = register(&registry, ep(a));
    wait_report(view(&lb), "the primary back in the view", INTERVAL, |r| {
        r.endpoints.len() == 2
    })
    .await;
    let (got, _) = drive(&lb, &backends, &ports, 50, 20, |r| {
        assert!(
            load_of(r, 1) > 99.99,
            "within the fail-back delay of the primary's return the backup keeps 100 %: {r:#?}"
        );
    })
    .await;
    assert_eq!(
        got[0], 0,
        "the returning primary gets nothing for the first 5 s: {got:?}"
    );
}

/// The client's pool is the failover view; waiting on it for discovery
/// (as one does on a plain pool) must not hang.
#[tokio::test(start_paused = true)]
async fn the_view_reports_discovery_progress() {
    let registry = Registry::new();
    let _regs = register_ports(&registry, 2);
    let backends = Backends::new();
    let lb = client(&registry, &backends, RoundRobin, FailoverConfig::new());
    let revision = registry.revision_of(SERVICE);
    let applied = timeout(Duration::from_secs(5), view(&lb).applied(revision)).await;
    assert_eq!(
        applied.ok(),
        Some(true),
        "client.pool().applied({revision}) did not return within 5 s; discovery status of the view: {:?}",
        view(&lb).discovery()
    );
    assert_eq!(view(&lb).discovery().applied_revision, Some(revision));
}

/// The balancer never hands out an ejected endpoint while others are
/// healthy, whatever the strategy: checked on every pick across a run
/// with a failing endpoint.
/// Five endpoints under weighted round robin with the default failover,
/// port 3 failing every request, driven until port 3 is ejected; with the
/// report at that moment. Keep the registry and registrations alive.
async fn port_3_ejected() -> (
    Registry,
    Vec<Registration>,
    Backends,
    Client<WeightedRoundRobin>,
    HealthReport,
) {
    let registry = Registry::new();
    let regs = register_ports(&registry, 5);
    let backends = Backends::new();
    backends.set(&key(3), Behaviour::Fail);
    let lb = client(
        &registry,
        &backends,
        WeightedRoundRobin,
        FailoverConfig::new(),
    );
    wait_report(view(&lb), "five endpoints in the view", INTERVAL, |r| {
        r.endpoints.len() == 5
    })
    .await;
    let r = drive_until(&lb, "port 3 ejected", 3 * INTERVAL, |r| {
        health(r, 3).ejected_until.is_some()
    })
    .await;
    (registry, regs, backends, lb, r)
}

#[tokio::test(start_paused = true)]
async fn an_ejected_endpoint_is_never_picked_while_others_are_healthy() {
    let (_registry, _regs, backends, lb, _) = port_3_ejected().await;
    for _ in 0..1_000 {
        let i = lb.pick_index().expect("something to pick");
        let snapshot = lb.snapshot();
        let picked = snapshot.members()[i].endpoint().key().to_owned();
        assert_ne!(picked, key(3), "an ejected endpoint was picked");
    }
    let before = backends.calls(&key(3));
    let out = burst(&lb, 500).await;
    assert_eq!(out.answered, 500, "{out:?}");
    assert_eq!(
        backends.calls(&key(3)),
        before,
        "the ejected endpoint gets no request"
    );
}

/// The end of an ejection is a trial, not a full share: while port 3
/// keeps failing, each ejection that ends costs one request (which fails
/// and ejects it again, for longer), however much traffic flows; once it
/// answers, its trial request brings it back at once.
#[tokio::test(start_paused = true)]
async fn an_endpoint_back_from_an_ejection_gets_one_trial_request_which_decides() {
    let (_registry, _regs, backends, lb, r) = port_3_ejected().await;
    let ejections = r.ejections;
    // 10 s of 200 requests/s while it still fails: ejections of 1 s, 2 s,
    // 3 s and 3 s end in that time, one trial request each.
    let ports = [1, 2, 3, 4, 5];
    let (hits, out) = drive(&lb, &backends, &ports, 100, 20, |_| {}).await;
    let r = report(view(&lb));
    let trials = r.ejections - ejections;
    assert!(
        (3..=5).contains(&trials),
        "ejected again after each failed trial: {trials} ejections in 10 s: {r:#?}"
    );
    assert!(
        hits[2] == trials || hits[2] == trials + 1,
        "one request per trial ({trials} failed, perhaps one more running): {hits:?}"
    );
    assert_eq!(
        out.inner, hits[2],
        "only the trial requests failed: {out:?}"
    );
    assert!(health(&r, 3).times_ejected >= 3, "{r:#?}");

    // It recovers: the next trial brings it back, and with it its share.
    backends.unset(&key(3));
    let r = drive_until(&lb, "port 3 back", 4 * INTERVAL, |r| {
        health(r, 3).is_healthy()
    })
    .await;
    assert!(!health(&r, 3).on_trial && r.endpoints.iter().all(|e| e.is_healthy()));
    let (hits, out) = drive(&lb, &backends, &ports, 10, 50, |_| {}).await;
    assert_eq!(out.answered, 500, "{out:?}");
    assert!(
        (90..=110).contains(&hits[2]),
        "a fifth of the traffic again (±10 of 100): {hits:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn active_checks_stop_when_the_client_is_dropped() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tower_lb::failover::HealthCheck;

    let registry = Registry::new();
    let backends = Backends::new();
    let _regs = register_ports(&registry, 2);
    let probes = Arc::new(AtomicU64::new(0));
    let counted = probes.clone();
    let check = HealthCheck::custom(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { true }
    })
    .interval(Duration::from_secs(1));
    let client = client(
        &registry,
        &backends,
        RoundRobin,
        FailoverConfig::new().health_check(check),
    );
    sleep(Duration::from_millis(5_500)).await;
    let while_alive = probes.load(Ordering::SeqCst);
    // Both endpoints, about once a second.
    assert!(
        (10..=14).contains(&while_alive),
        "{while_alive} probes in 5.5 s"
    );
    drop(client);
    sleep(Duration::from_millis(10)).await;
    let at_drop = probes.load(Ordering::SeqCst);
    sleep(Duration::from_secs(10)).await;
    assert_eq!(
        probes.load(Ordering::SeqCst),
        at_drop,
        "no probe runs once the client is gone"
    );
}

// ---------------------------------------------------------------------------
// Acting on failures as they happen

/// The failure-rate detector runs once per interval, on the interval's own
/// schedule: 50 passes in 5 s at 100 ms, not every other tick.
#[tokio::test(start_paused = true)]
async fn failure_rates_are_evaluated_once_per_interval() {
    let registry = Registry::new();
    let _regs = register_ports(&registry, 3);
    let backends = Backends::new();
    let config = FailoverConfig::new().interval(Duration::from_millis(100));
    let lb = client(&registry, &backends, RoundRobin, config);
    wait_report(view(&lb), "three endpoints", INTERVAL, |r| {
        r.endpoints.len() == 3
    })
    .await;
    let before = report(view(&lb)).detections;
    for _ in 0..50 {
        // Traffic and failures in between must not shift the schedule.
        let _ = burst(&lb, 3).await;
        sleep(Duration::from_millis(100)).await;
    }
    let passes = report(view(&lb)).detections - before;
    assert!(
        (49..=51).contains(&passes),
        "{passes} passes in 50 intervals"
    );
}

/// Five failures in a row eject at once, not at the next interval; an
/// unreachable endpoint is down after its first failure, whatever the cap.
#[tokio::test(start_paused = true)]
async fn a_streak_ejects_and_an_unreachable_endpoint_goes_down_on_the_failure_itself() {
    let registry = Registry::new();
    // Six, so that with three out half stay healthy: no panic.
    let _regs = register_ports(&registry, 6);
    let backends = Backends::new();
    let lb = client(&registry, &backends, RoundRobin, FailoverConfig::new());
    wait_report(view(&lb), "six endpoints", INTERVAL, |r| {
        r.endpoints.len() == 6
    })
    .await;
    let start = Instant::now();
    backends.set(&key(1), Behaviour::Fail);
    while backends.calls(&key(1)) < 5 {
        let _ = burst(&lb, 1).await;
    }
    let r = wait_report(
        view(&lb),
        "ejected at once",
        Duration::from_millis(5),
        |r| health(r, 1).ejected_until.is_some(),
    )
    .await;
    assert!(start.elapsed() < INTERVAL / 10, "{:?}", start.elapsed());
    assert_eq!(r.tiers[0].ejected, 1);

    // Two more refuse: both down after one failure each, though the cap
    // (10 % of six, at least one) is used up.
    backends.set(&key(2), Behaviour::Refuse);
    backends.set(&key(3), Behaviour::Refuse);
    let (b2, b3) = (backends.calls(&key(2)), backends.calls(&key(3)));
    while backends.calls(&key(2)) == b2 || backends.calls(&key(3)) == b3 {
        let _ = burst(&lb, 1).await;
    }
    let r = wait_report(view(&lb), "down at once", Duration::from_millis(5), |r| {
        health(r, 2).down && health(r, 3).down
    })
    .await;
    assert_eq!((r.tiers[0].down, r.tiers[0].ejected), (2, 1), "{r:#?}");
    let (c2, c3) = (backends.calls(&key(2)), backends.calls(&key(3)));
    let out = burst(&lb, 100).await;
    assert_eq!(
        out.answered, 100,
        "only the three healthy ones are picked: {out:?}"
    );
    assert_eq!(
        (backends.calls(&key(2)), backends.calls(&key(3))),
        (c2, c3),
        "nothing more reaches the down ones"
    );
}

/// All primaries refuse: the first failures mark them down and traffic
/// moves to the backup at once, not after an ejection interval.
#[tokio::test(start_paused = true)]
async fn primaries_that_refuse_hand_their_traffic_to_the_backups() {
    let registry = Registry::new();
    let _regs = [
        register(&registry, ep(1)),
        register(&registry, ep(2)),
        register(&registry, ep(3).with_priority(1)),
    ];
    let backends = Backends::new();
    backends.set(&key(1), Behaviour::Refuse);
    backends.set(&key(2), Behaviour::Refuse);
    let lb = client(&registry, &backends, RoundRobin, FailoverConfig::new());
    wait_report(view(&lb), "three endpoints", INTERVAL, |r| {
        r.endpoints.len() == 3
    })
    .await;
    let first = burst(&lb, 2).await;
    sleep(Duration::from_millis(1)).await;
    let r = report(view(&lb));
    assert_eq!(r.tiers[0].down, 2, "{first:?} {r:#?}");
    assert!((load_of(&r, 1) - 100.0).abs() < 0.01, "{r:#?}");
    let out = burst(&lb, 50).await;
    assert_eq!(out.answered, 50, "{out:?}");
}

/// With a retry above, a request whose primaries have all been tried goes
/// to a backup (which has no share of first attempts), even before
/// failover has taken the primaries out.
#[tokio::test(start_paused = true)]
async fn a_retry_moves_to_the_next_tier_when_its_own_has_nothing_untried() {
    use tower_lb::attempt::Tracked;
    use tower_lb::retry::{Backoff, RetryBudget, RetryErrors, RetryLayer};
    let registry = Registry::new();
    let _regs = [
        register(&registry, ep(1)),
        register(&registry, ep(2)),
        register(&registry, ep(3).with_priority(1)),
    ];
    let backends = Backends::new();
    backends.set(&key(1), Behaviour::Fail);
    backends.set(&key(2), Behaviour::Fail);
    let pool = FailoverLayer::new(FailoverConfig::new()).layer(
        DiscoverLayer::new(registry.watch(SERVICE).expect("watch"))
            .layer(mock::untracked(&backends)),
    );
    let lb = BalanceLayer::new(RoundRobin).seed(SEED).layer(pool);
    wait_report(view(&lb), "three endpoints", INTERVAL, |r| {
        r.endpoints.len() == 3
    })
    .await;
    let client = RetryLayer::new(RetryErrors::new())
        .budget(RetryBudget::new(Duration::from_secs(10), 10.0, 100))
        .backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(2),
        ))
        .max_attempts(3)
        .seed(SEED)
        .layer(lb);
    // Four requests: eight failures, short of either primary's streak.
    for i in 0..4 {
        let got = timeout(
            REQUEST_LIMIT,
            client.clone().oneshot(Tracked::new(Behaviour::Answer)),
        )
        .await
        .expect("in time");
        assert_eq!(got.ok().as_deref(), Some(&*key(3)), "request {i}");
    }
    assert_eq!(
        (backends.calls(&key(1)), backends.calls(&key(2))),
        (4, 4),
        "each request tried each primary once"
    );
}

/// A second attempt of the same request (a hedge) never goes where the
/// first is still in flight.
#[tokio::test(start_paused = true)]
async fn a_second_attempt_avoids_the_endpoint_whose_attempt_still_runs() {
    use tower::Service;
    use tower_lb::attempt::{Attempted, Attempts, Tracked};
    let registry = Registry::new();
    let _regs = register_ports(&registry, 3);
    let backends = Backends::new();
    let pool = DiscoverLayer::new(registry.watch(SERVICE).expect("watch"))
        .layer(mock::untracked(&backends));
    assert!(pool.applied(1).await || !pool.snapshot().is_empty());
    let mut lb = BalanceLayer::new(tower_lb::balance::LeastInFlight)
        .seed(SEED)
        .layer(pool);
    for round in 0..50 {
        let attempts = Attempts::new();
        let send = |lb: &mut Balance<mock::Untracked, _>| {
            let mut req = Tracked::new(Behaviour::Never);
            req.set_attempts(attempts.clone());
            lb.call(req)
        };
        let before: Vec<u64> = (1..=3).map(|p| backends.calls(&key(p))).collect();
        let first = task::spawn(send(&mut lb));
        let second = task::spawn(send(&mut lb));
        let mut first = first;
        let mut second = second;
        let _ = first.poll();
        let _ = second.poll();
        let after: Vec<u64> = (1..=3).map(|p| backends.calls(&key(p))).collect();
        let hit: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert_eq!(hit.iter().sum::<u64>(), 2, "round {round}: {hit:?}");
        assert!(
            hit.iter().all(|&n| n <= 1),
            "round {round}: same endpoint twice: {hit:?}"
        );
        assert_eq!(attempts.sent(), 2);
    }
}

/// An empty pool: a request sent before discovery's first update waits for
/// it and succeeds; once discovery has said "empty", requests fail at once
/// with `NoEndpoints`.
#[tokio::test(start_paused = true)]
async fn an_empty_pool_waits_for_discovery_then_fails_fast() {
    use tower_lb::discover::{Update, channel};
    let (tx, source) = channel();
    let backends = Backends::new();
    let lb = BalanceLayer::new(RoundRobin).layer(FailoverLayer::new(FailoverConfig::new()).layer(
        Pool::spawn(source, backends.connector(), Default::default()),
    ));
    let waiting = tokio::spawn(lb.clone().oneshot(Behaviour::Answer));
    sleep(Duration::from_secs(1)).await;
    assert!(
        !waiting.is_finished(),
        "waits while discovery has not spoken"
    );
    tx.send(Update::snapshot(1, vec![ep(1)]))
        .expect("pool listens");
    let got = timeout(REQUEST_LIMIT, waiting).await.expect("in time");
    assert_eq!(got.expect("task").expect("served"), key(1));

    tx.send(Update::snapshot(2, vec![])).expect("pool listens");
    view(&lb).applied(2).await;
    let start = Instant::now();
    let got = timeout(REQUEST_LIMIT, lb.clone().oneshot(Behaviour::Answer))
        .await
        .expect("in time");
    assert!(matches!(got, Err(Error::NoEndpoints)), "{got:?}");
    assert!(
        start.elapsed() < Duration::from_millis(50),
        "{:?}",
        start.elapsed()
    );
}
