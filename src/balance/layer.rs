use tower_layer::Layer;

use super::{Balance, PickRng, Strategy, WhenEmpty};
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
pub struct BalanceLayer<St> {
    strategy: St,
    seed: Option<u64>,
    when_empty: WhenEmpty,
}

impl<St> BalanceLayer<St> {
    /// A layer balancing with `strategy`.
    pub fn new(strategy: St) -> Self {
        BalanceLayer {
            strategy,
            seed: None,
            when_empty: WhenEmpty::default(),
        }
    }

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
}

impl<S, St> Layer<Pool<S>> for BalanceLayer<St>
where
    S: Send + Sync + 'static,
    St: Strategy + Clone,
{
    type Service = Balance<S, St>;

    fn layer(&self, pool: Pool<S>) -> Self::Service {
        let rng = self
            .seed
            .map_or_else(PickRng::from_entropy, PickRng::seeded);
        Balance::with_options(pool, self.strategy.clone(), rng, self.when_empty)
    }
}
