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
//!
//! For retry tests, a backend also answers `POST /` and `PUT /` as it
//! answers `GET /`, can add a `Retry-After` header to its non-2xx answers
//! ([`Backend::set_retry_after`]), echoes the length and [`checksum`] of a
//! body sent to `/echo`, logs every arrival ([`Backend::arrivals`]) and
//! counts handlers dropped before they finished ([`Backend::cancelled`]);
//! a [`ClosingBackend`] reads each request and closes the connection
//! without answering; [`closed_endpoint`] is a port nothing listens on;
//! [`connector_with`] and [`retry_client`] send replayable bodies
//! ([`ReqBody`]) so `RetryLayer` can repeat them, and [`send`] sends any
//! request.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get as get_route;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Incoming};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::timeout::Timeout;
use tower::{Layer, Service, ServiceExt};
use tower_lb::balance::{Balance, BalanceLayer, Strategy};
use tower_lb::discover::Source;
use tower_lb::http::SetAuthority;
use tower_lb::pool::DiscoverLayer;
use tower_lb::retry::ReplayBody;
use tower_lb::{Endpoint, InvalidEndpoint};

/// The HTTP client every endpoint shares.
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// What the connector builds for one endpoint: the shared client, pointed
/// at that endpoint's address.
pub type EndpointService = SetAuthority<HttpClient>;

/// How long [`Backend::shutdown`] waits for open connections to finish.
#[allow(dead_code)]
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
    /// `Retry-After` value added to non-2xx answers, if any.
    retry_after: Mutex<Option<String>>,
    /// The next this many requests are answered 503, whatever `status`.
    fail_next: AtomicU64,
    /// Handlers dropped before they answered (the client went away).
    cancelled: AtomicU64,
    /// Every request counted in `hits`, in order of arrival.
    log: Mutex<Vec<Arrival>>,
}

/// One request as a [`Backend`] saw it arrive.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When it arrived (tokio time).
    pub at: tokio::time::Instant,
    /// Its method.
    pub method: Method,
    /// Its `x-request-id` header, if any.
    pub id: Option<String>,
    /// For `/echo`: the body's length and [`checksum`].
    pub body: Option<(usize, u64)>,
}

/// FNV-1a over `bytes`: what `/echo` answers (with the length), so a test
/// can tell a body arrived byte for byte.
#[allow(dead_code)]
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What `/echo` answers for a body: its length and checksum.
#[allow(dead_code)]
pub fn echo_of(bytes: &[u8]) -> String {
    format!("{} {:016x}", bytes.len(), checksum(bytes))
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
        Backend::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a backend called `name` listening on `addr`: on the port of
    /// one that was shut down, it is that backend come back (tokio binds
    /// with `SO_REUSEADDR`, so the old connections' `TIME_WAIT` does not
    /// stand in the way). Its counters start from zero.
    #[allow(dead_code)]
    pub async fn start_on(name: &str, addr: SocketAddr) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let behaviour = Arc::new(Behaviour {
            name: name.into(),
            hits: Arc::new(AtomicU64::new(0)),
            delay_ns: AtomicU64::new(0),
            status: AtomicU16::new(StatusCode::OK.as_u16()),
            health: AtomicU16::new(StatusCode::OK.as_u16()),
            health_checks: AtomicU64::new(0),
            retry_after: Mutex::new(None),
            fail_next: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/", get_route(answer).post(answer).put(answer))
            .route("/echo", axum::routing::post(echo).put(echo))
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
    #[allow(dead_code)]
    pub async fn start_all(names: &[&str]) -> std::io::Result<Vec<Backend>> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            out.push(Backend::start(name).await?);
        }
        Ok(out)
    }

    /// The backend's name, which is also what it answers.
    #[allow(dead_code)]
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

    /// Adds `Retry-After: value` to every later non-2xx answer (`None`
    /// stops it).
    #[allow(dead_code)]
    pub fn set_retry_after(&self, value: Option<&str>) {
        *lock(&self.behaviour.retry_after) = value.map(str::to_owned);
    }

    /// Answers the next `n` requests with 503, then goes back to the
    /// status set by [`set_status`](Backend::set_status).
    #[allow(dead_code)]
    pub fn fail_next(&self, n: u64) {
        self.behaviour.fail_next.store(n, Ordering::SeqCst);
    }

    /// Handlers dropped before they answered: requests the client gave up
    /// on (its connection closed) while this backend was still working.
    #[allow(dead_code)]
    pub fn cancelled(&self) -> u64 {
        self.behaviour.cancelled.load(Ordering::SeqCst)
    }

    /// Every request counted in [`hits`](Backend::hits), in arrival order.
    #[allow(dead_code)]
    pub fn arrivals(&self) -> Vec<Arrival> {
        lock(&self.behaviour.log).clone()
    }

    /// Stops accepting, lets open connections finish (idle keep-alive
    /// connections are closed at once) and waits for the server to end.
    /// Returns the final hit count, or an error if the server failed or did
    /// not stop within five seconds.
    #[allow(dead_code)]
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

/// Counts a handler as cancelled if it is dropped before `finish`.
struct CancelGuard<'a> {
    cancelled: &'a AtomicU64,
    finished: bool,
}

impl CancelGuard<'_> {
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Behaviour {
    /// Counts and logs an arrival.
    fn arrive(&self, method: Method, headers: &HeaderMap, body: Option<(usize, u64)>) {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        lock(&self.log).push(Arrival {
            at: tokio::time::Instant::now(),
            method,
            id,
            body,
        });
    }

    /// Waits out the delay (counting a drop meanwhile as a cancellation),
    /// then answers `body` with the current status.
    async fn respond(&self, body: String) -> Response<axum::body::Body> {
        let guard = CancelGuard {
            cancelled: &self.cancelled,
            finished: false,
        };
        let delay = self.delay_ns.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_nanos(delay)).await;
        }
        guard.finish();
        let failing = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let status = if failing {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::from_u16(self.status.load(Ordering::SeqCst))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        };
        let mut res = (status, body).into_response();
        if !status.is_success() {
            if let Some(value) = lock(&self.retry_after).as_deref() {
                if let Ok(value) = value.parse() {
                    res.headers_mut().insert(hyper::header::RETRY_AFTER, value);
                }
            }
        }
        res
    }
}

async fn answer(
    State(b): State<Arc<Behaviour>>,
    method: Method,
    headers: HeaderMap,
) -> Response<axum::body::Body> {
    b.arrive(method, &headers, None);
    b.respond(b.name.to_string()).await
}

/// Answers the length and checksum of the body it received.
async fn echo(
    State(b): State<Arc<Behaviour>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response<axum::body::Body> {
    b.arrive(method, &headers, Some((body.len(), checksum(&body))));
    b.respond(echo_of(&body)).await
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

/// A request body `RetryLayer` can send again: any infallible body,
/// recorded by a [`ReplayBody`] up to its cap. (The error type is concrete:
/// a boxed `dyn Error` here trips rustc's higher-ranked lifetime checks
/// when the client's futures are spawned.)
#[allow(dead_code)]
pub type ReqBody = ReplayBody<UnsyncBoxBody<Bytes, Infallible>>;

/// The replay cap of [`empty_body`] and [`full_body`].
#[allow(dead_code)]
pub const REPLAY_CAP: usize = 64 * 1024;

/// A plain-HTTP/1 client for [`ReqBody`] requests, with its own pool.
#[allow(dead_code)]
pub fn retry_client() -> Client<HttpConnector, ReqBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `body` made replayable up to `cap` bytes.
#[allow(dead_code)]
pub fn replay<B>(body: B, cap: usize) -> ReqBody
where
    B: Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    ReplayBody::new(body.boxed_unsync(), cap)
}

/// An empty replayable body.
#[allow(dead_code)]
pub fn empty_body() -> ReqBody {
    replay(Empty::<Bytes>::new(), REPLAY_CAP)
}

/// A replayable body holding `bytes` (its size is known up front).
#[allow(dead_code)]
pub fn full_body(bytes: impl Into<Bytes>) -> ReqBody {
    replay(http_body_util::Full::new(bytes.into()), REPLAY_CAP)
}

/// A connector (`Service<Endpoint>`) that points one shared client at each
/// endpoint it is given.
///
/// Every endpoint service shares the client's connection pool (hyper-util
/// keys it by authority). An endpoint without a usable address fails with
/// a typed [`InvalidEndpoint`], which the pool records and leaves out.
pub struct Connector<B = Empty<Bytes>> {
    client: Client<HttpConnector, B>,
}

impl<B> Clone for Connector<B> {
    fn clone(&self) -> Self {
        Connector {
            client: self.client.clone(),
        }
    }
}

impl<B> fmt::Debug for Connector<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

/// A [`Connector`] over `client`.
pub fn connector(client: HttpClient) -> Connector {
    Connector { client }
}

/// A [`Connector`] over a client for any body type, e.g. [`retry_client`].
#[allow(dead_code)]
pub fn connector_with<B>(client: Client<HttpConnector, B>) -> Connector<B> {
    Connector { client }
}

impl<B> Service<Endpoint> for Connector<B> {
    type Response = SetAuthority<Client<HttpConnector, B>>;
    type Error = InvalidEndpoint;
    type Future = Ready<Result<Self::Response, InvalidEndpoint>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        ready(SetAuthority::new(self.client.clone(), &endpoint))
    }
}

/// A TCP server on loopback that reads each HTTP/1 request (head and a
/// `content-length` body), counts it, and closes the connection without
/// answering: a request that reached the server and got no answer. Stops
/// when dropped.
#[allow(dead_code)]
#[derive(Debug)]
pub struct ClosingBackend {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

#[allow(dead_code)]
impl ClosingBackend {
    /// Starts one on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<ClosingBackend> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let count = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    if read_request(stream).await.is_ok() {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Ok(ClosingBackend {
            addr,
            requests,
            task,
        })
    }

    /// An endpoint for it, with weight 1.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.addr)
    }

    /// Whole requests read so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for ClosingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request's head and `content-length` body, then shuts the
/// connection down (dropping `stream` closes it).
async fn read_request(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    stream.shutdown().await
}

/// An endpoint on a loopback port nothing listens on (it was bound, then
/// released), so connecting to it is refused.
#[allow(dead_code)]
pub async fn closed_endpoint() -> std::io::Result<Endpoint> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(Endpoint::new(addr))
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
#[allow(dead_code)]
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

/// Sends `req` through `lb` (a clone of it) and reads the whole body as a
/// string: [`get`] for any request.
#[allow(dead_code)]
pub async fn send<S, B>(lb: &S, req: Request<B>) -> Result<Reply, GetError>
where
    S: Service<Request<B>, Response = Response<Incoming>, Error = tower_lb::Error> + Clone,
{
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

/// How many attempts each endpoint's service has been called with, by
/// endpoint key: what a [`CountingConnector`] counts.
#[allow(dead_code)]
#[derive(Debug, Clone, Default)]
pub struct AttemptCounts {
    by_key: Arc<Mutex<std::collections::HashMap<String, Arc<AtomicU64>>>>,
}

#[allow(dead_code)]
impl AttemptCounts {
    /// The counter of the endpoint with this key (created at zero if the
    /// connector has not built its service yet, so a test can hold it from
    /// the start).
    pub fn counter(&self, key: &str) -> Arc<AtomicU64> {
        lock(&self.by_key)
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// Attempts sent to the endpoint with this key so far.
    pub fn get(&self, key: &str) -> u64 {
        self.counter(key).load(Ordering::SeqCst)
    }
}

/// A connector around another one whose endpoint services count every
/// request they are called with: attempts, counted where the balancer hands
/// them to the endpoint, so an endpoint with no server to count hits (a
/// refused port) or one that never answers is counted too.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct CountingConnector<C> {
    inner: C,
    counts: AttemptCounts,
}

/// A [`CountingConnector`] over `inner`, and the counts it keeps.
#[allow(dead_code)]
pub fn counting<C>(inner: C) -> (CountingConnector<C>, AttemptCounts) {
    let counts = AttemptCounts::default();
    (
        CountingConnector {
            inner,
            counts: counts.clone(),
        },
        counts,
    )
}

/// An endpoint service that counts its calls, then hands them on.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
    attempts: Arc<AtomicU64>,
}

impl<C> Service<Endpoint> for CountingConnector<C>
where
    C: Service<Endpoint>,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
    C::Error: Send + 'static,
{
    type Response = Counted<C::Response>;
    type Error = C::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Counted<C::Response>, C::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        let attempts = self.counts.counter(endpoint.key());
        let made = self.inner.call(endpoint);
        Box::pin(async move { made.await.map(|inner| Counted { inner, attempts }) })
    }
}

impl<S, R> Service<R> for Counted<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.inner.call(req)
    }
}

/// How long one request through an [`tower_lb::http::Client`] may take in
/// these tests; one that takes longer was lost.
pub const CLIENT_REQUEST_LIMIT: Duration = Duration::from_secs(5);

/// Sends `req` through `client` (a clone of it) and reads the body:
/// `Ok(status)`, or the error's text. Panics when neither comes within
/// [`CLIENT_REQUEST_LIMIT`]: the request was lost.
#[allow(dead_code)]
pub async fn client_send<St: Strategy>(
    client: &tower_lb::http::Client<http_body_util::Full<Bytes>, St>,
    req: Request<http_body_util::Full<Bytes>>,
) -> Result<StatusCode, String> {
    match tokio::time::timeout(CLIENT_REQUEST_LIMIT, client.clone().oneshot(req)).await {
        Ok(Ok(res)) => {
            let status = res.status();
            res.into_body().collect().await.map_err(|e| e.to_string())?;
            Ok(status)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            panic!("no answer or error within {CLIENT_REQUEST_LIMIT:?}: the request was lost")
        }
    }
}

/// `GET /` through `client` with [`client_send`]: the status, or `Err`
/// with the error's text.
#[allow(dead_code)]
pub async fn client_try_get<St: Strategy>(
    client: &tower_lb::http::Client<http_body_util::Full<Bytes>, St>,
) -> Result<StatusCode, String> {
    let req = Request::get("/")
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("a GET / request is always valid");
    client_send(client, req).await
}

/// `GET /` through `client`: its status; panics when the request fails.
#[allow(dead_code)]
pub async fn client_get<St: Strategy>(
    client: &tower_lb::http::Client<http_body_util::Full<Bytes>, St>,
) -> StatusCode {
    client_try_get(client)
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}"))
}
