use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::config::FailoverConfig;
use super::health::{self, HealthCheck};
use super::state::Tracker;
use super::view::{AbortOnDrop, Shared, View};
use crate::endpoint::Endpoint;
use crate::pool::{Pool, Snapshot};

/// Follows `upstream`, evaluates health and republishes the eligible view
/// into `view` whenever it changes. Runs until aborted (when the last
/// [`Failover`](super::Failover) handle is dropped).
///
/// It wakes when the upstream publishes, when a request fails (the pool's
/// outcome signal: a streak is ejected and an unreachable endpoint marked
/// down within the same wake-up), when a probe or an active check reports,
/// when an ejection, a probe or a fail-back delay is due, and once per
/// interval for the failure-rate detector (on the ticks' own schedule).
pub(crate) async fn run<S>(config: FailoverConfig, upstream: Pool<S>, view: Arc<Shared<S>>)
where
    S: Clone + Send + Sync + 'static,
{
    let mut tracker = Tracker::new(config.clone());

    let changed = wake_on_publish(&upstream);
    let outcomes = upstream.outcomes().clone();

    // Active checks run in their own task, fed the endpoint list.
    let (targets_tx, targets_rx) = watch::channel::<Arc<[Endpoint]>>(Arc::from(Vec::new()));
    let (verdict_tx, mut verdicts) = mpsc::unbounded_channel();
    let checking = config.health_check.is_some();
    let _checker = config.health_check.clone().map(|check| {
        AbortOnDrop(tokio::spawn(health::run(
            Arc::new(check),
            targets_rx,
            verdict_tx,
        )))
    });
    // What probes a down endpoint back: the active check, else a connect.
    let probe = Arc::new(
        config
            .health_check
            .clone()
            .unwrap_or_else(|| HealthCheck::tcp().timeout(Duration::from_secs(1))),
    );
    // Dropping the set (with this future) aborts the probes in flight.
    let mut probes: JoinSet<(Arc<str>, bool)> = JoinSet::new();

    // The failure-rate detector's schedule, and the slow-start ramp's.
    let mut detect_ticks = ticks(config.interval);
    let mut ramp_ticks = config
        .slow_start
        .as_ref()
        .map(|ss| ticks((ss.window / 20).max(Duration::from_millis(1))));
    let mut detect = false;
    let mut last_upstream: Option<Arc<Snapshot<S>>> = None;
    let mut revision = 0u64;

    loop {
        let snapshot = upstream.snapshot();
        let fresh = !last_upstream
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(l, &snapshot));
        if fresh && checking {
            let endpoints: Vec<Endpoint> = snapshot
                .members()
                .iter()
                .map(|m| m.endpoint().clone())
                .collect();
            targets_tx.send_replace(endpoints.into());
        }
        let now = Instant::now();
        let detected = std::mem::take(&mut detect);
        evaluate(
            &mut tracker,
            &snapshot,
            &view,
            fresh,
            detected,
            &mut revision,
            now,
        );
        for endpoint in tracker.due_probes(&snapshot, now) {
            let probe = probe.clone();
            probes.spawn(async move {
                let ok = health::passes(&probe, &endpoint).await;
                (endpoint.key_arc().clone(), ok)
            });
        }
        last_upstream = Some(snapshot);

        let deadline = tracker.next_deadline();
        tokio::select! {
            () = changed.notified() => {}
            () = outcomes.notified() => {}
            _ = detect_ticks.tick() => detect = true,
            _ = tick_opt(&mut ramp_ticks), if ramp_ticks.is_some() => {}
            Some(v) = verdicts.recv(), if checking => {
                tracker.set_active(&v.key, v.healthy, Instant::now());
            }
            Some(done) = probes.join_next(), if !probes.is_empty() => {
                if let (Ok((key, ok)), Some(last)) = (done, &last_upstream) {
                    tracker.probed(last, &key, ok, Instant::now());
                }
            }
            () = sleep_until_opt(deadline), if deadline.is_some() => {}
        }
    }
}

/// Evaluates health over `snapshot` and publishes the view when it is new
/// (`fresh`) or changed, then records the snapshot as evaluated.
fn evaluate<S: Clone>(
    tracker: &mut Tracker,
    snapshot: &Snapshot<S>,
    view: &Shared<S>,
    fresh: bool,
    detect: bool,
    revision: &mut u64,
    now: Instant,
) {
    let next = tracker.evaluate(snapshot, now, detect);
    if fresh || !next.same_as(&view.current()) {
        *revision += 1;
        view.publish(View::new(
            *revision,
            snapshot,
            next.members,
            next.groups,
            next.trials,
            next.report,
        ));
    } else {
        view.set_latest(next.report);
    }
    view.set_evaluated(snapshot.revision());
}

/// A signal the upstream's publications wake; the permit is kept while the
/// driver is busy.
fn wake_on_publish<S>(upstream: &Pool<S>) -> Arc<Notify> {
    let changed = Arc::new(Notify::new());
    let weak: Weak<Notify> = Arc::downgrade(&changed);
    upstream.subscribe(move |_| match weak.upgrade() {
        Some(n) => {
            n.notify_one();
            true
        }
        None => false,
    });
    changed
}

/// Ticks every `period`, delayed (not bunched) after a busy spell.
fn ticks(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

async fn tick_opt(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d).await;
    }
}
