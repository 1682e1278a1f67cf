//! Real HTTP backends on loopback, and helpers to drive a balancer with them.
//!
//! A [`Backend`] is an axum server on `127.0.0.1:0` that answers `GET /`
//! with its own name and counts every request it receives. It can be told
//! to answer slowly or with another status, and shuts down gracefully.
//! [`connector`] builds one [`SetAuthority`] per endpoint over a single
//! shared hyper-util client, so every endpoint shares one connection pool;
//! [`get`] sends one request through a balancer and reads the body.
//!
//! For failover tests, a backend also answers `GET /healthz` with a status
//! that can be switched ([`Backend::set_health`]); a [`HungBackend`]
//! accepts connections and never answers; [`timeout_connector`] bounds
//! each endpoint's requests with `tower::timeout::Timeout`.

use std::error::Error as StdError;
use std::fmt;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get as get_route;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::timeout::Timeout;
use tower::{Layer, Service, ServiceExt};
use tower_lb::balance::{Balance, BalanceLayer, Strategy};
use tower_lb::discover::Source;
use tower_lb::http::SetAuthority;
use tower_lb::pool::DiscoverLayer;
use tower_lb::{Endpoint, InvalidEndpoint};

/// The HTTP client every endpoint shares.
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// What the connector builds for one endpoint: the shared client, pointed
/// at that endpoint's address.
pub type EndpointService = SetAuthority<HttpClient>;

/// How long [`Backend::shutdown`] waits for open connections to finish.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

/// What a backend does with each request; changeable while it runs.
#[derive(Debug)]
struct Behaviour {
    name: Arc<str>,
    hits: Arc<AtomicU64>,
    delay_ns: AtomicU64,
    status: AtomicU16,
    /// What `GET /healthz` answers.
    health: AtomicU16,
    /// `GET /healthz` requests received (not counted in `hits`).
    health_checks: AtomicU64,
}

/// A real HTTP server on loopback that answers `GET /` with its name.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    behaviour: Arc<Behaviour>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Backend {
    /// Starts a backend called `name` on an ephemeral loopback port.
    pub async fn start(name: &str) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let behaviour = Arc::new(Behaviour {
            name: name.into(),
            hits: Arc::new(AtomicU64::new(0)),
            delay_ns: AtomicU64::new(0),
            status: AtomicU16::new(StatusCode::OK.as_u16()),
            health: AtomicU16::new(StatusCode::OK.as_u16()),
            health_checks: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/", get_route(answer))
            .route("/healthz", get_route(healthz))
            .with_state(behaviour.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        // Dropping the sender (with the `Backend`) also stops the server.
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(async move { serve.await });
        Ok(Backend {
            addr,
            behaviour,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Starts one backend per name.
    pub async fn start_all(names: &[&str]) -> std::io::Result<Vec<Backend>> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            out.push(Backend::start(name).await?);
        }
        Ok(out)
    }

    /// The backend's name, which is also what it answers.
    pub fn name(&self) -> &str {
        &self.behaviour.name
    }

    /// Where it listens.
    #[allow(dead_code)]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An endpoint for it, with weight 1.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.addr)
    }

    /// Requests received so far (counted on arrival, before any delay).
    pub fn hits(&self) -> u64 {
        self.behaviour.hits.load(Ordering::SeqCst)
    }

    /// The shared hit counter itself.
    #[allow(dead_code)]
    pub fn hit_counter(&self) -> Arc<AtomicU64> {
        self.behaviour.hits.clone()
    }

    /// Answers every later request only after `delay`.
    #[allow(dead_code)]
    pub fn set_delay(&self, delay: Duration) {
        let ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.behaviour.delay_ns.store(ns, Ordering::SeqCst);
    }

    /// Answers every later request with `status` (still with its name as
    /// the body).
    #[allow(dead_code)]
    pub fn set_status(&self, status: StatusCode) {
        self.behaviour
            .status
            .store(status.as_u16(), Ordering::SeqCst);
    }

    /// Answers every later `GET /healthz` with `status` (the default is
    /// 200).
    #[allow(dead_code)]
    pub fn set_health(&self, status: StatusCode) {
        self.behaviour
            .health
            .store(status.as_u16(), Ordering::SeqCst);
    }

    /// `GET /healthz` requests received so far.
    #[allow(dead_code)]
    pub fn health_checks(&self) -> u64 {
        self.behaviour.health_checks.load(Ordering::SeqCst)
    }

    /// Stops accepting, lets open connections finish (idle keep-alive
    /// connections are closed at once) and waits for the server to end.
    /// Returns the final hit count, or an error if the server failed or did
    /// not stop within five seconds.
    pub async fn shutdown(mut self) -> std::io::Result<u64> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(task) = self.task.take() else {
            return Ok(self.hits());
        };
        match tokio::time::timeout(SHUTDOWN_LIMIT, task).await {
            Ok(Ok(served)) => served.map(|()| self.hits()),
            Ok(Err(join)) => Err(std::io::Error::other(join)),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "backend {} did not stop within {SHUTDOWN_LIMIT:?}",
                    self.name()
                ),
            )),
        }
    }
}

async fn answer(State(b): State<Arc<Behaviour>>) -> (StatusCode, String) {
    b.hits.fetch_add(1, Ordering::SeqCst);
    let delay = b.delay_ns.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_nanos(delay)).await;
    }
    let status = StatusCode::from_u16(b.status.load(Ordering::SeqCst))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, b.name.to_string())
}

async fn healthz(State(b): State<Arc<Behaviour>>) -> StatusCode {
    b.health_checks.fetch_add(1, Ordering::SeqCst);
    StatusCode::from_u16(b.health.load(Ordering::SeqCst))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A TCP server on loopback that accepts connections, reads nothing and
/// never answers: a hung process. Stops (closing its connections) when
/// dropped.
#[allow(dead_code)]
#[derive(Debug)]
pub struct HungBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

#[allow(dead_code)]
impl HungBackend {
    /// Starts one on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<HungBackend> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            // Held, never read or written, until the task is aborted.
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                open.push(stream);
            }
        });
        Ok(HungBackend {
            addr,
            accepted,
            task,
        })
    }

    /// An endpoint for it, with weight 1.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for HungBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plain-HTTP/1 client with its own connection pool.
pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A connector (`Service<Endpoint>`) that points one shared client at each
/// endpoint it is given.
///
/// Every endpoint service shares the client's connection pool (hyper-util
/// keys it by authority). An endpoint without a usable address fails with
/// a typed [`InvalidEndpoint`], which the pool records and leaves out.
#[derive(Debug, Clone)]
pub struct Connector {
    client: HttpClient,
}

/// A [`Connector`] over `client`.
pub fn connector(client: HttpClient) -> Connector {
    Connector { client }
}

impl Service<Endpoint> for Connector {
    type Response = EndpointService;
    type Error = InvalidEndpoint;
    type Future = Ready<Result<EndpointService, InvalidEndpoint>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        ready(SetAuthority::new(self.client.clone(), &endpoint))
    }
}

/// What [`timeout_connector`] builds for one endpoint: the shared client,
/// pointed at the endpoint, each request bounded in time.
#[allow(dead_code)]
pub type TimedEndpointService = Timeout<EndpointService>;

/// A connector like [`Connector`] whose endpoint services give up on a
/// request after `limit` (failing with `tower::timeout::error::Elapsed`).
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct TimeoutConnector {
    inner: Connector,
    limit: Duration,
}

/// A [`TimeoutConnector`] over `client`.
#[allow(dead_code)]
pub fn timeout_connector(client: HttpClient, limit: Duration) -> TimeoutConnector {
    TimeoutConnector {
        inner: connector(client),
        limit,
    }
}

impl Service<Endpoint> for TimeoutConnector {
    type Response = TimedEndpointService;
    type Error = InvalidEndpoint;
    type Future = Ready<Result<TimedEndpointService, InvalidEndpoint>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        ready(
            SetAuthority::new(self.inner.client.clone(), &endpoint)
                .map(|s| Timeout::new(s, self.limit)),
        )
    }
}

/// The whole stack over real HTTP: a balancer with `strategy` (seeded, so
/// runs repeat) over a pool fed by `source` through [`connector`].
///
/// Must be called inside a tokio runtime (the pool spawns its driver).
#[allow(dead_code)]
pub fn balancer<Src, St>(source: Src, strategy: St) -> Balance<EndpointService, St>
where
    Src: Source + Clone,
    St: Strategy + Clone,
{
    let pool = DiscoverLayer::new(source).layer(connector(http_client()));
    BalanceLayer::new(strategy).seed(1).layer(pool)
}

/// One answer: its status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The body; a [`Backend`] answers with its name.
    pub body: String,
}

/// Why [`get`] failed: the balancer's typed error, or the body could not be
/// read after the response arrived.
#[derive(Debug)]
pub enum GetError {
    /// The balancer (or the endpoint service under it) failed.
    Balance(tower_lb::Error),
    /// The response head arrived but its body did not.
    Body(hyper::Error),
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Print the whole chain: these end up in assertion messages.
        let (head, mut next): (&str, Option<&(dyn StdError + 'static)>) = match self {
            GetError::Balance(e) => ("balancer", Some(e)),
            GetError::Body(e) => ("body", Some(e)),
        };
        f.write_str(head)?;
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

impl StdError for GetError {}

/// Sends one `GET /` through `lb` (a clone of it, so many tasks can share
/// one balancer) and reads the whole body as a string.
pub async fn get<S>(lb: &S) -> Result<Reply, GetError>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>, Error = tower_lb::Error>
        + Clone,
{
    let req = Request::get("/")
        .body(Empty::new())
        .expect("a GET / request is always valid");
    let res = lb.clone().oneshot(req).await.map_err(GetError::Balance)?;
    let status = res.status();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(GetError::Body)?
        .to_bytes();
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}
