//! What the default unreachable classifier (`balance::unreachable`) makes
//! of real transports' errors, on loopback: hyper-util's legacy client
//! and tonic's channel, against a port nothing listens on, a listener
//! whose accept queue is full (a connect timeout), and servers that reset
//! or close the connection after reading a request.
//!
//! Unreachable marks an endpoint down at once, uncapped, so the rule is
//! strict: refused, reset and connect timeouts are; a connection closed
//! cleanly before the answer (hyper's "connection closed before message
//! completed", which an idle keep-alive connection closed by the server
//! can also give) is an ordinary failure.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::timeout;
use tower::ServiceExt;
use tower_lb::balance::unreachable;

/// Every test's bound.
const LIMIT: Duration = Duration::from_secs(5);

/// A loopback port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

/// A listener whose accept queue is full: nothing accepts, and its one
/// queued connection is held, so further connects get no answer.
async fn full_listener() -> (TcpListener, TcpStream, SocketAddr) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let addr = socket.local_addr().expect("addr");
    // A backlog of 0 queues one connection on Linux.
    let listener = socket.listen(0).expect("listen");
    let queued = TcpStream::connect(addr).await.expect("the queued one");
    (listener, queued, addr)
}

/// A server that reads each request's first bytes and then ends the
/// connection: with a reset (`reset`) or cleanly.
async fn ending_server(reset: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            if reset {
                stream.set_zero_linger().expect("SO_LINGER 0");
            }
            drop(stream);
        }
    });
    addr
}

fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        out.push_str(" <- ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

/// The kind of the first `io::Error` in the chain.
fn io_kind(error: &(dyn StdError + 'static)) -> Option<std::io::ErrorKind> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        next = e.source();
    }
    None
}

/// One GET through hyper-util's legacy client (connect timeout 200 ms);
/// the error it must end in.
async fn hyper_util_error(addr: SocketAddr) -> hyper_util::client::legacy::Error {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_millis(200)));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let uri = format!("http://{addr}/").parse().expect("uri");
    match timeout(LIMIT, client.get(uri)).await.expect("bounded") {
        Ok(res) => panic!("expected an error, got {}", res.status()),
        Err(e) => e,
    }
}

#[tokio::test]
async fn hyper_util_connection_refused_is_unreachable() {
    let e = hyper_util_error(closed_port().await).await;
    assert!(e.is_connect(), "{}", chain(&e));
    assert!(unreachable(&e), "{}", chain(&e));
}

#[tokio::test]
async fn hyper_util_connect_timeout_is_unreachable() {
    let (_socket, _queued, addr) = full_listener().await;
    let e = hyper_util_error(addr).await;
    assert!(e.is_connect(), "{}", chain(&e));
    assert_eq!(
        io_kind(&e),
        Some(std::io::ErrorKind::TimedOut),
        "a connect timeout: {}",
        chain(&e)
    );
    assert!(unreachable(&e), "{}", chain(&e));
}

#[tokio::test]
async fn hyper_util_reset_before_an_answer_is_unreachable() {
    let e = hyper_util_error(ending_server(true).await).await;
    assert!(!e.is_connect(), "connected, then reset: {}", chain(&e));
    assert_eq!(
        io_kind(&e),
        Some(std::io::ErrorKind::ConnectionReset),
        "{}",
        chain(&e)
    );
    assert!(unreachable(&e), "{}", chain(&e));
}

#[tokio::test]
async fn hyper_util_connection_closed_before_an_answer_is_a_failure_but_not_unreachable() {
    let e = hyper_util_error(ending_server(false).await).await;
    assert!(
        chain(&e).contains("connection closed before message completed"),
        "{}",
        chain(&e)
    );
    assert!(!unreachable(&e), "{}", chain(&e));
}

/// A tonic channel's connect to `addr` (timeout 200 ms); the error it
/// must end in.
async fn tonic_connect_error(addr: SocketAddr) -> tonic::transport::Error {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(200));
    timeout(LIMIT, endpoint.connect())
        .await
        .expect("bounded")
        .expect_err("no connection")
}

#[tokio::test]
async fn tonic_connect_refused_is_unreachable() {
    let e = tonic_connect_error(closed_port().await).await;
    assert!(unreachable(&e), "{}", chain(&e));
}

#[tokio::test]
async fn tonic_connect_timeout_is_unreachable() {
    let (_listener, _queued, addr) = full_listener().await;
    let e = tonic_connect_error(addr).await;
    assert_eq!(
        io_kind(&e),
        Some(std::io::ErrorKind::TimedOut),
        "{}",
        chain(&e)
    );
    assert!(unreachable(&e), "{}", chain(&e));
}

/// A lazily connected channel, as an endpoint service in a balancer is:
/// the refusal comes from the call (or its readiness).
#[tokio::test]
async fn a_lazy_tonic_channel_to_a_refused_port_fails_unreachable() {
    let addr = closed_port().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy();
    let req = http::Request::builder()
        .uri(format!("http://{addr}/svc/Method"))
        .body(tonic::body::Body::empty())
        .expect("request");
    let e = timeout(LIMIT, channel.oneshot(req))
        .await
        .expect("bounded")
        .expect_err("nothing listens");
    assert!(unreachable(&e), "{}", chain(&e));
}
