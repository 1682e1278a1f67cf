use tower_layer::Layer;

use super::Upstream;
use super::{Balance, ErrorsAreFailures, NoKey, Strategy, WhenEmpty};
use crate::PickRng;
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
            rng,
            self.when_empty,
            self.classify.clone(),
            self.key.clone(),
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
