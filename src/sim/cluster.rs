//! A set of simulated backends, as endpoints and a connector.

use std::collections::HashMap;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::{InvalidSim, SimBackend, SimError};
use crate::Endpoint;
use crate::discover::StaticSource;

/// Simulated backends as a service's instances: one [`Endpoint`] per
/// backend, keyed by its name, and a [`SimConnector`] that maps each
/// endpoint to its backend, for a [`Pool`](crate::pool::Pool), a
/// [`TowerDiscover`](crate::discover::TowerDiscover) or your own stack.
///
/// ```
/// use std::time::Duration;
/// use tower::{Layer, ServiceExt};
/// use tower_lb::balance::{BalanceLayer, RoundRobin};
/// use tower_lb::pool::DiscoverLayer;
/// use tower_lb::sim::{Latency, SimBackend, SimCluster};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let ms = Duration::from_millis;
/// let cluster = SimCluster::new([
///     SimBackend::builder("a", Latency::constant(ms(10))).build().unwrap(),
///     SimBackend::builder("b", Latency::constant(ms(30))).build().unwrap(),
/// ])
/// .unwrap();
/// let pool = DiscoverLayer::new(cluster.source()).layer(cluster.connector());
/// let lb = BalanceLayer::new(RoundRobin).seed(1).layer(pool);
/// for _ in 0..4 {
///     lb.clone().oneshot(()).await.unwrap();
/// }
/// assert_eq!(cluster.backend("a").unwrap().stats().received, 2);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SimCluster {
    backends: Arc<[(Endpoint, SimBackend)]>,
    by_key: Arc<HashMap<String, usize>>,
}

impl SimCluster {
    /// A cluster of `backends`. Their names become endpoint keys, so they
    /// must be unique and valid keys (no whitespace).
    pub fn new(backends: impl IntoIterator<Item = SimBackend>) -> Result<Self, InvalidSim> {
        let mut list = Vec::new();
        let mut by_key = HashMap::new();
        for backend in backends {
            let name = backend.name().to_owned();
            let endpoint =
                Endpoint::builder(name.clone())
                    .build()
                    .map_err(|source| InvalidSim::BadName {
                        name: name.clone(),
                        source,
                    })?;
            if by_key.insert(name.clone(), list.len()).is_some() {
                return Err(InvalidSim::DuplicateName(name));
            }
            list.push((endpoint, backend));
        }
        Ok(SimCluster {
            backends: list.into(),
            by_key: Arc::new(by_key),
        })
    }

    /// The backends, in the order given.
    pub fn backends(&self) -> impl ExactSizeIterator<Item = &SimBackend> {
        self.backends.iter().map(|(_, b)| b)
    }

    /// The backend named `name`.
    pub fn backend(&self, name: &str) -> Option<&SimBackend> {
        self.by_key.get(name).map(|&i| &self.backends[i].1)
    }

    /// One endpoint per backend, keyed by its name, with the default
    /// weight and priority 0 and no address.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.backends.iter().map(|(e, _)| e.clone()).collect()
    }

    /// A source yielding [`endpoints`](SimCluster::endpoints) once.
    pub fn source(&self) -> StaticSource {
        StaticSource::new(self.endpoints())
    }

    /// A connector giving each endpoint its backend.
    pub fn connector(&self) -> SimConnector {
        SimConnector {
            cluster: self.clone(),
        }
    }
}

/// Maps an [`Endpoint`] to the [`SimBackend`] of the same name; see
/// [`SimCluster::connector`]. An unknown key fails with
/// [`SimError::UnknownEndpoint`].
#[derive(Debug, Clone)]
pub struct SimConnector {
    cluster: SimCluster,
}

impl Service<Endpoint> for SimConnector {
    type Response = SimBackend;
    type Error = SimError;
    type Future = Ready<Result<SimBackend, SimError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), SimError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ep: Endpoint) -> Self::Future {
        ready(match self.cluster.backend(ep.key()) {
            Some(b) => Ok(b.clone()),
            None => Err(SimError::UnknownEndpoint {
                key: ep.key().to_owned(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sim::Latency;

    fn backend(name: &str) -> SimBackend {
        SimBackend::builder(name, Latency::constant(Duration::from_millis(1)))
            .build()
            .unwrap()
    }

    #[test]
    fn names_must_be_unique_valid_keys() {
        assert!(matches!(
            SimCluster::new([backend("a"), backend("a")]),
            Err(InvalidSim::DuplicateName(n)) if n == "a"
        ));
        assert!(matches!(
            SimCluster::new([backend("a b")]),
            Err(InvalidSim::BadName { .. })
        ));
        assert!(matches!(
            SimCluster::new([backend("")]),
            Err(InvalidSim::BadName { .. })
        ));
    }

    #[tokio::test]
    async fn connector_maps_keys() {
        let cluster = SimCluster::new([backend("a"), backend("b")]).unwrap();
        let mut c = cluster.connector();
        let eps = cluster.endpoints();
        assert_eq!(c.call(eps[1].clone()).await.unwrap().name(), "b");
        let stray = Endpoint::builder("zzz").build().unwrap();
        assert!(matches!(
            c.call(stray).await,
            Err(SimError::UnknownEndpoint { key }) if key == "zzz"
        ));
    }
}
