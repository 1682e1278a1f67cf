use std::time::Duration;

use super::HealthCheck;
use crate::error::{InvalidSetting, check, valid};

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

    /// Ejects an endpoint when at least `percent` % (1 to 100) of its
    /// requests in one interval failed, counting only intervals with at
    /// least `min_requests` (at least 1) requests.
    ///
    /// # Panics
    ///
    /// When `percent` is 0 or above 100, or `min_requests` is 0;
    /// [`try_failure_percentage`](OutlierDetection::try_failure_percentage)
    /// returns the error instead.
    #[must_use]
    #[track_caller]
    pub fn failure_percentage(self, percent: u8, min_requests: u64) -> Self {
        valid(self.try_failure_percentage(percent, min_requests))
    }

    /// [`failure_percentage`](OutlierDetection::failure_percentage),
    /// refusing a `percent` outside 1–100 and a `min_requests` of 0.
    pub fn try_failure_percentage(
        mut self,
        percent: u8,
        min_requests: u64,
    ) -> Result<Self, InvalidSetting> {
        check(
            (1..=100).contains(&percent),
            "OutlierDetection::failure_percentage(percent)",
            percent,
            "must be from 1 to 100",
        )?;
        check(
            min_requests >= 1,
            "OutlierDetection::failure_percentage(min_requests)",
            min_requests,
            "must be at least 1",
        )?;
        self.failure_percentage = Some(FailurePercentage {
            threshold: f64::from(percent) / 100.0,
            min_requests,
        });
        Ok(self)
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

    /// The largest share of a tier ejected at once, in percent (0 to
    /// 100); one endpoint may always be ejected.
    ///
    /// # Panics
    ///
    /// When `percent` is above 100;
    /// [`try_max_ejection_percent`](OutlierDetection::try_max_ejection_percent)
    /// returns the error instead.
    #[must_use]
    #[track_caller]
    pub fn max_ejection_percent(self, percent: u8) -> Self {
        valid(self.try_max_ejection_percent(percent))
    }

    /// [`max_ejection_percent`](OutlierDetection::max_ejection_percent),
    /// refusing more than 100.
    pub fn try_max_ejection_percent(mut self, percent: u8) -> Result<Self, InvalidSetting> {
        check_percent("OutlierDetection::max_ejection_percent", percent)?;
        self.max_ejection_percent = percent;
        Ok(self)
    }
}

/// `percent` is at most 100.
fn check_percent(setting: &'static str, percent: u8) -> Result<(), InvalidSetting> {
    check(percent <= 100, setting, percent, "must be from 0 to 100")
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

    /// The ramp's shape, a finite number above 0: 1.0 is linear, above 1
    /// ramps up faster at the start, below 1 slower.
    ///
    /// # Panics
    ///
    /// When `aggression` is NaN, infinite, zero or negative;
    /// [`try_aggression`](SlowStart::try_aggression) returns the error
    /// instead.
    #[must_use]
    #[track_caller]
    pub fn aggression(self, aggression: f64) -> Self {
        valid(self.try_aggression(aggression))
    }

    /// [`aggression`](SlowStart::aggression), refusing values that are not
    /// finite and above 0.
    pub fn try_aggression(mut self, aggression: f64) -> Result<Self, InvalidSetting> {
        check(
            aggression.is_finite() && aggression > 0.0,
            "SlowStart::aggression",
            aggression,
            "must be a finite number above 0",
        )?;
        self.aggression = aggression;
        Ok(self)
    }

    /// The share of its weight an endpoint starts with, in percent (0 to
    /// 100).
    ///
    /// # Panics
    ///
    /// When `percent` is above 100;
    /// [`try_min_weight_percent`](SlowStart::try_min_weight_percent)
    /// returns the error instead.
    #[must_use]
    #[track_caller]
    pub fn min_weight_percent(self, percent: u8) -> Self {
        valid(self.try_min_weight_percent(percent))
    }

    /// [`min_weight_percent`](SlowStart::min_weight_percent), refusing
    /// more than 100.
    pub fn try_min_weight_percent(mut self, percent: u8) -> Result<Self, InvalidSetting> {
        check_percent("SlowStart::min_weight_percent", percent)?;
        self.min_weight_percent = percent;
        Ok(self)
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
    /// overprovisioning factor, whose default is 1.4). The factor is a
    /// finite number of at least 1; 1 assumes no headroom.
    ///
    /// # Panics
    ///
    /// When `factor` is below 1, NaN or infinite;
    /// [`try_overprovisioning`](FailoverConfig::try_overprovisioning)
    /// returns the error instead.
    #[must_use]
    #[track_caller]
    pub fn overprovisioning(self, factor: f64) -> Self {
        valid(self.try_overprovisioning(factor))
    }

    /// [`overprovisioning`](FailoverConfig::overprovisioning), refusing
    /// values that are not finite and at least 1.
    pub fn try_overprovisioning(mut self, factor: f64) -> Result<Self, InvalidSetting> {
        check(
            factor.is_finite() && factor >= 1.0,
            "FailoverConfig::overprovisioning",
            factor,
            "must be a finite number of at least 1",
        )?;
        self.overprovisioning = factor;
        Ok(self)
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
    /// interval. At least 1 ms.
    ///
    /// # Panics
    ///
    /// When `d` is shorter than 1 ms;
    /// [`try_interval`](FailoverConfig::try_interval) returns the error
    /// instead.
    #[must_use]
    #[track_caller]
    pub fn interval(self, d: Duration) -> Self {
        valid(self.try_interval(d))
    }

    /// [`interval`](FailoverConfig::interval), refusing less than 1 ms.
    pub fn try_interval(mut self, d: Duration) -> Result<Self, InvalidSetting> {
        check(
            d >= Duration::from_millis(1),
            "FailoverConfig::interval",
            d,
            "must be at least 1ms",
        )?;
        self.interval = d;
        Ok(self)
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

    /// Panic when every tier's healthy share is below `percent` % (0 to
    /// 100; 0 never panics unless nothing at all is healthy).
    ///
    /// # Panics
    ///
    /// When `percent` is above 100 (this is about the setting, not the
    /// panic mode); [`try_panic_threshold`](FailoverConfig::try_panic_threshold)
    /// returns the error instead.
    #[must_use]
    #[track_caller]
    pub fn panic_threshold(self, percent: u8) -> Self {
        valid(self.try_panic_threshold(percent))
    }

    /// [`panic_threshold`](FailoverConfig::panic_threshold), refusing
    /// more than 100.
    pub fn try_panic_threshold(mut self, percent: u8) -> Result<Self, InvalidSetting> {
        check_percent("FailoverConfig::panic_threshold", percent)?;
        self.panic_threshold = f64::from(percent) / 100.0;
        Ok(self)
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

    /// The error's message, for a setting that was refused.
    fn refused<T: std::fmt::Debug>(setting: Result<T, InvalidSetting>) -> String {
        setting.unwrap_err().to_string()
    }

    #[test]
    fn outlier_settings_refuse_out_of_range_values() {
        let od = OutlierDetection::new;
        let fp = od().try_failure_percentage(100, 1).unwrap();
        let fp = fp.failure_percentage.unwrap();
        assert_eq!((fp.threshold, fp.min_requests), (1.0, 1));
        assert_eq!(
            od().try_failure_percentage(1, 10)
                .unwrap()
                .failure_percentage
                .unwrap()
                .threshold,
            0.01
        );
        assert_eq!(
            refused(od().try_failure_percentage(0, 10)),
            "invalid setting OutlierDetection::failure_percentage(percent) = 0: must be from 1 to 100"
        );
        assert_eq!(
            refused(od().try_failure_percentage(101, 10)),
            "invalid setting OutlierDetection::failure_percentage(percent) = 101: must be from 1 to 100"
        );
        assert_eq!(
            refused(od().try_failure_percentage(50, 0)),
            "invalid setting OutlierDetection::failure_percentage(min_requests) = 0: must be at least 1"
        );

        assert_eq!(
            od().try_max_ejection_percent(0)
                .unwrap()
                .max_ejection_percent,
            0
        );
        assert_eq!(
            od().try_max_ejection_percent(100)
                .unwrap()
                .max_ejection_percent,
            100
        );
        assert_eq!(
            refused(od().try_max_ejection_percent(101)),
            "invalid setting OutlierDetection::max_ejection_percent = 101: must be from 0 to 100"
        );
        assert!(od().try_max_ejection_percent(u8::MAX).is_err());
    }

    #[test]
    #[should_panic(expected = "invalid setting OutlierDetection::failure_percentage(percent) = 0")]
    fn failure_percentage_of_zero_panics() {
        let _ = OutlierDetection::new().failure_percentage(0, 10);
    }

    #[test]
    #[should_panic(expected = "invalid setting OutlierDetection::max_ejection_percent = 200")]
    fn max_ejection_percent_above_100_panics() {
        let _ = OutlierDetection::new().max_ejection_percent(200);
    }

    #[test]
    fn slow_start_settings_refuse_out_of_range_values() {
        let ss = || SlowStart::new(Duration::from_secs(10));
        assert_eq!(ss().try_aggression(0.5).unwrap().aggression, 0.5);
        assert_eq!(ss().try_aggression(4.0).unwrap().aggression, 4.0);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(
                refused(ss().try_aggression(bad)),
                format!(
                    "invalid setting SlowStart::aggression = {bad:?}: must be a finite number above 0"
                )
            );
        }
        assert_eq!(
            ss().try_min_weight_percent(0).unwrap().min_weight_percent,
            0
        );
        assert_eq!(
            ss().try_min_weight_percent(100).unwrap().min_weight_percent,
            100
        );
        assert_eq!(
            refused(ss().try_min_weight_percent(101)),
            "invalid setting SlowStart::min_weight_percent = 101: must be from 0 to 100"
        );
    }

    #[test]
    #[should_panic(expected = "invalid setting SlowStart::aggression = NaN")]
    fn aggression_of_nan_panics() {
        let _ = SlowStart::new(Duration::from_secs(1)).aggression(f64::NAN);
    }

    #[test]
    #[should_panic(expected = "invalid setting SlowStart::min_weight_percent = 101")]
    fn min_weight_percent_above_100_panics() {
        let _ = SlowStart::new(Duration::from_secs(1)).min_weight_percent(101);
    }

    #[test]
    fn failover_settings_refuse_out_of_range_values() {
        let fc = FailoverConfig::new;
        assert_eq!(
            fc().try_overprovisioning(1.0).unwrap().overprovisioning,
            1.0
        );
        assert_eq!(
            fc().try_overprovisioning(1.4).unwrap().overprovisioning,
            1.4
        );
        for bad in [0.0, 0.99, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(
                refused(fc().try_overprovisioning(bad)),
                format!(
                    "invalid setting FailoverConfig::overprovisioning = {bad:?}: must be a finite number of at least 1"
                )
            );
        }

        let ms = Duration::from_millis;
        assert_eq!(fc().try_interval(ms(1)).unwrap().interval, ms(1));
        assert_eq!(
            fc().try_interval(Duration::MAX).unwrap().interval,
            Duration::MAX
        );
        assert_eq!(
            refused(fc().try_interval(Duration::ZERO)),
            "invalid setting FailoverConfig::interval = 0ns: must be at least 1ms"
        );
        assert_eq!(
            refused(fc().try_interval(Duration::from_micros(999))),
            "invalid setting FailoverConfig::interval = 999µs: must be at least 1ms"
        );

        assert_eq!(fc().try_panic_threshold(0).unwrap().panic_threshold, 0.0);
        assert_eq!(fc().try_panic_threshold(100).unwrap().panic_threshold, 1.0);
        assert_eq!(
            refused(fc().try_panic_threshold(101)),
            "invalid setting FailoverConfig::panic_threshold = 101: must be from 0 to 100"
        );
    }

    #[test]
    #[should_panic(expected = "invalid setting FailoverConfig::overprovisioning = 0.5")]
    fn overprovisioning_below_1_panics() {
        let _ = FailoverConfig::new().overprovisioning(0.5);
    }

    #[test]
    #[should_panic(expected = "invalid setting FailoverConfig::interval = 0ns")]
    fn interval_of_zero_panics() {
        let _ = FailoverConfig::new().interval(Duration::ZERO);
    }

    #[test]
    #[should_panic(expected = "invalid setting FailoverConfig::panic_threshold = 255")]
    fn panic_threshold_above_100_panics() {
        let _ = FailoverConfig::new().panic_threshold(255);
    }
}
