//! `tower_lb::http::Client`, the whole stack from a source in one
//! expression, over real HTTP backends on loopback that fail: one answers
//! 503 to everything, one dies halfway. Every request is bounded in time
//! and ends in a response or a typed error.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use tokio::time::timeout;
use tower::ServiceExt;
use tower_lb::discover::Registry;
use tower_lb::http::{BoxClient, Client};

use support::{Backend, client_send};

const SERVICE: &str = "api";
/// No request may take longer than this; one that does counts as lost.
const REQUEST_LIMIT: Duration = Duration::from_secs(5);
const REQUESTS: usize = 1_000;

/// A GET with an empty `Full` body, the client's default body type.
fn get() -> Request<Full<Bytes>> {
    Request::get("/")
        .body(Full::new(Bytes::new()))
        .expect("a request")
}

/// Four backends in a registry; one answers 503 to everything and one is
/// shut down after a third of the requests. With the defaults, at least
/// 99.9 % of 1 000 requests are answered 200 and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_expression_client_rides_out_a_503_backend_and_a_dying_one() {
    let backends = Backend::start_all(&["a", "b", "c", "d"])
        .await
        .expect("start");
    backends[1].set_status(StatusCode::SERVICE_UNAVAILABLE);
    let registry = Registry::new();
    let _registrations: Vec<_> = backends
        .iter()
        .map(|b| registry.register(SERVICE, b.endpoint()).expect("register"))
        .collect();
    let client: Client = Client::builder().build(registry.watch(SERVICE).expect("watch"));
    let caught_up = timeout(
        REQUEST_LIMIT,
        client
            .balance()
            .upstream()
            .applied(registry.revision_of(SERVICE)),
    )
    .await;
    assert_eq!(caught_up.ok(), Some(true), "discovery caught up");

    let mut backends: Vec<Option<Backend>> = backends.into_iter().map(Some).collect();
    let (mut ok, mut failed) = (0usize, Vec::new());
    let mut served_by_c = 0;
    for i in 0..REQUESTS {
        if i == REQUESTS / 3 {
            let dying = backends[2].take().expect("c is alive");
            served_by_c = dying.shutdown().await.expect("c stops");
        }
        match client_send(&client, get()).await {
            Ok(StatusCode::OK) => ok += 1,
            other => failed.push((i, other)),
        }
    }
    assert!(
        ok * 1000 >= REQUESTS * 999,
        "{ok} of {REQUESTS} answered 200; failures: {failed:?}"
    );
    let survivors: u64 = [0, 3]
        .iter()
        .map(|&i| backends[i].as_ref().expect("alive").hits())
        .sum();
    assert_eq!(
        (survivors + served_by_c) as usize,
        ok,
        "every 200 came from a, d, or c before it died (b answers only 503)"
    );
    assert!(served_by_c > 0, "c took requests before it died");
}

/// A `Full<Bytes>` PUT answered 503 twice is sent three times, byte for
/// byte, and the caller gets the third answer: retries need no body glue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_body_is_retried_byte_for_byte_through_the_client() {
    let backend = Backend::start("echo").await.expect("start");
    backend.fail_next(2);
    let registry = Registry::new();
    let _registration = registry
        .register(SERVICE, backend.endpoint())
        .expect("register");
    let client: Client = Client::builder().build(registry.watch(SERVICE).expect("watch"));
    let caught_up = timeout(REQUEST_LIMIT, client.balance().upstream().applied(1)).await;
    assert_eq!(caught_up.ok(), Some(true), "discovery caught up");
    let data: Vec<u8> = (0..30_000u32).map(|i| (i % 253) as u8).collect();
    let req = Request::put("/echo")
        .body(Full::new(Bytes::from(data.clone())))
        .expect("a request");
    let res = timeout(REQUEST_LIMIT, client.clone().oneshot(req))
        .await
        .expect("not lost")
        .expect("an answer");
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.expect("a body").to_bytes();
    assert_eq!(body, support::echo_of(&data));
    let seen: Vec<_> = backend.arrivals().iter().map(|a| a.body).collect();
    let want = Some((data.len(), support::checksum(&data)));
    assert_eq!(seen, vec![want; 3], "three identical uploads");
    assert_eq!(client.stats().retries, 2);
}

/// An axum app holds the client as `State` through `BoxClient`, and its
/// handler calls the balanced downstream with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boxed_client_serves_as_axum_state() {
    use axum::extract::State;
    use axum::routing::get as route_get;

    let downstream = Backend::start("downstream").await.expect("start");
    let registry = Registry::new();
    let _registration = registry
        .register(SERVICE, downstream.endpoint())
        .expect("register");
    let client: Client = Client::builder().build(registry.watch(SERVICE).expect("watch"));
    let caught_up = timeout(REQUEST_LIMIT, client.balance().upstream().applied(1)).await;
    assert_eq!(caught_up.ok(), Some(true), "discovery caught up");
    let state: BoxClient = client.boxed();

    async fn relay(State(client): State<BoxClient>) -> Result<String, String> {
        let res = client.oneshot(get()).await.map_err(|e| e.to_string())?;
        let bytes = res.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok(format!(
            "via: {}",
            String::from_utf8_lossy(&bytes.to_bytes())
        ))
    }
    let app = axum::Router::new()
        .route("/", route_get(relay))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let front = support::http_client();
    let uri: hyper::Uri = format!("http://{addr}/").parse().expect("uri");
    let res = timeout(REQUEST_LIMIT, front.get(uri))
        .await
        .expect("not lost")
        .expect("answer");
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, "via: downstream");
    assert_eq!(downstream.hits(), 1);
    server.abort();
}
