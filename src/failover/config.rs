use std::time::Duration;

use super::HealthCheck;

/// What failover does when too few endpoints are healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PanicMode {
    /// Stop filtering and balance over every endpoint, healthy or not (as
    /// Envoy and Finagle do): some requests may fail, but a false alarm —
    /// an outlier detector fooled by a shared cause — cannot take the whole
    /// service down.
    #[default]
    FailOpen,
    /// Fail requests at once with [`Error::NoneEligible`](crate::Error::NoneEligible).
    FailClosed,
}

/// Passive outlier detection: ejects endpoints whose own traffic fails.
///
/// Which outcomes are failures is the balancer's
/// [classifier](crate::balance::Classify) (for HTTP,
/// [`ServerErrorsAreFailures`](crate::http::ServerErrorsAreFailures) counts
/// 5xx answers). The consecutive-failure detector acts on the failure that
/// completes the streak, within milliseconds; the failure-percentage
/// detector looks once per [interval](super::FailoverConfig::interval).
///
/// An ejected endpoint stays out for `base_ejection × times_ejected`,
/// capped at `max_ejection`, and then goes **on trial**: still out of
/// rotation, it is offered one request (the next one the balancer sends,
/// whatever its tier), and that request's outcome decides. A success
/// brings it back (through slow start, if configured); a failure ejects it
/// again at once, for longer (Finagle's failure accrual probes the same
/// way). Its latency history is kept, so an endpoint ejected for slow
/// answers does not come back looking cheap. If active checks run, it is
/// offered its trial only while it passes them. Each interval without an ejection lowers
/// `times_ejected` again. At most `max_ejection_percent` of a tier is
/// ejected at once, but one endpoint may always be (gRPC A50); endpoints
/// that are *down* (unreachable) are not ejections and are not capped.
#[derive(Debug, Clone)]
pub struct OutlierDetection {
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) failure_percentage: Option<FailurePercentage>,
    pub(crate) base_ejection: Duration,
    pub(crate) max_ejection: Duration,
    pub(crate) max_ejection_percent: u8,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct FailurePercentage {
    pub(crate) threshold: f64,
    pub(crate) min_requests: u64,
}

impl Default for OutlierDetection {
    /// Eject after 5 consecutive failures (Envoy's and gRPC's count), for
    /// 1 s × times ejected, at most 3 s, at most 10 % of a tier at once
    /// (Envoy, gRPC).
    ///
    /// The ejection times depart from Envoy's and gRPC's 30 s base: those
    /// keep a recovered endpoint out for the whole time, whereas here the
    /// end of an ejection is a probe, so it can be short. With these
    /// values a recovered endpoint is back within about 3 s, and one that
    /// stays broken costs one trial request every 3 s.
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: Some(5),
            failure_percentage: None,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(3),
            max_ejection_percent: 10,
        }
    }
}

impl OutlierDetection {
    /// The defaults (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Ejects after `n` failures in a row (0 turns this detector off).
    #[must_use]
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = (n > 0).then_some(n);
        self
    }

    /// Ejects an endpoint when at least `percent` % of its requests in one
    /// interval failed, counting only intervals with at least
    /// `min_requests` requests. Percentages outside 1–100 turn it off.
    #[must_use]
    pub fn failure_percentage(mut self, percent: u8, min_requests: u64) -> Self {
        self.failure_percentage = (1..=100).contains(&percent).then_some(FailurePercentage {
            threshold: f64::from(percent) / 100.0,
            min_requests: min_requests.max(1),
        });
        self
    }

    /// How long a first ejection lasts; later ones last a multiple of it.
    #[must_use]
    pub fn base_ejection(mut self, d: Duration) -> Self {
        self.base_ejection = d;
        self
    }

    /// The longest an ejection lasts (never less than the base).
    #[must_use]
    pub fn max_ejection(mut self, d: Duration) -> Self {
        self.max_ejection = d;
        self
    }

    /// The largest share of a tier ejected at once, in percent (capped at
    /// 100); one endpoint may always be ejected.
    #[must_use]
    pub fn max_ejection_percent(mut self, percent: u8) -> Self {
        self.max_ejection_percent = percent.min(100);
        self
    }
}

/// Slow start: a newly added or re-admitted endpoint ramps its effective
/// weight from `min_weight_percent` up to its full weight over `window`,
/// following `(elapsed / window) ^ (1 / aggression)` (Envoy's slow start).
///
/// This is the answer to cold starts — a serverless instance, a JIT that
/// has not warmed up, a cache that is empty — which answer their first
/// requests slowly and would otherwise get a full share at once. Weights
/// steer the weighted strategies (weighted round robin and random, both
/// P2C); round robin and random ignore weights and so ignore the ramp.
/// Endpoints present when the pool first fills start at full weight.
#[derive(Debug, Clone)]
pub struct SlowStart {
    pub(crate) window: Duration,
    pub(crate) aggression: f64,
    pub(crate) min_weight_percent: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_follows_grpc_and_refuses_nonsense() {
        let r = Reconnect::new();
        let mid = |n| r.wait(n, 0.5).as_secs_f64();
        assert!((mid(0) - 1.0).abs() < 1e-9);
        assert!((mid(1) - 1.6).abs() < 1e-9);
        assert!((mid(2) - 2.56).abs() < 1e-9);
        assert!((mid(50) - 120.0).abs() < 1e-9, "capped");
        assert!((r.wait(0, 0.0).as_secs_f64() - 0.8).abs() < 1e-9, "-20 %");
        assert!(r.wait(0, 0.999_999).as_secs_f64() < 1.2 + 1e-6, "+20 %");
        let s = Duration::from_secs(1);
        assert_eq!(
            Reconnect::try_new(Duration::ZERO, 2.0, s, 0.1),
            Err(InvalidReconnect::ZeroInitial)
        );
        assert_eq!(
            Reconnect::try_new(s, f64::NAN, s, 0.1).map_err(|e| e.to_string()),
            Err("the backoff multiplier NaN is not a finite number of at least 1".into())
        );
        assert!(Reconnect::try_new(s, 2.0, s / 2, 0.1).is_err());
        assert!(Reconnect::try_new(s, 2.0, s, 1.5).is_err());
        assert!(Reconnect::try_new(s, 1.0, s, 0.0).is_ok());
    }
}

impl SlowStart {
    /// A linear ramp over `window`, starting at 10 % of the weight.
    pub fn new(window: Duration) -> Self {
        SlowStart {
            window,
            aggression: 1.0,
            min_weight_percent: 10,
        }
    }

    /// The ramp's shape: 1.0 is linear, above 1 ramps up faster at the
    /// start. Values that are not finite and positive mean 1.0.
    #[must_use]
    pub fn aggression(mut self, aggression: f64) -> Self {
        self.aggression = if aggression.is_finite() && aggression > 0.0 {
            aggression
        } else {
            1.0
        };
        self
    }

    /// The share of its weight an endpoint starts with, in percent (capped
    /// at 100).
    #[must_use]
    pub fn min_weight_percent(mut self, percent: u8) -> Self {
        self.min_weight_percent = percent.min(100);
        self
    }

    /// The factor (0..=1) an endpoint's weight is multiplied by, `elapsed`
    /// into its ramp.
    pub(crate) fn factor(&self, elapsed: Duration) -> f64 {
        let min = f64::from(self.min_weight_percent) / 100.0;
        if self.window.is_zero() || elapsed >= self.window {
            return 1.0;
        }
        let t = elapsed.as_secs_f64() / self.window.as_secs_f64();
        t.powf(1.0 / self.aggression).max(min).min(1.0)
    }
}

/// How endpoints that are *down* (could not be reached) are probed back:
/// jittered exponential backoff, as gRPC reconnects a subchannel.
///
/// The first probe comes `initial` after the endpoint went down, each
/// failed probe multiplies the wait by `multiplier` up to `max`, and each
/// wait is moved by up to ± `jitter` of itself at random. Defaults are
/// gRPC's connection backoff: 1 s, × 1.6, at most 120 s, ± 20 %.
///
/// The probe is the active [health check](super::FailoverConfig::health_check)
/// when one is configured, else a TCP connect to the endpoint's address
/// (bounded by 1 s); an endpoint without an address is put on trial
/// instead: it is offered one request, and that request's outcome decides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reconnect {
    pub(crate) initial: Duration,
    pub(crate) multiplier: f64,
    pub(crate) max: Duration,
    pub(crate) jitter: f64,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial: Duration::from_secs(1),
            multiplier: 1.6,
            max: Duration::from_secs(120),
            jitter: 0.2,
        }
    }
}

/// Why a [`Reconnect`] setting was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidReconnect {
    /// The first wait is zero.
    #[error("the first probe wait must be longer than zero")]
    ZeroInitial,
    /// The multiplier is below 1 or not finite.
    #[error("the backoff multiplier {0} is not a finite number of at least 1")]
    Multiplier(f64),
    /// The longest wait is shorter than the first.
    #[error("the longest wait {max:?} is shorter than the first {initial:?}")]
    MaxBelowInitial {
        /// The first wait.
        initial: Duration,
        /// The longest wait.
        max: Duration,
    },
    /// The jitter is outside 0..=1.
    #[error("the jitter {0} is not between 0 and 1")]
    Jitter(f64),
}

impl Reconnect {
    /// gRPC's connection backoff (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A backoff from `initial`, × `multiplier` per failed probe, at most
    /// `max`, each wait moved by up to ± `jitter` (a fraction, 0 to 1).
    pub fn try_new(
        initial: Duration,
        multiplier: f64,
        max: Duration,
        jitter: f64,
    ) -> Result<Self, InvalidReconnect> {
        if initial.is_zero() {
            return Err(InvalidReconnect::ZeroInitial);
        }
        if !(multiplier.is_finite() && multiplier >= 1.0) {
            return Err(InvalidReconnect::Multiplier(multiplier));
        }
        if max < initial {
            return Err(InvalidReconnect::MaxBelowInitial { initial, max });
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(InvalidReconnect::Jitter(jitter));
        }
        Ok(Reconnect {
            initial,
            multiplier,
            max,
            jitter,
        })
    }

    /// The wait before the probe that follows `failed` failed probes,
    /// given a uniform draw `u` in [0, 1) for the jitter.
    pub(crate) fn wait(&self, failed: u32, u: f64) -> Duration {
        let base = self.initial.as_secs_f64() * self.multiplier.powi(failed.min(1000) as i32);
        let base = base.min(self.max.as_secs_f64());
        let jittered = base * (1.0 + self.jitter * (2.0 * u - 1.0));
        Duration::from_secs_f64(jittered.max(0.0))
    }
}

/// How a [`FailoverLayer`](super::FailoverLayer) turns a pool into the
/// eligible view.
#[derive(Debug, Clone)]
pub struct FailoverConfig {
    pub(crate) overprovisioning: f64,
    pub(crate) failback_delay: Duration,
    pub(crate) interval: Duration,
    pub(crate) outliers: Option<OutlierDetection>,
    pub(crate) panic_threshold: f64,
    pub(crate) panic_mode: PanicMode,
    pub(crate) slow_start: Option<SlowStart>,
    pub(crate) health_check: Option<HealthCheck>,
    pub(crate) reconnect: Reconnect,
}

impl Default for FailoverConfig {
    /// Overprovisioning 1.5, fail-back after 10 s, failure rates evaluated
    /// every second, default outlier detection, down endpoints probed back
    /// with gRPC's backoff ([`Reconnect`]), panic (fail open) below 50 %
    /// healthy, no slow start, no active checks.
    ///
    /// Envoy's overprovisioning factor is 1.4; 1.5 is chosen so that a
    /// tier of three that loses one keeps all of its traffic (2/3 × 1.5 =
    /// 100 %) instead of spilling 7 % to the backups.
    fn default() -> Self {
        FailoverConfig {
            overprovisioning: 1.5,
            failback_delay: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            outliers: Some(OutlierDetection::default()),
            panic_threshold: 0.5,
            panic_mode: PanicMode::FailOpen,
            slow_start: None,
            health_check: None,
            reconnect: Reconnect::default(),
        }
    }
}

impl FailoverConfig {
    /// The defaults (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// How much headroom a tier is assumed to have: a tier's health is
    /// `min(100 %, healthy share × factor)`, so with 1.5 a tier keeps all
    /// its traffic until fewer than two thirds of it is healthy (Envoy's
    /// overprovisioning factor, whose default is 1.4). Values below 1 (or
    /// not finite) mean 1.
    #[must_use]
    pub fn overprovisioning(mut self, factor: f64) -> Self {
        self.overprovisioning = if factor.is_finite() && factor >= 1.0 {
            factor
        } else {
            1.0
        };
        self
    }

    /// How long a recovering tier must stay recovered before traffic moves
    /// back to it, so a flapping primary does not bounce traffic. Traffic
    /// moves away from a failing tier at once.
    #[must_use]
    pub fn failback_delay(mut self, d: Duration) -> Self {
        self.failback_delay = d;
        self
    }

    /// How often failure rates are evaluated (the failure-percentage
    /// detector, and the decay of `times_ejected`). Failures, ends of
    /// ejections and probes are acted on as they happen, not at this
    /// interval. Zero means one millisecond.
    #[must_use]
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d.max(Duration::from_millis(1));
        self
    }

    /// Passive outlier detection settings.
    #[must_use]
    pub fn outlier_detection(mut self, outliers: OutlierDetection) -> Self {
        self.outliers = Some(outliers);
        self
    }

    /// Turns passive outlier detection off.
    #[must_use]
    pub fn without_outlier_detection(mut self) -> Self {
        self.outliers = None;
        self
    }

    /// Panic when every tier's healthy share is below `percent` % (capped
    /// at 100; 0 never panics unless nothing at all is healthy).
    #[must_use]
    pub fn panic_threshold(mut self, percent: u8) -> Self {
        self.panic_threshold = f64::from(percent.min(100)) / 100.0;
        self
    }

    /// What to do in panic.
    #[must_use]
    pub fn panic_mode(mut self, mode: PanicMode) -> Self {
        self.panic_mode = mode;
        self
    }

    /// Ramp new and re-admitted endpoints up gradually.
    #[must_use]
    pub fn slow_start(mut self, slow_start: SlowStart) -> Self {
        self.slow_start = Some(slow_start);
        self
    }

    /// Probe endpoints actively; an endpoint that fails its checks is left
    /// out just as an ejected one is, and the check is also what probes a
    /// down endpoint back.
    #[must_use]
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.health_check = Some(check);
        self
    }

    /// How down (unreachable) endpoints are probed back.
    #[must_use]
    pub fn reconnect(mut self, reconnect: Reconnect) -> Self {
        self.reconnect = reconnect;
        self
    }
}
