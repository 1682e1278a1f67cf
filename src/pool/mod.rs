//! The pool: the live set of endpoints, their services and their stats.
//!
//! A [`Pool`] holds an immutable [`Snapshot`] published through `arc_swap`:
//! readers (balancers, failover, your own code) take one atomic load and
//! never a lock. Discovery updates are applied off the request path, by a
//! [`PoolDriver`] that [`DiscoverLayer`] spawns (and aborts when the last
//! clone of the pool is dropped) or that you run yourself. Each endpoint
//! keeps one [`EndpointStats`] for as long as its key stays in the set, so
//! a re-announce with a new weight keeps its in-flight count and latency.
//!
//! Requests never drive discovery, so a pool that sees one request an hour
//! still follows its source (unlike a `Buffer`-based balancer, which only
//! polls discovery when it is polled for readiness).
//!
//! ```
//! use tower_lb::discover::StaticSource;
//! use tower_lb::pool::DiscoverLayer;
//! use tower_lb::Endpoint;
//! use tower::{Layer, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let source = StaticSource::new([Endpoint::new("127.0.0.1:1".parse().unwrap())]);
//! // The connector builds one service per endpoint.
//! let connector = service_fn(|ep: tower_lb::Endpoint| async move {
//!     Ok::<_, std::convert::Infallible>(service_fn(move |_req: ()| {
//!         let key = ep.key().to_owned();
//!         async move { Ok::<_, std::convert::Infallible>(key) }
//!     }))
//! });
//! let pool = DiscoverLayer::new(source).layer(connector);
//! pool.changed(0).await;
//! assert_eq!(pool.snapshot().len(), 1);
//! # }
//! ```

mod driver;
mod latency;
mod layer;
mod members;
#[allow(clippy::module_inception)]
mod pool;
mod snapshot;
mod stats;

pub use driver::PoolDriver;
pub(crate) use latency::Sampling;
pub use layer::{DiscoverLayer, PoolConfig};
pub(crate) use members::Weights;
pub use members::{Iter, MemberList, Members};
pub use pool::{DiscoveryStatus, Pool};
pub use snapshot::{EndpointReport, Member, Snapshot};
pub use stats::{EndpointStats, StatsHandle};
