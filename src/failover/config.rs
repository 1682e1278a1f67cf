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
/// 5xx answers). An ejected endpoint stays out for `base_ejection ×
/// times_ejected`, capped at `max_ejection`, then comes back (through slow
/// start, if configured); each interval without an ejection lowers
/// `times_ejected` again. At most `max_ejection_percent` of a tier is
/// ejected at once, but one endpoint may always be (gRPC A50).
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
    /// Eject after 5 consecutive failures, for 30 s × times ejected (at most
    /// 300 s), at most 10 % of a tier at once.
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: Some(5),
            failure_percentage: None,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
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
}

impl Default for FailoverConfig {
    /// Overprovisioning 1.4, fail-back after 10 s, evaluated every second,
    /// default outlier detection, panic (fail open) below 50 % healthy, no
    /// slow start, no active checks.
    fn default() -> Self {
        FailoverConfig {
            overprovisioning: 1.4,
            failback_delay: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            outliers: Some(OutlierDetection::default()),
            panic_threshold: 0.5,
            panic_mode: PanicMode::FailOpen,
            slow_start: None,
            health_check: None,
        }
    }
}

impl FailoverConfig {
    /// The defaults (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// How much headroom a tier is assumed to have: a tier's health is
    /// `min(100 %, healthy share × factor)`, so with 1.4 a tier keeps all
    /// its traffic until fewer than about 71 % of it is healthy (Envoy's
    /// overprovisioning factor). Values below 1 (or not finite) mean 1.
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

    /// How often health is evaluated (ejections, re-admissions, the slow
    /// start ramp). Zero means one millisecond.
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
    /// out just as an ejected one is.
    #[must_use]
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.health_check = Some(check);
        self
    }
}
