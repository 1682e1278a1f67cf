use tokio::runtime::Handle;
use tower_layer::Layer;

use super::{Failover, FailoverConfig};
use crate::pool::Pool;

/// Turns a [`Pool`] into its eligible view, a [`Failover`]: the endpoints
/// that may take requests now, split into priority tiers with their shares
/// of traffic, for a [`Balance`](crate::balance::Balance) to pick from.
///
/// `layer` spawns the failover driver on the current tokio runtime (or the
/// handle given with [`handle`](FailoverLayer::handle)); it runs off the
/// request path, republishes the view only when health changes, and stops
/// when the last clone of the view is dropped (taking the upstream pool's
/// driver with it).
///
/// # Panics
///
/// `layer` panics outside a tokio runtime when no handle was given, as
/// `tokio::spawn` does.
#[derive(Debug, Clone, Default)]
pub struct FailoverLayer {
    config: FailoverConfig,
    handle: Option<Handle>,
}

impl FailoverLayer {
    /// Failover with `config`.
    pub fn new(config: FailoverConfig) -> Self {
        FailoverLayer {
            config,
            handle: None,
        }
    }

    /// Spawns the driver on this runtime instead of the current one.
    #[must_use]
    pub fn handle(mut self, handle: Handle) -> Self {
        self.handle = Some(handle);
        self
    }
}

impl<S> Layer<Pool<S>> for FailoverLayer
where
    S: Clone + Send + Sync + 'static,
{
    type Service = Failover<S>;

    fn layer(&self, upstream: Pool<S>) -> Failover<S> {
        let handle = match &self.handle {
            Some(h) => h.clone(),
            None => Handle::current(),
        };
        let config = self.config.clone();
        Failover::start(upstream, move |upstream, view| {
            handle.spawn(super::driver::run(config, upstream, view))
        })
    }
}
