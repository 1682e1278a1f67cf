//! The README's whole HTTP stack from a [`Source`] in one expression.

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneSyncService;
use tower_layer::Layer;
use tower_service::Service;

use super::{ServerErrorsAreFailures, SetAuthority};
use crate::balance::{Balance, BalanceLayer, PeakEwma, Strategy, Upstream};
use crate::discover::Source;
use crate::endpoint::Endpoint;
use crate::error::{BoxError, Error};
use crate::failover::{FailoverConfig, FailoverLayer};
use crate::pool::{Pool, PoolConfig};
use crate::retry::{HttpPolicy, ResponseFuture, Retry, RetryBody, RetryLayer, RetryStats};

/// How long [`ClientBuilder::build`]'s TCP connects may take: Envoy's
/// default `connect_timeout`, as `grpc::EndpointTemplate`'s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The service a [`Client`] sends each request to once it has picked an
/// endpoint: one shared hyper-util client, pointed at that endpoint.
pub type EndpointClient<B, C = HttpConnector> = SetAuthority<HyperClient<C, B>>;

/// The layers of a [`Client`], as the README assembles them by hand.
pub type Stack<B, St, C = HttpConnector> =
    Retry<Balance<EndpointClient<B, C>, St, ServerErrorsAreFailures>, HttpPolicy>;

/// A [`Client`] behind one boxed type, for an axum `State` or a struct
/// field: `Clone + Send + Sync`, with the crate's [`Error`].
pub type BoxClient<B = Full<Bytes>> = BoxCloneSyncService<Request<B>, Response<Incoming>, Error>;

/// An HTTP client that balances over the instances a [`Source`] finds,
/// with the failure-handling defaults (feature `http-client`).
///
/// It is the README's stack, built in one expression:
/// [`RetryLayer`] with [`HttpPolicy`] (502, 503, 504, 429 and unreachable
/// endpoints retried within a 20 % budget, on another endpoint), over
/// [`Balance`] with [`PeakEwma`] and [`ServerErrorsAreFailures`], over
/// [`FailoverLayer`] with [`FailoverConfig::new`] (down endpoints out at
/// once, ejection after 5 failures in a row, backups by priority), over
/// the source's pool, over one hyper-util client (HTTP/1, plain TCP)
/// whose connection pool every endpoint shares, through [`SetAuthority`].
///
/// Request bodies are any [`RetryBody`]: `Full<Bytes>` by default, also
/// `Empty`, `String`, `Bytes`, or a streamed body in a
/// [`ReplayBody`](crate::retry::ReplayBody).
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::ServiceExt;
/// use tower_lb::discover::Registry;
/// use tower_lb::http::Client;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let registry = Registry::new();
/// let client: Client = Client::builder().build(registry.watch("api").unwrap());
/// # let _ = client;
/// # }
/// ```
pub struct Client<B = Full<Bytes>, St: Strategy = PeakEwma, C = HttpConnector> {
    stack: Stack<B, St, C>,
}

impl Client {
    /// A builder with the defaults: Peak-EWMA, failover on, retries with
    /// [`HttpPolicy`].
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            strategy: PeakEwma::new(),
            failover: Some(FailoverConfig::new()),
            retry: RetryLayer::new(HttpPolicy::new()),
            pool: PoolConfig::default(),
            scheme: Scheme::HTTP,
            connect_timeout: Some(CONNECT_TIMEOUT),
        }
    }
}

impl<B, St: Strategy, C> Client<B, St, C> {
    /// The balancer under the retries: its pool, health and picks.
    pub fn balance(&self) -> &Balance<EndpointClient<B, C>, St, ServerErrorsAreFailures> {
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
    pub fn into_stack(self) -> Stack<B, St, C> {
        self.stack
    }
}

impl<B, St, C> Client<B, St, C>
where
    B: http_body::Body + RetryBody + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    St: Strategy + Clone,
    C: Connect + Clone + Send + Sync + 'static,
{
    /// This client behind one boxed, nameable type.
    pub fn boxed(self) -> BoxClient<B> {
        BoxCloneSyncService::new(self)
    }
}

impl<B, St: Strategy, C> crate::status::Observe for Client<B, St, C> {
    fn status(&self) -> crate::status::Status {
        Client::status(self)
    }

    fn record_latency(&self) {
        crate::status::Observe::record_latency(&self.stack);
    }

    fn sample_latency(&self, one_in: u32) {
        crate::status::Observe::sample_latency(&self.stack, one_in);
    }
}

impl<B, St: Strategy, C> Clone for Client<B, St, C> {
    fn clone(&self) -> Self {
        Client {
            stack: self.stack.clone(),
        }
    }
}

impl<B, St: Strategy, C> fmt::Debug for Client<B, St, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("strategy", &std::any::type_name::<St>())
            .finish_non_exhaustive()
    }
}

impl<B, St, C> Service<Request<B>> for Client<B, St, C>
where
    B: http_body::Body + RetryBody + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    St: Strategy,
    C: Connect + Clone + Send + Sync + 'static,
{
    type Response = Response<Incoming>;
    type Error = Error;
    type Future = ResponseFuture<
        Balance<EndpointClient<B, C>, St, ServerErrorsAreFailures>,
        HttpPolicy,
        Request<B>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.stack.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.stack.call(req)
    }
}

/// How a [`Client`] is made; from [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder<St = PeakEwma> {
    strategy: St,
    failover: Option<FailoverConfig>,
    retry: RetryLayer<HttpPolicy>,
    pool: PoolConfig,
    scheme: Scheme,
    connect_timeout: Option<Duration>,
}

impl<St: Strategy + Clone> ClientBuilder<St> {
    /// Picks with `strategy` instead of Peak-EWMA (an
    /// [`AnyStrategy`](crate::balance::AnyStrategy) to choose it at run
    /// time).
    pub fn strategy<St2: Strategy + Clone>(self, strategy: St2) -> ClientBuilder<St2> {
        ClientBuilder {
            strategy,
            failover: self.failover,
            retry: self.retry,
            pool: self.pool,
            scheme: self.scheme,
            connect_timeout: self.connect_timeout,
        }
    }

    /// Failover with `config` instead of [`FailoverConfig::new`].
    #[must_use]
    pub fn failover(mut self, config: FailoverConfig) -> Self {
        self.failover = Some(config);
        self
    }

    /// No failover layer: the balancer picks from the whole pool.
    #[must_use]
    pub fn without_failover(mut self) -> Self {
        self.failover = None;
        self
    }

    /// Retries with `retry` (a deadline, a budget, hedging, gRPC statuses)
    /// instead of `RetryLayer::new(HttpPolicy::new())`.
    #[must_use]
    pub fn retry(mut self, retry: RetryLayer<HttpPolicy>) -> Self {
        self.retry = retry;
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

    /// The scheme each request's URI is given with its endpoint's
    /// authority: `http` by default, `https` when
    /// [`build_with`](ClientBuilder::build_with) gets a TLS connector of
    /// your own ([`build_tls`](ClientBuilder::build_tls) sets it itself).
    #[must_use]
    pub fn scheme(mut self, scheme: Scheme) -> Self {
        self.scheme = scheme;
        self
    }

    /// How long a TCP connect may take before the endpoint counts as
    /// unreachable (and the request is retried elsewhere): 5 s by
    /// default, Envoy's `connect_timeout`; `None` waits for the OS.
    /// Applies to [`build`](ClientBuilder::build) and
    /// [`build_tls`](ClientBuilder::build_tls); a client given to
    /// [`build_with`](ClientBuilder::build_with) keeps its own.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The TCP connector [`build`](ClientBuilder::build) and
    /// [`build_tls`](ClientBuilder::build_tls) use.
    fn http_connector(&self) -> HttpConnector {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(self.connect_timeout);
        http
    }

    /// The client over `source`, with a hyper-util client of its own
    /// (HTTP/1 over plain TCP). Spawns the pool's and failover's tasks on
    /// the current tokio runtime; they stop with the last clone.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn build<B, Src>(self, source: Src) -> Client<B, St>
    where
        Src: Source,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let http = HyperClient::builder(TokioExecutor::new()).build(self.http_connector());
        self.build_with(source, http)
    }

    /// As [`build`](ClientBuilder::build), over HTTPS with `tls` (feature
    /// `http-tls`): every request goes out as `https` through rustls, and
    /// a plain `http` connection is never made. A server whose
    /// certificate does not verify counts as unreachable: the request is
    /// retried on another endpoint, and when none verifies the request
    /// fails with an [`Error`] whose source chain names the certificate
    /// problem; no request is written to a server that did not verify.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    #[cfg(feature = "http-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http-tls")))]
    pub fn build_tls<B, Src>(
        self,
        source: Src,
        tls: &super::Tls,
    ) -> Client<B, St, hyper_rustls::HttpsConnector<HttpConnector>>
    where
        Src: Source,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let connector = tls.connector(self.http_connector());
        let http = HyperClient::builder(TokioExecutor::new()).build(connector);
        self.scheme(Scheme::HTTPS).build_with(source, http)
    }

    /// As [`build`](ClientBuilder::build), over a hyper-util client you
    /// made: another connector, HTTP/2, timeouts. Its connection pool is
    /// shared by every endpoint. With a TLS connector, set
    /// [`scheme`](ClientBuilder::scheme) to `https`.
    pub fn build_with<B, Src, C>(self, source: Src, http: HyperClient<C, B>) -> Client<B, St, C>
    where
        Src: Source,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        C: Connect + Clone + Send + Sync + 'static,
    {
        let scheme = self.scheme;
        let connector = tower::service_fn(move |endpoint: Endpoint| {
            std::future::ready(SetAuthority::with_scheme(
                http.clone(),
                &endpoint,
                scheme.clone(),
            ))
        });
        let pool = Pool::spawn(source, connector, self.pool);
        let upstream: Upstream<EndpointClient<B, C>> = match self.failover {
            Some(config) => FailoverLayer::new(config).layer(pool).into(),
            None => pool.into(),
        };
        let balance = BalanceLayer::new(self.strategy)
            .classify(ServerErrorsAreFailures)
            .layer(upstream);
        Client {
            stack: self.retry.layer(balance),
        }
    }
}
