//! Failover with real HTTP backends on loopback.
//!
//! The stack is the one users build: `Balance` (classifying 5xx answers as
//! failures) over `FailoverLayer` over a registry-fed pool over a shared
//! hyper-util client. Eight tasks keep a steady, bounded load on it while
//! backends start failing, die, hang or fail their health checks. Time is
//! real but short: health is evaluated every 50 ms. Every request is bounded
//! by [`REQUEST_LIMIT`] and must end in a response or a typed
//! `tower_lb::Error`; one that does not fails the test.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tower::{Service, ServiceBuilder};
use tower_lb::balance::{Balance, BalanceLayer, RoundRobin, Strategy};
use tower_lb::discover::{Registration, Registry};
use tower_lb::failover::{
    EndpointHealth, Failover, FailoverConfig, FailoverLayer, HealthCheck, HealthReport,
    OutlierDetection,
};
use tower_lb::http::ServerErrorsAreFailures;
use tower_lb::pool::DiscoverLayer;
use tower_lb::{Endpoint, Error};

use support::{Backend, GetError, HungBackend, TimedEndpointService};

const SERVICE: &str = "backend";
/// Concurrent load tasks.
const TASKS: usize = 8;
/// Each task pauses this long after each request, so the load stays steady
/// (at most about 2000 requests a second) and request counts track time.
const PACE: Duration = Duration::from_millis(4);
/// No request may take longer than this; one that does counts as hung.
const REQUEST_LIMIT: Duration = Duration::from_secs(2);
/// How often failover evaluates health.
const INTERVAL: Duration = Duration::from_millis(50);
/// The longest any single wait in these tests may take.
const WAIT_LIMIT: Duration = Duration::from_secs(3);

/// The client under test, over endpoint services of type `S`.
type Client<S> = Balance<S, RoundRobin, ServerErrorsAreFailures>;

/// Builds `Balance(5xx = failure) → Failover(config) → Pool(registry) →
/// connector`, with a fixed seed so tier draws repeat.
/// The failover view a balancer picks from.
fn view<S, St: Strategy, C, K>(lb: &Balance<S, St, C, K>) -> &Failover<S> {
    lb.upstream()
        .failover()
        .expect("a balancer over a failover view")
}

fn client<C, S>(registry: &Registry, config: FailoverConfig, connector: C) -> Client<S>
where
    C: Service<Endpoint, Response = S> + Send + 'static,
    C::Error: Into<tower_lb::BoxError> + Send,
    C::Future: Send,
    S: Clone + Send + Sync + 'static,
{
    ServiceBuilder::new()
        .layer(
            BalanceLayer::new(RoundRobin)
                .seed(7)
                .classify(ServerErrorsAreFailures),
        )
        .layer(FailoverLayer::new(config))
        .layer(DiscoverLayer::new(registry.watch(SERVICE).expect("watch")))
        .service(connector)
}

fn register(registry: &Registry, endpoint: Endpoint) -> Registration {
    registry.register(SERVICE, endpoint).expect("register")
}

/// Polls the view's health report (every 5 ms) until `done` holds; panics
/// with `what` and the last report after `limit`.
async fn wait_report<S>(
    view: &Failover<S>,
    what: &str,
    limit: Duration,
    done: impl Fn(&HealthReport) -> bool,
) -> HealthReport {
    let start = Instant::now();
    loop {
        let report = view.health();
        if done(&report) {
            return report.as_ref().clone();
        }
        assert!(
            start.elapsed() <= limit,
            "{what}: not seen within {limit:?}; last report: {report:#?}"
        );
        sleep(Duration::from_millis(5)).await;
    }
}

fn health<'a>(report: &'a HealthReport, key: &str) -> &'a EndpointHealth {
    report
        .endpoints
        .iter()
        .find(|e| &*e.key == key)
        .unwrap_or_else(|| panic!("{key} is not in the report: {report:#?}"))
}

fn is_ejected(report: &HealthReport, key: &str) -> bool {
    health(report, key).ejected_until.is_some()
}

/// One tier's load share in percent, from the report.
fn load_of(report: &HealthReport, priority: u8) -> f64 {
    report
        .tiers
        .iter()
        .find(|t| t.priority == priority)
        .map_or(0.0, |t| t.load_percent)
}

/// What one failed request was.
#[derive(Debug)]
struct Failed {
    /// The error and its sources, rendered.
    text: String,
    /// Whether it was `Error::Inner` wrapping tower's timeout.
    timed_out: bool,
    /// Whether it was `Error::Inner` at all.
    inner: bool,
    /// How long the request took.
    took: Duration,
}

/// Steady load from [`TASKS`] tasks sharing one client, each sending one
/// request at a time (then pausing for [`PACE`]), until the budget is spent
/// or the load is stopped.
struct Load {
    budget: u64,
    stop: AtomicBool,
    sent: AtomicU64,
    /// Requests finished, whichever way.
    done: AtomicU64,
    ok: AtomicU64,
    server_errors: AtomicU64,
    other_status: AtomicU64,
    /// Typed errors from the balancer.
    failed: Mutex<Vec<Failed>>,
    /// Bodies that broke off after the head arrived.
    body_errors: AtomicU64,
    /// Requests that outlived [`REQUEST_LIMIT`].
    hung: AtomicU64,
}

impl Load {
    fn start<S>(client: &S, budget: u64) -> (Arc<Load>, Vec<JoinHandle<()>>)
    where
        S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>, Error = Error>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send,
    {
        let load = Arc::new(Load {
            budget,
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            done: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            other_status: AtomicU64::new(0),
            failed: Mutex::new(Vec::new()),
            body_errors: AtomicU64::new(0),
            hung: AtomicU64::new(0),
        });
        let tasks = (0..TASKS)
            .map(|_| tokio::spawn(worker(client.clone(), load.clone())))
            .collect();
        (load, tasks)
    }

    fn done(&self) -> u64 {
        self.done.load(SeqCst)
    }

    /// Waits until `n` requests have finished.
    async fn until_done(&self, n: u64) {
        assert!(
            n <= self.budget,
            "the test asks for {n} requests, more than its budget of {}",
            self.budget
        );
        let start = Instant::now();
        while self.done() < n {
            assert!(
                start.elapsed() <= WAIT_LIMIT,
                "only {} of {n} requests finished within {WAIT_LIMIT:?}",
                self.done()
            );
            sleep(Duration::from_millis(1)).await;
        }
    }

    /// The requests each counter saw while `n` more requests finished.
    async fn window(&self, counters: &[Arc<AtomicU64>], n: u64) -> Vec<u64> {
        let before = read(counters);
        self.until_done(self.done() + n).await;
        delta(&before, &read(counters))
    }

    /// The requests each counter saw until `deadline`, and how many
    /// requests finished meanwhile.
    async fn window_until(
        &self,
        counters: &[Arc<AtomicU64>],
        deadline: Instant,
    ) -> (Vec<u64>, u64) {
        let (before, done) = (read(counters), self.done());
        tokio::time::sleep_until(deadline).await;
        (delta(&before, &read(counters)), self.done() - done)
    }

    /// Stops the load, waits for every task, and checks that every request
    /// ended in a response or a typed error and none hung.
    async fn finish(&self, tasks: Vec<JoinHandle<()>>) {
        self.stop.store(true, SeqCst);
        for task in tasks {
            timeout(REQUEST_LIMIT + Duration::from_secs(1), task)
                .await
                .expect("a load task did not stop")
                .expect("a load task panicked");
        }
        let answered =
            self.ok.load(SeqCst) + self.server_errors.load(SeqCst) + self.other_status.load(SeqCst);
        let failed = self.failed.lock().unwrap().len() as u64;
        let body = self.body_errors.load(SeqCst);
        let hung = self.hung.load(SeqCst);
        assert_eq!(
            hung, 0,
            "{hung} requests neither answered nor failed within {REQUEST_LIMIT:?}"
        );
        assert_eq!(
            answered + failed + body,
            self.sent.load(SeqCst),
            "every request sent must end in a response ({answered}), a typed error ({failed}) or a body error ({body})"
        );
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, Vec<Failed>> {
        self.failed.lock().unwrap()
    }
}

async fn worker<S>(client: S, load: Arc<Load>)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>, Error = Error> + Clone,
{
    while !load.stop.load(SeqCst) && load.sent.load(SeqCst) < load.budget {
        load.sent.fetch_add(1, SeqCst);
        let start = Instant::now();
        match timeout(REQUEST_LIMIT, support::get(&client)).await {
            Err(_) => {
                load.hung.fetch_add(1, SeqCst);
            }
            Ok(Ok(reply)) if reply.status == StatusCode::OK => {
                load.ok.fetch_add(1, SeqCst);
            }
            Ok(Ok(reply)) if reply.status.is_server_error() => {
                load.server_errors.fetch_add(1, SeqCst);
            }
            Ok(Ok(_)) => {
                load.other_status.fetch_add(1, SeqCst);
            }
            Ok(Err(GetError::Balance(e))) => {
                let (inner, timed_out) = match &e {
                    Error::Inner(cause) => (
                        true,
                        cause
                            .downcast_ref::<tower::timeout::error::Elapsed>()
                            .is_some(),
                    ),
                    _ => (false, false),
                };
                load.failed.lock().unwrap().push(Failed {
                    text: GetError::Balance(e).to_string(),
                    timed_out,
                    inner,
                    took: start.elapsed(),
                });
            }
            Ok(Err(GetError::Body(_))) => {
                load.body_errors.fetch_add(1, SeqCst);
            }
        }
        load.done.fetch_add(1, SeqCst);
        sleep(PACE).await;
    }
}

fn read(counters: &[Arc<AtomicU64>]) -> Vec<u64> {
    counters.iter().map(|c| c.load(SeqCst)).collect()
}

fn delta(before: &[u64], after: &[u64]) -> Vec<u64> {
    before.iter().zip(after).map(|(b, a)| a - b).collect()
}

fn counters(backends: &[Backend]) -> Vec<Arc<AtomicU64>> {
    backends.iter().map(Backend::hit_counter).collect()
}

/// gRPC's outlier-detection interop test, over HTTP: one of five backends
/// starts answering 500 under load, is ejected (the default cap of 10 %
/// of five still allows one), gets (almost) nothing while ejected, and gets
/// its share back once it answers 200 again and the ejection ends.
#[tokio::test]
async fn a_backend_answering_500_is_ejected_then_gets_its_share_back() {
    const EJECTION: Duration = Duration::from_millis(1_500);
    let backends = Backend::start_all(&["b0", "b1", "b2", "b3", "b4"])
        .await
        .expect("start backends");
    let registry = Registry::new();
    let _regs: Vec<_> = backends
        .iter()
        .map(|b| register(&registry, b.endpoint()))
        .collect();
    let config = FailoverConfig::new().interval(INTERVAL).outlier_detection(
        OutlierDetection::new()
            .consecutive_failures(5)
            .base_ejection(EJECTION)
            .max_ejection(EJECTION),
    );
    let lb = client(
        &registry,
        config,
        support::connector(support::http_client()),
    );
    wait_report(
        view(&lb),
        "all five backends in the view",
        WAIT_LIMIT,
        |r| r.endpoints.len() == 5,
    )
    .await;
    let hits = counters(&backends);
    let victim = &backends[2];
    let key = victim.endpoint().key().to_owned();

    let (load, tasks) = Load::start(&lb, 8_000);
    // Round robin while all are healthy: 100 each of 500, give or take the
    // requests in flight at either end of the window.
    let warm = load.window(&hits, 500).await;
    for (i, &n) in warm.iter().enumerate() {
        assert!(
            (80..=120).contains(&n),
            "b{i} got {n} of 500 while all were healthy (fair: 100 ± 20): {warm:?}"
        );
    }

    victim.set_status(StatusCode::INTERNAL_SERVER_ERROR);
    let failing_since = Instant::now();
    let report = wait_report(
        view(&lb),
        "the backend answering 500 is ejected within 1 s",
        Duration::from_secs(1),
        |r| is_ejected(r, &key),
    )
    .await;
    let took = failing_since.elapsed();
    assert_eq!(
        report.ejections, 1,
        "only the failing backend is ejected: {report:#?}"
    );
    assert!(!report.panic);

    // While ejected it gets under 1 % of new requests. (Requests picked
    // just before the view changed may still be on their way: let them land.)
    sleep(Duration::from_millis(20)).await;
    let during = load.window(&hits, 1_000).await;
    let total: u64 = during.iter().sum();
    assert!(
        during[2] * 100 < total,
        "the ejected backend got {} of {total} requests (must be < 1 %), ejected {took:?} after it started failing: {during:?}",
        during[2]
    );
    let report = &*view(&lb).health();
    assert!(
        is_ejected(report, &key),
        "the ejection ({EJECTION:?}) ended before 1000 requests were measured; too slow a machine for this window"
    );
    let until = health(report, &key).ejected_until.expect("ejected");

    // It recovers; when its ejection ends it is re-admitted.
    victim.set_status(StatusCode::OK);
    let limit = until.saturating_duration_since(Instant::now()) + Duration::from_millis(500);
    wait_report(
        view(&lb),
        "the recovered backend is re-admitted within 500 ms of its ejection's end",
        limit,
        |r| !is_ejected(r, &key),
    )
    .await;
    let after = load.window(&hits, 1_000).await;
    assert!(
        after[2] >= 100,
        "the re-admitted backend got {} of 1000 requests (fair share 200; must be at least half): {after:?}",
        after[2]
    );
    load.finish(tasks).await;

    let failures = load.failures();
    assert!(
        failures.is_empty(),
        "a 500 is a response, not an error: {failures:#?}"
    );
    let server_errors = load.server_errors.load(SeqCst);
    assert!(
        (5..=200).contains(&server_errors),
        "the 500s seen are the 5 that trigger ejection plus those in flight or picked before it took effect ({server_errors}; expected 5..=200)"
    );
}

/// gRPC's priority-failover interop test, over HTTP: three primaries and two
/// backups. Primaries fail one at a time (answering 500; up to 100 % of a
/// tier may be ejected here, so all three can go) and traffic moves to the
/// backups in proportion; when they recover, it moves back only after the
/// fail-back delay.
///
/// Overprovisioning is 1.5 rather than the default 1.4 so that one primary
/// down of three sends nothing to the backups: tier health is
/// `min(100, healthy share × factor)`, and 2/3 × 1.5 = 100 % whereas
/// 2/3 × 1.4 = 93 % would spill 7 %. Two down: 1/3 × 1.5 = 50 % stays,
/// 50 % spills. All down: everything goes to the backups.
#[tokio::test]
async fn traffic_moves_to_backups_as_primaries_fail_and_back_after_the_failback_delay() {
    const EJECTION: Duration = Duration::from_millis(1_500);
    const FAILBACK: Duration = Duration::from_secs(1);
    let backends = Backend::start_all(&["p0", "p1", "p2", "b0", "b1"])
        .await
        .expect("start backends");
    let registry = Registry::new();
    let _regs: Vec<_> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| register(&registry, b.endpoint().with_priority(u8::from(i >= 3))))
        .collect();
    let keys: Vec<String> = backends
        .iter()
        .map(|b| b.endpoint().key().to_owned())
        .collect();
    let config = FailoverConfig::new()
        .interval(INTERVAL)
        .overprovisioning(1.5)
        .failback_delay(FAILBACK)
        .outlier_detection(
            OutlierDetection::new()
                .consecutive_failures(5)
                .base_ejection(EJECTION)
                .max_ejection(EJECTION)
                .max_ejection_percent(100),
        );
    let lb = client(
        &registry,
        config,
        support::connector(support::http_client()),
    );
    let report = wait_report(view(&lb), "both tiers in the view", WAIT_LIMIT, |r| {
        r.endpoints.len() == 5
    })
    .await;
    assert_eq!(report.tiers.len(), 2, "{report:#?}");
    assert!(
        (load_of(&report, 0) - 100.0).abs() < 0.01 && load_of(&report, 1) < 0.01,
        "{report:#?}"
    );
    let hits = counters(&backends);
    let primaries = |w: &[u64]| w[..3].iter().sum::<u64>();
    let backups = |w: &[u64]| w[3..].iter().sum::<u64>();

    let (load, tasks) = Load::start(&lb, 10_000);
    let w = load.window(&hits, 200).await;
    assert_eq!(
        backups(&w),
        0,
        "all healthy: the backups get nothing: {w:?}"
    );

    // One primary down: 2/3 × 1.5 = 100 %, nothing spills.
    backends[0].set_status(StatusCode::INTERNAL_SERVER_ERROR);
    let r = wait_report(view(&lb), "p0 ejected", Duration::from_secs(1), |r| {
        is_ejected(r, &keys[0])
    })
    .await;
    let first_until = health(&r, &keys[0]).ejected_until.expect("ejected");
    assert!(
        load_of(&r, 1) < 0.01 && (load_of(&r, 0) - 100.0).abs() < 0.01,
        "one primary down keeps 100 % on the primaries (±0.01): {r:#?}"
    );
    let w = load.window(&hits, 300).await;
    assert_eq!(
        backups(&w),
        0,
        "one primary down of three: the backups get nothing: {w:?}"
    );

    // Two down: 1/3 × 1.5 = 50 % stays on the last primary.
    backends[1].set_status(StatusCode::INTERNAL_SERVER_ERROR);
    let r = wait_report(view(&lb), "p1 ejected", Duration::from_secs(1), |r| {
        is_ejected(r, &keys[1])
    })
    .await;
    assert!(
        (load_of(&r, 0) - 50.0).abs() < 0.01 && (load_of(&r, 1) - 50.0).abs() < 0.01,
        "two primaries down: 50 % / 50 % (±0.01): {r:#?}"
    );
    let w = load.window(&hits, 400).await;
    let share = backups(&w) as f64 / w.iter().sum::<u64>() as f64;
    assert!(
        (0.40..=0.60).contains(&share),
        "two primaries down: the backups' share is {share:.3} (expected 0.5 ± 0.1, seeded draws): {w:?}"
    );

    // All down: everything goes to the backups.
    backends[2].set_status(StatusCode::INTERNAL_SERVER_ERROR);
    let r = wait_report(view(&lb), "p2 ejected", Duration::from_secs(1), |r| {
        is_ejected(r, &keys[2])
    })
    .await;
    assert!(
        load_of(&r, 0) < 0.01 && (load_of(&r, 1) - 100.0).abs() < 0.01,
        "all primaries down: 0 % / 100 % (±0.01): {r:#?}"
    );
    assert!(!r.panic, "the backups are healthy: no panic: {r:#?}");
    let w = load.window(&hits, 300).await;
    assert!(
        primaries(&w) <= TASKS as u64,
        "all primaries down: they may only get the {TASKS} requests already in flight, got {}: {w:?}",
        primaries(&w)
    );

    // Recovery. Ejections end one by one; the tier's health starts rising at
    // the first re-admission (p0's), so traffic may move back only
    // `FAILBACK` after it.
    for b in &backends[..3] {
        b.set_status(StatusCode::OK);
    }
    let failback_at = first_until + FAILBACK;
    let r = wait_report(
        view(&lb),
        "p0 re-admitted at the end of its ejection",
        first_until.saturating_duration_since(Instant::now()) + Duration::from_millis(500),
        |r| !is_ejected(r, &keys[0]),
    )
    .await;
    assert!(
        load_of(&r, 0) < 0.01,
        "a re-admitted primary does not bring traffic back before the fail-back delay: {r:#?}"
    );
    let before_deadline = failback_at - Duration::from_millis(100);
    assert!(
        Instant::now() + Duration::from_millis(200) <= before_deadline,
        "the phases took too long to leave a window before the fail-back delay ends"
    );
    let (w, sent) = load.window_until(&hits, before_deadline).await;
    assert!(
        sent >= 50,
        "only {sent} requests in the window before fail-back"
    );
    // Each primary back from its ejection takes one trial request, which
    // is how it comes back; nothing more until the fail-back delay.
    assert!(
        w[..3].iter().all(|&n| n <= 1),
        "until the fail-back delay has passed the backups keep all the traffic but one trial request per primary: {w:?}"
    );
    let r = view(&lb).health();
    assert!(
        load_of(&r, 0) < 0.01 && (load_of(&r, 1) - 100.0).abs() < 0.01,
        "100 ms before the fail-back delay ends the backups still carry 100 %: {r:#?}"
    );

    let r = wait_report(
        view(&lb),
        "traffic back on the primaries within 500 ms after the fail-back delay",
        failback_at.saturating_duration_since(Instant::now()) + Duration::from_millis(500),
        |r| load_of(r, 0) > 99.99,
    )
    .await;
    let flipped = Instant::now();
    assert!(
        flipped >= failback_at,
        "traffic moved back {:?} before the fail-back delay ended",
        failback_at - flipped
    );
    assert!(load_of(&r, 1) < 0.01, "{r:#?}");
    wait_report(view(&lb), "all primaries re-admitted", WAIT_LIMIT, |r| {
        keys[..3].iter().all(|k| !is_ejected(r, k))
    })
    .await;
    let w = load.window(&hits, 600).await;
    assert!(
        backups(&w) <= TASKS as u64,
        "after fail-back the backups only get requests already in flight (≤ {TASKS}): {w:?}"
    );
    for (i, &n) in w[..3].iter().enumerate() {
        assert!(
            n >= 120,
            "p{i} got {n} of 600 after fail-back (fair 200, at least 120): {w:?}"
        );
    }
    load.finish(tasks).await;
    assert!(load.failures().is_empty(), "{:#?}", load.failures());
}

/// Active checks: a backend whose `/healthz` answers 503 leaves the view
/// (its requests on `/` would still succeed, so passive detection alone
/// would never notice) and comes back when `/healthz` answers 200 again.
#[tokio::test]
async fn a_backend_failing_its_health_check_gets_no_requests_until_it_passes_again() {
    let backends = Backend::start_all(&["b0", "b1", "b2"])
        .await
        .expect("start backends");
    let registry = Registry::new();
    let _regs: Vec<_> = backends
        .iter()
        .map(|b| register(&registry, b.endpoint()))
        .collect();
    let check = HealthCheck::http("/healthz")
        .interval(INTERVAL)
        .timeout(Duration::from_millis(200))
        .healthy_threshold(2)
        .unhealthy_threshold(2);
    let config = FailoverConfig::new()
        .interval(INTERVAL)
        .without_outlier_detection()
        .health_check(check);
    let lb = client(
        &registry,
        config,
        support::connector(support::http_client()),
    );
    wait_report(view(&lb), "three backends in the view", WAIT_LIMIT, |r| {
        r.endpoints.len() == 3
    })
    .await;
    let hits = counters(&backends);
    let victim = &backends[1];
    let key = victim.endpoint().key().to_owned();

    let (load, tasks) = Load::start(&lb, 4_000);
    let w = load.window(&hits, 300).await;
    assert!(
        w.iter().all(|&n| n >= 70),
        "all healthy: about 100 each of 300: {w:?}"
    );

    let checks_before = victim.health_checks();
    victim.set_health(StatusCode::SERVICE_UNAVAILABLE);
    let r = wait_report(
        view(&lb),
        "the backend failing /healthz marked unhealthy within 1 s (2 failed probes, 50 ms apart)",
        Duration::from_secs(1),
        |r| !health(r, &key).active_healthy,
    )
    .await;
    assert!(
        victim.health_checks() > checks_before,
        "the probes reached the backend"
    );
    assert!(!health(&r, &key).is_healthy());
    assert!(
        health(&r, &key).ejected_until.is_none(),
        "an active verdict is not an ejection"
    );
    assert_eq!(r.tiers[0].healthy, 2, "{r:#?}");
    assert!(!r.panic);
    // Let the requests picked before the view changed land, then measure.
    sleep(Duration::from_millis(100)).await;
    let w = load.window(&hits, 600).await;
    assert_eq!(
        w[1], 0,
        "an actively unhealthy backend gets no requests: {w:?}"
    );

    victim.set_health(StatusCode::OK);
    let r = wait_report(
        view(&lb),
        "the backend passing /healthz again marked healthy within 1 s (2 passes, 50 ms apart)",
        Duration::from_secs(1),
        |r| health(r, &key).active_healthy,
    )
    .await;
    assert_eq!(r.tiers[0].healthy, 3, "{r:#?}");
    let w = load.window(&hits, 600).await;
    assert!(
        w[1] >= 100,
        "back in the view it gets at least half its fair share (200 of 600), got {}: {w:?}",
        w[1]
    );
    load.finish(tasks).await;
    assert!(load.failures().is_empty(), "{:#?}", load.failures());
    assert_eq!(load.server_errors.load(SeqCst), 0);
}

/// A backend that dies (its listener closes, so connections are refused)
/// and one that hangs (accepts, never answers; each endpoint's requests are
/// bounded by a 200 ms `tower::timeout::Timeout` in the connector) are both
/// ejected. Every request to the hung one ends with `Error::Inner` wrapping
/// the timeout, promptly; none hangs; once both are out, requests succeed.
#[tokio::test]
async fn a_dead_and_a_hung_backend_are_ejected_and_no_request_hangs() {
    const PER_REQUEST: Duration = Duration::from_millis(200);
    const EJECTION: Duration = Duration::from_secs(2);
    let mut backends = Backend::start_all(&["b0", "b1", "b2", "b3", "doomed"])
        .await
        .expect("start backends");
    let hung = HungBackend::start().await.expect("start the hung backend");
    let registry = Registry::new();
    let mut regs: Vec<_> = backends
        .iter()
        .map(|b| register(&registry, b.endpoint()))
        .collect();
    regs.push(register(&registry, hung.endpoint()));
    let doomed_key = backends[4].endpoint().key().to_owned();
    let hung_key = hung.endpoint().key().to_owned();
    // Six endpoints; 40 % lets two be ejected at once.
    let config = FailoverConfig::new().interval(INTERVAL).outlier_detection(
        OutlierDetection::new()
            .consecutive_failures(5)
            .base_ejection(EJECTION)
            .max_ejection(EJECTION)
            .max_ejection_percent(40),
    );
    let lb: Client<TimedEndpointService> = client(
        &registry,
        config,
        support::timeout_connector(support::http_client(), PER_REQUEST),
    );
    wait_report(view(&lb), "six endpoints in the view", WAIT_LIMIT, |r| {
        r.endpoints.len() == 6
    })
    .await;
    let healthy_hits = counters(&backends[..4]);

    let (load, tasks) = Load::start(&lb, 5_000);
    let r = wait_report(
        view(&lb),
        "the hung backend ejected within 2 s (5 timeouts of 200 ms)",
        Duration::from_secs(2),
        |r| is_ejected(r, &hung_key),
    )
    .await;
    assert!(!r.panic);
    let hung_failures = load.failures().iter().filter(|f| f.timed_out).count();
    assert!(
        hung_failures >= 5,
        "at least the 5 timeouts that eject it: {hung_failures}"
    );
    assert!(hung.accepted() >= 1, "requests reached the hung backend");

    // Kill the doomed backend: its listener closes, connections are refused.
    let doomed = backends.pop().expect("five backends");
    let done_before_kill = load.done();
    doomed
        .shutdown()
        .await
        .expect("shut the doomed backend down");
    let r = wait_report(
        view(&lb),
        "the dead backend down within 1 s",
        Duration::from_secs(1),
        |r| health(r, &doomed_key).down,
    )
    .await;
    assert!(
        !health(&r, &hung_key).is_healthy(),
        "the hung backend is still out: {r:#?}"
    );
    assert!(
        r.ejections >= 1 && r.downs >= 1,
        "both were taken out: {r:#?}"
    );
    assert!(load.done() > done_before_kill, "the load kept going");

    // With both out, requests succeed (bar those already on their way).
    let errors_before = load.failures().len();
    let w = load.window(&healthy_hits, 600).await;
    let new_errors = load.failures().len() - errors_before;
    assert!(
        new_errors <= TASKS,
        "with both ejected only requests already in flight may fail (≤ {TASKS}), got {new_errors}"
    );
    assert!(
        w.iter().sum::<u64>() >= 590,
        "the four healthy backends answer the window: {w:?}"
    );
    load.finish(tasks).await;

    let failures = load.failures();
    let (timeouts, refused): (Vec<&Failed>, Vec<&Failed>) =
        failures.iter().partition(|f| f.timed_out);
    let not_inner: Vec<&str> = failures
        .iter()
        .filter(|f| !f.inner)
        .map(|f| f.text.as_str())
        .collect();
    assert!(
        not_inner.is_empty(),
        "every failure is Error::Inner: {not_inner:#?}"
    );
    assert!(timeouts.len() >= 5, "{} timeouts", timeouts.len());
    assert!(
        !refused.is_empty(),
        "requests to the dead backend failed with a connection error before it was ejected"
    );
    let slowest = timeouts.iter().map(|f| f.took).max().unwrap_or_default();
    assert!(
        slowest < PER_REQUEST + Duration::from_millis(300),
        "a request to the hung backend took {slowest:?} (limit {PER_REQUEST:?} + 300 ms slack)"
    );
    let slowest_other = refused.iter().map(|f| f.took).max().unwrap_or_default();
    assert!(
        slowest_other < PER_REQUEST + Duration::from_millis(300),
        "a request to the dead backend took {slowest_other:?}: {refused:#?}"
    );
    drop(regs);
}
