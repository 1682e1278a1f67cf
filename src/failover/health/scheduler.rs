//! The active-check task: a round of probes each interval, and the
//! thresholds that turn a streak of results into a verdict.

use std::collections::{HashMap, HashSet};
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{self, Interval, MissedTickBehavior};

use super::probe::{Failure, check_once};
use super::{HealthCheck, MIN_INTERVAL, Probe};
use crate::endpoint::Endpoint;
use crate::trace::event;

/// One endpoint's active-check verdict changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) key: Arc<str>,
    pub(crate) healthy: bool,
}

/// Probes every endpoint in `targets` each interval until `verdicts` is
/// closed or `targets`' sender is dropped; sends a [`Verdict`] whenever an
/// endpoint crosses a threshold.
///
/// Dropping the future (aborting its task) also aborts the probes in
/// flight.
pub(crate) async fn run(
    check: Arc<HealthCheck>,
    mut targets: watch::Receiver<Arc<[Endpoint]>>,
    verdicts: mpsc::UnboundedSender<Verdict>,
) {
    let rise = check.healthy_threshold.max(1);
    let fall = check.unhealthy_threshold.max(1);
    let mut ticker = time::interval(check.interval.max(MIN_INTERVAL));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut states: HashMap<Arc<str>, State> = HashMap::new();

    let mut idle = false;
    while next_round(&mut ticker, &mut targets, &verdicts, idle).await {
        let round = targets.borrow_and_update().clone();
        idle = round.is_empty();
        let mut outcomes = probe_all(&check, &round).await;

        // Endpoints that left while the round ran are forgotten now, so no
        // verdict names an endpoint that is no longer in the set.
        let current = targets.borrow_and_update().clone();
        let live: HashSet<&str> = current.iter().map(Endpoint::key).collect();
        states.retain(|key, _| live.contains(&**key));

        for endpoint in round.iter() {
            // `remove` also skips a key listed twice.
            let Some(outcome) = outcomes.remove(endpoint.key()) else {
                continue;
            };
            if !live.contains(endpoint.key()) {
                continue;
            }
            let key = endpoint.key_arc();
            let state = states.entry(Arc::clone(key)).or_default();
            let verdict = state.record(outcome.is_ok(), rise, fall);
            trace_outcome(key, &check.probe, &outcome, verdict);
            if let Some(healthy) = verdict {
                let verdict = Verdict {
                    key: Arc::clone(key),
                    healthy,
                };
                if verdicts.send(verdict).is_err() {
                    return;
                }
            }
        }
    }
}

/// Waits for the next tick. `false` when the checker should stop: the
/// verdict receiver is gone or the targets' sender was dropped.
async fn next_round(
    ticker: &mut Interval,
    targets: &mut watch::Receiver<Arc<[Endpoint]>>,
    verdicts: &mpsc::UnboundedSender<Verdict>,
    idle: bool,
) -> bool {
    enum Wake {
        Tick,
        Changed,
        Stop,
    }
    loop {
        if verdicts.is_closed() {
            return false;
        }
        let mut changed = pin!(targets.changed());
        let mut closed = pin!(verdicts.closed());
        let wake = poll_fn(|cx| {
            if closed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Stop);
            }
            if let Poll::Ready(result) = changed.as_mut().poll(cx) {
                return Poll::Ready(if result.is_ok() {
                    Wake::Changed
                } else {
                    Wake::Stop
                });
            }
            ticker.poll_tick(cx).map(|_| Wake::Tick)
        })
        .await;
        match wake {
            Wake::Tick => return true,
            // A checker that had nothing to probe (the pool was still
            // empty) starts as soon as it has something, rather than a
            // whole interval later.
            Wake::Changed if idle => return true,
            Wake::Changed => {}
            Wake::Stop => return false,
        }
    }
}

/// Probes each distinct endpoint of `round` in its own task and waits for
/// all of them; each is bounded by the check's timeout.
async fn probe_all(
    check: &Arc<HealthCheck>,
    round: &[Endpoint],
) -> HashMap<Arc<str>, Result<(), Failure>> {
    let mut outcomes = HashMap::with_capacity(round.len());
    let mut probes = JoinSet::new();
    for endpoint in round {
        if outcomes.contains_key(endpoint.key()) {
            continue;
        }
        // Stays a failure if the probe's task panics.
        outcomes.insert(Arc::clone(endpoint.key_arc()), Err(Failure::Panicked));
        let check = Arc::clone(check);
        let endpoint = endpoint.clone();
        probes.spawn(async move {
            let outcome = check_once(&check, &endpoint).await;
            (Arc::clone(endpoint.key_arc()), outcome)
        });
    }
    while let Some(joined) = probes.join_next().await {
        if let Ok((key, outcome)) = joined {
            outcomes.insert(key, outcome);
        }
    }
    outcomes
}

/// One endpoint's checker state.
#[derive(Debug, Default)]
struct State {
    unhealthy: bool,
    /// Consecutive results that disagree with the current state.
    streak: u32,
}

impl State {
    /// Records one probe result; the new state when it crosses a threshold.
    fn record(&mut self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        let healthy = !self.unhealthy;
        if passed == healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < if healthy { fall } else { rise } {
            return None;
        }
        self.unhealthy = healthy;
        self.streak = 0;
        Some(passed)
    }
}

#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
fn trace_outcome(key: &str, probe: &Probe, outcome: &Result<(), Failure>, verdict: Option<bool>) {
    match (outcome, verdict) {
        (Err(reason), Some(false)) => event!(
            warn,
            endpoint = %key,
            probe = ?probe,
            reason = %reason,
            "active health check failed; endpoint marked unhealthy"
        ),
        (Ok(()), Some(true)) => event!(
            info,
            endpoint = %key,
            probe = ?probe,
            "active health check passed; endpoint marked healthy again"
        ),
        (Err(reason), _) => event!(
            debug,
            endpoint = %key,
            probe = ?probe,
            reason = %reason,
            "active health probe failed"
        ),
        (Ok(()), _) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::time::{Instant, sleep, sleep_until, timeout};

    use super::super::test_support::{Checker, verdict};

    #[tokio::test(start_paused = true)]
    async fn custom_probe_verdicts_respect_thresholds_exactly() {
        let ok = Arc::new(AtomicBool::new(true));
        let calls = Arc::new(AtomicUsize::new(0));
        let (ok2, calls2) = (ok.clone(), calls.clone());
        let check = HealthCheck::custom(move |_| {
            calls2.fetch_add(1, Ordering::SeqCst);
            let ok = ok2.load(Ordering::SeqCst);
            async move { ok }
        })
        .interval(Duration::from_secs(1))
        .unhealthy_threshold(3)
        .healthy_threshold(2);
        let ep = Endpoint::builder("svc-1").build().unwrap();
        let t0 = Instant::now();
        let mut checker = Checker::start(check, std::slice::from_ref(&ep));
        // Rounds run at t = 0 s, 1 s, 2 s, …; look (and flip) half-way between.
        let at = |secs: f64| sleep_until(t0 + Duration::from_secs_f64(secs));
        // (time, probe result from the next round on, verdict expected by then)
        let script: &[(f64, bool, Option<bool>)] = &[
            (0.5, false, None), // round 0 passed
            (1.5, false, None), // 1 failure
            (2.5, false, None), // 2 failures: still healthy
            (3.5, true, Some(false)),
            (4.5, true, None), // 1 pass: still unhealthy
            (5.5, false, Some(true)),
            (6.5, true, None),  // fail, then …
            (7.5, false, None), // … a pass resets the count
            (8.5, false, None),
            (9.5, false, None), // 2 failures in a row
            (10.5, true, Some(false)),
        ];
        for &(secs, next, expected) in script {
            at(secs).await;
            match expected {
                Some(healthy) => {
                    assert_eq!(
                        checker.verdicts.try_recv(),
                        Ok(verdict(&ep, healthy)),
                        "t = {secs}"
                    );
                }
                None => checker.assert_no_verdict(),
            }
            ok.store(next, Ordering::SeqCst);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 11, "one probe per round");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_thresholds_and_interval_are_clamped() {
        let ok = Arc::new(AtomicBool::new(false));
        let ok2 = ok.clone();
        let mut check = HealthCheck::custom(move |_| {
            let ok = ok2.load(Ordering::SeqCst);
            async move { ok }
        });
        // As if built in the crate without the builder's checks.
        check.interval = Duration::ZERO;
        check.healthy_threshold = 0;
        check.unhealthy_threshold = 0;
        let ep = Endpoint::builder("svc-1").build().unwrap();
        let mut checker = Checker::start(check, std::slice::from_ref(&ep));
        let t0 = Instant::now();
        assert_eq!(checker.next_verdict().await, verdict(&ep, false));
        ok.store(true, Ordering::SeqCst);
        assert_eq!(checker.next_verdict().await, verdict(&ep, true));
        // Rounds at t = 0 and 1 ms: a zero interval neither panics nor spins.
        assert_eq!(t0.elapsed(), MIN_INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    async fn run_returns_when_verdicts_are_dropped() {
        let check = HealthCheck::custom(|_| async { true }).interval(Duration::from_secs(1));
        let ep = Endpoint::builder("svc-1").build().unwrap();
        let (_targets, targets_rx) = watch::channel(Arc::from(vec![ep]));
        let (verdicts_tx, verdicts_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(Arc::new(check), targets_rx, verdicts_tx));
        sleep(Duration::from_millis(1500)).await; // two rounds ran
        drop(verdicts_rx);
        // Well before the next round is due.
        timeout(Duration::from_millis(10), task)
            .await
            .expect("run kept going without a verdict receiver")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn run_returns_when_targets_sender_is_dropped() {
        let check = HealthCheck::custom(|_| async { true }).interval(Duration::from_secs(1));
        let ep = Endpoint::builder("svc-1").build().unwrap();
        let (targets, targets_rx) = watch::channel(Arc::from(vec![ep]));
        let (verdicts_tx, _verdicts_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(Arc::new(check), targets_rx, verdicts_tx));
        sleep(Duration::from_millis(1500)).await;
        // An update not yet read, then the sender goes: still stops.
        targets.send_replace(Arc::from(Vec::new()));
        drop(targets);
        timeout(Duration::from_millis(10), task)
            .await
            .expect("run kept going without a targets sender")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn departed_endpoints_are_forgotten() {
        let a = Endpoint::builder("a").build().unwrap();
        let b = Endpoint::builder("b").build().unwrap();
        let a_ok = Arc::new(AtomicBool::new(false));
        let probed = Arc::new(Mutex::new(Vec::<String>::new()));
        let (a_ok2, probed2) = (a_ok.clone(), probed.clone());
        let check = HealthCheck::custom(move |ep: Endpoint| {
            probed2.lock().unwrap().push(ep.key().to_owned());
            let ok = ep.key() != "a" || a_ok2.load(Ordering::SeqCst);
            async move { ok }
        })
        .interval(Duration::from_secs(1))
        .unhealthy_threshold(2)
        .healthy_threshold(1);
        let t0 = Instant::now();
        let at = |secs: f64| sleep_until(t0 + Duration::from_secs_f64(secs));
        let taken = || std::mem::take(&mut *probed.lock().unwrap());

        // A key listed twice is probed once per round.
        let mut checker = Checker::start(check, &[a.clone(), b.clone(), a.clone()]);
        at(0.5).await; // a: 1 failure
        assert_eq!(taken(), ["a", "b"]);
        checker.set_targets(std::slice::from_ref(&b));
        at(1.5).await; // a not probed
        assert_eq!(taken(), ["b"]);
        checker.set_targets(&[a.clone(), b.clone()]);
        at(2.5).await; // a: 1 failure again, its earlier one forgotten
        checker.assert_no_verdict();
        at(3.5).await; // a: 2 failures
        assert_eq!(checker.verdicts.try_recv(), Ok(verdict(&a, false)));

        // Unhealthy a leaves; back with passing probes, it starts healthy,
        // so no verdict is needed.
        checker.set_targets(std::slice::from_ref(&b));
        at(4.5).await;
        assert_eq!(taken(), ["a", "b", "a", "b", "b"]); // t = 2 s, 3 s, 4 s
        a_ok.store(true, Ordering::SeqCst);
        checker.set_targets(&[a.clone(), b.clone()]);
        at(6.5).await;
        checker.assert_no_verdict();
        assert_eq!(taken().iter().filter(|k| *k == "a").count(), 2);
        // And a healthy-to-unhealthy verdict again takes the full threshold.
        a_ok.store(false, Ordering::SeqCst);
        at(7.5).await;
        checker.assert_no_verdict();
        at(8.5).await;
        assert_eq!(checker.verdicts.try_recv(), Ok(verdict(&a, false)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_checker_started_empty_probes_its_first_endpoints_at_once() {
        let a = Endpoint::builder("a").build().unwrap();
        let probed = Arc::new(Mutex::new(Vec::<Instant>::new()));
        let probed2 = probed.clone();
        let check = HealthCheck::custom(move |_| {
            probed2.lock().unwrap().push(Instant::now());
            async { true }
        })
        .interval(Duration::from_secs(10));
        let t0 = Instant::now();
        let checker = Checker::start(check, &[]);
        sleep(Duration::from_secs(1)).await;
        assert!(probed.lock().unwrap().is_empty());
        checker.set_targets(std::slice::from_ref(&a));
        sleep(Duration::from_millis(10)).await;
        let first = probed.lock().unwrap().clone();
        assert_eq!(first.len(), 1, "probed once, at once");
        assert!(
            first[0] - t0 < Duration::from_secs(2),
            "not a whole interval later"
        );
        // Later changes wait for the next tick.
        checker.set_targets(&[a.clone(), Endpoint::builder("b").build().unwrap()]);
        sleep(Duration::from_millis(10)).await;
        assert_eq!(probed.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_verdict_for_an_endpoint_that_left_during_its_probe() {
        let a = Endpoint::builder("a").build().unwrap();
        let b = Endpoint::builder("b").build().unwrap();
        // Every probe fails after 100 ms.
        let check = HealthCheck::custom(|_| async {
            sleep(Duration::from_millis(100)).await;
            false
        })
        .interval(Duration::from_secs(1))
        .unhealthy_threshold(1);
        let t0 = Instant::now();
        let mut checker = Checker::start(check, &[a.clone(), b.clone()]);
        sleep_until(t0 + Duration::from_millis(50)).await;
        checker.set_targets(std::slice::from_ref(&b));
        assert_eq!(checker.next_verdict().await, verdict(&b, false));
        sleep_until(t0 + Duration::from_millis(500)).await;
        checker.assert_no_verdict();
    }

    #[tokio::test(start_paused = true)]
    async fn panicking_or_slow_custom_probe_is_a_failure() {
        let check = HealthCheck::custom(|_| async { panic!("probe bug") })
            .interval(Duration::from_secs(1))
            .unhealthy_threshold(2);
        let ep = Endpoint::builder("svc-1").build().unwrap();
        let t0 = Instant::now();
        let mut checker = Checker::start(check, std::slice::from_ref(&ep));
        // Two rounds (t = 0 s, 1 s): the checker survived the first panic.
        assert_eq!(checker.next_verdict().await, verdict(&ep, false));
        assert_eq!(t0.elapsed(), Duration::from_secs(1));

        let check =
            HealthCheck::custom(|_| std::future::pending()).timeout(Duration::from_millis(300));
        assert_eq!(check_once(&check, &ep).await, Err(Failure::TimedOut));
    }
}
