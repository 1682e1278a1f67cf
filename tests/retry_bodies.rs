//! `Retry` takes the request bodies hyper users send, as they are: `Full`
//! and `Empty` from `http_body_util`, and a boxed stream through
//! `ReplayBody`. Each is sent over a real hyper-util client to a real
//! backend on loopback that answers 503 first, and each retry must carry
//! the same bytes as the first attempt.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::timeout;
use tower::{Layer, ServiceBuilder};
use tower_lb::balance::{Balance, BalanceLayer, LeastInFlight};
use tower_lb::discover::StaticSource;
use tower_lb::http::{ServerErrorsAreFailures, SetAuthority};
use tower_lb::pool::DiscoverLayer;
use tower_lb::retry::{Backoff, HttpPolicy, ReplayBody, Retry, RetryBody, RetryLayer};

use support::{Backend, Reply};

/// No request may take longer than this.
const LIMIT: Duration = Duration::from_secs(3);

type Stack<B> = Retry<
    Balance<SetAuthority<Client<HttpConnector, B>>, LeastInFlight, ServerErrorsAreFailures>,
    HttpPolicy,
>;

/// The README's stack for body type `B`: up to three attempts with a short
/// backoff, over a balancer counting 5xx as failures, over `backend`.
async fn client<B>(backend: &Backend) -> Stack<B>
where
    B: http_body::Body + RetryBody + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let http: Client<HttpConnector, B> = Client::builder(TokioExecutor::new()).build_http();
    let pool = DiscoverLayer::new(StaticSource::new([backend.endpoint()]))
        .layer(support::connector_with(http));
    let applied = timeout(LIMIT, pool.applied(1)).await;
    assert_eq!(applied.ok(), Some(true), "discovery caught up");
    ServiceBuilder::new()
        .layer(
            RetryLayer::new(HttpPolicy::new())
                .max_attempts(3)
                .backoff(Backoff::new(
                    Duration::from_millis(1),
                    Duration::from_millis(5),
                ))
                .seed(7),
        )
        .layer(BalanceLayer::new(LeastInFlight).classify(ServerErrorsAreFailures))
        .service(pool)
}

/// Sends `req`, failing the test if it is lost.
async fn send<B>(client: &Stack<B>, req: Request<B>) -> Reply
where
    B: http_body::Body + RetryBody + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match timeout(LIMIT, support::send(client, req)).await {
        Ok(reply) => reply.expect("an answer"),
        Err(_) => panic!("no answer or error within {LIMIT:?}: the request was lost"),
    }
}

/// What the backend saw of each attempt's body: (length, checksum).
fn bodies(backend: &Backend) -> Vec<Option<(usize, u64)>> {
    backend.arrivals().iter().map(|a| a.body).collect()
}

/// A 20 000-byte `Full<Bytes>` PUT answered 503 twice reaches the backend
/// three times, byte for byte, and the caller gets the third answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_body_is_retried_byte_for_byte() {
    let backend = Backend::start("echo").await.expect("start");
    backend.fail_next(2);
    let client = client::<Full<Bytes>>(&backend).await;
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let req = Request::put("/echo")
        .body(Full::new(Bytes::from(data.clone())))
        .expect("request");
    let reply = send(&client, req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, support::echo_of(&data));
    let want = Some((data.len(), support::checksum(&data)));
    assert_eq!(bodies(&backend), vec![want; 3], "three identical uploads");
    assert_eq!(client.stats().retries, 2);
}

/// An `Empty<Bytes>` GET answered 503 once is sent again and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_body_is_retried() {
    let backend = Backend::start("echo").await.expect("start");
    backend.fail_next(1);
    let client = client::<Empty<Bytes>>(&backend).await;
    let req = Request::get("/").body(Empty::new()).expect("request");
    let reply = send(&client, req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(backend.arrivals().len(), 2);
    assert_eq!(client.stats().retries, 1);
}

/// A `BoxBody` (the `Sync` boxed body), wrapped in `ReplayBody`, answered
/// 503 once is sent again byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boxed_body_is_retried_through_replay_body() {
    type Boxed = ReplayBody<BoxBody<Bytes, Infallible>>;
    let backend = Backend::start("echo").await.expect("start");
    backend.fail_next(1);
    let client = client::<Boxed>(&backend).await;
    let data = Bytes::from_static(b"a boxed body, sent twice");
    let body = ReplayBody::new(Full::new(data.clone()).boxed(), 64 * 1024);
    let req = Request::put("/echo").body(body).expect("request");
    let reply = send(&client, req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, support::echo_of(&data));
    let want = Some((data.len(), support::checksum(&data)));
    assert_eq!(bodies(&backend), vec![want; 2], "two identical uploads");
}

/// The copies `Retry` keeps: a `Full` copy is the whole body, an `Empty`
/// copy is empty, each readable on its own.
#[tokio::test]
async fn copies_of_full_and_empty_are_whole() {
    let full = Full::new(Bytes::from_static(b"abc"));
    let copy = full.try_clone_body().expect("a Full can be copied");
    assert_eq!(full.collect().await.expect("body").to_bytes(), "abc");
    assert_eq!(copy.collect().await.expect("body").to_bytes(), "abc");
    let empty = Empty::<Bytes>::new();
    let copy = empty.try_clone_body().expect("an Empty can be copied");
    assert!(copy.collect().await.expect("body").to_bytes().is_empty());
}
