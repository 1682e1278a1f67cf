//! A balanced transport for tonic's generated clients (feature `grpc`).
//!
//! [`Channel`] takes the place of `tonic::transport::Channel`: give it to
//! any generated client (`GreeterClient::new(channel)`). It discovers the
//! servers from any [`Source`], keeps one tonic channel (one HTTP/2
//! connection) per server, and sends each call to the one the strategy
//! picks, with the crate's failure-handling defaults and gRPC's own rules:
//!
//! - **Picks** by Peak-EWMA latency over in-flight calls (tonic's own
//!   balancer counts no load at all), or any strategy, chosen in code or
//!   from configuration with [`AnyStrategy`](crate::balance::AnyStrategy).
//! - **Failover**: a server that refuses connections is marked down at
//!   once and probed back with gRPC's connection backoff; one that keeps
//!   answering UNAVAILABLE or INTERNAL is ejected after 5 in a row; backups
//!   by priority ([`FailoverConfig::new`]).
//! - **Retries** by gRFC A6 ([`GrpcPolicy`]): UNAVAILABLE and transport
//!   failures before any response are retried on another server, within a
//!   20 % budget, at most 3 attempts, honouring `grpc-retry-pushback-ms`;
//!   a call is committed once response headers arrive. Request bodies are
//!   kept (up to 256 KiB, gRPC's per-call retry buffer) to send again.
//!   Hedging is off unless [`ChannelBuilder::hedge`] turns it on.
//! - **Deadlines**: a call's `grpc-timeout` (tonic's `Request::set_timeout`)
//!   bounds all its attempts together; past it the call ends with
//!   DEADLINE_EXCEEDED.
//! - **Errors** are [`tonic::Status`]es with the codes gRPC users expect
//!   ([`code_of`]): UNAVAILABLE when there is no server, none is eligible,
//!   the budget is spent or the connection failed; the cause chain is the
//!   message and the `source()`.
//! - **Health**: [`health_check`] asks each server's `grpc.health.v1`
//!   service; NOT_SERVING drains it.
//!
//! A `Channel` is `Clone + Send + Sync`, with no `Buffer` of its own, and
//! clones share everything: build one and clone it into each client.
//!
//! ```no_run
//! use tower_lb::discover::Registry;
//! use tower_lb::grpc::Channel;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let registry = Registry::new();
//! let channel: Channel = Channel::builder().build(registry.watch("greeter").unwrap());
//! // let mut client = GreeterClient::new(channel.clone());
//! # let _ = channel;
//! # }
//! ```

mod health;
mod policy;
mod status;
mod template;

pub use health::health_check;
pub use policy::{Codes, GrpcPolicy};
pub use status::{GrpcFailures, code_of, status_from_error};
pub use template::{EndpointChannel, EndpointTemplate};

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tonic::body::Body;
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

use crate::balance::{Balance, BalanceLayer, PeakEwma, Strategy, Upstream};
use crate::discover::Source;
use crate::endpoint::Endpoint;
use crate::failover::{FailoverConfig, FailoverLayer, HealthCheck};
use crate::pool::{Pool, PoolConfig};
use crate::retry::{Hedge, ReplayBody, Retry, RetryLayer, RetryStats};

/// gRPC's per-call retry buffer (C-core's `grpc.per_rpc_retry_buffer_size`).
pub const REPLAY_CAP: usize = 256 * 1024;

/// The layers of a [`Channel`].
pub type Stack<St = PeakEwma> = Retry<Balance<EndpointChannel, St, GrpcFailures>, GrpcPolicy>;

/// A balanced gRPC channel over the servers a [`Source`] finds (feature
/// `grpc`); see [the module](self).
pub struct Channel<St: Strategy = PeakEwma> {
    stack: Stack<St>,
    replay_cap: usize,
}

impl Channel {
    /// A builder with the defaults: Peak-EWMA, failover on, A6 retries of
    /// UNAVAILABLE, no hedging, lazy plain-text connections.
    pub fn builder() -> ChannelBuilder {
        ChannelBuilder {
            template: EndpointTemplate::new(),
            strategy: PeakEwma::new(),
            failover: Some(FailoverConfig::new()),
            health: None,
            retry: RetryLayer::new(GrpcPolicy::new()),
            pool: PoolConfig::default(),
            replay_cap: REPLAY_CAP,
        }
    }
}

impl<St: Strategy> Channel<St> {
    /// The balancer under the retries: its pool, health and picks.
    pub fn balance(&self) -> &Balance<EndpointChannel, St, GrpcFailures> {
        self.stack.get_ref()
    }

    /// The whole client's [`Status`](crate::status::Status): discovery,
    /// every endpoint with its state, the tiers and the retry budget.
    pub fn status(&self) -> crate::status::Status {
        self.stack.status()
    }

    /// What the retries have done so far, across all clones.
    pub fn stats(&self) -> RetryStats {
        self.stack.stats()
    }

    /// The layers themselves, to compose further.
    pub fn into_stack(self) -> Stack<St> {
        self.stack
    }
}

impl<St: Strategy> crate::status::Observe for Channel<St> {
    fn status(&self) -> crate::status::Status {
        Channel::status(self)
    }

    fn record_latency(&self) {
        crate::status::Observe::record_latency(&self.stack);
    }

    fn sample_latency(&self, one_in: u32) {
        crate::status::Observe::sample_latency(&self.stack, one_in);
    }
}

impl<St: Strategy> Clone for Channel<St> {
    fn clone(&self) -> Self {
        Channel {
            stack: self.stack.clone(),
            replay_cap: self.replay_cap,
        }
    }
}

impl<St: Strategy> fmt::Debug for Channel<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("strategy", &std::any::type_name::<St>())
            .field("replay_cap", &self.replay_cap)
            .finish_non_exhaustive()
    }
}

impl<St: Strategy> Service<http::Request<Body>> for Channel<St> {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = ResponseFuture<St>;

    /// Always ready: the server is chosen, and its readiness awaited, per
    /// call.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.stack.poll_ready(cx).map_err(status_from_error)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let timeout = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| policy::parse_grpc_timeout(v.as_bytes()));
        let sleep = timeout.map(|t| {
            let now = Instant::now();
            tokio::time::sleep_until(now.checked_add(t).unwrap_or_else(|| far_future(now)))
        });
        let cap = self.replay_cap;
        let req = req.map(|body| ReplayBody::new(body, cap));
        ResponseFuture {
            inner: self.stack.call(req),
            sleep,
            timeout,
        }
    }
}

/// About 30 years after `now`, for a deadline too far to add.
fn far_future(now: Instant) -> Instant {
    now + std::time::Duration::from_secs(86400 * 365 * 30)
}

type Request = http::Request<ReplayBody<Body>>;
type Inner<St> =
    crate::retry::ResponseFuture<Balance<EndpointChannel, St, GrpcFailures>, GrpcPolicy, Request>;

pin_project! {
    /// The future of a [`Channel`] call.
    pub struct ResponseFuture<St: Strategy> {
        #[pin]
        inner: Inner<St>,
        #[pin]
        sleep: Option<Sleep>,
        timeout: Option<std::time::Duration>,
    }
}

impl<St: Strategy> fmt::Debug for ResponseFuture<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<St: Strategy> Future for ResponseFuture<St> {
    type Output = Result<http::Response<Body>, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out.map_err(status_from_error));
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
            let timeout = this.timeout.unwrap_or_default();
            return Poll::Ready(Err(Status::new(
                Code::DeadlineExceeded,
                format!("the call's grpc-timeout of {timeout:?} passed"),
            )));
        }
        Poll::Pending
    }
}

/// How a [`Channel`] is made; from [`Channel::builder`].
#[derive(Debug, Clone)]
pub struct ChannelBuilder<St = PeakEwma> {
    template: EndpointTemplate,
    strategy: St,
    failover: Option<FailoverConfig>,
    health: Option<HealthCheck>,
    retry: RetryLayer<GrpcPolicy>,
    pool: PoolConfig,
    replay_cap: usize,
}

impl<St: Strategy + Clone> ChannelBuilder<St> {
    /// How each server's tonic channel is made (TLS, timeouts,
    /// keep-alive, HTTP/2 windows, eager connection).
    #[must_use]
    pub fn template(mut self, template: EndpointTemplate) -> Self {
        self.template = template;
        self
    }

    /// Picks with `strategy` instead of Peak-EWMA (an
    /// [`AnyStrategy`](crate::balance::AnyStrategy) to choose it at run
    /// time).
    pub fn strategy<St2: Strategy + Clone>(self, strategy: St2) -> ChannelBuilder<St2> {
        ChannelBuilder {
            template: self.template,
            strategy,
            failover: self.failover,
            health: self.health,
            retry: self.retry,
            pool: self.pool,
            replay_cap: self.replay_cap,
        }
    }

    /// Failover with `config` instead of [`FailoverConfig::new`].
    #[must_use]
    pub fn failover(mut self, config: FailoverConfig) -> Self {
        self.failover = Some(config);
        self
    }

    /// No failover layer: the balancer picks from the whole pool. A
    /// [`health_check`](ChannelBuilder::health_check) turns failover back
    /// on, with its defaults.
    #[must_use]
    pub fn without_failover(mut self) -> Self {
        self.failover = None;
        self
    }

    /// Active health checks, such as [`health_check`](fn@health_check)'s
    /// over `grpc.health.v1`, on top of the failover settings.
    #[must_use]
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.health = Some(check);
        self
    }

    /// Retries with `retry` (attempts, budget, backoff, an overall
    /// deadline, hedging) instead of `RetryLayer::new(GrpcPolicy::new())`.
    #[must_use]
    pub fn retry(mut self, retry: RetryLayer<GrpcPolicy>) -> Self {
        self.retry = retry;
        self
    }

    /// Retries these status codes instead of UNAVAILABLE alone (A6's
    /// `retryableStatusCodes`).
    #[must_use]
    pub fn retryable_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.retry = self.retry.map_policy(|p| p.codes(codes));
        self
    }

    /// Hedges every call (A6's hedging): a copy goes to another server
    /// when the first has not answered in time, the first answer that
    /// is not a retryable failure wins, and the other is cancelled. Calls
    /// must be safe to run twice.
    #[must_use]
    pub fn hedge(mut self, hedge: Hedge) -> Self {
        self.retry = self.retry.hedge(hedge).map_policy(|p| p.hedging(true));
        self
    }

    /// The most request body kept per call to send again (default
    /// [`REPLAY_CAP`]); a call with a larger body is sent once.
    #[must_use]
    pub fn replay_cap(mut self, bytes: usize) -> Self {
        self.replay_cap = bytes;
        self
    }

    /// The service's name in status reports and metric labels (by
    /// default the source's name); see
    /// [`PoolConfig::service`](crate::pool::PoolConfig::service).
    #[must_use]
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.pool.service = Some(name.into());
        self
    }

    /// The pool's settings.
    #[must_use]
    pub fn pool(mut self, config: PoolConfig) -> Self {
        self.pool = config;
        self
    }

    /// The channel over `source`. Spawns the pool's and failover's tasks
    /// on the current tokio runtime; they stop with the last clone.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn build<Src: Source>(self, source: Src) -> Channel<St> {
        let template = self.template;
        let connector = tower::service_fn(move |endpoint: Endpoint| {
            let template = template.clone();
            async move { template.channel_for(&endpoint).await }
        });
        let pool = Pool::spawn(source, connector, self.pool);
        let failover = match (self.failover, self.health) {
            (Some(config), Some(check)) => Some(config.health_check(check)),
            (None, Some(check)) => Some(FailoverConfig::new().health_check(check)),
            (config, None) => config,
        };
        let upstream: Upstream<EndpointChannel> = match failover {
            Some(config) => FailoverLayer::new(config).layer(pool).into(),
            None => pool.into(),
        };
        let balance = BalanceLayer::new(self.strategy)
            .classify(GrpcFailures)
            .layer(upstream);
        Channel {
            stack: self.retry.layer(balance),
            replay_cap: self.replay_cap,
        }
    }
}
