//! Retries: budgets, backoff, another endpoint, body replay, hedging,
//! deadlines.
//!
//! Retries are where client-side balancers most often hurt their users:
//! retry storms that multiply an outage, duplicated non-idempotent
//! requests, bodies that cannot be sent twice. [`RetryLayer`] wraps any
//! `Service` and retries only within a [`RetryBudget`] shared by all
//! clones of the client (a ratio of recent requests plus a small floor,
//! as Finagle and linkerd do), with exponential backoff and full jitter,
//! honouring `Retry-After`, under an optional overall deadline.
//!
//! Above a [`Balance`](crate::balance::Balance), each retry avoids the
//! endpoints the request already tried (Envoy's `previous_hosts`), and a
//! hedge avoids the endpoint whose attempt still runs: the layer attaches
//! an [`Attempts`](crate::attempt::Attempts) record to each attempt,
//! which the balancer fills in as it sends it (see [`attempt`](crate::attempt)),
//! so this works through a `Buffer` too. When the request's tier has no
//! endpoint left that it has not tried, the retry goes to the next tier
//! (Envoy's `previous_priorities`).
//!
//! [`Hedge`] sends a backup copy of a slow request to another endpoint
//! ("The Tail at Scale"); the first answer wins, the other attempt is
//! cancelled, and hedges spend from the same budget.
//!
//! The [`Policy`] decides what is retried: [`RetryErrors`] for any
//! service with `Clone` requests, [`HttpPolicy`] for HTTP and gRPC, which
//! knows idempotent methods, retryable statuses and whether a request was
//! sent at all. Streaming bodies become repeatable with [`ReplayBody`].
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_lb::retry::{RetryErrors, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let seen = calls.clone();
//! let flaky = service_fn(move |x: u32| {
//!     let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move { if n == 0 { Err("first attempt fails") } else { Ok(x * 2) } }
//! });
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryErrors::new()).deadline(Duration::from_secs(1)))
//!     .service(flaky);
//! assert_eq!(client.oneshot(21).await.unwrap(), 42);
//! # }
//! ```

mod backoff;
#[cfg(feature = "http")]
mod body;
mod budget;
mod future;
mod hedge;
#[cfg(feature = "http")]
mod http_policy;
mod layer;
mod policy;
mod service;
mod state;
mod tally;

pub use backoff::{Backoff, MAX_RETRY_AFTER, parse_retry_after};
#[cfg(feature = "http")]
pub use body::{ReplayBody, ReplayError};
pub use budget::{BudgetStats, RetryBudget};
pub use future::ResponseFuture;
pub use hedge::Hedge;
#[cfg(feature = "http")]
pub use http_policy::{HttpPolicy, RetryBody};
pub use layer::{RetryLayer, RetryStats};
pub use policy::{Decision, Policy, RetryErrors};
pub use service::Retry;
