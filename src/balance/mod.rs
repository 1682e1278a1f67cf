//! Balancing: sending each request to one endpoint of a pool.
//!
//! [`Balance`] is a `Service<Req>` over a [`Pool`](crate::pool::Pool). For
//! every snapshot the pool publishes, its [`Strategy`] builds an immutable
//! [`Picker`] once; each request then costs one `arc_swap` load, the pick
//! (a few atomics, no lock, no allocation) and the in-flight accounting.
//! Clones share the picker, so one balancer serves any number of tasks
//! without a `Buffer`.
//!
//! Strategies (all skip weight-0 endpoints while any endpoint is live):
//!
//! | strategy | picks | per pick |
//! |---|---|---|
//! | [`RoundRobin`] | each in turn | one atomic add |
//! | [`Random`] | uniformly at random | one random draw |
//! | [`WeightedRoundRobin`] | in proportion to weight, smoothly interleaved (stride scheduling) | one atomic add |
//! | [`WeightedRandom`] | in proportion to weight (Walker/Vose alias table) | one random draw |
//! | [`LeastInFlight`] | the less loaded of two (P2C), load = in-flight / weight | two draws, two loads |
//! | [`PeakEwma`] | the cheaper of two (P2C), cost = Peak-EWMA latency × (in-flight + 1) / weight | two draws, a clock read |
//! | [`Maglev`] | by the request's key: Maglev lookup table | one hash, one table read |
//! | [`Ring`] | by the request's key: ketama ring (nginx/pingora-compatible) | one CRC-32, a binary search |
//! | [`Rendezvous`] | by the request's key: highest random weight | one hash per endpoint |
//!
//! The hash strategies route by a key extracted from each request
//! ([`BalanceLayer::key`]); see [`hash`] for the algorithms, bounded load
//! and the key's fallback order.
//!
//! Randomness is injectable: [`BalanceLayer::seed`] makes picks repeatable.
//!
//! ```
//! use tower::{service_fn, Layer, Service, ServiceExt};
//! use tower_lb::balance::{BalanceLayer, WeightedRoundRobin};
//! use tower_lb::discover::StaticSource;
//! use tower_lb::pool::DiscoverLayer;
//! use tower_lb::Endpoint;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let source = StaticSource::new([
//!     Endpoint::new("127.0.0.1:1".parse().unwrap()).with_weight(2),
//!     Endpoint::new("127.0.0.1:2".parse().unwrap()).with_weight(1),
//! ]);
//! let connector = service_fn(|ep: Endpoint| async move {
//!     Ok::<_, std::convert::Infallible>(service_fn(move |_: ()| {
//!         let key = ep.key().to_owned();
//!         async move { Ok::<_, std::convert::Infallible>(key) }
//!     }))
//! });
//! let pool = DiscoverLayer::new(source).layer(connector);
//! let mut lb = BalanceLayer::new(WeightedRoundRobin).layer(pool);
//! let mut hits = std::collections::HashMap::new();
//! for _ in 0..300 {
//!     let key = lb.ready().await.unwrap().call(()).await.unwrap();
//!     *hits.entry(key).or_insert(0) += 1;
//! }
//! assert_eq!(hits["127.0.0.1:1"], 200);
//! # }
//! ```

mod any;
mod classify;
mod draw;
pub mod future;
pub mod hash;
mod layer;
mod p2c;
mod random;
mod rotation;
mod round_robin;
mod service;
mod strategy;
mod upstream;
mod weighted_random;
mod weighted_round_robin;

pub use any::{AnyPicker, AnyStrategy};
pub use classify::{Classify, ClassifyFn, ErrorsAreFailures, unreachable};
pub use hash::{KeyFn, KeyHash, KeyOf, Maglev, NoKey, Rendezvous, Ring, key_fn};
pub use layer::BalanceLayer;
pub use p2c::{LeastInFlight, PeakEwma};
pub use random::Random;
pub use round_robin::RoundRobin;
pub use service::{Balance, WhenEmpty};
pub use strategy::{BuildContext, MAX_REBUILD_DELAY, PickContext, Picker, REBUILD_DELAY, Strategy};
pub use upstream::Upstream;
pub use weighted_random::WeightedRandom;
pub use weighted_round_robin::WeightedRoundRobin;
