//! Active health checks: probes sent off the request path, so an endpoint
//! that is down leaves rotation before a request has to find out.
//!
//! Passive outlier detection learns only from requests that already
//! failed. An endpoint that gets little traffic can stay broken for a long
//! time before anyone notices, and one that still accepts connections but
//! reports itself unready (a `503` from its readiness path while it drains
//! or warms up) may never fail a request the passive side can see. Active
//! checks ask every endpoint directly, on a timer, the way Envoy's active
//! health checking, HAProxy's `check` with `rise`/`fall`, and Kubernetes
//! readiness probes do. The results feed the same eligibility as passive
//! ejection.
//!
//! Each [`interval`](HealthCheck::interval) one task probes every current
//! endpoint concurrently, each probe bounded by the
//! [`timeout`](HealthCheck::timeout); a timeout is a failure. A round
//! finishes before the next one starts, so probes of one endpoint never
//! overlap, and a slow round delays the next. Endpoints start healthy. A
//! healthy endpoint is marked unhealthy after
//! [`unhealthy_threshold`](HealthCheck::unhealthy_threshold) consecutive
//! failures (HAProxy's `fall`), an unhealthy one healthy again after
//! [`healthy_threshold`](HealthCheck::healthy_threshold) consecutive passes
//! (`rise`), so a single lost probe or a single lucky one moves nothing. An
//! endpoint that leaves the set is forgotten; if it comes back it starts
//! healthy again.
//!
//! A [`Probe`] is one of:
//!
//! - `Probe::Http` (feature `http`): `GET path` over HTTP/1.1 to the
//!   endpoint's address, healthy when the status code is the expected
//!   one. It is sent with hyper's client on a connection of its own, with
//!   `Host` and `Connection: close`; interim `1xx` responses are skipped
//!   and the body is not read. A response that is not HTTP/1.x, or a
//!   connection that closes before one, is a failure.
//! - [`Probe::Tcp`]: healthy when a TCP connection to the address opens.
//! - [`Probe::Custom`]: your own async check (gRPC health, a Redis `PING`,
//!   an admin API), given the endpoint.
//!
//! An endpoint without an [address](Endpoint::address) fails HTTP and TCP
//! probes; give such endpoints a custom probe.
//!
//! ```
//! use std::time::Duration;
//! use tower_lb::failover::HealthCheck;
//! use tower_lb::Endpoint;
//!
//! // HAProxy's defaults, as here: two passes to come back, three failures to leave.
//! # #[cfg(feature = "http")]
//! let http = HealthCheck::http("/healthz")
//!     .expect_status(204)
//!     .interval(Duration::from_secs(2))
//!     .timeout(Duration::from_millis(500))
//!     .healthy_threshold(2)
//!     .unhealthy_threshold(3);
//!
//! // Only that the port accepts connections.
//! let tcp = HealthCheck::tcp();
//!
//! // Your own check, for example a tag your deploy tooling sets.
//! let custom = HealthCheck::custom(|ep: Endpoint| async move {
//!     ep.tag("maintenance") != Some("true")
//! });
//! # #[cfg(feature = "http")]
//! # let _ = http;
//! # let _ = (tcp, custom);
//! ```

#[cfg(feature = "http")]
mod http_get;
mod probe;
mod scheduler;
#[cfg(test)]
mod test_support;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::error::{InvalidSetting, check, valid};

pub(crate) use probe::passes;
pub(crate) use scheduler::run;

/// A boxed future returned by a custom check.
pub type CheckFuture = Pin<Box<dyn Future<Output = bool> + Send + 'static>>;

/// What a probe does.
#[derive(Clone)]
#[non_exhaustive]
pub enum Probe {
    /// `GET path` over HTTP/1.1 to the endpoint's address; healthy when the
    /// status equals `expect`.
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    Http {
        /// The request path, e.g. `/healthz`.
        path: String,
        /// The expected status code.
        expect: u16,
    },
    /// Healthy when a TCP connection to the endpoint's address opens.
    Tcp,
    /// Your own check.
    Custom(Arc<dyn Fn(Endpoint) -> CheckFuture + Send + Sync>),
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "http")]
            Probe::Http { path, expect } => f
                .debug_struct("Http")
                .field("path", path)
                .field("expect", expect)
                .finish(),
            Probe::Tcp => f.write_str("Tcp"),
            Probe::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Active health checking for a pool: which [`Probe`] to send, how often,
/// how long to wait for it, and how many results in a row change an
/// endpoint's state. Give it to
/// [`FailoverConfig::health_check`](crate::failover::FailoverConfig::health_check).
///
/// Every endpoint starts healthy. Each interval all endpoints are probed
/// concurrently; a probe that fails or outlives the timeout is a failure.
/// A healthy endpoint is left out after `unhealthy_threshold` failures in a
/// row and let back in after `healthy_threshold` passes in a row. An
/// endpoint that leaves discovery is forgotten.
///
/// Defaults: every 5 s, a 1 s timeout, 2 passes to become healthy again, 3
/// failures to become unhealthy.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::failover::{FailoverConfig, HealthCheck};
///
/// # #[cfg(feature = "http")] {
/// let config = FailoverConfig::new().health_check(
///     HealthCheck::http("/ready").interval(Duration::from_secs(10)),
/// );
/// # let _ = config;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub(crate) probe: Probe,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) healthy_threshold: u32,
    pub(crate) unhealthy_threshold: u32,
}

const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// The shortest interval accepted; the checker also raises shorter ones to
/// it, so a zero interval cannot spin.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

impl HealthCheck {
    /// A check that sends `probe`, with the default timings and thresholds.
    pub fn new(probe: Probe) -> Self {
        HealthCheck {
            probe,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
        }
    }

    /// An HTTP/1.1 `GET path` to each endpoint's address, healthy when the
    /// status is 200 (see [`expect_status`](HealthCheck::expect_status)).
    ///
    /// An empty path means `/`. A path that does not start with `/`, or
    /// contains a space or a control character, cannot be sent as a
    /// request target: every probe fails, with that reason in the
    /// `tracing` event.
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn http(path: impl Into<String>) -> Self {
        Self::new(Probe::Http {
            path: path.into(),
            expect: 200,
        })
    }

    /// A TCP connect to each endpoint's address; healthy when it opens.
    pub fn tcp() -> Self {
        Self::new(Probe::Tcp)
    }

    /// Your own check: `check` is called with each endpoint every interval
    /// and its future's `true` means healthy. The future is bounded by the
    /// [timeout](HealthCheck::timeout) like any probe, and a check that
    /// panics counts as a failure.
    pub fn custom<F, Fut>(check: F) -> Self
    where
        F: Fn(Endpoint) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        Self::new(Probe::Custom(Arc::new(move |endpoint| {
            Box::pin(check(endpoint)) as CheckFuture
        })))
    }

    /// How often each endpoint is probed (default 5 s, at least 1 ms).
    /// The first round starts at once.
    ///
    /// # Panics
    ///
    /// When `interval` is shorter than 1 ms;
    /// [`try_interval`](HealthCheck::try_interval) returns the error
    /// instead.
    #[must_use]
    #[track_caller]
    pub fn interval(self, interval: Duration) -> Self {
        valid(self.try_interval(interval))
    }

    /// [`interval`](HealthCheck::interval), refusing less than 1 ms.
    pub fn try_interval(mut self, interval: Duration) -> Result<Self, InvalidSetting> {
        check(
            interval >= MIN_INTERVAL,
            "HealthCheck::interval",
            interval,
            "must be at least 1ms",
        )?;
        self.interval = interval;
        Ok(self)
    }

    /// How long one probe may take, connect included, before it counts as a
    /// failure (default 1 s).
    ///
    /// # Panics
    ///
    /// When `timeout` is zero (every probe would fail);
    /// [`try_timeout`](HealthCheck::try_timeout) returns the error instead.
    #[must_use]
    #[track_caller]
    pub fn timeout(self, timeout: Duration) -> Self {
        valid(self.try_timeout(timeout))
    }

    /// [`timeout`](HealthCheck::timeout), refusing zero.
    pub fn try_timeout(mut self, timeout: Duration) -> Result<Self, InvalidSetting> {
        check(
            !timeout.is_zero(),
            "HealthCheck::timeout",
            timeout,
            "must be longer than zero",
        )?;
        self.timeout = timeout;
        Ok(self)
    }

    /// The status code an HTTP probe expects (default 200). No effect on
    /// other probes.
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    #[must_use]
    pub fn expect_status(mut self, status: u16) -> Self {
        if let Probe::Http { expect, .. } = &mut self.probe {
            *expect = status;
        }
        self
    }

    /// How many passes in a row bring an unhealthy endpoint back (default
    /// 2, at least 1).
    ///
    /// # Panics
    ///
    /// When `passes` is 0;
    /// [`try_healthy_threshold`](HealthCheck::try_healthy_threshold)
    /// returns the error instead.
    #[must_use]
    #[track_caller]
    pub fn healthy_threshold(self, passes: u32) -> Self {
        valid(self.try_healthy_threshold(passes))
    }

    /// [`healthy_threshold`](HealthCheck::healthy_threshold), refusing 0.
    pub fn try_healthy_threshold(mut self, passes: u32) -> Result<Self, InvalidSetting> {
        check(
            passes >= 1,
            "HealthCheck::healthy_threshold",
            passes,
            "must be at least 1",
        )?;
        self.healthy_threshold = passes;
        Ok(self)
    }

    /// How many failures in a row mark a healthy endpoint unhealthy
    /// (default 3, at least 1).
    ///
    /// # Panics
    ///
    /// When `failures` is 0;
    /// [`try_unhealthy_threshold`](HealthCheck::try_unhealthy_threshold)
    /// returns the error instead.
    #[must_use]
    #[track_caller]
    pub fn unhealthy_threshold(self, failures: u32) -> Self {
        valid(self.try_unhealthy_threshold(failures))
    }

    /// [`unhealthy_threshold`](HealthCheck::unhealthy_threshold), refusing
    /// 0.
    pub fn try_unhealthy_threshold(mut self, failures: u32) -> Result<Self, InvalidSetting> {
        check(
            failures >= 1,
            "HealthCheck::unhealthy_threshold",
            failures,
            "must be at least 1",
        )?;
        self.unhealthy_threshold = failures;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_defaults_overrides_and_refuse_zero_thresholds() {
        let check = HealthCheck::tcp();
        assert!(matches!(check.probe, Probe::Tcp));
        assert_eq!(check.interval, Duration::from_secs(5));
        assert_eq!(check.timeout, Duration::from_secs(1));
        assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (2, 3));

        #[cfg(feature = "http")]
        {
            let check = HealthCheck::http("/ready")
                .expect_status(204)
                .interval(Duration::from_millis(250))
                .timeout(Duration::from_millis(100))
                .healthy_threshold(1)
                .unhealthy_threshold(1);
            assert!(
                matches!(&check.probe, Probe::Http { path, expect: 204 } if path == "/ready"),
                "{:?}",
                check.probe
            );
            assert_eq!(check.interval, Duration::from_millis(250));
            assert_eq!(check.timeout, Duration::from_millis(100));
            assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (1, 1));
        }

        // Thresholds of 0 are refused, naming the setting.
        let e = HealthCheck::tcp().try_healthy_threshold(0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid setting HealthCheck::healthy_threshold = 0: must be at least 1"
        );
        let e = HealthCheck::tcp().try_unhealthy_threshold(0).unwrap_err();
        assert_eq!(
            (e.setting(), e.value(), e.reason()),
            (
                "HealthCheck::unhealthy_threshold",
                "0",
                "must be at least 1"
            )
        );
        assert_eq!(
            HealthCheck::tcp()
                .try_unhealthy_threshold(4)
                .map(|c| c.unhealthy_threshold),
            Ok(4)
        );

        // `expect_status` leaves other probes alone; Debug never shows a closure.
        let check = HealthCheck::custom(|_| async { true });
        #[cfg(feature = "http")]
        let check = check.expect_status(204);
        assert_eq!(format!("{:?}", check.probe), "Custom(..)");
    }

    /// The error's message, for a setting that was refused.
    fn refused(setting: Result<HealthCheck, InvalidSetting>) -> String {
        setting.unwrap_err().to_string()
    }

    #[test]
    fn timings_and_thresholds_refuse_out_of_range_values() {
        let ms = Duration::from_millis;
        let tcp = HealthCheck::tcp;
        assert_eq!(tcp().try_interval(ms(1)).unwrap().interval, ms(1));
        assert_eq!(
            tcp().try_interval(Duration::MAX).unwrap().interval,
            Duration::MAX
        );
        assert_eq!(
            refused(tcp().try_interval(Duration::ZERO)),
            "invalid setting HealthCheck::interval = 0ns: must be at least 1ms"
        );
        assert_eq!(
            refused(tcp().try_interval(Duration::from_micros(500))),
            "invalid setting HealthCheck::interval = 500µs: must be at least 1ms"
        );
        assert_eq!(
            tcp().try_timeout(Duration::from_nanos(1)).unwrap().timeout,
            Duration::from_nanos(1)
        );
        assert_eq!(
            refused(tcp().try_timeout(Duration::ZERO)),
            "invalid setting HealthCheck::timeout = 0ns: must be longer than zero"
        );
        assert_eq!(tcp().try_healthy_threshold(1).unwrap().healthy_threshold, 1);
        assert_eq!(
            tcp()
                .try_unhealthy_threshold(u32::MAX)
                .unwrap()
                .unhealthy_threshold,
            u32::MAX
        );
        assert_eq!(
            refused(tcp().try_healthy_threshold(0)),
            "invalid setting HealthCheck::healthy_threshold = 0: must be at least 1"
        );
        assert_eq!(
            refused(tcp().try_unhealthy_threshold(0)),
            "invalid setting HealthCheck::unhealthy_threshold = 0: must be at least 1"
        );
    }

    #[test]
    #[should_panic(expected = "invalid setting HealthCheck::healthy_threshold = 0")]
    fn a_zero_healthy_threshold_panics() {
        let _ = HealthCheck::tcp().healthy_threshold(0);
    }

    #[test]
    #[should_panic(expected = "invalid setting HealthCheck::unhealthy_threshold = 0")]
    fn a_zero_unhealthy_threshold_panics() {
        let _ = HealthCheck::tcp().unhealthy_threshold(0);
    }

    #[test]
    #[should_panic(expected = "invalid setting HealthCheck::interval = 0ns")]
    fn a_zero_interval_panics() {
        let _ = HealthCheck::tcp().interval(Duration::ZERO);
    }

    #[test]
    #[should_panic(expected = "invalid setting HealthCheck::timeout = 0ns")]
    fn a_zero_timeout_panics() {
        let _ = HealthCheck::tcp().timeout(Duration::ZERO);
    }
}
