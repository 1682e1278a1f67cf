//! How each endpoint's tonic channel is made: [`EndpointTemplate`].

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::transport::Channel as TonicChannel;
use tower_service::Service;

use crate::endpoint::Endpoint;
use crate::error::{BoxError, InvalidEndpoint};
use crate::retry::ReplayBody;

/// A tonic `Endpoint` builder for one endpoint, from its address.
type Configure =
    Arc<dyn Fn(tonic::transport::Endpoint) -> tonic::transport::Endpoint + Send + Sync>;

/// The settings every endpoint's tonic channel is made with: scheme, TLS,
/// timeouts, keep-alive, HTTP/2 windows, and when to connect.
///
/// Each endpoint the source finds gets its own `tonic::transport::Channel`
/// (one HTTP/2 connection, reconnected by tonic when it drops) to
/// `http://address` (or `https://` with [`tls`](EndpointTemplate::tls)),
/// made from these settings.
///
/// Defaults:
/// - plain HTTP/2 (h2c);
/// - a connect timeout of 5 s, Envoy's default. tonic sets none, and
///   gRPC's 20 s is meant for a client with one server to wait for; a
///   balancer has others to send to, and an endpoint that cannot be
///   reached is marked down when its connect fails;
/// - no HTTP/2 keep-alive pings, as in gRPC: servers refuse pings more
///   often than every 5 minutes by default (`too_many_pings`), so turn
///   them on only where your servers allow them;
/// - lazy connection: the channel connects on its first call, as
///   tonic's own `balance_channel` does. [`eager`](EndpointTemplate::eager)
///   connects when the endpoint is discovered instead.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::grpc::EndpointTemplate;
///
/// let template = EndpointTemplate::new()
///     .connect_timeout(Duration::from_secs(1))
///     .http2_keep_alive_interval(Duration::from_secs(300))
///     .initial_stream_window_size(1 << 20)
///     .configure(|ep| ep.tcp_nodelay(true));
/// # let _ = template;
/// ```
#[derive(Clone)]
pub struct EndpointTemplate {
    #[cfg(feature = "grpc-tls")]
    tls: Option<tonic::transport::ClientTlsConfig>,
    connect_timeout: Option<Duration>,
    timeout: Option<Duration>,
    tcp_keepalive: Option<Duration>,
    http2_keep_alive_interval: Option<Duration>,
    keep_alive_timeout: Option<Duration>,
    keep_alive_while_idle: Option<bool>,
    initial_stream_window_size: Option<u32>,
    initial_connection_window_size: Option<u32>,
    http2_adaptive_window: Option<bool>,
    eager: bool,
    configure: Option<Configure>,
}

/// Envoy's connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for EndpointTemplate {
    fn default() -> Self {
        EndpointTemplate {
            #[cfg(feature = "grpc-tls")]
            tls: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            timeout: None,
            tcp_keepalive: None,
            http2_keep_alive_interval: None,
            keep_alive_timeout: None,
            keep_alive_while_idle: None,
            initial_stream_window_size: None,
            initial_connection_window_size: None,
            http2_adaptive_window: None,
            eager: false,
            configure: None,
        }
    }
}

impl fmt::Debug for EndpointTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("EndpointTemplate");
        #[cfg(feature = "grpc-tls")]
        d.field("tls", &self.tls.is_some());
        d.field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .field("http2_keep_alive_interval", &self.http2_keep_alive_interval)
            .field("keep_alive_timeout", &self.keep_alive_timeout)
            .field("keep_alive_while_idle", &self.keep_alive_while_idle)
            .field(
                "initial_stream_window_size",
                &self.initial_stream_window_size,
            )
            .field(
                "initial_connection_window_size",
                &self.initial_connection_window_size,
            )
            .field("http2_adaptive_window", &self.http2_adaptive_window)
            .field("eager", &self.eager)
            .field("configure", &self.configure.is_some())
            .finish()
    }
}

impl EndpointTemplate {
    /// The defaults above.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects over TLS (`https://`) with `config`, which holds the roots
    /// to trust, a client identity and the name to check the servers'
    /// certificates against ([`ClientTlsConfig::domain_name`]; without it
    /// the address, an IP, is checked). Feature `grpc-tls`.
    ///
    /// [`ClientTlsConfig::domain_name`]: tonic::transport::ClientTlsConfig::domain_name
    #[cfg(feature = "grpc-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "grpc-tls")))]
    #[must_use]
    pub fn tls(mut self, config: tonic::transport::ClientTlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// The longest a connection attempt may take (default 5 s); `None`
    /// waits as long as the operating system does.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.connect_timeout = timeout.into();
        self
    }

    /// A limit on each attempt, on top of the call's `grpc-timeout` (none
    /// by default). An attempt over it fails with CANCELLED, as tonic's
    /// own does, and is not retried.
    #[must_use]
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = timeout.into();
        self
    }

    /// TCP keep-alive on each connection (off by default).
    #[must_use]
    pub fn tcp_keepalive(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.tcp_keepalive = interval.into();
        self
    }

    /// Sends HTTP/2 pings this often to find connections that died
    /// silently (off by default; see above).
    #[must_use]
    pub fn http2_keep_alive_interval(mut self, interval: Duration) -> Self {
        self.http2_keep_alive_interval = Some(interval);
        self
    }

    /// How long a ping may go unanswered before the connection is closed
    /// (tonic's default is 20 s).
    #[must_use]
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.keep_alive_timeout = Some(timeout);
        self
    }

    /// Pings while no call is open, too.
    #[must_use]
    pub fn keep_alive_while_idle(mut self, yes: bool) -> Self {
        self.keep_alive_while_idle = Some(yes);
        self
    }

    /// HTTP/2's initial stream window, in bytes.
    #[must_use]
    pub fn initial_stream_window_size(mut self, bytes: u32) -> Self {
        self.initial_stream_window_size = Some(bytes);
        self
    }

    /// HTTP/2's initial connection window, in bytes.
    #[must_use]
    pub fn initial_connection_window_size(mut self, bytes: u32) -> Self {
        self.initial_connection_window_size = Some(bytes);
        self
    }

    /// HTTP/2's adaptive flow control window.
    #[must_use]
    pub fn http2_adaptive_window(mut self, yes: bool) -> Self {
        self.http2_adaptive_window = Some(yes);
        self
    }

    /// Connects each endpoint when it is discovered, bounded by the
    /// connect timeout, rather than on its first call. An endpoint that
    /// cannot be connected still joins, connecting lazily, and is marked
    /// down by its first call. The pool applies an update only once its
    /// new endpoints have connected or failed to.
    #[must_use]
    pub fn eager(mut self, yes: bool) -> Self {
        self.eager = yes;
        self
    }

    /// Any other tonic setting (a user agent, a concurrency limit, a local
    /// address): `configure` gets each endpoint's
    /// `tonic::transport::Endpoint` after the settings above and returns
    /// it changed.
    #[must_use]
    pub fn configure<F>(mut self, configure: F) -> Self
    where
        F: Fn(tonic::transport::Endpoint) -> tonic::transport::Endpoint + Send + Sync + 'static,
    {
        self.configure = Some(Arc::new(configure));
        self
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        #[cfg(feature = "grpc-tls")]
        {
            self.tls.is_some()
        }
        #[cfg(not(feature = "grpc-tls"))]
        {
            false
        }
    }

    /// The tonic endpoint for `endpoint`: its address (or its key, when it
    /// has none, as `host:port`) with these settings.
    pub fn endpoint_for(
        &self,
        endpoint: &Endpoint,
    ) -> Result<tonic::transport::Endpoint, BoxError> {
        let authority = endpoint
            .address()
            .map_or_else(|| endpoint.key().to_owned(), |a| a.to_string());
        let scheme = if self.is_tls() { "https" } else { "http" };
        let uri = format!("{scheme}://{authority}");
        let mut ep = tonic::transport::Endpoint::from_shared(uri).map_err(|_| {
            InvalidEndpoint::BadAddress {
                address: authority.clone(),
            }
        })?;
        #[cfg(feature = "grpc-tls")]
        if let Some(tls) = &self.tls {
            ep = ep.tls_config(tls.clone())?;
        }
        if let Some(t) = self.connect_timeout {
            ep = ep.connect_timeout(t);
        }
        if let Some(t) = self.timeout {
            ep = ep.timeout(t);
        }
        ep = ep.tcp_keepalive(self.tcp_keepalive);
        if let Some(i) = self.http2_keep_alive_interval {
            ep = ep.http2_keep_alive_interval(i);
        }
        if let Some(t) = self.keep_alive_timeout {
            ep = ep.keep_alive_timeout(t);
        }
        if let Some(yes) = self.keep_alive_while_idle {
            ep = ep.keep_alive_while_idle(yes);
        }
        if let Some(sz) = self.initial_stream_window_size {
            ep = ep.initial_stream_window_size(sz);
        }
        if let Some(sz) = self.initial_connection_window_size {
            ep = ep.initial_connection_window_size(sz);
        }
        if let Some(yes) = self.http2_adaptive_window {
            ep = ep.http2_adaptive_window(yes);
        }
        if let Some(configure) = &self.configure {
            ep = configure(ep);
        }
        Ok(ep)
    }

    /// The channel for `endpoint`: connected now when the template is
    /// eager and the connection opens, lazy otherwise.
    pub(crate) async fn channel_for(
        &self,
        endpoint: &Endpoint,
    ) -> Result<EndpointChannel, BoxError> {
        let ep = self.endpoint_for(endpoint)?;
        if self.eager {
            if let Ok(channel) = ep.connect().await {
                return Ok(EndpointChannel { inner: channel });
            }
        }
        Ok(EndpointChannel {
            inner: ep.connect_lazy(),
        })
    }
}

/// One endpoint's service under the balancer: its tonic channel, taking
/// the replayable requests the retry layer sends.
#[derive(Debug, Clone)]
pub struct EndpointChannel {
    inner: TonicChannel,
}

impl EndpointChannel {
    /// The endpoint's tonic channel.
    pub fn get_ref(&self) -> &TonicChannel {
        &self.inner
    }
}

impl Service<http::Request<ReplayBody<tonic::body::Body>>> for EndpointChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = <TonicChannel as Service<http::Request<tonic::body::Body>>>::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: http::Request<ReplayBody<tonic::body::Body>>) -> Self::Future {
        self.inner.call(req.map(tonic::body::Body::new))
    }
}
