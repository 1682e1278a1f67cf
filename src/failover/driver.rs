use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::config::FailoverConfig;
use super::health;
use super::state::Tracker;
use crate::endpoint::Endpoint;
use crate::pool::pool::Shared;
use crate::pool::{Pool, Snapshot};

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows `upstream`, evaluates health and republishes the eligible view
/// into `view` whenever it changes. Runs until aborted (when the view pool
/// is dropped).
pub(crate) async fn run<S>(config: FailoverConfig, upstream: Pool<S>, view: Arc<Shared<S>>)
where
    S: Clone + Send + Sync + 'static,
{
    let mut tracker = Tracker::new(config.clone());

    // Wake when the upstream publishes; the permit is kept if we are busy.
    let changed = Arc::new(Notify::new());
    let weak: Weak<Notify> = Arc::downgrade(&changed);
    upstream.subscribe(move |_| match weak.upgrade() {
        Some(n) => {
            n.notify_one();
            true
        }
        None => false,
    });

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

    let mut period = config.interval;
    if let Some(ss) = &config.slow_start {
        period = period.min(ss.window / 20).max(Duration::from_millis(1));
    }
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_detect = Instant::now();
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
        let detect = now >= next_detect;
        if detect {
            next_detect = now + config.interval;
        }
        let next = tracker.evaluate(&snapshot, now, detect);
        if fresh || !next.same_as(&view.current()) {
            revision += 1;
            view.publish(Snapshot::view(
                revision,
                snapshot.epoch(),
                next.members,
                next.groups,
                snapshot.len(),
                Arc::new(next.report),
            ));
        }
        view.set_evaluated(snapshot.revision());
        last_upstream = Some(snapshot);

        let deadline = tracker.next_deadline();
        tokio::select! {
            () = changed.notified() => {}
            _ = ticks.tick() => {}
            Some(v) = verdicts.recv(), if checking => {
                tracker.set_active(&v.key, v.healthy, Instant::now());
            }
            () = sleep_until_opt(deadline), if deadline.is_some() => {}
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d).await;
    }
}
