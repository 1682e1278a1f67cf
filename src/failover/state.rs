//! The failover decision, kept apart from tasks and channels so it can be
//! driven step by step: endpoint health, tier loads, panic, the view.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::time::Instant;

use super::config::FailoverConfig;
use super::report::{EndpointHealth, HealthReport, TierReport};
use crate::pool::{Group, Member, Snapshot};
use crate::trace::event;

/// What failover tracks per endpoint.
#[derive(Debug)]
struct EndpointState {
    key: Arc<str>,
    priority: u8,
    ejected_until: Option<Instant>,
    times_ejected: u32,
    active_healthy: bool,
    /// When its slow-start ramp began, while it ramps.
    warm_since: Option<Instant>,
    /// Counters at the last evaluation, for per-interval failure rates.
    last_successes: u64,
    last_failures: u64,
}

impl EndpointState {
    fn healthy(&self) -> bool {
        self.ejected_until.is_none() && self.active_healthy
    }
}

/// A tier's health as used for the load split, with its fail-back timer.
#[derive(Debug, Clone, Copy)]
struct TierHealth {
    effective: f64,
    rising_since: Option<Instant>,
}

/// The eligible view to publish: members, their groups, and the report.
pub(crate) struct View<S> {
    pub(crate) members: Vec<Member<S>>,
    pub(crate) groups: Vec<Group>,
    pub(crate) report: HealthReport,
}

impl<S> View<S> {
    /// Whether this view would publish the same thing as `last`.
    pub(crate) fn same_as(&self, last: &Snapshot<S>) -> bool {
        last.health() == Some(&self.report)
            && last.groups() == &self.groups[..]
            && last.len() == self.members.len()
            && last.members().iter().zip(&self.members).all(|(a, b)| {
                Arc::ptr_eq(a.endpoint().key_arc(), b.endpoint().key_arc())
                    && a.endpoint().weight() == b.endpoint().weight()
            })
    }
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
        }
    }

    /// Records an active health check verdict.
    pub(crate) fn set_active(&mut self, key: &str, healthy: bool, now: Instant) {
        let slow = self.config.slow_start.is_some();
        if let Some(st) = self.states.iter_mut().find(|s| &*s.key == key) {
            if st.active_healthy != healthy {
                st.active_healthy = healthy;
                if healthy && slow {
                    st.warm_since = Some(now);
                }
            }
        }
    }

    /// Brings the tracked set in line with `snapshot`, runs outlier
    /// detection if `detect` (once per interval), and computes the view.
    pub(crate) fn evaluate<S: Clone>(
        &mut self,
        snapshot: &Snapshot<S>,
        now: Instant,
        detect: bool,
    ) -> View<S> {
        self.sync(snapshot, now);
        self.readmit(snapshot, now);
        if detect {
            self.detect(snapshot, now);
        }
        self.view(snapshot, now)
    }

    /// Aligns `states` with the snapshot's members, keeping state by key.
    fn sync<S>(&mut self, snapshot: &Snapshot<S>, now: Instant) {
        let members = snapshot.members();
        let aligned = self.states.len() == members.len()
            && self
                .states
                .iter()
                .zip(members)
                .all(|(s, m)| Arc::ptr_eq(&s.key, m.endpoint().key_arc()));
        if !aligned {
            let ramp = self.filled && self.config.slow_start.is_some();
            let mut old: HashMap<Arc<str>, EndpointState> =
                self.states.drain(..).map(|s| (s.key.clone(), s)).collect();
            self.states = members
                .iter()
                .map(|m| {
                    old.remove(m.endpoint().key())
                        .map(|mut s| {
                            s.key = m.endpoint().key_arc().clone();
                            s
                        })
                        .unwrap_or_else(|| EndpointState {
                            key: m.endpoint().key_arc().clone(),
                            priority: m.endpoint().priority(),
                            ejected_until: None,
                            times_ejected: 0,
                            active_healthy: true,
                            warm_since: ramp.then_some(now),
                            last_successes: m.stats().successes(),
                            last_failures: m.stats().failures(),
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

    fn readmit<S>(&mut self, snapshot: &Snapshot<S>, now: Instant) {
        let slow = self.config.slow_start.as_ref();
        for (st, m) in self.states.iter_mut().zip(snapshot.members()) {
            if st.ejected_until.is_some_and(|until| until <= now) {
                st.ejected_until = None;
                m.stats().reset_consecutive_failures();
                st.last_successes = m.stats().successes();
                st.last_failures = m.stats().failures();
                if slow.is_some() {
                    st.warm_since = Some(now);
                }
                event!(info, endpoint = %m.endpoint(), times_ejected = st.times_ejected, "endpoint re-admitted");
            }
            if let (Some(since), Some(ss)) = (st.warm_since, slow) {
                if now.saturating_duration_since(since) >= ss.window {
                    st.warm_since = None;
                }
            }
        }
    }

    fn detect<S>(&mut self, snapshot: &Snapshot<S>, now: Instant) {
        let Some(od) = self.config.outliers.clone() else {
            return;
        };
        // Tier sizes and ejections so far, for the cap.
        let mut size: BTreeMap<u8, usize> = BTreeMap::new();
        let mut ejected: BTreeMap<u8, usize> = BTreeMap::new();
        for st in &self.states {
            *size.entry(st.priority).or_default() += 1;
            if st.ejected_until.is_some() {
                *ejected.entry(st.priority).or_default() += 1;
            }
        }
        let members = snapshot.members();
        let mut candidates = Vec::new();
        for (i, (st, m)) in self.states.iter_mut().zip(members).enumerate() {
            let (s, f) = (m.stats().successes(), m.stats().failures());
            let (ds, df) = (
                s.saturating_sub(st.last_successes),
                f.saturating_sub(st.last_failures),
            );
            st.last_successes = s;
            st.last_failures = f;
            if st.ejected_until.is_some() {
                continue;
            }
            let streak = od
                .consecutive_failures
                .is_some_and(|n| m.stats().consecutive_failures() >= n);
            let rate = od.failure_percentage.is_some_and(|fp| {
                let total = ds + df;
                total >= fp.min_requests && df as f64 >= fp.threshold * total as f64
            });
            if streak || rate {
                candidates.push((i, streak, ds + df, df));
            } else {
                st.times_ejected = st.times_ejected.saturating_sub(1);
            }
        }
        for (i, streak, total, failed) in candidates {
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
            st.times_ejected = st.times_ejected.saturating_add(1);
            let duration = od
                .base_ejection
                .saturating_mul(st.times_ejected)
                .min(od.max_ejection.max(od.base_ejection));
            st.ejected_until = Some(now + duration);
            self.ejections += 1;
            let reason = if streak {
                "consecutive failures"
            } else {
                "failure percentage"
            };
            event!(warn, endpoint = %endpoint, reason, requests = total, failures = failed, times_ejected = st.times_ejected, ejection_ms = duration.as_millis() as u64, "endpoint ejected");
        }
    }

    fn view<S: Clone>(&mut self, snapshot: &Snapshot<S>, now: Instant) -> View<S> {
        let members = snapshot.members();
        let states = &self.states;
        // Per tier, in priority order: member indices, and how many healthy.
        let mut tiers: BTreeMap<u8, (Vec<usize>, usize)> = BTreeMap::new();
        for (i, st) in states.iter().enumerate() {
            let t = tiers.entry(st.priority).or_default();
            t.0.push(i);
            t.1 += usize::from(st.healthy());
        }
        // A tier that left discovery has no health; remembering it at 0
        // makes it wait out the fail-back delay when it returns.
        for (p, t) in self.tiers.iter_mut() {
            if !tiers.contains_key(p) {
                t.effective = 0.0;
                t.rising_since = None;
            }
        }
        let shares: Vec<f64> = tiers
            .values()
            .map(|(all, healthy)| *healthy as f64 / all.len() as f64)
            .collect();
        let op = self.config.overprovisioning;
        // Fail-back: health drops at once, rises only after the delay.
        let delay = self.config.failback_delay;
        let mut effective = Vec::with_capacity(tiers.len());
        for (&priority, &share) in tiers.keys().zip(&shares) {
            // Rounded to a millionth of a percent, so that 2/3 × 1.5 is
            // exactly 100 % and nothing spills for float noise.
            let health = ((100.0 * share * op).min(100.0) * 1e6).round() / 1e6;
            let t = self.tiers.entry(priority).or_insert(TierHealth {
                effective: health,
                rising_since: None,
            });
            if health <= t.effective {
                t.effective = health;
                t.rising_since = None;
            } else {
                let since = *t.rising_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= delay {
                    t.effective = health;
                    t.rising_since = None;
                }
            }
            effective.push((t.effective, health));
        }
        // With no tier carrying traffic, waiting protects nothing: recover
        // at once.
        if effective.iter().all(|&(e, _)| e <= 0.0) {
            for ((e, raw), priority) in effective.iter_mut().zip(tiers.keys()) {
                *e = *raw;
                if let Some(t) = self.tiers.get_mut(priority) {
                    t.effective = *raw;
                    t.rising_since = None;
                }
            }
        }
        let effective: Vec<f64> = effective.into_iter().map(|(e, _)| e).collect();
        let panic = !shares.is_empty()
            && (shares.iter().all(|&s| s < self.config.panic_threshold)
                || shares.iter().all(|&s| s <= 0.0));
        if panic != self.panic {
            if panic {
                event!(warn, healthy_percent = %format_shares(&shares), "panic mode entered: too few healthy endpoints");
            } else {
                event!(info, healthy_percent = %format_shares(&shares), "panic mode left");
            }
            self.panic = panic;
        }

        // The load split (Envoy's priority load): each tier takes up to its
        // health of what lower tiers left, normalised to 100 %.
        let mut remaining = 100.0;
        let mut loads: Vec<f64> = effective
            .iter()
            .map(|&e| {
                let take = e.min(remaining).max(0.0);
                remaining -= take;
                take
            })
            .collect();
        let sum: f64 = loads.iter().sum();
        if sum > 0.0 {
            for l in &mut loads {
                *l *= 100.0 / sum;
            }
        }

        let slow = self.config.slow_start.as_ref();
        let factor = |st: &EndpointState| match (st.warm_since, slow) {
            (Some(since), Some(ss)) => ss.factor(now.saturating_duration_since(since)),
            _ => 1.0,
        };
        // While anything ramps, every weight in the view is multiplied by
        // RAMP_RESOLUTION so that a ramp of weight 1 has steps to take;
        // shares are unchanged, since all weights scale alike.
        let ramping = states.iter().any(|st| factor(st) < 1.0);
        let pick = |i: usize| {
            let m = &members[i];
            if !ramping {
                return m.clone();
            }
            let w = m.endpoint().weight().saturating_mul(RAMP_RESOLUTION);
            m.reweighted(scale(w, factor(&states[i])))
        };
        let mut view = Vec::new();
        let mut groups = Vec::new();
        if panic {
            if self.config.panic_mode == super::PanicMode::FailOpen {
                view.extend((0..members.len()).map(pick));
                groups.push(Group {
                    members: 0..view.len(),
                    share: u32::MAX,
                    priority: tiers.keys().next().copied().unwrap_or(0),
                });
            }
        } else {
            for ((&priority, (indices, _)), &load) in tiers.iter().zip(&loads) {
                if load <= 0.0 {
                    continue;
                }
                let start = view.len();
                view.extend(
                    indices
                        .iter()
                        .copied()
                        .filter(|&i| states[i].healthy())
                        .map(pick),
                );
                groups.push(Group {
                    members: start..view.len(),
                    share: (load / 100.0 * f64::from(u32::MAX)).round() as u32,
                    priority,
                });
            }
        }

        let quantised: Vec<(u8, u32)> = tiers
            .keys()
            .zip(&loads)
            .map(|(&p, &l)| (p, l.round() as u32))
            .collect();
        if quantised != self.loads && !panic {
            if !self.loads.is_empty() {
                event!(info, loads = %format_loads(&quantised), "tier loads changed");
            }
            self.loads = quantised;
        }

        let report = HealthReport {
            panic,
            tiers: tiers
                .iter()
                .zip(effective.iter().zip(&loads))
                .map(|((&priority, (all, healthy)), (&eff, &load))| TierReport {
                    priority,
                    endpoints: all.len(),
                    healthy: *healthy,
                    health_percent: eff,
                    load_percent: if panic { 0.0 } else { load },
                })
                .collect(),
            endpoints: states
                .iter()
                .map(|st| EndpointHealth {
                    key: st.key.clone(),
                    priority: st.priority,
                    ejected_until: st.ejected_until,
                    times_ejected: st.times_ejected,
                    active_healthy: st.active_healthy,
                    weight_factor: factor(st),
                })
                .collect(),
            ejections: self.ejections,
        };
        View {
            members: view,
            groups,
            report,
        }
    }

    /// The earliest instant at which an ejection ends or a fail-back delay
    /// elapses, so the driver can wake for it.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let ejections = self.states.iter().filter_map(|e| e.ejected_until);
        let failbacks = self
            .tiers
            .values()
            .filter_map(|t| t.rising_since.map(|s| s + self.config.failback_delay));
        ejections.chain(failbacks).min()
    }
}

/// How finely slow start divides weights while an endpoint ramps.
const RAMP_RESOLUTION: u32 = 100;

/// `weight × factor`, rounded, never rounding a live weight down to 0.
fn scale(weight: u32, factor: f64) -> u32 {
    if weight == 0 || factor >= 1.0 {
        return weight;
    }
    ((f64::from(weight) * factor).round() as u32).max(1)
}

fn format_shares(shares: &[f64]) -> String {
    let parts: Vec<String> = shares.iter().map(|s| format!("{:.0}", s * 100.0)).collect();
    parts.join(",")
}

fn format_loads(loads: &[(u8, u32)]) -> String {
    let parts: Vec<String> = loads.iter().map(|(p, l)| format!("{p}:{l}")).collect();
    parts.join(",")
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
            .collect();
        Snapshot::new(1, epoch, members)
    }

    fn fail(snap: &Snapshot<()>, i: usize, times: usize) {
        for _ in 0..times {
            snap.members()[i].stats().record_failure();
        }
    }

    fn loads(view: &View<()>) -> Vec<(u8, u32)> {
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
        assert_eq!(v.groups.len(), 1);
        assert_eq!(v.members.len(), 3);

        fail(&snap, 0, 5);
        let v = t.evaluate(&snap, now, true);
        // 2/3 healthy × 1.5 = 100 %: nothing spills.
        assert_eq!(loads(&v), [(0, 100), (1, 0)]);
        assert_eq!(v.members.len(), 2);

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

        // Ejections end after 30 s; the tier's share waits for the delay.
        let later = now + Duration::from_secs(31);
        let v = t.evaluate(&snap, later, false);
        assert_eq!(loads(&v), [(0, 0), (1, 100)], "within the fail-back delay");
        assert_eq!(t.next_deadline(), Some(later + Duration::from_secs(10)));
        let v = t.evaluate(&snap, later + Duration::from_secs(10), false);
        assert_eq!(loads(&v), [(0, 100), (1, 0)], "after the fail-back delay");
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
}
