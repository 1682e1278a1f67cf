//! Simulated backends, open-loop load and latency quantiles.
//!
//! Whether a balancer keeps the tail short when one backend turns slow is
//! a question about minutes of traffic over many backends, and about the
//! 99.9th percentile, which a handful of requests on loopback cannot
//! answer. The simulator answers it in process and in simulated time:
//!
//! - [`SimBackend`]: a `tower::Service` that answers after a latency drawn
//!   from a [`Latency`] distribution (constant, uniform, log-normal,
//!   bimodal, or an empirical [`QuantileTable`]), fails at an error rate,
//!   queues beyond a concurrency limit, and suffers [`Fault`]s on a
//!   schedule: slow down by a factor, fail, or go away.
//! - [`SimCluster`]: backends as endpoints plus a connector, ready for
//!   [`DiscoverLayer`](crate::pool::DiscoverLayer) — or for tower's own
//!   balancers through [`TowerDiscover`](crate::discover::TowerDiscover).
//! - [`OpenLoop`]: requests at a fixed rate, each sent on schedule in its
//!   own task whether or not the earlier ones have answered, with an
//!   optional per-request timeout.
//! - [`LatencyRecorder`]: every request's latency and outcome, with
//!   nearest-rank quantiles ([`Latencies`]).
//! - [`Scenario`]: the experiment below with its parameters open
//!   (backends, load, the slow window, a client-side timeout), run through
//!   one of tower-lb's [`Stack`]s or any service built over its cluster,
//!   into a [`ScenarioRun`]: the record, the success rate, the requests
//!   over the bound and the slow backend's share of traffic.
//!
//! Everything runs on tokio time. Under a paused clock
//! (`#[tokio::test(start_paused = true)]`, or a runtime built with
//! `start_paused(true)`) the runtime jumps to the next timer whenever all
//! tasks wait, so a simulated minute at 1000 requests/s takes about a
//! second of wall time. Randomness is seeded — each backend's draws, and
//! the balancer's via [`BalanceLayer::seed`](crate::balance::BalanceLayer::seed) —
//! so on a current-thread runtime two runs give identical records. The
//! paused clock ticks in whole milliseconds: a sleep of 167.4 ms ends at
//! 168 ms.
//!
//! The default scenario, [`QuantileTable::beyond_round_robin`], is the
//! latency distribution of linkerd's "Beyond Round Robin" experiment
//! (2016); [`Scenario::beyond_round_robin`] is the whole experiment, and
//! `cargo run --example simulate` replays it for each strategy.
//!
//! The feature enables tokio's `test-util` (for the paused clock).
//!
//! ```
//! use std::time::Duration;
//! use tower::Layer;
//! use tower_lb::balance::{BalanceLayer, PeakEwma};
//! use tower_lb::pool::DiscoverLayer;
//! use tower_lb::sim::{Fault, Latency, OpenLoop, QuantileTable, SimBackend, SimCluster};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let s = Duration::from_secs;
//! let latency = Latency::empirical(QuantileTable::beyond_round_robin());
//! // Five backends; the last is ten times slower from 2 s to 8 s.
//! let backends = (0..5).map(|i| {
//!     let b = SimBackend::builder(format!("b{i}"), latency.clone()).seed(i);
//!     if i == 4 { b.fault(s(2)..s(8), Fault::Slow(10.0)) } else { b }
//! });
//! let cluster = SimCluster::new(backends.map(|b| b.build().unwrap())).unwrap();
//! let pool = DiscoverLayer::new(cluster.source()).layer(cluster.connector());
//! let lb = BalanceLayer::new(PeakEwma::new()).seed(1).layer(pool);
//!
//! let record = OpenLoop::new(200.0, s(10)).unwrap().run(lb, |_| ()).await;
//! let p99 = record.latencies().quantile(0.99).unwrap();
//! assert_eq!(record.len(), 2000);
//! assert!(p99 < Duration::from_secs(1), "Peak-EWMA steers around the slow one: {p99:?}");
//! # }
//! ```

mod backend;
mod cluster;
mod error;
mod fault;
mod latency;
mod load;
mod recorder;
mod scenario;

pub use backend::{ResponseFuture, SimBackend, SimBackendBuilder, SimResponse, SimStats};
pub use cluster::{SimCluster, SimConnector};
pub use error::{InvalidSim, SimError};
pub use fault::{Fault, FaultSchedule};
pub use latency::{Latency, QuantileTable};
pub use load::OpenLoop;
pub use recorder::{Latencies, LatencyRecorder, Outcome, Sample};
pub use scenario::{Scenario, ScenarioRun, Stack};
