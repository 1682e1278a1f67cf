//! Discovery under load, with real HTTP backends on loopback.
//!
//! Many tasks share one balancer while backends leave and join the
//! registry. Every request must end in a response or a typed error; a
//! backend that left must get no request that was sent after the pool
//! applied its removal, so it can be shut down without failing anyone.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use hyper::StatusCode;
use tokio::time::Instant;
use tower_lb::balance::{Balance, LeastInFlight, PeakEwma, Strategy, WeightedRoundRobin};
use tower_lb::discover::{Registration, Registry};

use support::{Backend, EndpointService, GetError};

const SERVICE: &str = "backend";
const TASKS: usize = 16;
const PER_TASK: usize = 250;
const TOTAL: usize = TASKS * PER_TASK;
/// The whole churn test must finish within this.
const LIMIT: Duration = Duration::from_secs(10);
/// Requests that must complete after a removal is drained before the
/// removed backend's counter is checked again.
const TRAFFIC_AFTER_DRAIN: usize = 200;

/// A task's generation marker once it has sent all its requests.
const FINISHED: u64 = u64::MAX;

/// One churn step: when `at` requests have completed, register `add` and
/// deregister `remove` (indices into the backends).
struct Step {
    at: usize,
    add: &'static [usize],
    remove: &'static [usize],
}

/// Nine backends are started up front (so no port is reused while the test
/// runs); five are registered at first, the rest join mid-run. Backend 5
/// joins in the first step and leaves in the second.
const WEIGHTS: [u32; 9] = [1, 2, 3, 1, 2, 2, 1, 3, 1];
const INITIAL: &[usize] = &[0, 1, 2, 3, 4];
const STEPS: &[Step] = &[
    Step {
        at: TOTAL / 10,
        add: &[5, 6],
        remove: &[0, 1],
    },
    Step {
        at: TOTAL * 35 / 100,
        add: &[7],
        remove: &[2, 5],
    },
    Step {
        at: TOTAL * 6 / 10,
        add: &[8],
        remove: &[3],
    },
];
const FINAL: &[usize] = &[4, 6, 7, 8];

/// State shared by the load tasks and the controller.
struct Shared {
    /// Requests finished (either way).
    done: AtomicUsize,
    /// Bumped after each removal has been applied by the pool.
    generation: AtomicU64,
    /// Per task: the generation it read just before its latest request, or
    /// [`FINISHED`].
    seen: Vec<AtomicU64>,
}

impl Shared {
    async fn until_done(&self, n: usize) {
        while self.done.load(SeqCst) < n.min(TOTAL) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits until every task has started a request at generation `g` or
    /// later (or has finished). Tasks send one request at a time, so after
    /// this no request started before `g` is still in flight.
    async fn drained(&self, g: u64) {
        while self.seen.iter().any(|s| s.load(SeqCst) < g) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// What one load task saw: for each answered request, the generation it
/// was sent at and the backend that answered; and every error.
#[derive(Default)]
struct Tally {
    answered: Vec<(u64, String)>,
    errors: Vec<String>,
}

async fn load<St: Strategy>(
    lb: Balance<EndpointService, St>,
    shared: Arc<Shared>,
    task: usize,
) -> Tally {
    let mut tally = Tally::default();
    for _ in 0..PER_TASK {
        let g = shared.generation.load(SeqCst);
        shared.seen[task].store(g, SeqCst);
        match support::get(&lb).await {
            Ok(reply) if reply.status == StatusCode::OK => tally.answered.push((g, reply.body)),
            Ok(reply) => tally
                .errors
                .push(format!("status {} from {}", reply.status, reply.body)),
            // A typed `tower_lb::Error` from the balancer, or a body that
            // broke off after the head arrived.
            Err(e @ (GetError::Balance(_) | GetError::Body(_))) => tally.errors.push(e.to_string()),
        }
        shared.done.fetch_add(1, SeqCst);
    }
    shared.seen[task].store(FINISHED, SeqCst);
    tally
}

/// What the controller learned about one removed backend.
struct Removal {
    backend: usize,
    /// The generation from which no request may reach it.
    cutoff: u64,
    /// Its hit count right after the pool applied the removal.
    hits_at_cutoff: u64,
    /// Its hit count once every request sent before the cutoff finished.
    hits_drained: u64,
    /// Its hit count after more traffic, just before shutdown.
    hits_final: u64,
}

async fn churn_under_load<St>(strategy: St)
where
    St: Strategy + Clone,
{
    let names: Vec<String> = (0..WEIGHTS.len()).map(|i| format!("b{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut backends: Vec<Option<Backend>> = Backend::start_all(&names)
        .await
        .expect("start backends")
        .into_iter()
        .map(Some)
        .collect();
    let keys: Vec<String> = backends
        .iter()
        .map(|b| {
            b.as_ref()
                .map(|b| b.endpoint().key().to_owned())
                .unwrap_or_default()
        })
        .collect();
    let registry = Registry::new();
    let register = |i: usize, backends: &[Option<Backend>]| -> Registration {
        let b = backends[i].as_ref().expect("backend is running");
        registry
            .register(SERVICE, b.endpoint().with_weight(WEIGHTS[i]))
            .expect("register")
    };
    let mut registrations: HashMap<usize, Registration> = INITIAL
        .iter()
        .map(|&i| (i, register(i, &backends)))
        .collect();

    let lb = support::balancer(registry.watch(SERVICE).expect("watch"), strategy);
    assert!(lb.pool().applied(registry.revision_of(SERVICE)).await);
    assert_eq!(lb.snapshot().len(), INITIAL.len());

    let shared = Arc::new(Shared {
        done: AtomicUsize::new(0),
        generation: AtomicU64::new(0),
        seen: (0..TASKS).map(|_| AtomicU64::new(0)).collect(),
    });
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| tokio::spawn(load(lb.clone(), shared.clone(), t)))
        .collect();

    let mut removals = Vec::new();
    for step in STEPS {
        shared.until_done(step.at).await;
        // Join first, then leave, as a rolling deploy does.
        for &i in step.add {
            registrations.insert(i, register(i, &backends));
        }
        // Keep the leaving endpoints' stats: the pool forgets them.
        let snapshot = lb.pool().snapshot();
        let stats: Vec<_> = step
            .remove
            .iter()
            .map(|&i| {
                let member = snapshot
                    .get(&keys[i])
                    .expect("leaving backend is in the pool");
                member.stats().clone()
            })
            .collect();
        drop(snapshot);
        for &i in step.remove {
            drop(registrations.remove(&i).expect("registered"));
        }
        assert!(
            lb.pool().applied(registry.revision_of(SERVICE)).await,
            "source ended"
        );
        let cutoff = shared.generation.fetch_add(1, SeqCst) + 1;
        let hits_at_cutoff: Vec<u64> = step
            .remove
            .iter()
            .map(|&i| backends[i].as_ref().expect("running").hits())
            .collect();
        for &i in step.remove {
            assert!(
                lb.snapshot().get(&keys[i]).is_none(),
                "b{i} still in the picker's snapshot"
            );
        }

        shared.drained(cutoff).await;
        for s in &stats {
            assert_eq!(
                s.in_flight(),
                0,
                "in-flight count returns to zero once drained"
            );
        }
        let hits_drained: Vec<u64> = step
            .remove
            .iter()
            .map(|&i| backends[i].as_ref().expect("running").hits())
            .collect();

        // Let traffic go on with the removed backends still listening: had
        // any been picked, it would have answered and counted the hit.
        let now = shared.done.load(SeqCst);
        shared.until_done(now + TRAFFIC_AFTER_DRAIN).await;

        for (k, &i) in step.remove.iter().enumerate() {
            let backend = backends[i].take().expect("running");
            let hits_final = backend.hits();
            let after_shutdown = backend.shutdown().await.expect("clean shutdown");
            assert_eq!(after_shutdown, hits_final);
            removals.push(Removal {
                backend: i,
                cutoff,
                hits_at_cutoff: hits_at_cutoff[k],
                hits_drained: hits_drained[k],
                hits_final,
            });
        }
    }

    let mut tally = Tally::default();
    for t in tasks {
        let mut one = t.await.expect("load task panicked");
        tally.answered.append(&mut one.answered);
        tally.errors.append(&mut one.errors);
    }
    let elapsed = started.elapsed();

    // Every request ended in a response or a typed error, and with healthy
    // backends none failed.
    assert_eq!(tally.answered.len() + tally.errors.len(), TOTAL);
    assert!(
        tally.errors.is_empty(),
        "{} errors, first: {:?}",
        tally.errors.len(),
        tally.errors.first()
    );

    let mut per_backend: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, name) in &tally.answered {
        *per_backend.entry(name.as_str()).or_default() += 1;
    }
    eprintln!(
        "{}: {TOTAL} requests in {elapsed:?}: {per_backend:?}",
        std::any::type_name::<St>()
    );

    for r in &removals {
        let name = names[r.backend];
        eprintln!(
            "  {name}: {} hits at the cutoff, +{} from requests already in flight, +{} after",
            r.hits_at_cutoff,
            r.hits_drained - r.hits_at_cutoff,
            r.hits_final - r.hits_drained
        );
        // No request sent after the pool applied the removal reached it.
        let late = tally
            .answered
            .iter()
            .filter(|(g, n)| n == name && *g >= r.cutoff)
            .count();
        assert_eq!(
            late, 0,
            "{name} answered {late} requests sent after its removal was applied"
        );
        // Requests picked before the update may still have been on their
        // way to it; each task has at most one request outstanding.
        assert!(
            r.hits_drained - r.hits_at_cutoff <= TASKS as u64,
            "{name}: {} hits after the cutoff, more than the {TASKS} that can be in flight",
            r.hits_drained - r.hits_at_cutoff
        );
        // Once those finished, nothing more arrived.
        assert_eq!(
            r.hits_final, r.hits_drained,
            "{name} got a request after it was drained"
        );
        assert_eq!(per_backend.get(name).copied().unwrap_or(0), r.hits_final);
    }

    // Backends that joined mid-run took traffic.
    for step in STEPS {
        for &i in step.add {
            assert!(
                per_backend.get(names[i]).copied().unwrap_or(0) > 0,
                "{} got no traffic",
                names[i]
            );
        }
    }
    // Every hit the servers counted was answered to a caller, and vice versa.
    for (i, b) in backends.iter().enumerate() {
        if let Some(b) = b {
            assert_eq!(
                per_backend.get(names[i]).copied().unwrap_or(0),
                b.hits(),
                "{}",
                names[i]
            );
        }
    }

    let snapshot = lb.pool().snapshot();
    let mut live: Vec<&str> = snapshot
        .members()
        .iter()
        .map(|m| m.endpoint().key())
        .collect();
    let mut want: Vec<&str> = FINAL.iter().map(|&i| keys[i].as_str()).collect();
    live.sort_unstable();
    want.sort_unstable();
    assert_eq!(live, want);
    for report in snapshot.report() {
        assert_eq!(report.in_flight, 0, "{}", report.endpoint);
        assert_eq!(report.failures, 0, "{}", report.endpoint);
    }
    assert_eq!(lb.pool().discovery().connect_failures, 0);

    drop(registrations);
    for b in backends.into_iter().flatten() {
        b.shutdown().await.expect("clean shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_under_load_least_in_flight() {
    tokio::time::timeout(LIMIT, churn_under_load(LeastInFlight))
        .await
        .expect("finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_under_load_weighted_round_robin() {
    tokio::time::timeout(LIMIT, churn_under_load(WeightedRoundRobin))
        .await
        .expect("finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_hold_over_real_http() {
    let backends = Backend::start_all(&["one", "two", "three"])
        .await
        .expect("start backends");
    let registry = Registry::new();
    let _registrations: Vec<Registration> = backends
        .iter()
        .zip([1, 2, 3])
        .map(|(b, w)| {
            registry
                .register(SERVICE, b.endpoint().with_weight(w))
                .expect("register")
        })
        .collect();
    let lb = support::balancer(registry.watch(SERVICE).expect("watch"), WeightedRoundRobin);
    assert!(lb.pool().applied(registry.revision_of(SERVICE)).await);
    assert_eq!(lb.snapshot().len(), 3);

    let mut answered: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..600 {
        let reply = support::get(&lb).await.expect("request succeeds");
        assert_eq!(reply.status, StatusCode::OK);
        *answered.entry(reply.body).or_default() += 1;
    }
    // A cycle of weights 1:2:3 is six picks long, so 600 picks are exactly
    // 100 cycles, wherever the cycle started.
    let hits: Vec<u64> = backends.iter().map(Backend::hits).collect();
    assert_eq!(hits, [100, 200, 300]);
    for b in &backends {
        assert_eq!(
            answered.get(b.name()).copied(),
            Some(b.hits()),
            "{}",
            b.name()
        );
    }
    for b in backends {
        b.shutdown().await.expect("clean shutdown");
    }
}

/// Peak-EWMA in real time (so the balancer times requests with the CPU's
/// counter under the default features): the slow backend's estimate is
/// measured in real nanoseconds and it is avoided once measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_measures_and_avoids_a_slow_backend_over_real_http() {
    const SLOW: Duration = Duration::from_millis(30);
    let backends = Backend::start_all(&["fast", "slow"])
        .await
        .expect("start backends");
    backends[1].set_delay(SLOW);
    let registry = Registry::new();
    let _registrations: Vec<Registration> = backends
        .iter()
        .map(|b| registry.register(SERVICE, b.endpoint()).expect("register"))
        .collect();
    let lb = support::balancer(registry.watch(SERVICE).expect("watch"), PeakEwma::new());
    assert!(lb.pool().applied(registry.revision_of(SERVICE)).await);

    let started = Instant::now();
    for _ in 0..300 {
        let reply = support::get(&lb).await.expect("request succeeds");
        assert_eq!(reply.status, StatusCode::OK);
    }
    let elapsed = started.elapsed();

    let report = |name: &str| {
        let addr = backends.iter().find(|b| b.name() == name).unwrap().addr();
        lb.snapshot()
            .members()
            .iter()
            .find(|m| m.endpoint().address() == Some(addr))
            .map(|m| m.report())
            .expect("backend in the pool")
    };
    let (fast, slow) = (report("fast"), report("slow"));
    let slow_latency = slow.ewma_latency.expect("the slow backend was measured");
    let fast_latency = fast.ewma_latency.expect("the fast backend was measured");
    // The estimate is a measured round trip: at least the backend's delay,
    // and no more than the whole run took.
    assert!(
        slow_latency >= SLOW && slow_latency < elapsed,
        "{slow_latency:?}"
    );
    assert!(fast_latency < SLOW / 2, "{fast_latency:?}");
    // One sample is enough to keep it off until the estimate decays
    // (tau = 10 s, far longer than this run): allow a few early picks.
    assert!(backends[1].hits() <= 5, "slow got {}", backends[1].hits());
    assert_eq!(backends[0].hits() + backends[1].hits(), 300);
    for b in backends {
        b.shutdown().await.expect("clean shutdown");
    }
}
