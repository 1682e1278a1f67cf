//! The view a tracker publishes: each tier's health with its fail-back
//! delay, panic, the priority load split, the slow-start ramp, and the
//! members, groups, trials and report that come of them.

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::{EndpointState, Evaluation, TierHealth, Tracker};
use crate::failover::report::{EndpointHealth, HealthReport, TierReport};
use crate::failover::trial::OnTrial;
use crate::failover::view::Group;
use crate::pool::{Member, MemberList, Snapshot};
use crate::trace::event;

impl Tracker {
    /// The view to publish: each tier's health (with its fail-back
    /// delay), panic, the load split, then the members, groups and trials,
    /// and the report.
    pub(super) fn view<S: Clone>(&mut self, snapshot: &Snapshot<S>, now: Instant) -> Evaluation<S> {
        let tiers = self.tiers_now();
        let shares: Vec<f64> = tiers.values().map(TierCount::share).collect();
        let effective = self.tier_health(&tiers, &shares, now);
        let panic = self.panic_now(&shares);
        let loads = priority_loads(&effective);
        self.note_loads(&tiers, &loads, panic);
        let ramp = Ramp::new(&self.states, self.config.slow_start.as_ref(), now);
        let (members, groups, trials) = self.select(snapshot, &tiers, &loads, panic, &ramp);
        let report = self.report(&tiers, &effective, &loads, panic, &ramp);
        Evaluation {
            members,
            groups,
            trials,
            report,
        }
    }

    /// Per tier, in priority order: its members' indices, and how many are
    /// healthy.
    fn tiers_now(&self) -> BTreeMap<u8, TierCount> {
        let mut tiers: BTreeMap<u8, TierCount> = BTreeMap::new();
        for (i, st) in self.states.iter().enumerate() {
            let t = tiers.entry(st.priority).or_default();
            t.members.push(i);
            t.healthy += usize::from(st.healthy());
        }
        tiers
    }

    /// Each tier's health in percent as the load split uses it: the
    /// healthy share × overprovisioning, capped at 100, dropping at once
    /// and rising only after the fail-back delay (unless no tier carries
    /// traffic, when waiting protects nothing).
    fn tier_health(
        &mut self,
        tiers: &BTreeMap<u8, TierCount>,
        shares: &[f64],
        now: Instant,
    ) -> Vec<f64> {
        // A tier that left discovery has no health; remembering it at 0
        // makes it wait out the fail-back delay when it returns.
        for (p, t) in self.tiers.iter_mut() {
            if !tiers.contains_key(p) {
                t.effective = 0.0;
                t.rising_since = None;
            }
        }
        let op = self.config.overprovisioning;
        let delay = self.config.failback_delay;
        let mut effective = Vec::with_capacity(tiers.len());
        for (&priority, &share) in tiers.keys().zip(shares) {
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
        if effective.iter().all(|&(e, _)| e <= 0.0) {
            for ((e, raw), priority) in effective.iter_mut().zip(tiers.keys()) {
                *e = *raw;
                if let Some(t) = self.tiers.get_mut(priority) {
                    t.effective = *raw;
                    t.rising_since = None;
                }
            }
        }
        effective.into_iter().map(|(e, _)| e).collect()
    }

    /// Whether failover is in panic: every tier's healthy share below the
    /// threshold (or none healthy at all). Logs the change.
    fn panic_now(&mut self, shares: &[f64]) -> bool {
        let panic = !shares.is_empty()
            && (shares.iter().all(|&s| s < self.config.panic_threshold)
                || shares.iter().all(|&s| s <= 0.0));
        if panic != self.panic {
            if panic {
                event!(warn, healthy_percent = %format_shares(shares), "panic mode entered: too few healthy endpoints");
            } else {
                event!(info, healthy_percent = %format_shares(shares), "panic mode left");
            }
            self.panic = panic;
        }
        panic
    }

    /// Logs the tier loads when they change (to the whole percent).
    fn note_loads(&mut self, tiers: &BTreeMap<u8, TierCount>, loads: &[f64], panic: bool) {
        let quantised: Vec<(u8, u32)> = tiers
            .keys()
            .zip(loads)
            .map(|(&p, &l)| (p, l.round() as u32))
            .collect();
        if quantised != self.loads && !panic {
            if !self.loads.is_empty() {
                event!(info, loads = %format_loads(&quantised), "tier loads changed");
            }
            self.loads = quantised;
        }
    }

    /// The view's members (reweighted while anything ramps), its groups,
    /// and the endpoints on trial outside it.
    ///
    /// Out of panic, every tier's healthy endpoints are in the view, each
    /// tier a group with its load as its share (a tier with no load takes
    /// only retries that found nothing untried before it). In panic, which
    /// guards against a detector fooled into ejecting too much, failing
    /// open puts every endpoint in one group but those known to be
    /// unreachable (unless every one is); failing closed puts none.
    fn select<S: Clone>(
        &self,
        snapshot: &Snapshot<S>,
        tiers: &BTreeMap<u8, TierCount>,
        loads: &[f64],
        panic: bool,
        ramp: &Ramp,
    ) -> (MemberList<S>, Vec<Group>, Vec<OnTrial<S>>) {
        let members = snapshot.members();
        let states = &self.states;
        let open = panic && self.config.panic_mode == crate::failover::PanicMode::FailOpen;
        let all_down = states.iter().all(|st| st.down.is_some());
        let in_view = |i: usize| match panic {
            true => open && (all_down || states[i].down.is_none()),
            false => states[i].healthy(),
        };
        let pick = |i: usize| ramp.member(&members[i], i);
        let mut view = Vec::new();
        let mut groups = Vec::new();
        // The common case, every endpoint in one tier and in the view at
        // its own weight: the view's members are the pool's, shared
        // rather than copied.
        let whole = !ramp.ramping
            && tiers.len() == 1
            && (0..members.len()).all(in_view)
            && states.iter().all(|st| st.trial.is_none());
        if whole && (open || !panic) {
            let share = match panic {
                true => u32::MAX,
                false => (loads.first().copied().unwrap_or(100.0) / 100.0 * f64::from(u32::MAX))
                    .round() as u32,
            };
            let group = Group {
                members: 0..members.len(),
                share,
                priority: tiers.keys().next().copied().unwrap_or(0),
            };
            return (members.clone(), vec![group], Vec::new());
        }
        if open {
            view.extend((0..members.len()).filter(|&i| in_view(i)).map(pick));
            groups.push(Group {
                members: 0..view.len(),
                share: u32::MAX,
                priority: tiers.keys().next().copied().unwrap_or(0),
            });
        } else if !panic {
            for ((&priority, tier), &load) in tiers.iter().zip(loads) {
                let start = view.len();
                view.extend(
                    tier.members
                        .iter()
                        .copied()
                        .filter(|&i| in_view(i))
                        .map(pick),
                );
                groups.push(Group {
                    members: start..view.len(),
                    share: (load / 100.0 * f64::from(u32::MAX)).round() as u32,
                    priority,
                });
            }
        }
        // Out of the view, a trial is how an endpoint comes back (one that
        // fails its active checks is offered none); in it (panic), any
        // outcome judges it.
        let trials = (0..members.len())
            .filter(|&i| states[i].trial.is_some() && states[i].active_healthy && !in_view(i))
            .filter_map(|i| {
                let pending = states[i].trial.as_ref()?;
                Some(OnTrial {
                    member: members[i].clone(),
                    trial: pending.trial.clone(),
                })
            })
            .collect();
        (view.into(), groups, trials)
    }

    fn report(
        &self,
        tiers: &BTreeMap<u8, TierCount>,
        effective: &[f64],
        loads: &[f64],
        panic: bool,
        ramp: &Ramp,
    ) -> HealthReport {
        let states = &self.states;
        let count = |all: &[usize], f: fn(&EndpointState) -> bool| {
            all.iter().filter(|&&i| f(&states[i])).count()
        };
        HealthReport {
            panic,
            tiers: tiers
                .iter()
                .zip(effective.iter().zip(loads))
                .map(|((&priority, tier), (&eff, &load))| TierReport {
                    priority,
                    endpoints: tier.members.len(),
                    healthy: tier.healthy,
                    down: count(&tier.members, |st| st.down.is_some()),
                    ejected: count(&tier.members, EndpointState::ejected),
                    health_percent: eff,
                    load_percent: if panic { 0.0 } else { load },
                })
                .collect(),
            endpoints: states
                .iter()
                .enumerate()
                .map(|(i, st)| EndpointHealth {
                    key: st.key.clone(),
                    priority: st.priority,
                    down: st.down.is_some(),
                    ejected_until: st.ejected_until,
                    on_trial: st.trial.is_some(),
                    times_ejected: st.times_ejected,
                    active_healthy: st.active_healthy,
                    weight_factor: ramp.factor(i),
                    ejection_reason: st.reason.filter(|_| st.ejected()),
                    next_probe: st.down.filter(|d| !d.probing).map(|d| d.next_probe),
                    failed_probes: st.down.map_or(0, |d| d.failed),
                    slow_start_until: match (st.warm_since, self.config.slow_start.as_ref()) {
                        (Some(since), Some(ss)) if ramp.factor(i) < 1.0 => Some(since + ss.window),
                        _ => None,
                    },
                    transitions: st.transitions,
                })
                .collect(),
            ejections: self.ejections,
            downs: self.downs,
            detections: self.detections,
        }
    }
}

/// A tier's members (indices into the tracked states) and how many of
/// them are healthy.
#[derive(Debug, Default)]
struct TierCount {
    members: Vec<usize>,
    healthy: usize,
}

impl TierCount {
    fn share(&self) -> f64 {
        self.healthy as f64 / self.members.len() as f64
    }
}

/// The load split (Envoy's priority load): each tier takes up to its
/// health of what the tiers before it left, normalised to 100 %.
fn priority_loads(effective: &[f64]) -> Vec<f64> {
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
    loads
}

/// Slow start's weight factor per endpoint, as of one evaluation.
struct Ramp {
    factors: Vec<f64>,
    /// Whether any endpoint ramps: every weight in the view is then
    /// multiplied by [`RAMP_RESOLUTION`], so that a ramp of weight 1 has
    /// steps to take (shares are unchanged, since all weights scale alike).
    ramping: bool,
}

impl Ramp {
    fn new(
        states: &[EndpointState],
        slow: Option<&crate::failover::SlowStart>,
        now: Instant,
    ) -> Self {
        let factors: Vec<f64> = states
            .iter()
            .map(|st| match (st.warm_since, slow) {
                (Some(since), Some(ss)) => ss.factor(now.saturating_duration_since(since)),
                _ => 1.0,
            })
            .collect();
        let ramping = factors.iter().any(|&f| f < 1.0);
        Ramp { factors, ramping }
    }

    fn factor(&self, i: usize) -> f64 {
        self.factors.get(i).copied().unwrap_or(1.0)
    }

    /// Member `i` as the view holds it.
    fn member<S: Clone>(&self, m: &Member<S>, i: usize) -> Member<S> {
        if !self.ramping {
            return m.clone();
        }
        let w = m.endpoint().weight().saturating_mul(RAMP_RESOLUTION);
        m.reweighted(scale(w, self.factor(i)))
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
