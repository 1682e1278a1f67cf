//! The status page over a live client: three axum backends on 127.0.0.1,
//! one of which answers 503 to everything and another that stops for ten
//! seconds every thirty, an `http::Client` sending 50 requests a second
//! to them, and the admin page (with `/status.json` and Prometheus
//! `/metrics`) served on 127.0.0.1. It prints the page's address and runs
//! until Ctrl-C, or for `STATUS_SECONDS` seconds when that is set.
//!
//! ```text
//! cargo run --example status --features admin,metrics
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceExt;
use tower_lb::admin::AdminService;
use tower_lb::discover::Registry;
use tower_lb::http::Client;
use tower_lb::metrics::{MetricsConfig, MetricsExporter};
use tower_lb::{BoxError, Endpoint};

const SERVICE: &str = "backend";

/// Serves `status` to every request on `addr`.
async fn backend(addr: SocketAddr, status: StatusCode) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let app = Router::new()
        .route("/", get(|State(s): State<StatusCode>| async move { s }))
        .with_state(status);
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    }))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The recorder first, so the exporter's metrics reach it.
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let registry = Registry::new();
    let mut addrs = Vec::new();
    let mut registrations = Vec::new();
    for status in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        drop(listener);
        let task = backend(addr, status).await?;
        registrations.push(registry.register(SERVICE, Endpoint::new(addr))?);
        addrs.push((addr, status, task));
    }
    let client: Client = Client::builder().build(registry.watch(SERVICE)?);
    let _export = MetricsExporter::spawn(client.clone(), MetricsConfig::new().per_endpoint(100));

    let admin = AdminService::new(client.clone()).prometheus(move || prometheus.render());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let page = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, Router::new().nest_service("/lb", admin)).await;
    });
    println!("status page:  http://{page}/lb/");
    println!("report:       http://{page}/lb/status.json");
    println!("metrics:      http://{page}/lb/metrics");

    // Traffic: 50 requests a second.
    let traffic = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                let client = client.clone();
                tokio::spawn(async move {
                    let req = Request::get("/")
                        .body(Full::new(Bytes::new()))
                        .expect("a request");
                    if let Ok(Ok(res)) =
                        tokio::time::timeout(Duration::from_secs(5), client.oneshot(req)).await
                    {
                        let _ = res.into_body().collect().await;
                    }
                });
            }
        })
    };

    // The second backend stops for 10 s every 30 s: it is marked down,
    // probed, and comes back.
    let flapping = {
        let (addr, status, task) = addrs.remove(1);
        tokio::spawn(async move {
            let mut task = task;
            loop {
                tokio::time::sleep(Duration::from_secs(20)).await;
                task.abort();
                let _ = (&mut task).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
                match backend(addr, status).await {
                    Ok(t) => task = t,
                    Err(e) => {
                        eprintln!("could not restart {addr}: {e}");
                        return;
                    }
                }
            }
        })
    };

    let report = tokio::spawn({
        let client = client.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                println!("\n{}", client.status());
            }
        }
    });

    match std::env::var("STATUS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
        None => tokio::signal::ctrl_c().await?,
    }
    traffic.abort();
    flapping.abort();
    report.abort();
    drop(registrations);
    Ok(())
}
