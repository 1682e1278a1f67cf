//! The whole stack over real HTTP: retries, balancing, failover, discovery.
//!
//! Three primary backends and one backup run on 127.0.0.1 and register in
//! the in-process `Registry`. One primary answers 503 to a third of its
//! requests; halfway through, another primary is shut down (its port then
//! refuses connections). The client — the README's stack,
//! `Retry → Balance → Failover → Discover`, with every setting at its
//! default — sends 2000 requests from 8 tasks. The flaky answers are
//! retried on other endpoints within the budget; the dead primary is
//! marked down on its first refused connection and probed with backoff;
//! with one primary of three down the tier keeps its traffic (2/3 × 1.5),
//! so the backup gets none. The example prints where requests went, what
//! the caller saw, and what the retry and failover layers did.
//!
//! ```text
//! cargo run --example full_stack
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use http_body_util::BodyExt;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_lb::balance::{BalanceLayer, PeakEwma};
use tower_lb::discover::Registry;
use tower_lb::failover::{FailoverConfig, FailoverLayer};
use tower_lb::http::{ServerErrorsAreFailures, SetAuthority};
use tower_lb::pool::DiscoverLayer;
use tower_lb::retry::{HttpPolicy, RetryLayer};
use tower_lb::{BoxError, Endpoint};

const SERVICE: &str = "orders";
const REQUESTS: u64 = 2000;
const TASKS: u64 = 8;

#[derive(Clone)]
struct Behaviour {
    name: &'static str,
    hits: Arc<AtomicU64>,
    /// Every `flaky`-th request answers 503 (0: never).
    flaky: u64,
}

async fn answer(State(b): State<Behaviour>) -> (StatusCode, &'static str) {
    let n = b.hits.fetch_add(1, SeqCst);
    if b.flaky > 0 && n % b.flaky == 0 {
        (StatusCode::SERVICE_UNAVAILABLE, "busy")
    } else {
        (StatusCode::OK, b.name)
    }
}

struct Backend {
    name: &'static str,
    priority: u8,
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
}

impl Backend {
    async fn start(name: &'static str, priority: u8, flaky: u64) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicU64::new(0));
        let app = Router::new().route("/", get(answer)).with_state(Behaviour {
            name,
            hits: hits.clone(),
            flaky,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Backend {
            name,
            priority,
            addr,
            hits,
            stop: Some(stop),
        })
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.addr).with_priority(self.priority)
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut backends = vec![
        Backend::start("p1", 0, 0).await?,
        Backend::start("p2 (flaky)", 0, 3).await?,
        Backend::start("p3 (dies)", 0, 0).await?,
        Backend::start("backup", 1, 0).await?,
    ];
    let registry = Registry::new();
    let _registrations = backends
        .iter()
        .map(|b| registry.register(SERVICE, b.endpoint()))
        .collect::<Result<Vec<_>, _>>()?;

    let http = Client::builder(TokioExecutor::new()).build_http::<String>();
    let connector =
        service_fn(move |ep: Endpoint| std::future::ready(SetAuthority::new(http.clone(), &ep)));
    // Every setting at its default: this is the README's stack.
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(HttpPolicy::new()).deadline(Duration::from_secs(2)))
        .layer(BalanceLayer::new(PeakEwma::new()).classify(ServerErrorsAreFailures))
        .layer(FailoverLayer::new(FailoverConfig::new()))
        .layer(DiscoverLayer::new(registry.watch(SERVICE)?))
        .service(connector);
    assert!(
        client
            .get_ref()
            .pool()
            .applied(registry.revision_of(SERVICE))
            .await
    );

    println!("tower-lb: Retry → Balance(Peak-EWMA) → Failover → Discover over real HTTP.");
    println!("p2 answers 503 to every third request; p3 is shut down halfway.\n");

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (client, ok, failed, sent) = (client.clone(), ok.clone(), failed.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            while sent.fetch_add(1, SeqCst) < REQUESTS {
                let req = Request::get("/")
                    .body(String::new())
                    .expect("a valid request");
                match client.clone().oneshot(req).await {
                    Ok(res) if res.status().is_success() => {
                        let _ = res.into_body().collect().await;
                        ok.fetch_add(1, SeqCst);
                    }
                    _ => {
                        failed.fetch_add(1, SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }));
    }
    // Halfway, p3 dies: its port refuses connections from then on.
    while ok.load(SeqCst) + failed.load(SeqCst) < REQUESTS / 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Some(stop) = backends[2].stop.take() {
        let _ = stop.send(());
    }
    for t in tasks {
        t.await?;
    }

    println!("{:<12} {:>8} {:>6}", "backend", "priority", "hits");
    for b in &backends {
        println!(
            "{:<12} {:>8} {:>6}",
            b.name,
            b.priority,
            b.hits.load(SeqCst)
        );
    }
    let stats = client.stats();
    println!(
        "\ncaller saw: {} answered, {} failed, of {REQUESTS}",
        ok.load(SeqCst),
        failed.load(SeqCst)
    );
    println!(
        "retry layer: {} retries, {} refused by the budget, {} deadlines",
        stats.retries, stats.budget_exhausted, stats.deadlines_exceeded
    );
    if let Some(health) = client.get_ref().health() {
        println!(
            "failover: {} marked down, {} ejections, panic: {}",
            health.downs, health.ejections, health.panic
        );
        for t in &health.tiers {
            println!(
                "  tier {}: {}/{} healthy, {:.0} % of traffic",
                t.priority, t.healthy, t.endpoints, t.load_percent
            );
        }
    }
    for b in backends.iter_mut() {
        if let Some(stop) = b.stop.take() {
            let _ = stop.send(());
        }
    }
    if failed.load(SeqCst) * 100 > REQUESTS {
        return Err(format!("{} of {REQUESTS} requests failed", failed.load(SeqCst)).into());
    }
    Ok(())
}
