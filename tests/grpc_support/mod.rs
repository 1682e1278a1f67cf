//! Real tonic greeter servers on loopback, each on a runtime of its own so
//! that it can be killed outright (every connection closed at once, as a
//! crashed process's are) and started again on the same port.
//!
//! A [`GreeterServer`] answers `greeter.Greeter/SayHello` with its own
//! name, counts the calls it receives, can be told to answer with a status
//! instead ([`GreeterServer::answer_with`]), and serves `grpc.health.v1`
//! through tonic-health ([`GreeterServer::set_serving`]).

#![allow(dead_code)]

pub mod greeter;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greeter::greeter_server::{Greeter, GreeterServer as GreeterService};
use greeter::{HelloReply, HelloRequest};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};
use tonic_health::server::HealthReporter;
use tower_lb::Endpoint;

pub use greeter::greeter_client::GreeterClient;

/// What a server answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A hello with its name.
    Hello,
    /// This status (trailers-only), with `grpc-retry-pushback-ms` when
    /// given.
    Status(Code, Option<&'static str>),
    /// A hello, after this long.
    Slow(Duration),
}

/// The state a server's handler reads; kept across restarts.
struct Shared {
    name: String,
    calls: AtomicU64,
    answer: Mutex<Answer>,
    /// When each call arrived, from the test's start.
    arrivals: Mutex<Vec<tokio::time::Instant>>,
}

#[derive(Clone)]
struct Handler(Arc<Shared>);

#[tonic::async_trait]
impl Greeter for Handler {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let shared = &self.0;
        shared.calls.fetch_add(1, Ordering::SeqCst);
        shared
            .arrivals
            .lock()
            .unwrap()
            .push(tokio::time::Instant::now());
        let answer = shared.answer.lock().unwrap().clone();
        match answer {
            Answer::Hello => {}
            Answer::Status(code, pushback) => {
                let mut status = Status::new(code, format!("{} says {code:?}", shared.name));
                if let Some(ms) = pushback {
                    status
                        .metadata_mut()
                        .insert("grpc-retry-pushback-ms", ms.parse().unwrap());
                }
                return Err(status);
            }
            Answer::Slow(delay) => tokio::time::sleep(delay).await,
        }
        Ok(Response::new(HelloReply {
            message: format!("hello {}", request.into_inner().name),
            server: shared.name.clone(),
        }))
    }
}

/// A running server: its thread, runtime and health reporter.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    health: HealthReporter,
}

/// A tonic greeter (and health) server on `127.0.0.1`.
pub struct GreeterServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: Option<Identity>,
    running: Option<Running>,
}

impl GreeterServer {
    /// A server named `name` on a free port.
    pub fn start(name: &str) -> Self {
        Self::launch(name, None)
    }

    /// A server that speaks TLS with `identity`.
    pub fn start_tls(name: &str, identity: Identity) -> Self {
        Self::launch(name, Some(identity))
    }

    fn launch(name: &str, tls: Option<Identity>) -> Self {
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            calls: AtomicU64::new(0),
            answer: Mutex::new(Answer::Hello),
            arrivals: Mutex::new(Vec::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = GreeterServer {
            shared,
            addr,
            tls,
            running: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (health_tx, health_rx) = std::sync::mpsc::channel();
        let handler = Handler(self.shared.clone());
        let tls = self.tls.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let (reporter, health) = tonic_health::server::health_reporter();
                reporter.set_serving::<GreeterService<Handler>>().await;
                health_tx.send(reporter).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let incoming = TcpIncoming::from(listener);
                let mut builder = Server::builder();
                if let Some(identity) = tls {
                    builder = builder
                        .tls_config(ServerTlsConfig::new().identity(identity))
                        .unwrap();
                }
                let serve = builder
                    .add_service(health)
                    .add_service(GreeterService::new(handler))
                    .serve_with_incoming(incoming);
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task: their
            // sockets close, as a killed process's do.
            drop(runtime);
        });
        let health = health_rx.recv().unwrap();
        self.running = Some(Running {
            stop,
            thread,
            health,
        });
    }

    /// Kills the server: the listener and every connection close at once.
    pub fn kill(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(());
            running.thread.join().unwrap();
        }
    }

    /// Starts the server again on its port.
    pub fn restart(&mut self) {
        assert!(self.running.is_none(), "kill it first");
        let mut tries = 0;
        let listener = loop {
            match std::net::TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot bind {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An endpoint for it, keyed by its name.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::builder(self.name())
            .address(self.addr)
            .build()
            .unwrap()
    }

    /// Calls it has received.
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// When each call arrived.
    pub fn arrivals(&self) -> Vec<tokio::time::Instant> {
        self.shared.arrivals.lock().unwrap().clone()
    }

    /// Answers every call so from now on.
    pub fn answer_with(&self, answer: Answer) {
        *self.shared.answer.lock().unwrap() = answer;
    }

    /// Reports SERVING or NOT_SERVING for the server as a whole (`""`)
    /// and for `greeter.Greeter`.
    pub async fn set_serving(&self, serving: bool) {
        let health = &self.running.as_ref().expect("running").health;
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        health.set_service_status("", status).await;
        health.set_service_status("greeter.Greeter", status).await;
    }
}

impl Drop for GreeterServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A hello from `client`, or its status.
pub async fn hello<St: tower_lb::balance::Strategy>(
    client: &mut GreeterClient<tower_lb::grpc::Channel<St>>,
    name: &str,
) -> Result<HelloReply, Status> {
    client
        .say_hello(HelloRequest {
            name: name.to_owned(),
        })
        .await
        .map(Response::into_inner)
}
