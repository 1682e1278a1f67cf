//! Client-side load balancing as tower layers.
//!
//! `tower-lb` discovers the instances of a service from a registry, picks
//! one per request by weight and load, and does it inside your process: no
//! sidecar, no central proxy. Each stage is a tower `Layer` that wraps any
//! service stack — hyper, tonic, axum clients or a plain `service_fn`.
//!
//! ```text
//! Source ──updates──▶ Pool ──snapshot──▶ Failover ──eligible view──▶ Balance ──pick──▶ endpoint service
//!
//! (retry sits above the balancer; PickRng and the clock are leaf utilities)
//! ```
//!
//! - [`discover`]: where endpoints come from — a static list, the
//!   in-process [`Registry`](discover::Registry), your own channel — and an
//!   adapter to tower's `Discover`.
//! - [`pool`]: the live set, applied off the request path and published as
//!   immutable snapshots, with per-endpoint [`EndpointStats`](pool::EndpointStats).
//! - [`failover`]: the eligible [`View`](failover::View) of a pool, kept
//!   current by a [`Failover`](failover::Failover) handle — priority tiers
//!   with gradual spill to backups and fail-back, outlier ejection, panic
//!   mode, slow start and active health checks. The pool knows nothing of
//!   it.
//! - [`retry`]: retries within a budget, with backoff, another endpoint
//!   per attempt, replayable bodies, hedging and a deadline.
//! - [`attempt`]: the record of where a request's attempts went, which the
//!   request carries from the retry layer to the balancer (and through a
//!   `Buffer`).
//! - [`balance`]: the [`Balance`](balance::Balance) service, which picks
//!   from an [`Upstream`](balance::Upstream) (a pool or a failover view),
//!   and its strategies: round robin, random, smooth weighted round robin, weighted
//!   random, power of two choices over in-flight requests or Peak-EWMA
//!   latency, and consistent hashing by a request key (Maglev, a
//!   nginx-compatible ketama ring, rendezvous; with bounded load).
//!
//! # Example
//!
//! ```
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_lb::balance::{BalanceLayer, PeakEwma};
//! use tower_lb::discover::Registry;
//! use tower_lb::pool::DiscoverLayer;
//! use tower_lb::Endpoint;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let registry = Registry::new();
//! let _a = registry.register("echo", Endpoint::new("127.0.0.1:8001".parse().unwrap())).unwrap();
//! let _b = registry.register("echo", Endpoint::new("127.0.0.1:8002".parse().unwrap())).unwrap();
//!
//! // One service per endpoint; with hyper this would be a client bound to
//! // `ep.address()`.
//! let connector = service_fn(|ep: Endpoint| async move {
//!     Ok::<_, std::convert::Infallible>(service_fn(move |req: String| {
//!         let ep = ep.clone();
//!         async move { Ok::<_, std::convert::Infallible>(format!("{ep} got {req}")) }
//!     }))
//! });
//!
//! let client = ServiceBuilder::new()
//!     .layer(BalanceLayer::new(PeakEwma::new()))
//!     .layer(DiscoverLayer::new(registry.watch("echo").unwrap()))
//!     .service(connector);
//!
//! let reply = client.oneshot("hello".to_owned()).await.unwrap();
//! assert!(reply.ends_with("got hello"));
//! # }
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `http` | yes | HTTP helpers ([`http`] module), `HttpPolicy`, `ReplayBody` and HTTP-dates in `Retry-After` for [`retry`], the HTTP health check (`HealthCheck::http`, through hyper's client) |
//! | `tracing` | yes | `tracing` events for discovery and balancing decisions |
//! | `cpu-clock` | yes | Peak-EWMA times requests with the CPU's counter (through `quanta`) rather than the OS clock, while tokio's clock is not paused |
//! | `file` | no | `discover::FileSource`, a JSON file of endpoints reloaded on change |
//! | `dns` | no | `discover::DnsSource`: A/AAAA and SRV discovery (hickory-resolver; needs Rust 1.88) |
//! | `etcd` | no | `discover::EtcdSource` (list + watch a key prefix, resuming after failures) and `discover::EtcdRegistrar` (lease-based registration with compare-and-swap updates), over `etcd-client`; building needs `protoc` |
//! | `etcd-tls` | no | TLS connections to etcd (`EtcdConfig::tls`), on top of `etcd` |
//! | `metrics` | no | reserved for metrics export |
//! | `test-util` | no | `discover::ManualSource`, a controllable source for testing your own stacks; `Balance::pick_index` and `BuildContext::new`, to test pickers and strategies without sending |
//! | `sim` | no | the `sim` module: simulated backends (latency distributions, errors, faults on a schedule) under tokio's paused clock, an open-loop load driver and a latency recorder |
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]
// docs.rs shows which feature each gated item needs.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Without `tracing`, values computed only for events go unused.
#![cfg_attr(
    not(feature = "tracing"),
    allow(unused_variables, dead_code, clippy::if_same_then_else)
)]

#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;
pub mod attempt;
pub mod balance;
pub mod discover;
pub mod endpoint;
mod error;
pub mod failover;
#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub mod grpc;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod pool;
pub mod retry;
#[cfg(feature = "sim")]
pub mod sim;
pub mod status;
mod trace;
mod util;

pub use attempt::Attempted;
pub use endpoint::Endpoint;
pub use util::rng::PickRng;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
pub use error::{
    BoxError, DiscoveryError, Error, Ineligible, InvalidEndpoint, InvalidSetting, TierIneligible,
};
