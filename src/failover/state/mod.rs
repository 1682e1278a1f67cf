//! The failover decision, kept apart from tasks and channels so it can be
//! driven step by step: endpoint health, tier loads, panic, the view.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::config::{FailoverConfig, OutlierDetection, Reconnect};
use super::report::{EjectionReason, HealthReport, Transitions};
use super::trial::{OnTrial, Trial};
use super::view::{Group, View};
use crate::endpoint::Endpoint;
use crate::pool::{Member, MemberList, Snapshot};
use crate::trace::event;

mod view;

/// What failover tracks per endpoint.
#[derive(Debug)]
struct EndpointState {
    key: Arc<str>,
    priority: u8,
    /// Set while the endpoint cannot be reached.
    down: Option<Down>,
    /// Unreachable failures seen so far (of its stats' count).
    seen_unreachable: u64,
    ejected_until: Option<Instant>,
    times_ejected: u32,
    /// Why it was last ejected, while ejected or on trial after that.
    reason: Option<EjectionReason>,
    /// On trial (back from an ejection, or down with no way to probe it).
    /// Out of rotation; one request may go there, and its outcome decides.
    trial: Option<Pending>,
    active_healthy: bool,
    /// When its slow-start ramp began, while it ramps.
    warm_since: Option<Instant>,
    /// Counters at the last failure-rate pass.
    last: Counters,
    /// How often it left rotation and came back.
    transitions: Transitions,
}

/// An endpoint's success and failure counts at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    successes: u64,
    failures: u64,
}

impl Counters {
    fn of<S>(m: &Member<S>) -> Self {
        Counters {
            successes: m.stats().successes(),
            failures: m.stats().failures(),
        }
    }
}

/// A trial offered and not yet decided.
#[derive(Debug)]
struct Pending {
    /// The endpoint's counters when the trial was offered.
    at: Counters,
    /// What the view publishes, and the trial request ends.
    trial: Arc<Trial>,
}

impl Pending {
    fn offer<S>(m: &Member<S>) -> Option<Self> {
        Some(Pending {
            at: Counters::of(m),
            trial: Trial::offered(),
        })
    }
}

/// A down endpoint's probing.
#[derive(Debug, Clone, Copy)]
struct Down {
    /// Probes that failed since it went down.
    failed: u32,
    /// When the next probe is due.
    next_probe: Instant,
    /// Whether a probe is running.
    probing: bool,
    /// Its counters when it went down: a success after that (in panic
    /// mode, which may send it requests) brings it back too.
    at: Counters,
}

impl EndpointState {
    fn healthy(&self) -> bool {
        self.down.is_none()
            && self.ejected_until.is_none()
            && self.trial.is_none()
            && self.active_healthy
    }

    /// Out of rotation for how it answered: ejected, or on trial after an
    /// ejection.
    fn ejected(&self) -> bool {
        self.ejected_until.is_some() || (self.trial.is_some() && self.down.is_none())
    }
}

/// A tier's health as used for the load split, with its fail-back timer.
#[derive(Debug, Clone, Copy)]
struct TierHealth {
    effective: f64,
    rising_since: Option<Instant>,
}

/// What an evaluation found: the members of the view to publish, their
/// groups, the endpoints on trial, and the report.
pub(crate) struct Evaluation<S> {
    pub(crate) members: MemberList<S>,
    pub(crate) groups: Vec<Group>,
    /// Out of rotation, each offered one trial request.
    pub(crate) trials: Vec<OnTrial<S>>,
    pub(crate) report: HealthReport,
}

impl<S> Evaluation<S> {
    /// Whether this would publish the same view as `last`.
    pub(crate) fn same_as(&self, last: &View<S>) -> bool {
        last.health().routes_as(&self.report)
            && last.groups() == &self.groups[..]
            && same_members(last.members(), &self.members)
            && same_trials(last.trials(), &self.trials)
    }
}

fn same_trials<S>(a: &[OnTrial<S>], b: &[OnTrial<S>]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| Arc::ptr_eq(&a.trial, &b.trial))
}

fn same_members<S>(a: &MemberList<S>, b: &MemberList<S>) -> bool {
    a.shares_nodes_with(b)
        || a.len() == b.len()
            && a.iter().zip(b).all(|(a, b)| {
                Arc::ptr_eq(a.endpoint().key_arc(), b.endpoint().key_arc())
                    && a.endpoint().weight() == b.endpoint().weight()
            })
}

/// Endpoint health and tier state across evaluations.
pub(crate) struct Tracker {
    config: FailoverConfig,
    /// Aligned with the members of the snapshot last evaluated.
    states: Vec<EndpointState>,
    tiers: BTreeMap<u8, TierHealth>,
    /// Whether a non-empty set has been seen (its endpoints skip slow start).
    filled: bool,
    panic: bool,
    loads: Vec<(u8, u32)>,
    ejections: u64,
    downs: u64,
    detections: u64,
    /// Draws the reconnect backoff's jitter.
    rng: StdRng,
}

impl Tracker {
    pub(crate) fn new(config: FailoverConfig) -> Self {
        Tracker {
            config,
            states: Vec::new(),
            tiers: BTreeMap::new(),
            filled: false,
            panic: false,
            loads: Vec::new(),
            ejections: 0,
            downs: 0,
            detections: 0,
            rng: StdRng::from_os_rng(),
        }
    }

    /// Draws the reconnect jitter from `seed`, for repeatable tests.
    #[cfg(test)]
    pub(crate) fn seeded(mut self, seed: u64) -> Self {
        self.rng = StdRng::seed_from_u64(seed);
        self
    }

    /// Records an active health check verdict.
    pub(crate) fn set_active(&mut self, key: &str, healthy: bool, now: Instant) {
        let slow = self.config.slow_start.is_some();
        if let Some(st) = self.states.iter_mut().find(|s| &*s.key == key) {
            if st.active_healthy != healthy {
                st.active_healthy = healthy;
                let t = &mut st.transitions;
                if healthy {
                    t.back_from_failing_checks = t.back_from_failing_checks.saturating_add(1);
                } else {
                    t.failing_checks = t.failing_checks.saturating_add(1);
                }
                if healthy && slow {
                    st.warm_since = Some(now);
                }
            }
        }
    }

    /// Brings the tracked set in line with `snapshot`; marks down what
    /// could not be reached; judges trials; puts endpoints whose ejection
    /// ended on trial; ejects endpoints whose failures reached the streak;
    /// runs the failure-rate detector if `interval` (once per interval);
    /// and computes the view.
    pub(crate) fn evaluate<S: Clone>(
        &mut self,
        snapshot: &Snapshot<S>,
        now: Instant,
        interval: bool,
    ) -> Evaluation<S> {
        self.sync(snapshot, now);
        self.reachability(snapshot, now);
        self.judge_trials(snapshot, now);
        self.readmit(snapshot, now);
        self.detect(snapshot, now, interval);
        self.view(snapshot, now)
    }

    /// Aligns `states` with the snapshot's members, keeping state by key.
    /// A pool change keeps most members in their places (a removal moves
    /// only the last member into the hole), so only the places whose key
    /// changed are looked up, by key among the states that lost theirs:
    /// O(N) pointer comparisons and O(changed) hashing.
    fn sync<S>(&mut self, snapshot: &Snapshot<S>, now: Instant) {
        let members = snapshot.members();
        let in_place =
            |s: &EndpointState, m: &Member<S>| Arc::ptr_eq(&s.key, m.endpoint().key_arc());
        let aligned = self.states.len() == members.len()
            && self.states.iter().zip(members).all(|(s, m)| in_place(s, m));
        if !aligned {
            let ramp = self.filled && self.config.slow_start.is_some();
            let old = std::mem::take(&mut self.states);
            let mut slots: Vec<Option<EndpointState>> = Vec::with_capacity(members.len());
            let mut moved: HashMap<Arc<str>, EndpointState> = HashMap::new();
            for (i, st) in old.into_iter().enumerate() {
                match members.get(i) {
                    Some(m) if in_place(&st, m) => slots.push(Some(st)),
                    _ => {
                        if i < members.len() {
                            slots.push(None);
                        }
                        moved.insert(st.key.clone(), st);
                    }
                }
            }
            slots.resize_with(members.len(), || None);
            self.states = slots
                .into_iter()
                .zip(members)
                .map(|(kept, m)| {
                    kept.or_else(|| {
                        moved.remove(m.endpoint().key()).map(|mut s| {
                            s.key = m.endpoint().key_arc().clone();
                            s
                        })
                    })
                    .unwrap_or_else(|| EndpointState {
                        key: m.endpoint().key_arc().clone(),
                        priority: m.endpoint().priority(),
                        down: None,
                        seen_unreachable: m.stats().unreachable_failures(),
                        ejected_until: None,
                        times_ejected: 0,
                        reason: None,
                        trial: None,
                        active_healthy: true,
                        warm_since: ramp.then_some(now),
                        last: Counters::of(m),
                        transitions: Transitions::default(),
                    })
                })
                .collect();
        }
        for (st, m) in self.states.iter_mut().zip(members) {
            st.priority = m.endpoint().priority();
        }
        if !members.is_empty() {
            self.filled = true;
        }
    }

    /// Marks down, at once and uncapped, every endpoint with a new
    /// unreachable failure; brings back a down endpoint that served a
    /// request since (panic mode may send it some).
    fn reachability<S>(&mut self, snapshot: &Snapshot<S>, now: Instant) {
        let reconnect = self.config.reconnect;
        for (st, m) in self.states.iter_mut().zip(snapshot.members()) {
            let unreachable = m.stats().unreachable_failures();
            if unreachable > st.seen_unreachable {
                st.seen_unreachable = unreachable;
                if st.down.is_none() {
                    let wait = reconnect.wait(0, self.rng.random());
                    st.down = Some(Down {
                        failed: 0,
                        next_probe: now + wait,
                        probing: false,
                        at: Counters::of(m),
                    });
                    st.trial = None;
                    st.transitions.down = st.transitions.down.saturating_add(1);
                    self.downs += 1;
                    event!(warn, endpoint = %m.endpoint(), probe_in_ms = wait.as_millis() as u64, "endpoint down: it could not be reached");
                }
            } else if st
                .down
                .is_some_and(|d| m.stats().successes() > d.at.successes)
            {
                Self::up(st, m, now, self.config.slow_start.is_some());
                event!(info, endpoint = %m.endpoint(), "endpoint reachable again: it answered a request");
            }
        }
    }

    /// Brings a down endpoint back.
    fn up<S>(st: &mut EndpointState, m: &Member<S>, now: Instant, slow: bool) {
        st.transitions.back_from_down = st.transitions.back_from_down.saturating_add(1);
        st.down = None;
        st.trial = None;
        st.reason = None;
        st.seen_unreachable = m.stats().unreachable_failures();
        m.stats().reset_history();
        st.last = Counters::of(m);
        if slow {
            st.warm_since = Some(now);
        }
    }

    /// Down endpoints whose probe is due, marked as probing: the driver
    /// probes each (the configured check, or a TCP connect) and reports
    /// with [`probed`](Tracker::probed). An
    /// endpoint that cannot be probed (no address, no check) is put on
    /// trial instead: one request decides.
    pub(crate) fn due_probes<S>(&mut self, snapshot: &Snapshot<S>, now: Instant) -> Vec<Endpoint> {
        let checks = self.config.health_check.is_some();
        let mut due = Vec::new();
        for (st, m) in self.states.iter_mut().zip(snapshot.members()) {
            let Some(down) = st.down.as_mut() else {
                continue;
            };
            if down.probing || down.next_probe > now {
                continue;
            }
            down.probing = true;
            if checks || m.endpoint().address().is_some() {
                due.push(m.endpoint().clone());
            } else {
                st.trial = Pending::offer(m);
                event!(debug, endpoint = %m.endpoint(), "down endpoint with nothing to probe put on trial");
            }
        }
        due
    }

    /// Records a probe of a down endpoint: passing brings it back,
    /// failing schedules the next probe further out.
    pub(crate) fn probed<S>(&mut self, snapshot: &Snapshot<S>, key: &str, ok: bool, now: Instant) {
        let slow = self.config.slow_start.is_some();
        let reconnect = self.config.reconnect;
        let found = self
            .states
            .iter_mut()
            .zip(snapshot.members())
            .find(|(st, _)| &*st.key == key);
        let Some((st, m)) = found else {
            return;
        };
        let Some(down) = st.down.as_mut() else {
            return;
        };
        if ok {
            Self::up(st, m, now, slow);
            event!(info, endpoint = %m.endpoint(), "endpoint reachable again: it passed a probe");
        } else {
            Self::probe_failed(down, reconnect, &mut self.rng, m.endpoint(), now);
        }
    }

    /// Schedules a down endpoint's next probe, further out.
    fn probe_failed(
        down: &mut Down,
        reconnect: Reconnect,
        rng: &mut StdRng,
        endpoint: &Endpoint,
        now: Instant,
    ) {
        down.failed = down.failed.saturating_add(1);
        down.probing = false;
        let wait = reconnect.wait(down.failed, rng.random());
        down.next_probe = now + wait;
        event!(debug, endpoint = %endpoint, failed = down.failed, probe_in_ms = wait.as_millis() as u64, "down endpoint failed its probe");
    }

    /// Judges the endpoints on trial by their trial request's outcome. A
    /// success brings the endpoint back (through slow start when
    /// configured); a failure ejects it again for longer, or, for a down
    /// one, schedules its next trial further out. A trial request given up
    /// on decides nothing: the trial is offered again.
    fn judge_trials<S>(&mut self, snapshot: &Snapshot<S>, now: Instant) {
        let reconnect = self.config.reconnect;
        let slow = self.config.slow_start.is_some();
        for (st, m) in self.states.iter_mut().zip(snapshot.members()) {
            let Some(pending) = &st.trial else {
                continue;
            };
            let counts = Counters::of(m);
            let failed = counts.failures > pending.at.failures;
            if !failed && counts.successes == pending.at.successes {
                // Ended with no outcome: given up on.
                if pending.trial.ended() {
                    pending.trial.offer_again();
                }
                continue;
            }
            st.trial = None;
            st.last = counts;
            match (st.down.as_mut(), failed) {
                (Some(down), true) => {
                    Self::probe_failed(down, reconnect, &mut self.rng, m.endpoint(), now);
                }
                (Some(_), false) => {
                    Self::up(st, m, now, slow);
                    event!(info, endpoint = %m.endpoint(), "endpoint reachable again: it answered its trial request");
                }
                (None, true) => {
                    let reason = EjectionReason::FailedTrial;
                    let duration = eject(self.config.outliers.as_ref(), st, reason, now);
                    self.ejections += 1;
                    event!(warn, endpoint = %m.endpoint(), reason = reason.as_str(), times_ejected = st.times_ejected, ejection_ms = duration.as_millis() as u64, "endpoint ejected");
                }
                (None, false) => {
                    st.reason = None;
                    let t = &mut st.transitions;
                    t.back_from_ejection = t.back_from_ejection.saturating_add(1);
                    if slow {
                        st.warm_since = Some(now);
                    }
                    event!(info, endpoint = %m.endpoint(), times_ejected = st.times_ejected, "endpoint back: it passed its trial request");
                }
            }
        }
    }

    /// Puts endpoints whose ejection ended on trial, and ends slow-start
    /// ramps that are complete. The latency history is kept: the trial
    /// request's own answer updates it, so an endpoint ejected for slow
    /// answers does not come back looking cheap.
    fn readmit<S>(&mut self, snapshot: &Snapshot<S>, now: Instant) {
        let slow = self.config.slow_start.as_ref();
        for (st, m) in self.states.iter_mut().zip(snapshot.members()) {
            if st.ejected_until.is_some_and(|until| until <= now) {
                st.ejected_until = None;
                st.trial = Pending::offer(m);
                event!(debug, endpoint = %m.endpoint(), times_ejected = st.times_ejected, "ejection over: endpoint on trial");
            }
            if let (Some(since), Some(ss)) = (st.warm_since, slow) {
                if now.saturating_duration_since(since) >= ss.window {
                    st.warm_since = None;
                }
            }
        }
    }

    /// Ejects endpoints whose failure streak reached the threshold. With
    /// `interval`, also runs the failure-percentage detector and lowers
    /// `times_ejected` of endpoints that behaved.
    fn detect<S>(&mut self, snapshot: &Snapshot<S>, now: Instant, interval: bool) {
        if interval {
            self.detections += 1;
        }
        let Some(od) = self.config.outliers.clone() else {
            return;
        };
        // Tier sizes and ejections so far, for the cap.
        let mut size: BTreeMap<u8, usize> = BTreeMap::new();
        let mut ejected: BTreeMap<u8, usize> = BTreeMap::new();
        for st in &self.states {
            *size.entry(st.priority).or_default() += 1;
            if st.ejected() {
                *ejected.entry(st.priority).or_default() += 1;
            }
        }
        let members = snapshot.members();
        let mut candidates = Vec::new();
        for (i, (st, m)) in self.states.iter_mut().zip(members).enumerate() {
            let now_counts = Counters::of(m);
            let since = st.last;
            if interval {
                st.last = now_counts;
            }
            if st.ejected_until.is_some() || st.down.is_some() || st.trial.is_some() {
                continue;
            }
            let streak = od
                .consecutive_failures
                .is_some_and(|n| m.stats().consecutive_failures() >= n);
            let (ds, df) = (
                now_counts.successes.saturating_sub(since.successes),
                now_counts.failures.saturating_sub(since.failures),
            );
            let rate = interval
                && od.failure_percentage.is_some_and(|fp| {
                    let total = ds + df;
                    total >= fp.min_requests && df as f64 >= fp.threshold * total as f64
                });
            if streak || rate {
                let reason = if streak {
                    EjectionReason::ConsecutiveFailures
                } else {
                    EjectionReason::FailurePercentage
                };
                candidates.push((i, reason, ds + df, df));
            } else if interval {
                st.times_ejected = st.times_ejected.saturating_sub(1);
            }
        }
        for (i, reason, total, failed) in candidates {
            let st = &mut self.states[i];
            let endpoint = members[i].endpoint();
            let tier_size = size.get(&st.priority).copied().unwrap_or(0);
            let cap = (tier_size * usize::from(od.max_ejection_percent) / 100).max(1);
            let out = ejected.entry(st.priority).or_default();
            if *out >= cap {
                event!(debug, endpoint = %endpoint, cap, "outlier not ejected: the tier's ejection cap is reached");
                continue;
            }
            *out += 1;
            let duration = eject(Some(&od), st, reason, now);
            self.ejections += 1;
            event!(warn, endpoint = %endpoint, reason = reason.as_str(), requests = total, failures = failed, times_ejected = st.times_ejected, ejection_ms = duration.as_millis() as u64, "endpoint ejected");
        }
    }

    /// The earliest instant at which an ejection ends, a down endpoint's
    /// probe is due or a fail-back delay elapses, so the driver can wake
    /// for it.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let ejections = self.states.iter().filter_map(|e| e.ejected_until);
        let probes = self
            .states
            .iter()
            .filter_map(|e| e.down.filter(|d| !d.probing).map(|d| d.next_probe));
        let failbacks = self
            .tiers
            .values()
            .filter_map(|t| t.rising_since.map(|s| s + self.config.failback_delay));
        ejections.chain(probes).chain(failbacks).min()
    }
}

/// Ejects an endpoint, for longer each time it is ejected again
/// (`base × times`, capped at the maximum); returns for how long.
fn eject(
    od: Option<&OutlierDetection>,
    st: &mut EndpointState,
    reason: EjectionReason,
    now: Instant,
) -> Duration {
    let (base, max) = od.map_or((Duration::from_secs(1), Duration::from_secs(1)), |od| {
        (od.base_ejection, od.max_ejection.max(od.base_ejection))
    });
    st.times_ejected = st.times_ejected.saturating_add(1);
    st.transitions.ejected(reason);
    st.reason = Some(reason);
    let duration = base.saturating_mul(st.times_ejected).min(max);
    st.ejected_until = Some(now + duration);
    duration
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Endpoint;
    use crate::failover::{OutlierDetection, PanicMode, SlowStart};
    use crate::pool::StatsHandle;
    use std::time::Duration;

    fn snapshot(tiers: &[(u16, u8)]) -> Snapshot<()> {
        let epoch = Instant::now();
        let members = tiers
            .iter()
            .map(|&(port, priority)| {
                let ep = Endpoint::new(([127, 0, 0, 1], port).into()).with_priority(priority);
                Member::new(ep, (), StatsHandle::new(epoch))
            })
            .collect::<Vec<_>>();
        Snapshot::new(1, epoch, members)
    }

    fn fail(snap: &Snapshot<()>, i: usize, times: usize) {
        for _ in 0..times {
            snap.members()[i].stats().record_failure(false);
        }
    }

    fn loads(view: &Evaluation<()>) -> Vec<(u8, u32)> {
        view.report
            .tiers
            .iter()
            .map(|t| (t.priority, t.load_percent.round() as u32))
            .collect()
    }

    fn config() -> FailoverConfig {
        FailoverConfig::new()
            .overprovisioning(1.5)
            .failback_delay(Duration::from_secs(10))
            .outlier_detection(OutlierDetection::new().max_ejection_percent(100))
    }

    #[tokio::test(start_paused = true)]
    async fn load_spills_by_tier_health_and_fails_back_after_the_delay() {
        let snap = snapshot(&[(1, 0), (2, 0), (3, 0), (4, 1), (5, 1)]);
        let mut t = Tracker::new(config());
        let now = Instant::now();
        let v = t.evaluate(&snap, now, true);
        assert_eq!(loads(&v), [(0, 100), (1, 0)]);
        // The backups are in the view without a share: only retries that
        // find nothing untried among the primaries reach them.
        assert_eq!(v.groups.len(), 2);
        assert_eq!((v.groups[0].share, v.groups[1].share), (u32::MAX, 0));
        assert_eq!(v.members.len(), 5);

        fail(&snap, 0, 5);
        let v = t.evaluate(&snap, now, false);
        // Ejected on the failure itself, not at the next interval; 2/3
        // healthy × 1.5 = 100 %: nothing spills.
        assert_eq!(loads(&v), [(0, 100), (1, 0)]);
        assert_eq!(v.members.len(), 4);

        fail(&snap, 1, 5);
        let v = t.evaluate(&snap, now, true);
        assert_eq!(loads(&v), [(0, 50), (1, 50)]);
        assert_eq!(v.groups.len(), 2);
        let share: f64 = v.groups[1].share as f64 / u32::MAX as f64;
        assert!((share - 0.5).abs() < 1e-6, "{share}");

        fail(&snap, 2, 5);
        let v = t.evaluate(&snap, now, true);
        assert_eq!(loads(&v), [(0, 0), (1, 100)]);
        assert!(!v.report.panic);
        assert!(v.members.iter().all(|m| m.endpoint().priority() == 1));

        // Ejections end after a second, with a trial request each.
        let later = now + Duration::from_secs(1);
        let v = t.evaluate(&snap, later, false);
        assert_eq!(v.trials.len(), 3);
        assert_eq!(loads(&v), [(0, 0), (1, 100)], "on trial: not healthy yet");
        for on_trial in &v.trials {
            assert!(on_trial.trial.take());
            on_trial.member.stats().record_success();
            on_trial.trial.end();
        }
        // They passed; the tier's share waits for the delay.
        let v = t.evaluate(&snap, later, false);
        assert!(v.trials.is_empty());
        assert_eq!(loads(&v), [(0, 0), (1, 100)], "within the fail-back delay");
        assert_eq!(t.next_deadline(), Some(later + Duration::from_secs(10)));
        let v = t.evaluate(&snap, later + Duration::from_secs(10), false);
        assert_eq!(loads(&v), [(0, 100), (1, 0)], "after the fail-back delay");
    }

    fn refuse(snap: &Snapshot<()>, i: usize) {
        snap.members()[i].stats().record_failure(true);
    }

    fn down(v: &Evaluation<()>) -> Vec<bool> {
        v.report.endpoints.iter().map(|e| e.down).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_endpoints_are_down_at_once_uncapped_and_probed_back_with_backoff() {
        let snap = snapshot(&[(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)]);
        let reconnect = crate::failover::Reconnect::try_new(
            Duration::from_secs(1),
            2.0,
            Duration::from_secs(3),
            0.0,
        )
        .unwrap();
        let mut t = Tracker::new(FailoverConfig::new().reconnect(reconnect)).seeded(1);
        let now = Instant::now();
        t.evaluate(&snap, now, true);
        // Two of five refuse: both down at once (the 10 % cap would allow
        // one ejection), and out of the view.
        refuse(&snap, 1);
        refuse(&snap, 3);
        let v = t.evaluate(&snap, now, false);
        assert_eq!(down(&v), [false, true, false, true, false]);
        assert_eq!(v.members.len(), 3);
        assert_eq!(v.report.tiers[0].down, 2);
        assert_eq!(v.report.downs, 2);
        // Not a streak either: no ejection on top.
        assert!(v.report.endpoints.iter().all(|e| e.ejected_until.is_none()));
        // The report says when each down endpoint is probed next.
        let probes: Vec<_> = v.report.endpoints.iter().map(|e| e.next_probe).collect();
        let first = Some(now + Duration::from_secs(1));
        assert_eq!(probes, [None, first, None, first, None]);
        assert!(v.report.endpoints.iter().all(|e| e.failed_probes == 0));

        // The first probe is due after 1 s.
        assert!(t.due_probes(&snap, now).is_empty());
        assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(1)));
        let at = now + Duration::from_secs(1);
        let due = t.due_probes(&snap, at);
        assert_eq!(due.len(), 2);
        assert!(t.due_probes(&snap, at).is_empty(), "one probe at a time");
        let key = |i: usize| snap.members()[i].endpoint().key().to_owned();
        // One fails: the next probe waits 2 s; the other passes: back.
        t.probed(&snap, &key(1), false, at);
        t.probed(&snap, &key(3), true, at);
        let v = t.evaluate(&snap, at, false);
        assert_eq!(down(&v), [false, true, false, false, false]);
        assert_eq!(t.next_deadline(), Some(at + Duration::from_secs(2)));
        let at = at + Duration::from_secs(2);
        assert_eq!(t.due_probes(&snap, at).len(), 1);
        t.probed(&snap, &key(1), false, at);
        // 1 s × 2² = 4 s, capped at 3 s.
        assert_eq!(t.next_deadline(), Some(at + Duration::from_secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn panic_leaves_down_endpoints_out_unless_all_are_down() {
        let snap = snapshot(&[(1, 0), (2, 0), (3, 0)]);
        let mut t = Tracker::new(FailoverConfig::new());
        let now = Instant::now();
        t.evaluate(&snap, now, true);
        refuse(&snap, 0);
        refuse(&snap, 1);
        let v = t.evaluate(&snap, now, false);
        assert!(v.report.panic, "a third healthy: panic");
        assert_eq!(v.members.len(), 1, "the two down ones stay out");
        refuse(&snap, 2);
        let v = t.evaluate(&snap, now, false);
        assert_eq!(v.members.len(), 3, "all down: fail open over all of them");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_endpoint_goes_on_trial_and_one_request_decides() {
        let snap = snapshot(&[(1, 0), (2, 0), (3, 0)]);
        let mut t = Tracker::new(FailoverConfig::new());
        let now = Instant::now();
        t.evaluate(&snap, now, true);
        fail(&snap, 0, 5);
        let v = t.evaluate(&snap, now, false);
        let until = v.report.endpoints[0].ejected_until;
        assert_eq!(until, Some(now + Duration::from_secs(1)), "1 s first");
        assert_eq!(
            v.report.endpoints[0].ejection_reason,
            Some(EjectionReason::ConsecutiveFailures)
        );
        assert_eq!(v.report.endpoints[1].ejection_reason, None);
        assert!(v.trials.is_empty());

        // After 1 s it is on trial: out of the view, offered one request.
        let at = now + Duration::from_secs(1);
        let v = t.evaluate(&snap, at, false);
        assert!(v.report.endpoints[0].on_trial);
        assert!(!v.report.endpoints[0].is_healthy());
        assert_eq!(v.report.tiers[0].ejected, 1);
        assert_eq!(v.members.len(), 2, "not in rotation while on trial");
        assert_eq!(v.trials.len(), 1);
        let stats = snap.members()[0].stats();
        let trial = v.trials[0].trial.clone();
        assert!(trial.take(), "one request takes the trial");
        assert!(!trial.take(), "and only one");

        // The trial request fails: ejected again, for 2 s.
        fail(&snap, 0, 1);
        trial.end();
        let v = t.evaluate(&snap, at, false);
        assert_eq!(
            v.report.endpoints[0].ejected_until,
            Some(at + Duration::from_secs(2))
        );
        assert_eq!(
            v.report.endpoints[0].ejection_reason,
            Some(EjectionReason::FailedTrial)
        );
        assert!(!v.report.endpoints[0].on_trial);
        assert!(v.trials.is_empty(), "no trial while ejected");

        // On trial again, with a new trial. A trial request given up on
        // decides nothing: the trial is offered again once it has ended,
        // and not before, however few requests are in flight.
        let at = at + Duration::from_secs(2);
        let v = t.evaluate(&snap, at, false);
        let again = v.trials[0].trial.clone();
        assert!(!Arc::ptr_eq(&trial, &again));
        assert!(again.take());
        let v = t.evaluate(&snap, at, false);
        assert!(!again.take(), "still running: not offered again");
        assert!(Arc::ptr_eq(&v.trials[0].trial, &again), "the same trial");
        again.end();
        t.evaluate(&snap, at, false);
        assert!(again.take(), "ended with no outcome: offered again");

        // Its success brings it back, into the view.
        stats.record_success();
        again.end();
        let v = t.evaluate(&snap, at, false);
        assert!(!v.report.endpoints[0].on_trial);
        assert!(v.report.endpoints[0].is_healthy());
        assert_eq!(v.members.len(), 3);
        assert!(v.trials.is_empty());
        // Later ejections grow to the 3 s cap.
        for _ in 0..3 {
            fail(&snap, 0, 5);
            let at = t.next_deadline().unwrap_or(at);
            t.evaluate(&snap, at, false);
        }
        let v = t.evaluate(&snap, at, false);
        let longest = v.report.endpoints[0]
            .ejected_until
            .map(|u| u.saturating_duration_since(at));
        assert!(longest <= Some(Duration::from_secs(3)), "{longest:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_cap_and_panic() {
        let ports: Vec<(u16, u8)> = (1..=10).map(|p| (p, 0)).collect();
        let snap = snapshot(&ports);
        let mut t = Tracker::new(FailoverConfig::new());
        for i in 0..10 {
            fail(&snap, i, 5);
        }
        let v = t.evaluate(&snap, Instant::now(), true);
        let ejected = v
            .report
            .endpoints
            .iter()
            .filter(|e| e.ejected_until.is_some())
            .count();
        assert_eq!(ejected, 1, "10 % of 10");
        assert_eq!(v.members.len(), 9);

        let one = snapshot(&[(1, 0)]);
        let mut t = Tracker::new(FailoverConfig::new());
        fail(&one, 0, 5);
        let v = t.evaluate(&one, Instant::now(), true);
        assert!(v.report.panic, "the only endpoint is ejected: panic");
        assert_eq!(v.members.len(), 1, "fail open keeps it pickable");

        let mut t = Tracker::new(FailoverConfig::new().panic_mode(PanicMode::FailClosed));
        let one = snapshot(&[(1, 0)]);
        fail(&one, 0, 5);
        let v = t.evaluate(&one, Instant::now(), true);
        assert!(v.report.panic && v.members.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failure_percentage_needs_volume() {
        let snap = snapshot(&[(1, 0), (2, 0), (3, 0)]);
        let od = OutlierDetection::new()
            .consecutive_failures(0)
            .failure_percentage(50, 10);
        let mut t = Tracker::new(FailoverConfig::new().outlier_detection(od));
        let now = Instant::now();
        t.evaluate(&snap, now, true);
        // 4 failures of 6: 67 % but under the volume.
        for _ in 0..2 {
            snap.members()[0].stats().record_success();
        }
        fail(&snap, 0, 4);
        let v = t.evaluate(&snap, now, true);
        assert_eq!(v.members.len(), 3);
        for _ in 0..5 {
            snap.members()[0].stats().record_success();
        }
        fail(&snap, 0, 6);
        let v = t.evaluate(&snap, now, true);
        assert_eq!(v.members.len(), 2, "6 of 11 failed in the interval");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_ramps_new_endpoints_only() {
        let ss = SlowStart::new(Duration::from_secs(10)).min_weight_percent(10);
        let mut t = Tracker::new(FailoverConfig::new().slow_start(ss));
        let now = Instant::now();
        let first = snapshot(&[(1, 0)]);
        let v = t.evaluate(&first, now, true);
        assert_eq!(v.report.endpoints[0].weight_factor, 1.0);
        let grown = snapshot(&[(1, 0), (2, 0)]);
        let grown = Snapshot::new(
            2,
            first.epoch(),
            vec![
                first.members()[0].clone(),
                grown.members()[1].reweighted(100),
            ],
        );
        // While ramping, weights carry RAMP_RESOLUTION more steps.
        let v = t.evaluate(&grown, now, false);
        assert_eq!(v.members[0].endpoint().weight(), 100, "full weight, scaled");
        assert_eq!(v.members[1].endpoint().weight(), 1000, "starts at 10 %");
        let v = t.evaluate(&grown, now + Duration::from_secs(5), false);
        assert_eq!(v.members[1].endpoint().weight(), 5000, "linear ramp");
        let v = t.evaluate(&grown, now + Duration::from_secs(10), false);
        assert_eq!(v.members[1].endpoint().weight(), 100);
        assert_eq!(v.report.endpoints[1].weight_factor, 1.0);
    }

    /// A pool removal moves its last member into the hole: the state
    /// follows each key, and a view of a healthy single tier shares the
    /// pool's member list instead of copying it.
    #[tokio::test(start_paused = true)]
    async fn states_follow_keys_through_a_swap_removal() {
        let snap = snapshot(&[(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)]);
        let mut t = Tracker::new(config());
        let now = Instant::now();
        let v = t.evaluate(&snap, now, true);
        assert!(
            v.members.shares_nodes_with(snap.members()),
            "all healthy: shared"
        );
        // 5 fails its active checks; then 2 leaves and 5 takes its place,
        // and 6 joins.
        t.set_active("127.0.0.1:5", false, now);
        let mut list = snap.members().clone();
        list.swap_remove(1);
        let ep = Endpoint::new(([127, 0, 0, 1], 6).into());
        list.push(Member::new(ep, (), StatsHandle::new(snap.epoch())));
        let next = Snapshot::new(2, snap.epoch(), list);
        let keys: Vec<String> = next
            .members()
            .iter()
            .map(|m| m.endpoint().key().to_owned())
            .collect();
        assert_eq!(
            keys,
            [
                "127.0.0.1:1",
                "127.0.0.1:5",
                "127.0.0.1:3",
                "127.0.0.1:4",
                "127.0.0.1:6"
            ]
        );
        let v = t.evaluate(&next, now, true);
        let health: Vec<(&str, bool)> = v
            .report
            .endpoints
            .iter()
            .map(|e| (&*e.key, e.active_healthy))
            .collect();
        assert_eq!(
            health,
            [
                ("127.0.0.1:1", true),
                ("127.0.0.1:5", false),
                ("127.0.0.1:3", true),
                ("127.0.0.1:4", true),
                ("127.0.0.1:6", true),
            ]
        );
        let view: Vec<&str> = v.members.iter().map(|m| m.endpoint().key()).collect();
        assert_eq!(
            view,
            ["127.0.0.1:1", "127.0.0.1:3", "127.0.0.1:4", "127.0.0.1:6"]
        );
        // 5 back: the whole pool again, shared.
        t.set_active("127.0.0.1:5", true, now);
        let v = t.evaluate(&next, now, true);
        assert!(v.members.shares_nodes_with(next.members()));
        assert_eq!(v.groups.len(), 1);
        assert_eq!(v.groups[0].share, u32::MAX);
    }
}
