//! Mock backends for the balance and discovery suites.
//!
//! A [`Backends`] hands out a [`Connector`] (a `Service<Endpoint>`) whose
//! per-endpoint [`Backend`] answers a request with its endpoint's key. What
//! a backend does is chosen per request (the request *is* a [`Behaviour`])
//! or forced per endpoint with [`Backends::set`], so a test can make one
//! endpoint slow, failing or stuck while the others answer at once.
//!
//! Included with `#[path = "support/mock.rs"] mod mock;` so it does not
//! depend on `tests/support/mod.rs`.
#![allow(dead_code)] // Each suite uses a different subset.

use std::collections::HashMap;
use std::future::{Future, Ready, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch;
use tower::{Service, ServiceExt};
use tower_lb::discover::{Source, Update};
use tower_lb::{BoxError, DiscoveryError, Endpoint};

/// What a backend does with one request.
#[derive(Clone, Debug, Default)]
pub enum Behaviour {
    /// Answer at once with the endpoint's key.
    #[default]
    Answer,
    /// Fail at once with "connection refused" (an `io::Error`): the
    /// endpoint cannot be reached.
    Refuse,
    /// Fail at once.
    Fail,
    /// Answer after this long (tokio time).
    After(Duration),
    /// Answer once the gate opens.
    When(Gate),
    /// Never answer.
    Never,
}

// Plain requests: they carry no record of their attempts.
impl tower_lb::Attempted for Behaviour {}

/// A latch that held requests wait on; opening it releases all of them,
/// including those that start waiting later.
#[derive(Clone, Debug)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Gate(Arc::new(watch::channel(false).0))
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens the gate.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn pass(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so this only returns once opened.
        let _ = rx.wait_for(|open| *open).await;
    }
}

#[derive(Debug, Default)]
struct State {
    forced: HashMap<String, Behaviour>,
    calls: HashMap<String, u64>,
    refused: Vec<String>,
    connects: u64,
}

/// The mock backends of one test: what each endpoint does, and counters.
#[derive(Clone, Debug, Default)]
pub struct Backends {
    state: Arc<Mutex<State>>,
}

impl Backends {
    /// Backends that answer every request as the request asks.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Makes the endpoint with `key` behave this way, whatever the request
    /// asks.
    pub fn set(&self, key: &str, behaviour: Behaviour) {
        self.lock().forced.insert(key.to_owned(), behaviour);
    }

    /// Lets the endpoint with `key` do what each request asks again.
    pub fn unset(&self, key: &str) {
        self.lock().forced.remove(key);
    }

    /// Makes the connector fail for the endpoint with `key`.
    pub fn refuse(&self, key: &str) {
        self.lock().refused.push(key.to_owned());
    }

    /// Lets the connector build a backend for `key` again.
    pub fn accept(&self, key: &str) {
        self.lock().refused.retain(|k| k != key);
    }

    /// How many requests reached the endpoint with `key`.
    pub fn calls(&self, key: &str) -> u64 {
        self.lock().calls.get(key).copied().unwrap_or(0)
    }

    /// How many requests reached any endpoint.
    pub fn total_calls(&self) -> u64 {
        self.lock().calls.values().sum()
    }

    /// How many backends the connector built.
    pub fn connects(&self) -> u64 {
        self.lock().connects
    }

    /// A connector building one [`Backend`] per endpoint.
    pub fn connector(&self) -> Connector {
        Connector {
            backends: self.clone(),
        }
    }
}

/// Builds a [`Backend`] for an endpoint, unless told to refuse it.
#[derive(Clone, Debug)]
pub struct Connector {
    backends: Backends,
}

impl Service<Endpoint> for Connector {
    type Response = Backend;
    type Error = BoxError;
    type Future = Ready<Result<Backend, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        let mut st = self.backends.lock();
        if st.refused.iter().any(|k| k == endpoint.key()) {
            return ready(Err("connection refused".into()));
        }
        st.connects += 1;
        ready(Ok(Backend {
            key: endpoint.key().into(),
            backends: self.backends.clone(),
        }))
    }
}

/// One endpoint's service: answers with the endpoint's key.
#[derive(Clone, Debug)]
pub struct Backend {
    key: Arc<str>,
    backends: Backends,
}

/// The future a [`Backend`] returns.
pub type BackendFuture = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

impl Service<Behaviour> for Backend {
    type Response = String;
    type Error = BoxError;
    type Future = BackendFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, asked: Behaviour) -> BackendFuture {
        let behaviour = {
            let mut st = self.backends.lock();
            *st.calls.entry(self.key.to_string()).or_default() += 1;
            st.forced.get(&*self.key).cloned().unwrap_or(asked)
        };
        let key = self.key.to_string();
        Box::pin(async move {
            match behaviour {
                Behaviour::Answer => {}
                Behaviour::Fail => return Err(format!("{key} failed").into()),
                Behaviour::Refuse => {
                    return Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into());
                }
                Behaviour::After(delay) => tokio::time::sleep(delay).await,
                Behaviour::When(gate) => gate.pass().await,
                Behaviour::Never => std::future::pending::<()>().await,
            }
            Ok(key)
        })
    }
}

/// A mock endpoint that takes `Tracked` behaviours, the form in which a
/// plain request carries the record of its attempts.
#[allow(dead_code)]
pub type Untracked =
    tower::util::MapRequest<Backend, fn(tower_lb::attempt::Tracked<Behaviour>) -> Behaviour>;

/// Builds [`Untracked`] endpoints over `backends`.
#[allow(dead_code)]
pub fn untracked(
    backends: &Backends,
) -> impl Service<Endpoint, Response = Untracked, Error = BoxError, Future: Send> + Clone + Send + 'static
{
    use tower::ServiceExt;
    backends.connector().map_response(|b: Backend| {
        tower::util::MapRequest::new(b, tower_lb::attempt::Tracked::into_inner as fn(_) -> _)
    })
}

/// The address `127.0.0.1:port`.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An endpoint at `127.0.0.1:port` with weight 1.
pub fn ep(port: u16) -> Endpoint {
    Endpoint::new(addr(port))
}

/// The key of [`ep`]`(port)`.
pub fn key(port: u16) -> String {
    addr(port).to_string()
}

/// Yields to the runtime until `done` holds, so spawned tasks (the pool
/// driver, held requests) can make progress; panics after a bounded
/// number of turns rather than hanging the test.
pub async fn settle(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("gave up waiting for: {what}");
}

/// Sends `n` requests one after another (each answered before the next is
/// sent) and counts the answers per endpoint key.
pub async fn tally<S>(service: &mut S, n: usize) -> HashMap<String, usize>
where
    S: Service<Behaviour, Response = String>,
    S::Error: std::fmt::Debug,
{
    let mut hits = HashMap::new();
    for _ in 0..n {
        let key = service
            .ready()
            .await
            .expect("ready")
            .call(Behaviour::Answer)
            .await
            .expect("answer");
        *hits.entry(key).or_insert(0) += 1;
    }
    hits
}

/// Makes any source `Clone` by sharing it, so a `channel()` source (which
/// is not `Clone`) can go through `DiscoverLayer` (which needs
/// `Src: Clone`). Every clone reads the same stream, so use one per pool;
/// the inner source is dropped with the last clone.
#[derive(Debug)]
pub struct SharedSource<Src>(Arc<Mutex<Src>>);

impl<Src> SharedSource<Src> {
    /// Shares `source`.
    pub fn new(source: Src) -> Self {
        SharedSource(Arc::new(Mutex::new(source)))
    }
}

impl<Src> Clone for SharedSource<Src> {
    fn clone(&self) -> Self {
        SharedSource(self.0.clone())
    }
}

impl<Src: Source> Source for SharedSource<Src> {
    fn poll_update(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Update, DiscoveryError>>> {
        self.0.lock().unwrap().poll_update(cx)
    }
}

/// A current-thread runtime whose clock starts paused, for property tests
/// that build one per case.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

/// The key `ep-{i}`.
pub fn name(i: usize) -> String {
    format!("ep-{i}")
}
