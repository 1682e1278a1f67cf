//! The simulator's errors.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// A simulation parameter out of range, rejected when it is built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidSim {
    /// A uniform distribution whose low bound is above its high bound.
    #[error("uniform latency needs low <= high, got {low:?} > {high:?}")]
    UniformBounds {
        /// The low bound.
        low: Duration,
        /// The high bound.
        high: Duration,
    },
    /// A log-normal shape that is negative or not finite.
    #[error("log-normal sigma must be finite and not negative, got {0}")]
    Sigma(f64),
    /// A log-normal median of zero.
    #[error("log-normal median must be above zero")]
    ZeroMedian,
    /// A probability or rate outside `[0, 1]`.
    #[error("probability must lie in [0, 1], got {0}")]
    Probability(f64),
    /// A quantile table with fewer than two points.
    #[error("a quantile table needs at least 2 points, got {0}")]
    TooFewQuantiles(usize),
    /// A quantile table that does not start at 0 and end at 1.
    #[error("a quantile table must start at quantile 0 and end at quantile 1")]
    QuantileRange,
    /// A quantile table whose quantiles do not increase strictly, or whose
    /// latencies decrease, at this point.
    #[error("quantile table point {index} does not increase")]
    NotIncreasing {
        /// The offending point's index.
        index: usize,
    },
    /// A fault window that is empty or backwards.
    #[error("fault window {0:?} is empty")]
    EmptyWindow(Range<Duration>),
    /// A slow-down factor that is not finite and above zero.
    #[error("slow-down factor must be finite and above zero, got {0}")]
    SlowFactor(f64),
    /// A concurrency limit of zero.
    #[error("concurrency limit must be at least 1")]
    ZeroConcurrency,
    /// A request rate that is not finite and above zero.
    #[error("request rate must be finite and above zero, got {0}")]
    Rate(f64),
    /// A scenario with fewer than two backends (one turns slow, the rest
    /// must carry the load).
    #[error("a scenario needs at least 2 backends, got {0}")]
    TooFewBackends(usize),
    /// A name that is none of the scenario's stacks.
    #[error("no stack is named {0:?}")]
    UnknownStack(String),
    /// Two backends of one cluster with the same name.
    #[error("two simulated backends are named {0:?}")]
    DuplicateName(String),
    /// A backend name that is not a valid endpoint key.
    #[error("simulated backend name {name:?} is not a valid endpoint key: {source}")]
    BadName {
        /// The name.
        name: String,
        /// Why the key is invalid.
        #[source]
        source: crate::InvalidEndpoint,
    },
}

/// Why a simulated request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The backend answered with an error: its error rate, or a
    /// [`Fault::Fail`](super::Fault::Fail) window.
    #[error("simulated failure from {backend}")]
    Failed {
        /// The backend's name.
        backend: Arc<str>,
    },
    /// The backend is gone ([`Fault::Down`](super::Fault::Down)).
    #[error("simulated backend {backend} is down")]
    Down {
        /// The backend's name.
        backend: Arc<str>,
    },
    /// A connector was asked for an endpoint that has no backend.
    #[error("no simulated backend for endpoint {key}")]
    UnknownEndpoint {
        /// The endpoint's key.
        key: String,
    },
}
