//! An axum service that calls a balanced downstream through
//! `tower_lb::http::Client`, shared through axum's `State`.
//!
//! Starts three downstream axum backends on 127.0.0.1 and registers them in
//! the in-process [`Registry`]. The front service, also on 127.0.0.1,
//! answers `GET /` by calling the downstream through one `BoxClient`.
//! The example sends 300 requests to the front. Downstream `b` is stopped
//! after 100 of them, and the example prints how many each downstream
//! answered and how many requests failed.
//!
//! ```text
//! cargo run --example axum_downstream --features http-client
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;
use tower_lb::discover::Registry;
use tower_lb::http::{BoxClient, Client};
use tower_lb::{BoxError, Endpoint};

const SERVICE: &str = "downstream";
const REQUESTS: usize = 300;
/// Downstream `b` stops after this many requests.
const STOP_AT: usize = 100;

/// A running downstream backend.
struct Downstream {
    name: &'static str,
    hits: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// A downstream backend answering `GET /` with its name, counting.
async fn downstream(name: &'static str) -> std::io::Result<(SocketAddr, Downstream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let app = Router::new().route(
        "/",
        get(move || {
            counter.fetch_add(1, Relaxed);
            async move { name }
        }),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    let stop = Some(stop);
    Ok((
        addr,
        Downstream {
            name,
            hits,
            stop,
            task,
        },
    ))
}

/// The front service's one route: relay to the balanced downstream.
async fn relay(State(client): State<BoxClient>) -> Result<String, (StatusCode, String)> {
    let req = http::Request::get("/")
        .body(Full::new(Bytes::new()))
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let res = client
        .oneshot(req)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let registry = Registry::new();
    let mut backends = Vec::new();
    let mut registrations = Vec::new();
    for name in ["a", "b", "c"] {
        let (addr, backend) = downstream(name).await?;
        registrations.push(registry.register(SERVICE, Endpoint::new(addr))?);
        backends.push(backend);
    }

    // The whole stack in one expression, boxed for axum's State.
    let client: Client = Client::builder().build(registry.watch(SERVICE)?);
    client
        .balance()
        .upstream()
        .applied(registry.revision_of(SERVICE))
        .await;
    let app = Router::new()
        .route("/", get(relay))
        .with_state(client.boxed());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let front = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("front service on http://{front}/, downstream {SERVICE} x3");

    let caller = HyperClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("http://{front}/").parse()?;
    let mut failed = 0;
    for i in 0..REQUESTS {
        if i == STOP_AT {
            // `b` stops without deregistering: its idle connections close
            // and its port refuses new ones.
            if let Some(stop) = backends[1].stop.take() {
                let _ = stop.send(());
            }
            println!("after {i} requests: downstream b stopped");
        }
        let res = caller.get(uri.clone()).await?;
        if res.status() != StatusCode::OK {
            failed += 1;
        }
        res.into_body().collect().await?;
    }

    println!("{REQUESTS} requests through the front, {failed} failed");
    for b in &backends {
        println!(
            "  downstream {}: {:>4} answered",
            b.name,
            b.hits.load(Relaxed)
        );
        b.task.abort();
    }
    server.abort();
    drop(registrations);
    Ok(())
}
