use std::time::Duration;

use tower_layer::Layer;

use super::service::Options;
use super::{Balance, ErrorsAreFailures, MAX_REBUILD_DELAY, NoKey, Strategy, Upstream, WhenEmpty};
use crate::PickRng;
use crate::error::{InvalidSetting, check, valid};
use crate::failover::Failover;
use crate::pool::Pool;

/// Wraps a [`Pool`] in a [`Balance`] with a strategy and options.
///
/// ```
/// use tower_lb::balance::{BalanceLayer, LeastInFlight, WhenEmpty};
///
/// let layer = BalanceLayer::new(LeastInFlight).seed(7).when_empty(WhenEmpty::FailFast);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct BalanceLayer<St, C = ErrorsAreFailures, K = NoKey> {
    strategy: St,
    seed: Option<u64>,
    when_empty: WhenEmpty,
    classify: C,
    key: K,
    rebuild_delay: Option<Duration>,
}

impl<St> BalanceLayer<St> {
    /// A layer balancing with `strategy`; an `Err` from an endpoint counts
    /// as its failure.
    pub fn new(strategy: St) -> Self {
        BalanceLayer {
            strategy,
            seed: None,
            when_empty: WhenEmpty::default(),
            classify: ErrorsAreFailures,
            key: NoKey,
            rebuild_delay: None,
        }
    }
}

impl<St, C, K> BalanceLayer<St, C, K> {
    /// Makes picks repeatable: all clones of a balancer share one generator
    /// starting at `seed`.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// What to do when the pool is empty.
    #[must_use]
    pub fn when_empty(mut self, policy: WhenEmpty) -> Self {
        self.when_empty = policy;
        self
    }

    /// How long after a change to what it picks from the balancer may wait
    /// before rebuilding its pickers, gathering the changes that arrive
    /// meanwhile into one rebuild. By default the strategy's
    /// [`rebuild_delay`](Strategy::rebuild_delay):
    /// [`REBUILD_DELAY`](super::REBUILD_DELAY) (10 ms) for the table
    /// strategies, zero for the others. Zero rebuilds on every change.
    ///
    /// # Panics
    ///
    /// Beyond [`MAX_REBUILD_DELAY`](super::MAX_REBUILD_DELAY) (1 s);
    /// [`try_rebuild_delay`](BalanceLayer::try_rebuild_delay) returns the
    /// error instead.
    #[must_use]
    #[track_caller]
    pub fn rebuild_delay(self, delay: Duration) -> Self {
        valid(self.try_rebuild_delay(delay))
    }

    /// [`rebuild_delay`](BalanceLayer::rebuild_delay), refusing more than
    /// [`MAX_REBUILD_DELAY`](super::MAX_REBUILD_DELAY).
    pub fn try_rebuild_delay(mut self, delay: Duration) -> Result<Self, InvalidSetting> {
        check(
            delay <= MAX_REBUILD_DELAY,
            "BalanceLayer::rebuild_delay",
            delay,
            "must be at most MAX_REBUILD_DELAY (1 s)",
        )?;
        self.rebuild_delay = Some(delay);
        Ok(self)
    }

    /// Decides which outcomes count as the endpoint's failures (see
    /// [`Classify`](super::Classify)); for HTTP,
    /// [`ServerErrorsAreFailures`](crate::http::ServerErrorsAreFailures)
    /// counts 5xx responses too.
    pub fn classify<C2>(self, classify: C2) -> BalanceLayer<St, C2, K> {
        BalanceLayer {
            strategy: self.strategy,
            seed: self.seed,
            when_empty: self.when_empty,
            classify,
            key: self.key,
            rebuild_delay: self.rebuild_delay,
        }
    }

    /// Routes by a key taken from each request (see
    /// [`KeyOf`](super::KeyOf)): a hash strategy ([`Maglev`](super::Maglev),
    /// [`Ring`](super::Ring), [`Rendezvous`](super::Rendezvous)) sends
    /// equal keys to the same endpoint, and requests without a key to its
    /// fallback. Other strategies ignore the key.
    ///
    /// ```
    /// use tower_lb::balance::{key_fn, BalanceLayer, Maglev};
    ///
    /// let layer = BalanceLayer::new(Maglev::new().bounded_load(1.25))
    ///     .key(key_fn(|tenant: &String| Some(tenant.as_bytes())));
    /// # let _ = layer;
    /// ```
    pub fn key<K2>(self, key: K2) -> BalanceLayer<St, C, K2> {
        BalanceLayer {
            strategy: self.strategy,
            seed: self.seed,
            when_empty: self.when_empty,
            classify: self.classify,
            key,
            rebuild_delay: self.rebuild_delay,
        }
    }
}

impl<St, C, K> BalanceLayer<St, C, K>
where
    St: Strategy + Clone,
    C: Clone,
    K: Clone,
{
    fn balance<S>(&self, upstream: Upstream<S>) -> Balance<S, St, C, K>
    where
        S: Clone + Send + Sync + 'static,
    {
        let rng = self
            .seed
            .map_or_else(PickRng::from_entropy, PickRng::seeded);
        Balance::with_options(
            upstream,
            self.strategy.clone(),
            Options {
                rng,
                when_empty: self.when_empty,
                classify: self.classify.clone(),
                key: self.key.clone(),
                rebuild_delay: self.rebuild_delay,
            },
        )
    }
}

impl<S, St, C, K> Layer<Pool<S>> for BalanceLayer<St, C, K>
where
    S: Clone + Send + Sync + 'static,
    St: Strategy + Clone,
    C: Clone,
    K: Clone,
{
    type Service = Balance<S, St, C, K>;

    fn layer(&self, pool: Pool<S>) -> Self::Service {
        self.balance(pool.into())
    }
}

impl<S, St, C, K> Layer<Upstream<S>> for BalanceLayer<St, C, K>
where
    S: Clone + Send + Sync + 'static,
    St: Strategy + Clone,
    C: Clone,
    K: Clone,
{
    type Service = Balance<S, St, C, K>;

    fn layer(&self, upstream: Upstream<S>) -> Self::Service {
        self.balance(upstream)
    }
}

impl<S, St, C, K> Layer<Failover<S>> for BalanceLayer<St, C, K>
where
    S: Clone + Send + Sync + 'static,
    St: Strategy + Clone,
    C: Clone,
    K: Clone,
{
    type Service = Balance<S, St, C, K>;

    fn layer(&self, view: Failover<S>) -> Self::Service {
        self.balance(view.into())
    }
}
