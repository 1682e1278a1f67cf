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
}

impl EndpointHealth {
    /// Whether the endpoint may take requests outside panic mode.
    pub fn is_healthy(&self) -> bool {
        !self.down && self.ejected_until.is_none() && !self.on_trial && self.active_healthy
    }
}

impl HealthReport {
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
