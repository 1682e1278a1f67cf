//! Consistent hashing: the same key to the same endpoint, for cache
//! affinity, sticky sessions and sharded state.
//!
//! A balancer with a key extractor ([`BalanceLayer::key`]) hashes each
//! request's key — a header, a cookie, the path, a field of your own
//! request type — and a hash strategy maps the hash to an endpoint. When
//! the endpoint set changes, only a small share of keys moves. Requests
//! without a key go to the strategy's fallback (weighted round robin
//! unless set).
//!
//! | strategy | pick | a removal moves | build | use it for |
//! |---|---|---|---|---|
//! | [`Maglev`] | one hash, one table read | a bit more than the removed share | `O(M log M)`, M ≥ 65 537 | the default: fast and even at any N |
//! | [`Ring`] | one CRC-32, a binary search | exactly the removed share | `O(160 N log N)` | the same mapping as nginx / pingora-ketama |
//! | [`Rendezvous`] | `N` hashes | exactly the removed share | none | small sets, subsetting |
//!
//! - **Maglev**: Eisenbud et al., *Maglev: A Fast and Reliable Software
//!   Network Load Balancer*, NSDI 2016.
//! - **Ring / ketama**: Karger et al., *Consistent Hashing and Random
//!   Trees*, STOC 1997, with the point layout of libketama as nginx's
//!   `hash … consistent` and pingora-ketama use it. Compatibility is
//!   checked in the test suite against the `pingora-ketama` crate itself.
//! - **Rendezvous**: Thaler and Ravishankar, *Using Name-Based Mappings to
//!   Increase Hit Rates*, IEEE/ACM ToN 1998; weighted by the logarithmic
//!   method (score `-w / ln(h)`).
//! - **Bounded load** (all three, [`Maglev::bounded_load`] …): Mirrokni,
//!   Thorup and Zadimoghaddam, *Consistent Hashing with Bounded Loads*,
//!   SODA 2018 (Envoy's `hash_balance_factor`). No endpoint takes more
//!   than `c ×` its share of the requests in flight, rounded up; a key whose
//!   endpoint is full moves to the next endpoint in its order, the same
//!   next endpoint every time. Checking the cap reads every endpoint's
//!   in-flight count when the key's endpoint is busy (`O(N)`), never when
//!   it is idle.
//!
//! **Fallback order.** Each hash picker yields a key's endpoints in order
//! ([`Picker::pick_nth`]): the endpoint the key would go to if its first
//! were gone, and so on. A retry above the balancer moves to the key's
//! next endpoint instead of a random one, so only the failed key moves.
//!
//! **Stable hashes.** Keys are hashed with XXH64 (seed 0) or, for the
//! ring, CRC-32 ([`KeyHash`]); both are written out in this crate and
//! pinned by test vectors, and the mapping of a fixed set of keys and
//! endpoints is pinned by a test, so it does not change between runs,
//! machines or releases. Endpoints are identified by their key, so a
//! mapping does not depend on the order discovery lists them in.
//!
//! ```
//! use http::Request;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//! use tower_lb::balance::{key_fn, BalanceLayer, Maglev};
//! use tower_lb::discover::StaticSource;
//! use tower_lb::pool::DiscoverLayer;
//! use tower_lb::Endpoint;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let source = StaticSource::new(
//!     (1..=5).map(|i| Endpoint::new(format!("127.0.0.1:{i}").parse().unwrap())),
//! );
//! let connector = service_fn(|ep: Endpoint| async move {
//!     Ok::<_, std::convert::Infallible>(service_fn(move |_: Request<()>| {
//!         let key = ep.key().to_owned();
//!         async move { Ok::<_, std::convert::Infallible>(key) }
//!     }))
//! });
//! let pool = DiscoverLayer::new(source).layer(connector);
//! assert!(pool.applied(1).await);
//!
//! // Each user sticks to one endpoint: by the `x-user-id` header (with the
//! // `http` feature, `tower_lb::http::HeaderKey::parse("x-user-id")` does
//! // the same).
//! let by_user = key_fn(|req: &Request<()>| {
//!     req.headers().get("x-user-id").map(|v| v.as_bytes())
//! });
//! let mut lb = BalanceLayer::new(Maglev::new()).key(by_user).layer(pool);
//!
//! let request = |user: &str| Request::get("/").header("x-user-id", user).body(()).unwrap();
//! let first = lb.ready().await.unwrap().call(request("alice")).await.unwrap();
//! for _ in 0..10 {
//!     let again = lb.ready().await.unwrap().call(request("alice")).await.unwrap();
//!     assert_eq!(again, first);
//! }
//! // No header: weighted round robin.
//! let anyone = lb.ready().await.unwrap().call(Request::new(())).await.unwrap();
//! # let _ = anyone;
//! # }
//! ```
//!
//! [`BalanceLayer::key`]: super::BalanceLayer::key
//! [`Picker::pick_nth`]: super::Picker::pick_nth

mod key;
mod maglev;
mod order;
mod rendezvous;
mod ring;
mod stable;

pub use key::{KeyFn, KeyOf, NoKey, key_fn};
pub(crate) use maglev::MaglevPicker;
pub use maglev::{DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE, Maglev};
pub use rendezvous::Rendezvous;
pub(crate) use rendezvous::RendezvousPicker;
pub(crate) use ring::RingPicker;
pub use ring::{KETAMA_POINTS, MAX_RING_POINTS, Ring};
pub(crate) use stable::mix;
pub use stable::{KeyHash, crc32, xxh64};

/// The bounded-load factor Envoy and the paper's experiments suggest: no
/// endpoint above 1.25 × its share of requests in flight.
pub const DEFAULT_LOAD_FACTOR: f64 = 1.25;
