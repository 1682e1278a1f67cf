//! Failover: which endpoints may take requests now, and in what shares.
//!
//! Backup switching is half of what a client-side balancer is for. A
//! [`FailoverLayer`] sits between the discovery [`Pool`](crate::pool::Pool)
//! and the [`Balance`](crate::balance::Balance) and turns the pool into an
//! **eligible view**, republished (off the request path) only when health
//! changes, so picks stay lock-free:
//!
//! - **Priority tiers** from discovery metadata ([`Endpoint::priority`](crate::Endpoint::priority):
//!   0 = primary, 1 = first backup, …). Each tier's health is its healthy
//!   share × the overprovisioning factor (1.5), capped at 100 %; the lowest
//!   tier takes that much of the traffic and the rest spills to the next
//!   (Envoy's priority load). One primary down of three changes nothing,
//!   two spill part of the load, three move all of it. When a tier
//!   recovers, traffic returns only after the fail-back delay, so a
//!   flapping primary does not bounce it. Tiers without a share stay in
//!   the view for retries that have tried everything before them.
//! - **Down endpoints**: an attempt that shows its endpoint cannot be
//!   reached ([`Classify::is_unreachable`](crate::balance::Classify::is_unreachable))
//!   marks it down at once, without any cap, and it is probed back with
//!   jittered exponential backoff ([`Reconnect`], gRPC's connection
//!   backoff) — the active check if configured, else a TCP connect
//!   (gRPC's subchannel states).
//! - **Passive outlier detection** ([`OutlierDetection`]): endpoints whose
//!   own requests fail — consecutive failures, acted on as the streak
//!   completes, or a failure percentage over an interval — are ejected for
//!   a growing time, at most a capped share of a tier at once (gRPC A50,
//!   Envoy), and then go on trial: one request is sent there, and its
//!   outcome decides (Finagle's failure accrual).
//! - **Panic threshold**: when every tier's healthy share is below it
//!   (default 50 %), stop filtering and balance over everything but the
//!   down endpoints (over all of them when every one is down; fail open,
//!   as Envoy and Finagle do), or fail closed
//!   ([`PanicMode`]).
//! - **Slow start** ([`SlowStart`]): new and re-admitted endpoints ramp up
//!   their weight — the answer to cold starts.
//! - **Active health checks** ([`HealthCheck`]): HTTP, TCP or your own
//!   probe; results feed the same eligibility.
//!
//! Ejections, re-admissions, tier load changes and panic mode are `tracing`
//! events (target `tower_lb`, fields `endpoint`, `reason`, `times_ejected`,
//! `ejection_ms`, `loads`, `healthy_percent`) and appear in the
//! [`HealthReport`] published with each view
//! ([`View::health`], [`Failover::health`]).
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_lb::balance::{BalanceLayer, LeastInFlight};
//! use tower_lb::discover::Registry;
//! use tower_lb::failover::{FailoverConfig, FailoverLayer, OutlierDetection};
//! use tower_lb::pool::DiscoverLayer;
//! use tower_lb::Endpoint;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let registry = Registry::new();
//! // Two primaries and a backup in another region.
//! let _p1 = registry.register("api", Endpoint::new("127.0.0.1:8001".parse().unwrap())).unwrap();
//! let _p2 = registry.register("api", Endpoint::new("127.0.0.1:8002".parse().unwrap())).unwrap();
//! let _b1 = registry
//!     .register("api", Endpoint::new("127.0.0.1:9001".parse().unwrap()).with_priority(1))
//!     .unwrap();
//!
//! let connector = service_fn(|ep: Endpoint| async move {
//!     Ok::<_, std::convert::Infallible>(service_fn(move |_req: ()| {
//!         let key = ep.key().to_owned();
//!         async move { Ok::<_, std::convert::Infallible>(key) }
//!     }))
//! });
//! let failover = FailoverConfig::new()
//!     .failback_delay(Duration::from_secs(30))
//!     .outlier_detection(OutlierDetection::new().consecutive_failures(5));
//! let client = ServiceBuilder::new()
//!     .layer(BalanceLayer::new(LeastInFlight))
//!     .layer(FailoverLayer::new(failover))
//!     .layer(DiscoverLayer::new(registry.watch("api").unwrap()))
//!     .service(connector);
//!
//! // While the primaries are healthy, the backup gets nothing.
//! for _ in 0..20 {
//!     let key = client.clone().oneshot(()).await.unwrap();
//!     assert!(key.starts_with("127.0.0.1:800"));
//! }
//! # }
//! ```

#[cfg(feature = "unstable-bench")]
#[cfg_attr(docsrs, doc(cfg(feature = "unstable-bench")))]
pub mod bench;
mod config;
mod driver;
mod health;
mod layer;
mod report;
mod state;
mod trial;
mod view;

pub use config::{
    FailoverConfig, InvalidReconnect, OutlierDetection, PanicMode, Reconnect, SlowStart,
};
pub use health::{CheckFuture, HealthCheck, Probe};
pub use layer::FailoverLayer;
pub use report::{EjectionReason, EndpointHealth, HealthReport, TierReport, Transitions};
pub(crate) use trial::{OnTrial, Trial};
pub use view::{Failover, Group, View};
