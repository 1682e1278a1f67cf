use std::sync::Arc;

use tokio::time::Instant;

/// What failover decided, as published with each eligible view (see
/// [`View::health`](super::View::health)).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct HealthReport {
    /// Whether the view is in panic mode (see
    /// [`PanicMode`](super::PanicMode)).
    pub panic: bool,
    /// One entry per priority tier, lowest (primary) first.
    pub tiers: Vec<TierReport>,
    /// One entry per endpoint of the pool.
    pub endpoints: Vec<EndpointHealth>,
    /// Ejections since the failover layer started.
    pub ejections: u64,
    /// Times endpoints were marked down since the failover layer started.
    pub downs: u64,
    /// Failure-rate passes made (one per
    /// [interval](super::FailoverConfig::interval)).
    pub detections: u64,
}

/// One priority tier's health and share of traffic.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TierReport {
    /// The tier's priority (0 = primary).
    pub priority: u8,
    /// Endpoints in the tier.
    pub endpoints: usize,
    /// Of those, how many are healthy (neither down, nor ejected, nor
    /// failing active checks).
    pub healthy: usize,
    /// Of those, how many are down (could not be reached).
    pub down: usize,
    /// Of those, how many are ejected by outlier detection (or on trial
    /// after an ejection).
    pub ejected: usize,
    /// The tier's health in percent (healthy share × overprovisioning,
    /// capped at 100), as used for the load split: a recovering tier's
    /// health rises only after the fail-back delay.
    pub health_percent: f64,
    /// The share of requests the tier receives, in percent.
    pub load_percent: f64,
}

/// One endpoint's health as failover sees it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EndpointHealth {
    /// The endpoint's key.
    pub key: Arc<str>,
    /// Its priority tier.
    pub priority: u8,
    /// Whether it is down: a request found it unreachable, and it has not
    /// passed a probe since.
    pub down: bool,
    /// Until when it stays ejected, if it is.
    pub ejected_until: Option<Instant>,
    /// Whether it is on trial: out of rotation, but offered one request
    /// whose outcome decides whether it comes back (after an ejection, or
    /// while down with no address to probe).
    pub on_trial: bool,
    /// How many times it has been ejected (lowered again while it behaves).
    pub times_ejected: u32,
    /// Whether it passes active health checks (true when none run).
    pub active_healthy: bool,
    /// The share of its weight it currently gets from slow start, from 0.0
    /// to 1.0 (1.0 when not ramping).
    pub weight_factor: f64,
    /// Why it was ejected, while it is ejected or on trial after an
    /// ejection.
    pub ejection_reason: Option<EjectionReason>,
    /// When a down endpoint is probed next (`None` while a probe runs, or
    /// when it is not down).
    pub next_probe: Option<Instant>,
    /// Probes a down endpoint has failed since it went down.
    pub failed_probes: u32,
    /// When its slow-start ramp ends, while it ramps.
    pub slow_start_until: Option<Instant>,
    /// How often it has left and come back into rotation.
    pub transitions: Transitions,
}

/// How often one endpoint has left rotation, and come back, by cause,
/// since failover began to track it. The counts only grow (unlike
/// [`times_ejected`](EndpointHealth::times_ejected), which falls again
/// while the endpoint behaves), so the difference between two reports is
/// what happened in between, however brief.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Transitions {
    /// Ejections for failures in a row.
    pub ejected_consecutive_failures: u32,
    /// Ejections for the share of failed requests.
    pub ejected_failure_percentage: u32,
    /// Ejections for failing the trial request after an ejection.
    pub ejected_failed_trial: u32,
    /// Returns after an ejection (a passed trial request).
    pub back_from_ejection: u32,
    /// Times it was marked down (unreachable).
    pub down: u32,
    /// Returns from down (a passed probe, or an answer).
    pub back_from_down: u32,
    /// Times active health checks began to fail it.
    pub failing_checks: u32,
    /// Times active health checks passed it again.
    pub back_from_failing_checks: u32,
}

impl Transitions {
    /// Its ejections for `reason`.
    pub fn ejections(&self, reason: EjectionReason) -> u32 {
        match reason {
            EjectionReason::ConsecutiveFailures => self.ejected_consecutive_failures,
            EjectionReason::FailurePercentage => self.ejected_failure_percentage,
            EjectionReason::FailedTrial => self.ejected_failed_trial,
        }
    }

    /// Counts one ejection for `reason`.
    pub(crate) fn ejected(&mut self, reason: EjectionReason) {
        let n = match reason {
            EjectionReason::ConsecutiveFailures => &mut self.ejected_consecutive_failures,
            EjectionReason::FailurePercentage => &mut self.ejected_failure_percentage,
            EjectionReason::FailedTrial => &mut self.ejected_failed_trial,
        };
        *n = n.saturating_add(1);
    }
}

/// Why outlier detection took an endpoint out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum EjectionReason {
    /// Its failures in a row reached
    /// [`consecutive_failures`](super::OutlierDetection::consecutive_failures).
    ConsecutiveFailures,
    /// Its share of failed requests in one interval reached
    /// [`failure_percentage`](super::OutlierDetection::failure_percentage).
    FailurePercentage,
    /// Back from an ejection, it failed the one request that decides.
    FailedTrial,
}

impl EjectionReason {
    /// Every reason.
    pub const ALL: [EjectionReason; 3] = [
        EjectionReason::ConsecutiveFailures,
        EjectionReason::FailurePercentage,
        EjectionReason::FailedTrial,
    ];

    /// The reason as a short phrase for logs and tables
    /// (`"consecutive failures"`, …); [`label`](Self::label) is the metric
    /// label value.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectionReason::ConsecutiveFailures => "consecutive failures",
            EjectionReason::FailurePercentage => "failure percentage",
            EjectionReason::FailedTrial => "failed its trial request",
        }
    }

    /// The reason as a metric label value (`"consecutive_failures"`, …).
    pub fn label(self) -> &'static str {
        match self {
            EjectionReason::ConsecutiveFailures => "consecutive_failures",
            EjectionReason::FailurePercentage => "failure_percentage",
            EjectionReason::FailedTrial => "failed_trial",
        }
    }
}

impl std::fmt::Display for EjectionReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EndpointHealth {
    /// Whether the endpoint may take requests outside panic mode.
    pub fn is_healthy(&self) -> bool {
        !self.down && self.ejected_until.is_none() && !self.on_trial && self.active_healthy
    }
}

impl HealthReport {
    /// Whether `other` would route the same: equal but for when down
    /// endpoints are probed next and how many probes they failed, which
    /// change without changing the view.
    pub(crate) fn routes_as(&self, other: &HealthReport) -> bool {
        self.panic == other.panic
            && self.tiers == other.tiers
            && self.ejections == other.ejections
            && self.downs == other.downs
            && self.detections == other.detections
            && self.endpoints.len() == other.endpoints.len()
            && self.endpoints.iter().zip(&other.endpoints).all(|(a, b)| {
                // Destructured so that a field added later must be sorted
                // here into "routes" or "does not route".
                let EndpointHealth {
                    key,
                    priority,
                    down,
                    ejected_until,
                    on_trial,
                    times_ejected,
                    active_healthy,
                    weight_factor,
                    ejection_reason,
                    next_probe: _,
                    failed_probes: _,
                    slow_start_until,
                    transitions,
                } = a;
                *key == b.key
                    && *priority == b.priority
                    && *down == b.down
                    && *ejected_until == b.ejected_until
                    && *on_trial == b.on_trial
                    && *times_ejected == b.times_ejected
                    && *active_healthy == b.active_healthy
                    && *weight_factor == b.weight_factor
                    && *ejection_reason == b.ejection_reason
                    && *slow_start_until == b.slow_start_until
                    // Each change of state comes with one; compared so a
                    // report never shows stale counts.
                    && *transitions == b.transitions
            })
    }

    /// Per tier, how many endpoints are left out and why.
    pub(crate) fn ineligible(&self) -> crate::error::Ineligible {
        let mut tiers: Vec<crate::error::TierIneligible> = Vec::new();
        for e in &self.endpoints {
            let at = match tiers.iter().position(|t| t.priority == e.priority) {
                Some(at) => at,
                None => {
                    tiers.push(crate::error::TierIneligible {
                        priority: e.priority,
                        ..Default::default()
                    });
                    tiers.len() - 1
                }
            };
            let t = &mut tiers[at];
            t.endpoints += 1;
            if e.down {
                t.down += 1;
            } else if e.ejected_until.is_some() || e.on_trial {
                t.ejected += 1;
            } else if !e.active_healthy {
                t.failing_checks += 1;
            }
        }
        tiers.sort_by_key(|t| t.priority);
        crate::error::Ineligible { tiers }
    }
}
