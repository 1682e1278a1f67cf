//! Quickstart: client-side load balancing over real HTTP, in one process.
//!
//! Starts four axum backends on 127.0.0.1, registers them in the in-process
//! [`Registry`] with weights 1, 2, 3 and 4, and for each strategy sends 1000
//! requests from 8 concurrent tasks through one balancer built from tower
//! layers over a shared hyper-util client. Halfway through, backend `d`
//! deregisters (its `Registration` is dropped); it comes back for the next
//! strategy. Backend `b` answers after 5 ms, the others at once, so the
//! load-aware strategies have something to react to.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_lb::balance::{
    BalanceLayer, LeastInFlight, PeakEwma, Random, RoundRobin, Strategy, WeightedRandom,
    WeightedRoundRobin,
};
use tower_lb::discover::{Registration, Registry};
use tower_lb::http::SetAuthority;
use tower_lb::pool::DiscoverLayer;
use tower_lb::{BoxError, Endpoint};

const SERVICE: &str = "backend";
const REQUESTS: usize = 1000;
const CONCURRENCY: usize = 8;
/// Backend `d` deregisters once this many requests have completed.
const LEAVE_AT: usize = REQUESTS / 2;

/// One backend: name, weight, answer delay.
const BACKENDS: [(&str, u32, Duration); 4] = [
    ("a", 1, Duration::ZERO),
    ("b", 2, Duration::from_millis(5)),
    ("c", 3, Duration::ZERO),
    ("d", 4, Duration::ZERO),
];
/// Which of them leaves mid-run.
const LEAVER: usize = 3;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A real HTTP server on loopback that answers `GET /` with its name.
struct Backend {
    name: &'static str,
    weight: u32,
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

#[derive(Clone)]
struct Answer {
    name: &'static str,
    delay: Duration,
    hits: Arc<AtomicU64>,
}

async fn answer(State(a): State<Answer>) -> &'static str {
    a.hits.fetch_add(1, SeqCst);
    if !a.delay.is_zero() {
        tokio::time::sleep(a.delay).await;
    }
    a.name
}

impl Backend {
    async fn start(name: &'static str, weight: u32, delay: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicU64::new(0));
        let app = Router::new().route("/", get(answer)).with_state(Answer {
            name,
            delay,
            hits: hits.clone(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(async move { serve.await });
        Ok(Backend {
            name,
            weight,
            addr,
            hits,
            stop,
            task,
        })
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.addr).with_weight(self.weight)
    }

    async fn shutdown(self) -> Result<(), BoxError> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.task).await???;
        Ok(())
    }
}

/// How one strategy spread its requests.
struct Row {
    strategy: &'static str,
    /// Answers per backend, in `BACKENDS` order.
    answered: [u64; BACKENDS.len()],
    /// Requests the leaver received after the pool applied its removal:
    /// only those already sent before can arrive.
    late: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

/// Sends one `GET /` and returns the body (the answering backend's name).
async fn get_name<S>(lb: S) -> Result<String, BoxError>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>>,
    S::Error: Into<BoxError>,
{
    let req = Request::get("/").body(Empty::new())?;
    let res = lb.oneshot(req).await.map_err(Into::into)?;
    if res.status() != StatusCode::OK {
        return Err(format!("status {}", res.status()).into());
    }
    let body = res.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

async fn run<St>(
    label: &'static str,
    strategy: St,
    client: &HttpClient,
    registry: &Registry,
    backends: &[Backend],
    leaver: &mut Option<Registration>,
) -> Result<Row, BoxError>
where
    St: Strategy + Clone,
{
    // The connector builds one service per endpoint: the shared client,
    // pointed at that endpoint's address.
    let connector = {
        let client = client.clone();
        service_fn(move |ep: Endpoint| std::future::ready(SetAuthority::new(client.clone(), &ep)))
    };
    let lb = ServiceBuilder::new()
        .layer(BalanceLayer::new(strategy).seed(7))
        .layer(DiscoverLayer::new(registry.watch(SERVICE)?))
        .service(connector);
    lb.pool().applied(registry.revision_of(SERVICE)).await;

    let started = Instant::now();
    let tickets = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let halfway = Arc::new(Notify::new());
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (lb, tickets, done, halfway) =
                (lb.clone(), tickets.clone(), done.clone(), halfway.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                while tickets.fetch_add(1, SeqCst) < REQUESTS {
                    out.push(get_name(lb.clone()).await);
                    if done.fetch_add(1, SeqCst) + 1 == LEAVE_AT {
                        halfway.notify_one();
                    }
                }
                out
            })
        })
        .collect();

    // Mid-run, the leaver deregisters. Once the pool has applied that, no
    // new request is sent to it.
    halfway.notified().await;
    drop(leaver.take());
    lb.pool().applied(registry.revision_of(SERVICE)).await;
    let hits_at_leave = backends[LEAVER].hits.load(SeqCst);

    let mut row = Row {
        strategy: label,
        answered: [0; BACKENDS.len()],
        late: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    for w in workers {
        for outcome in w.await? {
            match outcome {
                Ok(name) => match backends.iter().position(|b| b.name == name) {
                    Some(i) => row.answered[i] += 1,
                    None => {
                        row.errors += 1;
                        row.first_error
                            .get_or_insert(format!("unknown body {name:?}"));
                    }
                },
                Err(e) => {
                    row.errors += 1;
                    row.first_error.get_or_insert(e.to_string());
                }
            }
        }
    }
    row.elapsed = started.elapsed();
    row.late = backends[LEAVER].hits.load(SeqCst) - hits_at_leave;

    // Back for the next strategy.
    *leaver = Some(registry.register(SERVICE, backends[LEAVER].endpoint())?);
    Ok(row)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut backends = Vec::new();
    for (name, weight, delay) in BACKENDS {
        backends.push(Backend::start(name, weight, delay).await?);
    }
    let registry = Registry::new();
    let mut registrations: Vec<Option<Registration>> = Vec::new();
    for b in &backends {
        registrations.push(Some(registry.register(SERVICE, b.endpoint())?));
    }
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    println!("tower-lb quickstart: client-side load balancing in your own process,");
    println!("over real HTTP on loopback. No sidecar, no proxy.");
    println!();
    println!("Four axum backends register in an in-process Registry:");
    for b in &backends {
        println!("  {} at {}  weight {}", b.name, b.addr, b.weight);
    }
    println!("b answers after 5 ms, the others at once. For each strategy,");
    println!("{CONCURRENCY} tasks share one balancer and send {REQUESTS} GETs; after {LEAVE_AT}");
    println!("have completed, d deregisters, and it is back for the next strategy.");
    println!();

    let leaver = &mut registrations[LEAVER];
    let rows = vec![
        run(
            "round robin",
            RoundRobin,
            &client,
            &registry,
            &backends,
            leaver,
        )
        .await?,
        run("random", Random, &client, &registry, &backends, leaver).await?,
        run(
            "weighted round robin",
            WeightedRoundRobin,
            &client,
            &registry,
            &backends,
            leaver,
        )
        .await?,
        run(
            "weighted random",
            WeightedRandom,
            &client,
            &registry,
            &backends,
            leaver,
        )
        .await?,
        run(
            "P2C least-in-flight",
            LeastInFlight,
            &client,
            &registry,
            &backends,
            leaver,
        )
        .await?,
        run(
            "P2C Peak-EWMA",
            PeakEwma::new(),
            &client,
            &registry,
            &backends,
            leaver,
        )
        .await?,
    ];

    println!(
        "{:<22}{:>8}{:>10}{:>8}{:>8}{:>8}{:>8}{:>9}",
        "strategy", "a w1", "b w2 slow", "c w3", "d w4", "d late", "errors", "time"
    );
    for r in &rows {
        println!(
            "{:<22}{:>8}{:>10}{:>8}{:>8}{:>8}{:>8}{:>7}ms",
            r.strategy,
            r.answered[0],
            r.answered[1],
            r.answered[2],
            r.answered[3],
            r.late,
            r.errors,
            r.elapsed.as_millis()
        );
    }
    println!();
    println!("Requests answered per backend. d late: requests d received after the");
    println!("pool applied its removal, i.e. sent before it (at most one per task).");

    drop(registrations);
    for b in backends {
        b.shutdown().await?;
    }

    let errors: u64 = rows.iter().map(|r| r.errors).sum();
    if let Some(r) = rows.iter().find(|r| r.errors > 0) {
        eprintln!(
            "{errors} requests failed; first under {}: {}",
            r.strategy,
            r.first_error.as_deref().unwrap_or("?")
        );
        std::process::exit(1);
    }
    Ok(())
}
