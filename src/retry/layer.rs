use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tower_layer::Layer;

use super::backoff::Backoff;
use super::budget::RetryBudget;
use super::hedge::{Hedge, LatencyHistogram};
use super::service::Retry;
use super::tally::Tally;
use crate::PickRng;
use crate::error::{InvalidSetting, check, valid};

/// Settings shared by every clone of a retrying client.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) budget: RetryBudget,
    pub(crate) backoff: Backoff,
    pub(crate) max_attempts: u32,
    pub(crate) deadline: Option<Duration>,
    pub(crate) hedge: Option<Hedge>,
    pub(crate) latencies: LatencyHistogram,
    pub(crate) rng: PickRng,
    pub(crate) stats: Counters,
    /// This layer's own request count, when its budget may be shared (the
    /// budget counts every layer drawing on it).
    pub(crate) requests: Option<Tally>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) retries: AtomicU64,
    pub(crate) hedges: AtomicU64,
    pub(crate) budget_exhausted: AtomicU64,
    pub(crate) deadlines: AtomicU64,
}

/// Counters of a retry layer (shared by all its clones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryStats {
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
}

/// Retries requests through any service, within a budget: the layer for
/// [`Retry`].
///
/// ```
/// use std::time::Duration;
/// use tower_lb::retry::{RetryBudget, RetryErrors, RetryLayer};
///
/// let layer = RetryLayer::new(RetryErrors::new())
///     .max_attempts(3)
///     .budget(RetryBudget::new(Duration::from_secs(10), 0.2, 10))
///     .deadline(Duration::from_secs(2));
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct RetryLayer<P> {
    policy: P,
    budget: RetryBudget,
    /// Whether `budget` came from the user (and may be shared).
    shared_budget: bool,
    backoff: Backoff,
    max_attempts: u32,
    deadline: Option<Duration>,
    hedge: Option<Hedge>,
    seed: Option<u64>,
}

impl<P> RetryLayer<P> {
    /// Retries what `policy` says, with the default budget (20 % of recent
    /// requests plus 10 per second), backoff (exponential with full
    /// jitter) and at most 3 attempts, no deadline and no hedging.
    pub fn new(policy: P) -> Self {
        RetryLayer {
            policy,
            budget: RetryBudget::default(),
            shared_budget: false,
            backoff: Backoff::default(),
            max_attempts: 3,
            deadline: None,
            hedge: None,
            seed: None,
        }
    }

    /// The budget retries and hedges spend from. Clones of a budget share
    /// it, so several layers (or clients) can draw on one.
    #[must_use]
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self.shared_budget = true;
        self
    }

    /// The pause between attempts.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Attempts per request, the first included (default 3, at least 1;
    /// 1 turns retries off).
    ///
    /// # Panics
    ///
    /// When `n` is 0; [`try_max_attempts`](RetryLayer::try_max_attempts)
    /// returns the error instead.
    #[must_use]
    #[track_caller]
    pub fn max_attempts(self, n: u32) -> Self {
        valid(self.try_max_attempts(n))
    }

    /// [`max_attempts`](RetryLayer::max_attempts), refusing 0.
    pub fn try_max_attempts(mut self, n: u32) -> Result<Self, InvalidSetting> {
        check(n >= 1, "RetryLayer::max_attempts", n, "must be at least 1")?;
        self.max_attempts = n;
        Ok(self)
    }

    /// An overall deadline per request, covering every attempt and pause;
    /// when it passes, attempts in flight are cancelled and the request
    /// fails with [`Error::DeadlineExceeded`](crate::Error::DeadlineExceeded).
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Sends a second copy of requests the policy calls hedgeable when the
    /// first has not answered in time; the first answer wins and the other
    /// attempt is cancelled. Hedges spend from the budget.
    ///
    /// An attempt is cancelled by dropping it: a hedge or retry at once, the
    /// first attempt (which the response future holds) with the response
    /// future, as soon as the caller has the answer.
    #[must_use]
    pub fn hedge(mut self, hedge: Hedge) -> Self {
        self.hedge = Some(hedge);
        self
    }

    /// The same settings with the policy `f` makes of this one.
    #[cfg(feature = "grpc")]
    pub(crate) fn map_policy<P2>(self, f: impl FnOnce(P) -> P2) -> RetryLayer<P2> {
        RetryLayer {
            policy: f(self.policy),
            budget: self.budget,
            shared_budget: self.shared_budget,
            backoff: self.backoff,
            max_attempts: self.max_attempts,
            deadline: self.deadline,
            hedge: self.hedge,
            seed: self.seed,
        }
    }

    /// Makes backoff jitter repeatable.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

impl<S: Clone, P: Clone> Layer<S> for RetryLayer<P> {
    type Service = Retry<S, P>;

    fn layer(&self, inner: S) -> Retry<S, P> {
        Retry::from_parts(
            inner,
            self.policy.clone(),
            Config {
                budget: self.budget.clone(),
                backoff: self.backoff.clone(),
                max_attempts: self.max_attempts,
                deadline: self.deadline,
                hedge: self.hedge.clone(),
                latencies: LatencyHistogram::default(),
                rng: self
                    .seed
                    .map_or_else(PickRng::from_entropy, PickRng::seeded),
                stats: Counters::default(),
                requests: self.shared_budget.then(Tally::new),
            },
        )
    }
}

impl Config {
    /// Every count a request of this layer goes into: the budget's, and the
    /// layer's own when the budget may be shared.
    #[inline]
    pub(crate) fn tallies(&self) -> impl Iterator<Item = &Tally> {
        std::iter::once(self.budget.tally()).chain(&self.requests)
    }

    pub(crate) fn stats(&self) -> RetryStats {
        let requests = match &self.requests {
            Some(own) => own.total(),
            None => self.budget.stats().requests,
        };
        RetryStats {
            requests,
            retries: self.stats.retries.load(Relaxed),
            hedges: self.stats.hedges.load(Relaxed),
            budget_exhausted: self.stats.budget_exhausted.load(Relaxed),
            deadlines_exceeded: self.stats.deadlines.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::RetryErrors;

    #[test]
    fn max_attempts_refuses_zero_and_keeps_any_other_count() {
        let layer = RetryLayer::new(RetryErrors::new());
        let err = layer.clone().try_max_attempts(0).unwrap_err();
        assert_eq!(err.setting(), "RetryLayer::max_attempts");
        assert_eq!(err.value(), "0");
        assert_eq!(err.reason(), "must be at least 1");
        assert_eq!(
            err.to_string(),
            "invalid setting RetryLayer::max_attempts = 0: must be at least 1"
        );
        let one = layer
            .clone()
            .try_max_attempts(1)
            .expect("1 turns retries off");
        assert_eq!(one.max_attempts, 1);
        assert_eq!(layer.clone().max_attempts(7).max_attempts, 7);
        assert_eq!(layer.max_attempts(u32::MAX).max_attempts, u32::MAX);
    }

    #[test]
    #[should_panic(expected = "invalid setting RetryLayer::max_attempts = 0")]
    fn max_attempts_of_zero_panics_naming_the_setting() {
        let _ = RetryLayer::new(RetryErrors::new()).max_attempts(0);
    }
}
