//! One plain-data report of a whole client: discovery, every endpoint with
//! its state and counters, the tiers' loads and the retry budget.
//!
//! Every layer of the stack answers [`status`](Observe::status): a
//! [`Pool`], a [`Failover`] view, a [`Balance`], a [`Retry`] around any of
//! them, and the ready-made [`http::Client`](crate::http::Client) and
//! [`grpc::Channel`](crate::grpc::Channel). Each also has an inherent
//! `status()`, so no import is needed; the [`Observe`] trait is for code
//! generic over the stack.
//!
//! A [`Status`] is data: it `Display`s as a table for logs and terminals,
//! and with the `serde` feature it serializes (the admin page's
//! `/status.json`) and reads back.
//!
//! ```
//! use tower_lb::balance::{Balance, RoundRobin};
//! use tower_lb::discover::Registry;
//! use tower_lb::pool::Pool;
//! use tower_lb::status::EndpointState;
//! use tower_lb::Endpoint;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let registry = Registry::new();
//! let _a = registry.register("api", Endpoint::new("127.0.0.1:8080".parse().unwrap())).unwrap();
//! let connect = tower::service_fn(|_e| async { Ok::<_, std::convert::Infallible>(()) });
//! let pool = Pool::spawn(registry.watch("api").unwrap(), connect, Default::default());
//! pool.changed(0).await;
//! let lb = Balance::new(pool, RoundRobin);
//!
//! let status = lb.status();
//! assert_eq!(status.service, "api");
//! assert_eq!(status.strategy.as_deref(), Some("round_robin"));
//! assert_eq!(status.endpoints[0].state, EndpointState::Healthy);
//! println!("{status}");
//! # }
//! ```
//!
//! Where the report sits: DESIGN places it with the admin page, but a
//! user without the page (a log line, a health endpoint of their own)
//! needs it too, so it is always compiled and only the page is behind the
//! `admin` feature.

mod table;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::balance::{Balance, Strategy};
use crate::failover::{EjectionReason, EndpointHealth, Failover, HealthReport, Transitions};
use crate::pool::{DiscoveryStatus, EndpointReport, Pool};
use crate::retry::Retry;

/// Anything that can report the [`Status`] of the client it is part of.
pub trait Observe {
    /// The client's status now.
    fn status(&self) -> Status;

    /// From now on, the client's endpoints keep latency histograms, which
    /// its reports carry ([`EndpointStatus::latency_histogram`]): what
    /// [`Pool::record_latency`] does for the client's pool. The metrics
    /// exporter calls it. Does nothing unless implemented.
    fn record_latency(&self) {}

    /// Once endpoints keep latency histograms: a balancer whose strategy
    /// does not time every request anyway times one answer in `one_in`
    /// for them (rounded down to a power of two), each counting for that
    /// many; what [`Pool::sample_latency`] does for the client's pool. The
    /// metrics exporter sets it from the request rate. Does nothing unless
    /// implemented.
    fn sample_latency(&self, one_in: u32) {
        let _ = one_in;
    }
}

impl<T: Observe + ?Sized> Observe for &T {
    fn status(&self) -> Status {
        (**self).status()
    }

    fn record_latency(&self) {
        (**self).record_latency();
    }

    fn sample_latency(&self, one_in: u32) {
        (**self).sample_latency(one_in);
    }
}

impl<T: Observe + ?Sized> Observe for Arc<T> {
    fn status(&self) -> Status {
        (**self).status()
    }

    fn record_latency(&self) {
        (**self).record_latency();
    }

    fn sample_latency(&self, one_in: u32) {
        (**self).sample_latency(one_in);
    }
}

impl<T: Observe + ?Sized> Observe for Box<T> {
    fn status(&self) -> Status {
        (**self).status()
    }

    fn record_latency(&self) {
        (**self).record_latency();
    }

    fn sample_latency(&self, one_in: u32) {
        (**self).sample_latency(one_in);
    }
}

/// A whole client's state at one instant.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Status {
    /// The service's name (see
    /// [`PoolConfig::service`](crate::pool::PoolConfig::service)).
    pub service: String,
    /// The balancer's [strategy](crate::balance::Strategy::name), when the
    /// report comes through one.
    pub strategy: Option<String>,
    /// The pool's revision.
    pub revision: u64,
    /// How discovery has gone.
    pub discovery: DiscoveryStatus,
    /// Whether failover (health, outlier detection, tiers) runs.
    pub failover: bool,
    /// Whether failover is in panic mode: too few healthy endpoints, so it
    /// routes to all of them.
    pub panic: bool,
    /// One entry per priority tier, primary first.
    pub tiers: Vec<TierStatus>,
    /// Every endpoint of the pool, in the pool's order, including those
    /// that are down or ejected.
    pub endpoints: Vec<EndpointStatus>,
    /// Ejections since failover started.
    pub ejections: u64,
    /// Times endpoints were marked down since failover started.
    pub downs: u64,
    /// The retry layer's counters and budget, when the report comes
    /// through one.
    pub retry: Option<RetryStatus>,
    /// While endpoints keep latency histograms: one answer in how many
    /// they count, each standing for that many (1: every answer; see
    /// [`Observe::sample_latency`]).
    #[cfg_attr(feature = "serde", serde(default))]
    pub latency_one_in: Option<u32>,
}

/// One priority tier: its endpoints by state and its share of traffic.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct TierStatus {
    /// The tier's priority (0 = primary).
    pub priority: u8,
    /// Endpoints in the tier.
    pub endpoints: usize,
    /// Of those, how many are [`Healthy`](EndpointState::Healthy).
    pub healthy: usize,
    /// … in [`SlowStart`](EndpointState::SlowStart).
    pub slow_start: usize,
    /// … [`Draining`](EndpointState::Draining).
    pub draining: usize,
    /// … [`FailingChecks`](EndpointState::FailingChecks).
    pub failing_checks: usize,
    /// … [`Ejected`](EndpointState::Ejected) or
    /// [`OnTrial`](EndpointState::OnTrial).
    pub ejected: usize,
    /// … [`Down`](EndpointState::Down).
    pub down: usize,
    /// The tier's health in percent, as failover uses it for the load
    /// split (the share of endpoints in rotation without failover).
    pub health_percent: f64,
    /// The share of requests the tier receives, in percent; `None` without
    /// failover, where all endpoints form one group whatever their tier.
    pub load_percent: Option<f64>,
}

/// What an endpoint is doing, from the most to the least available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum EndpointState {
    /// In rotation with its full weight.
    Healthy,
    /// In rotation, ramping up to its weight after joining or coming back.
    SlowStart,
    /// In the pool with weight 0: it takes requests only when every
    /// endpoint of its group drains.
    Draining,
    /// Reachable, but failing the active health check.
    FailingChecks,
    /// Out of rotation, offered one request whose outcome decides whether
    /// it comes back.
    OnTrial,
    /// Taken out of rotation by outlier detection until a time.
    Ejected,
    /// Unreachable: a request could not connect, and it has not passed a
    /// probe since.
    Down,
}

impl EndpointState {
    /// Every state, most available first.
    pub const ALL: [EndpointState; 7] = [
        EndpointState::Healthy,
        EndpointState::SlowStart,
        EndpointState::Draining,
        EndpointState::FailingChecks,
        EndpointState::OnTrial,
        EndpointState::Ejected,
        EndpointState::Down,
    ];

    /// The state as a label: `healthy`, `slow_start`, `draining`,
    /// `failing_checks`, `on_trial`, `ejected` or `down` (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Healthy => "healthy",
            EndpointState::SlowStart => "slow_start",
            EndpointState::Draining => "draining",
            EndpointState::FailingChecks => "failing_checks",
            EndpointState::OnTrial => "on_trial",
            EndpointState::Ejected => "ejected",
            EndpointState::Down => "down",
        }
    }

    /// Whether the endpoint takes its share of requests in this state.
    pub fn in_rotation(self) -> bool {
        matches!(
            self,
            EndpointState::Healthy | EndpointState::SlowStart | EndpointState::Draining
        )
    }
}

impl std::fmt::Display for EndpointState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One endpoint: where it is, its state and why, and its counters.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct EndpointStatus {
    /// The endpoint's key.
    pub key: String,
    /// Its socket address, if it has one.
    pub address: Option<String>,
    /// Its zone, if it has one.
    pub zone: Option<String>,
    /// Its priority tier.
    pub priority: u8,
    /// Its weight as discovered.
    pub weight: u32,
    /// Its state.
    pub state: EndpointState,
    /// Why it is in that state, for any state but
    /// [`Healthy`](EndpointState::Healthy).
    pub reason: Option<String>,
    /// Milliseconds until the state ends or is next re-examined: the end
    /// of an ejection, the next probe of a down endpoint, the end of slow
    /// start.
    pub time_left_ms: Option<u64>,
    /// The share of its weight it gets now (below 1 during slow start).
    pub weight_factor: f64,
    /// Requests in flight.
    pub in_flight: u64,
    /// Successful requests.
    pub successes: u64,
    /// Failed requests.
    pub failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// The Peak-EWMA latency estimate, in milliseconds, once sampled.
    pub latency_ms: Option<f64>,
    /// Why outlier detection ejected it, while it is ejected or on trial.
    pub ejection_reason: Option<EjectionReason>,
    /// How many times outlier detection has ejected it.
    pub times_ejected: u32,
    /// Probes it failed since it went down.
    pub failed_probes: u32,
    /// Its answers' latency (successes and failures; not requests given up
    /// on), once the pool keeps histograms ([`Observe::record_latency`]).
    pub latency_histogram: Option<LatencyHistogram>,
    /// How often it has left rotation and come back, by cause (all zero
    /// without failover).
    pub transitions: Transitions,
}

/// One endpoint's latency histogram: how many answers took how long, since
/// it began to be kept.
///
/// Buckets are four per power of two from 1 µs to about 69 s (each ends at
/// most 1.25× where it starts), with one below and one above; only the
/// non-empty ones are listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct LatencyHistogram {
    /// The non-empty buckets, fastest first.
    pub buckets: Vec<LatencyBucket>,
}

/// Answers whose latency was at least `from_ns` and below `below_ns`
/// nanoseconds (`u64::MAX` for the last bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct LatencyBucket {
    /// Where the bucket starts, in nanoseconds (inclusive).
    pub from_ns: u64,
    /// Where it ends, in nanoseconds (exclusive).
    pub below_ns: u64,
    /// Answers in it.
    pub count: u64,
}

impl LatencyBucket {
    /// A bucket of `count` answers from `from_ns` to below `below_ns`.
    pub fn new(from_ns: u64, below_ns: u64, count: u64) -> Self {
        LatencyBucket {
            from_ns,
            below_ns,
            count,
        }
    }

    /// The latency that stands for the bucket: the geometric middle of its
    /// bounds (its start for the last, open-ended one, 512 ns for the
    /// first).
    pub fn typical(&self) -> Duration {
        let ns = match (self.from_ns, self.below_ns) {
            (_, u64::MAX) => self.from_ns as f64,
            (0, below) => below as f64 / 2.0,
            (from, below) => (from as f64 * below as f64).sqrt(),
        };
        Duration::from_nanos(ns as u64)
    }
}

impl LatencyHistogram {
    /// The answers counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.count).sum()
    }

    /// An upper bound of the `q`-quantile (0.99 for the 99th percentile):
    /// the end of the bucket it falls in (the start of the last, open
    /// bucket). `None` with no answers, or when `q` is not within 0..=1.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The rank of the quantile, from 1: the smallest count of answers
        // at or below it that is at least a share `q` of all.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for b in &self.buckets {
            seen += b.count;
            if seen >= rank {
                let ns = if b.below_ns == u64::MAX {
                    b.from_ns
                } else {
                    b.below_ns
                };
                return Some(Duration::from_nanos(ns));
            }
        }
        None
    }
}

/// The retry layer's counters and the budget's level.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct RetryStatus {
    /// Requests (first attempts).
    pub requests: u64,
    /// Retries sent.
    pub retries: u64,
    /// Hedged copies sent.
    pub hedges: u64,
    /// Retries or hedges refused because the budget was empty.
    pub budget_exhausted: u64,
    /// Requests that ran out of time.
    pub deadlines_exceeded: u64,
    /// Retries the budget would grant now.
    pub budget_available: f64,
}

impl Status {
    /// The status of `of`: any layer of a client.
    pub fn of(of: &impl Observe) -> Status {
        of.status()
    }

    /// The endpoint with this key.
    pub fn endpoint(&self, key: &str) -> Option<&EndpointStatus> {
        self.endpoints.iter().find(|e| e.key == key)
    }

    /// How many endpoints are in `state`.
    pub fn count(&self, state: EndpointState) -> usize {
        self.endpoints.iter().filter(|e| e.state == state).count()
    }

    /// A pool's endpoints, with failover's view of them when there is one.
    pub(crate) fn build<S>(pool: &Pool<S>, health: Option<&HealthReport>) -> Status {
        let now = Instant::now();
        let snapshot = pool.snapshot();
        let by_key: HashMap<&str, &EndpointHealth> = health
            .map(|h| h.endpoints.iter().map(|e| (&*e.key, e)).collect())
            .unwrap_or_default();
        let endpoints: Vec<EndpointStatus> = snapshot
            .members()
            .iter()
            .map(|m| {
                let mut e = endpoint(m.report(), by_key.get(m.endpoint().key()).copied(), now);
                e.latency_histogram = m.stats().latency().map(|h| LatencyHistogram {
                    buckets: h
                        .buckets()
                        .map(|(from, below, n)| LatencyBucket::new(from, below, n))
                        .collect(),
                });
                e
            })
            .collect();
        let tiers = tiers(&endpoints, health);
        Status {
            service: pool.service().to_owned(),
            strategy: None,
            revision: snapshot.revision(),
            discovery: pool.discovery(),
            failover: health.is_some(),
            panic: health.is_some_and(|h| h.panic),
            tiers,
            endpoints,
            ejections: health.map_or(0, |h| h.ejections),
            downs: health.map_or(0, |h| h.downs),
            retry: None,
            latency_one_in: pool.latency_one_in(),
        }
    }
}

fn millis_until(at: Option<Instant>, now: Instant) -> Option<u64> {
    at.map(|at| u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX))
}

/// One endpoint's status from its counters and failover's view of it.
fn endpoint(
    report: EndpointReport,
    health: Option<&EndpointHealth>,
    now: Instant,
) -> EndpointStatus {
    let e = &report.endpoint;
    let weight = e.weight();
    let (state, reason, until) = match health {
        Some(h) if h.down => {
            let reason = match h.failed_probes {
                0 => "unreachable".to_owned(),
                1 => "unreachable; 1 probe failed".to_owned(),
                n => format!("unreachable; {n} probes failed"),
            };
            (EndpointState::Down, Some(reason), h.next_probe)
        }
        Some(h) if h.ejected_until.is_some() => {
            let reason = h.ejection_reason.map_or("ejected", |r| r.as_str());
            (
                EndpointState::Ejected,
                Some(reason.to_owned()),
                h.ejected_until,
            )
        }
        Some(h) if h.on_trial => {
            let reason = match h.ejection_reason {
                Some(r) => format!("{r}; one trial request decides"),
                None => "no address to probe; one trial request decides".to_owned(),
            };
            (EndpointState::OnTrial, Some(reason), None)
        }
        Some(h) if !h.active_healthy => (
            EndpointState::FailingChecks,
            Some("failing active health checks".to_owned()),
            None,
        ),
        _ if weight == 0 => (EndpointState::Draining, Some("weight 0".to_owned()), None),
        Some(h) if h.weight_factor < 1.0 => (
            EndpointState::SlowStart,
            Some(format!(
                "slow start: {:.0}% of its weight",
                h.weight_factor * 100.0
            )),
            h.slow_start_until,
        ),
        _ => (EndpointState::Healthy, None, None),
    };
    EndpointStatus {
        key: e.key().to_owned(),
        address: e.address().map(|a| a.to_string()),
        zone: e.zone().map(str::to_owned),
        priority: e.priority(),
        weight,
        state,
        reason,
        time_left_ms: millis_until(until, now),
        weight_factor: health.map_or(1.0, |h| h.weight_factor),
        in_flight: report.in_flight,
        successes: report.successes,
        failures: report.failures,
        consecutive_failures: report.consecutive_failures,
        latency_ms: report.ewma_latency.map(|d| d.as_secs_f64() * 1e3),
        ejection_reason: health.and_then(|h| h.ejection_reason),
        times_ejected: health.map_or(0, |h| h.times_ejected),
        failed_probes: health.map_or(0, |h| h.failed_probes),
        latency_histogram: None,
        transitions: health.map_or_else(Transitions::default, |h| h.transitions),
    }
}

/// Endpoints counted by tier, with failover's health and load per tier.
fn tiers(endpoints: &[EndpointStatus], health: Option<&HealthReport>) -> Vec<TierStatus> {
    let mut priorities: Vec<u8> = endpoints.iter().map(|e| e.priority).collect();
    if let Some(h) = health {
        priorities.extend(h.tiers.iter().map(|t| t.priority));
    }
    priorities.sort_unstable();
    priorities.dedup();
    priorities
        .into_iter()
        .map(|priority| {
            let mut t = TierStatus {
                priority,
                endpoints: 0,
                healthy: 0,
                slow_start: 0,
                draining: 0,
                failing_checks: 0,
                ejected: 0,
                down: 0,
                health_percent: 0.0,
                load_percent: None,
            };
            for e in endpoints.iter().filter(|e| e.priority == priority) {
                t.endpoints += 1;
                match e.state {
                    EndpointState::Healthy => t.healthy += 1,
                    EndpointState::SlowStart => t.slow_start += 1,
                    EndpointState::Draining => t.draining += 1,
                    EndpointState::FailingChecks => t.failing_checks += 1,
                    EndpointState::OnTrial | EndpointState::Ejected => t.ejected += 1,
                    EndpointState::Down => t.down += 1,
                }
            }
            let report = health.and_then(|h| h.tiers.iter().find(|r| r.priority == priority));
            match report {
                Some(r) => {
                    t.health_percent = r.health_percent;
                    t.load_percent = Some(r.load_percent);
                }
                // A tier failover does not report (or no failover): its
                // health from the states, and no traffic when failover
                // reports the others.
                None => {
                    if t.endpoints > 0 {
                        let up = t.healthy + t.slow_start + t.draining;
                        t.health_percent = 100.0 * up as f64 / t.endpoints as f64;
                    }
                    t.load_percent = health.map(|_| 0.0);
                }
            }
            t
        })
        .collect()
}

impl<S> Pool<S> {
    /// Every endpoint with its counters and the discovery state: a
    /// [`Status`] without failover, strategy or retries.
    pub fn status(&self) -> Status {
        Status::build(self, None)
    }
}

impl<S> Observe for Pool<S> {
    fn status(&self) -> Status {
        Pool::status(self)
    }

    fn record_latency(&self) {
        Pool::record_latency(self);
    }

    fn sample_latency(&self, one_in: u32) {
        Pool::sample_latency(self, one_in);
    }
}

impl<S> Failover<S> {
    /// Every endpoint of the pool with failover's state for it (including
    /// the down and ejected ones), the tiers and panic mode.
    pub fn status(&self) -> Status {
        Status::build(self.pool(), Some(&self.health()))
    }
}

impl<S> Observe for Failover<S> {
    fn status(&self) -> Status {
        Failover::status(self)
    }

    fn record_latency(&self) {
        self.pool().record_latency();
    }

    fn sample_latency(&self, one_in: u32) {
        self.pool().sample_latency(one_in);
    }
}

impl<S, St: Strategy, C, K> Balance<S, St, C, K> {
    /// The status of what the balancer picks from, with its strategy.
    pub fn status(&self) -> Status {
        let mut status = match self.upstream().failover() {
            Some(failover) => failover.status(),
            None => self.pool().status(),
        };
        status.strategy = Some(self.strategy_name().to_owned());
        if self.times_every_request() {
            status.latency_one_in = status.latency_one_in.map(|_| 1);
        }
        status
    }
}

impl<S, St: Strategy, C, K> Observe for Balance<S, St, C, K> {
    fn status(&self) -> Status {
        Balance::status(self)
    }

    fn record_latency(&self) {
        self.pool().record_latency();
    }

    fn sample_latency(&self, one_in: u32) {
        self.pool().sample_latency(one_in);
    }
}

impl<S: Observe, P> Retry<S, P> {
    /// The status of the service under the retries, with the retry
    /// counters and the budget's level.
    pub fn status(&self) -> Status {
        let mut status = self.get_ref().status();
        let stats = self.stats();
        status.retry = Some(RetryStatus {
            requests: stats.requests,
            retries: stats.retries,
            hedges: stats.hedges,
            budget_exhausted: stats.budget_exhausted,
            deadlines_exceeded: stats.deadlines_exceeded,
            budget_available: self.budget().stats().available,
        });
        status
    }
}

impl<S: Observe, P> Observe for Retry<S, P> {
    fn status(&self) -> Status {
        Retry::status(self)
    }

    fn record_latency(&self) {
        self.get_ref().record_latency();
    }

    fn sample_latency(&self, one_in: u32) {
        self.get_ref().sample_latency(one_in);
    }
}

#[cfg(test)]
mod tests;
