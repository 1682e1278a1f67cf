use std::sync::Arc;

use tokio::time::Instant;

/// What failover decided, as published with each eligible view (see
/// [`Snapshot::health`](crate::pool::Snapshot::health)).
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
}

/// One priority tier's health and share of traffic.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TierReport {
    /// The tier's priority (0 = primary).
    pub priority: u8,
    /// Endpoints in the tier.
    pub endpoints: usize,
    /// Of those, how many are healthy (neither ejected nor failing active
    /// checks).
    pub healthy: usize,
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
    /// Until when it stays ejected, if it is.
    pub ejected_until: Option<Instant>,
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
        self.ejected_until.is_none() && self.active_healthy
    }
}
