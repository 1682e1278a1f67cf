//! What `http::Client` costs against the same stack assembled by hand (the
//! README's "Usage" stack), both over real HTTP/1 to three axum backends on
//! loopback, keep-alive connections warm. Each row is one GET, sent and
//! its body read.
//!
//! `target/criterion/http_client/<implementation>/3`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};
use tower_lb::balance::{BalanceLayer, PeakEwma, Upstream};
use tower_lb::discover::{Registration, Registry};
use tower_lb::failover::{FailoverConfig, FailoverLayer};
use tower_lb::http::{Client, ServerErrorsAreFailures, SetAuthority};
use tower_lb::pool::DiscoverLayer;
use tower_lb::retry::{HttpPolicy, RetryLayer};
use tower_lb::{BoxError, Endpoint};

const SERVICE: &str = "bench";
const BACKENDS: usize = 3;

/// Three backends answering `GET /` with "ok", registered for [`SERVICE`].
async fn backends(registry: &Registry) -> Vec<Registration> {
    let mut out = Vec::new();
    for _ in 0..BACKENDS {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let app = Router::new().route("/", get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        out.push(
            registry
                .register(SERVICE, Endpoint::new(addr))
                .expect("register"),
        );
    }
    out
}

/// One GET through `svc`, its body read; whether it answered 200.
async fn get_once<S>(svc: &mut S) -> bool
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>,
    S::Error: Into<BoxError>,
{
    let req = http::Request::get("/")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let Ok(svc) = svc.ready().await else {
        return false;
    };
    match svc.call(req).await {
        Ok(res) => res.status().is_success() && res.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

fn bench_one<S>(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    name: &str,
    mut svc: S,
) where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>,
    S::Error: Into<BoxError>,
{
    for _ in 0..100 {
        assert!(rt.block_on(get_once(&mut svc)), "{name} answers");
    }
    c.bench_with_input(BenchmarkId::new(name, BACKENDS), &BACKENDS, |b, _| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = tokio::time::Instant::now();
                for _ in 0..iters {
                    assert!(get_once(&mut svc).await);
                }
                start.elapsed()
            })
        })
    });
}

/// Does the one-expression client cost what the stack assembled by hand
/// costs (target: at most 1.1×)?
fn http_client_group(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let registry = Registry::new();
    let _registrations = rt.block_on(backends(&registry));
    let revision = registry.revision_of(SERVICE);

    let (client, by_hand) = rt.block_on(async {
        let client: Client = Client::builder().build(registry.watch(SERVICE).expect("watch"));
        assert!(client.balance().upstream().applied(revision).await);

        let http = HyperClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let connector = tower::service_fn(move |ep: Endpoint| {
            std::future::ready(SetAuthority::new(http.clone(), &ep))
        });
        let pool = DiscoverLayer::new(registry.watch(SERVICE).expect("watch")).layer(connector);
        let failover = FailoverLayer::new(FailoverConfig::new()).layer(pool);
        assert!(failover.applied(revision).await);
        let upstream: Upstream<_> = failover.into();
        let by_hand = RetryLayer::new(HttpPolicy::new()).layer(
            BalanceLayer::new(PeakEwma::new())
                .classify(ServerErrorsAreFailures)
                .layer(upstream),
        );
        (client, by_hand)
    });

    let mut g = c.benchmark_group("http_client");
    bench_one(&mut g, &rt, "by_hand", by_hand);
    bench_one(&mut g, &rt, "client", client);
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = http_client_group
}
criterion_main!(benches);
