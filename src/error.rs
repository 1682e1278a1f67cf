//! The crate-wide error type.

use std::time::Duration;

/// A type-erased error, as tower uses for inner service failures.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a request or a discovery step failed.
///
/// Each variant either prints its cause or returns it from
/// [`source()`](std::error::Error::source), never both.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pool had no endpoints and the zero-endpoint policy failed fast.
    #[error("no endpoints are available")]
    NoEndpoints,
    /// The pool stayed empty for the whole wait allowed by the zero-endpoint
    /// policy.
    #[error("no endpoint appeared within {waited:?}")]
    NoEndpointsWithin {
        /// How long the caller waited.
        waited: Duration,
    },
    /// Endpoints exist but none may take the request (failover with
    /// [`PanicMode::FailClosed`](crate::failover::PanicMode::FailClosed)
    /// left every one out).
    #[error("none of the {total} endpoints is eligible{why}")]
    NoneEligible {
        /// How many endpoints the pool holds.
        total: usize,
        /// Why, per priority tier, when failover made the view.
        why: Ineligible,
    },
    /// A discovery source reported a failure.
    #[error("discovery failed")]
    Discovery(#[source] DiscoveryError),
    /// An endpoint failed validation.
    #[error("invalid endpoint")]
    InvalidEndpoint(#[source] InvalidEndpoint),
    /// The endpoint's service returned an error.
    #[error("endpoint service failed")]
    Inner(#[source] BoxError),
    /// A retry was due but the retry budget was empty; the failure of the
    /// last attempt is the source.
    #[error("retry budget exhausted after {attempts} attempt(s)")]
    BudgetExhausted {
        /// Attempts made.
        attempts: u32,
        /// Why the last attempt failed.
        #[source]
        last: Box<Error>,
    },
    /// The request's overall deadline passed, across all attempts and
    /// backoff; attempts still in flight were cancelled.
    /// The last attempt that failed before the deadline, if one did, is
    /// the source.
    #[error("deadline of {deadline:?} exceeded after {attempts} attempt(s)")]
    DeadlineExceeded {
        /// The deadline.
        deadline: std::time::Duration,
        /// Attempts started.
        attempts: u32,
        /// Why the last attempt that ended failed, if one did.
        #[source]
        last: Option<Box<Error>>,
    },
}

/// Why no endpoint was eligible, per priority tier (see
/// [`Error::NoneEligible`]); empty when no failover report was at hand.
/// Prints as ` (tier 0: 3 down; tier 1: 1 ejected, 1 failing health checks)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ineligible {
    /// One entry per tier, lowest priority first.
    pub tiers: Vec<TierIneligible>,
}

/// One tier's count of endpoints left out, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TierIneligible {
    /// The tier's priority.
    pub priority: u8,
    /// Endpoints in the tier.
    pub endpoints: usize,
    /// Marked down: they could not be reached.
    pub down: usize,
    /// Ejected by outlier detection.
    pub ejected: usize,
    /// Failing active health checks.
    pub failing_checks: usize,
}

impl std::fmt::Display for Ineligible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tiers.is_empty() {
            return Ok(());
        }
        f.write_str(" (")?;
        for (i, t) in self.tiers.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "tier {}: ", t.priority)?;
            let parts = [
                (t.down, "down"),
                (t.ejected, "ejected"),
                (t.failing_checks, "failing health checks"),
            ];
            let mut any = false;
            for (n, what) in parts.into_iter().filter(|(n, _)| *n > 0) {
                if any {
                    f.write_str(", ")?;
                }
                write!(f, "{n} {what}")?;
                any = true;
            }
            if !any {
                write!(f, "{} endpoint(s), none left out", t.endpoints)?;
            }
        }
        f.write_str(")")
    }
}

impl Error {
    /// `NoneEligible` for a view of `total` endpoints, with the reasons
    /// from its failover report.
    pub(crate) fn none_eligible(
        total: usize,
        health: Option<&crate::failover::HealthReport>,
    ) -> Error {
        Error::NoneEligible {
            total,
            why: health.map(|h| h.ineligible()).unwrap_or_default(),
        }
    }

    /// Turns an inner service's error into this type: one of ours (from a
    /// balancer below) is kept as it is, anything else becomes
    /// [`Error::Inner`].
    pub fn from_inner(error: impl Into<BoxError>) -> Error {
        match error.into().downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => Error::Inner(other),
        }
    }

    /// Whether the request provably never reached an endpoint: there was no
    /// endpoint to send it to, or the connection was refused. Such a
    /// request is safe to retry whatever its method.
    pub fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(ours) = e.downcast_ref::<Error>() {
                if matches!(
                    ours,
                    Error::NoEndpoints
                        | Error::NoEndpointsWithin { .. }
                        | Error::NoneEligible { .. }
                ) {
                    return true;
                }
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
                ) {
                    return true;
                }
            }
            next = e.source();
        }
        false
    }
}

impl From<InvalidEndpoint> for Error {
    fn from(e: InvalidEndpoint) -> Self {
        Error::InvalidEndpoint(e)
    }
}

impl From<DiscoveryError> for Error {
    fn from(e: DiscoveryError) -> Self {
        Error::Discovery(e)
    }
}

/// Why an endpoint was rejected on entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEndpoint {
    /// The key is empty.
    #[error("endpoint key is empty")]
    EmptyKey,
    /// The key is longer than [`MAX_KEY_LEN`](crate::endpoint::MAX_KEY_LEN) bytes.
    #[error("endpoint key is {len} bytes, more than the limit of {max}")]
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The key contains a control character or whitespace.
    #[error("endpoint key {key:?} contains a control character or whitespace")]
    BadKeyCharacter {
        /// The rejected key.
        key: String,
    },
    /// A floating-point weight was NaN, infinite or negative.
    #[error("weight {weight} is not a finite, non-negative number")]
    WeightNotFinite {
        /// The rejected weight.
        weight: f64,
    },
    /// A weight does not fit in `u32`.
    #[error("weight {weight} is larger than {max}", max = u32::MAX)]
    WeightTooLarge {
        /// The rejected weight.
        weight: f64,
    },
    /// A priority does not fit in `u8`.
    #[error("priority {priority} is larger than {max}", max = u8::MAX)]
    PriorityTooLarge {
        /// The rejected priority.
        priority: u64,
    },
    /// An address that does not parse as `ip:port`.
    #[error("address {address:?} is not an ip:port socket address")]
    BadAddress {
        /// The rejected text (cut to its first 256 bytes, so a huge value
        /// does not make a huge error).
        address: String,
    },
    /// The zone is present but empty.
    #[error("zone is empty")]
    EmptyZone,
    /// A tag has an empty name.
    #[error("tag name is empty")]
    EmptyTagName,
    /// A record that is not an endpoint record at all: not JSON, not an
    /// object, a field of the wrong type (a weight written as a string, a
    /// number too large for a float), or a field the record does not have.
    #[error("not a valid endpoint record: {reason}")]
    Malformed {
        /// What the JSON parser said, without its line and column (cut to
        /// 256 bytes).
        reason: String,
    },
}

/// A failure reported by a discovery [`Source`](crate::discover::Source).
///
/// A pool that sees one keeps its last good set of endpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// A record from the source could not be turned into an endpoint.
    #[error("record `{record}` is invalid")]
    InvalidRecord {
        /// Which record (a key, a line, a name).
        record: String,
        /// Why it was rejected.
        #[source]
        source: InvalidEndpoint,
    },
    /// The registry or transport failed, or a document could not be read
    /// at all (a file that is not JSON).
    #[error("discovery source failed")]
    Source(#[source] BoxError),
    /// The source listed records but none of them is valid (each is
    /// reported on its own too, as [`InvalidRecord`](Self::InvalidRecord)
    /// from a file or etcd).
    /// Such a list counts as broken, not as "no instances": the source
    /// sends no update, so the pool keeps its last good set. Only a list
    /// with no records at all is an empty set.
    #[error("none of the {invalid} record(s) from `{origin}` is valid; the last good set is kept")]
    NoValidRecords {
        /// Where the records came from: a file's path, an etcd prefix, a
        /// DNS name.
        origin: String,
        /// How many records were invalid.
        invalid: usize,
    },
    /// A heartbeat TTL of zero.
    #[error("a heartbeat TTL must be longer than zero")]
    ZeroTtl,
    /// A service name given to a registry is empty or malformed.
    #[error("service name {name:?} is invalid")]
    InvalidServiceName {
        /// The rejected name.
        name: String,
    },
}

/// A setting was given a value outside the range it accepts: zero where a
/// count or an interval must be positive, NaN or infinity where a finite
/// factor is needed, a percentage above 100.
///
/// The `try_` builder methods return it; their plain counterparts panic
/// with its message, as [`Duration::from_secs_f64`] does next to
/// [`Duration::try_from_secs_f64`].
///
/// ```
/// use tower_lb::retry::{RetryErrors, RetryLayer};
///
/// let err = RetryLayer::new(RetryErrors::new()).try_max_attempts(0).unwrap_err();
/// assert_eq!(err.setting(), "RetryLayer::max_attempts");
/// assert_eq!(
///     err.to_string(),
///     "invalid setting RetryLayer::max_attempts = 0: must be at least 1"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {setting} = {value}: {reason}")]
pub struct InvalidSetting {
    setting: &'static str,
    value: String,
    reason: &'static str,
}

impl InvalidSetting {
    /// `value` (shown with `Debug`, so `NaN`, `inf` and `500µs` read as
    /// such) is refused for `setting` because of `reason`.
    pub(crate) fn new(
        setting: &'static str,
        value: impl std::fmt::Debug,
        reason: &'static str,
    ) -> Self {
        InvalidSetting {
            setting,
            value: format!("{value:?}"),
            reason,
        }
    }

    /// The setting, as `Type::method`, with the argument in parentheses
    /// when the method takes several (`RetryBudget::new(ratio)`).
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// The refused value, as it was given.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// What the setting accepts.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

/// `Ok(())` when `ok`, else the [`InvalidSetting`] for `value`.
pub(crate) fn check(
    ok: bool,
    setting: &'static str,
    value: impl std::fmt::Debug,
    reason: &'static str,
) -> Result<(), InvalidSetting> {
    if ok {
        Ok(())
    } else {
        Err(InvalidSetting::new(setting, value, reason))
    }
}

/// The value of a `try_` setter, for its panicking counterpart: panics
/// with the error's message, at the caller's line.
#[track_caller]
pub(crate) fn valid<T>(setting: Result<T, InvalidSetting>) -> T {
    match setting {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}

/// Renders an error and its `source()` chain as one line: `a: b: c`.
pub(crate) fn render_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_cause_is_either_printed_or_chained_not_both() {
        let e = Error::Inner("boom".into());
        assert!(!e.to_string().contains("boom"));
        assert_eq!(e.source().map(|s| s.to_string()).as_deref(), Some("boom"));

        let e = Error::Discovery(DiscoveryError::InvalidRecord {
            record: "k".into(),
            source: InvalidEndpoint::EmptyKey,
        });
        assert!(!e.to_string().contains("empty"));
        assert_eq!(
            render_chain(&e),
            "discovery failed: record `k` is invalid: endpoint key is empty"
        );
        let e = Error::DeadlineExceeded {
            deadline: Duration::from_secs(2),
            attempts: 3,
            last: Some(Box::new(Error::NoEndpoints)),
        };
        assert_eq!(
            render_chain(&e),
            "deadline of 2s exceeded after 3 attempt(s): no endpoints are available"
        );
        let e = Error::NoneEligible {
            total: 5,
            why: Ineligible {
                tiers: vec![
                    TierIneligible {
                        priority: 0,
                        endpoints: 3,
                        down: 2,
                        ejected: 1,
                        failing_checks: 0,
                    },
                    TierIneligible {
                        priority: 1,
                        endpoints: 2,
                        failing_checks: 2,
                        ..TierIneligible::default()
                    },
                ],
            },
        };
        assert_eq!(
            e.to_string(),
            "none of the 5 endpoints is eligible (tier 0: 2 down, 1 ejected; tier 1: 2 failing health checks)"
        );
    }
}
