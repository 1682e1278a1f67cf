//! The retry layer over real HTTP backends on loopback.
//!
//! The stack is the one users build: `RetryLayer(HttpPolicy)` over
//! `Balance` (least in flight, 5xx answers counted as failures), over a
//! registry-fed pool (through `FailoverLayer` where a test says so), over
//! one shared hyper-util client whose request bodies are `ReplayBody`s.
//! Attempts are counted where they land: at the backends. Time is real but
//! short (each test well under 5 s); timing assertions state their
//! tolerance. Every request is bounded by [`REQUEST_LIMIT`] and must end in
//! a response or a typed `tower_lb::Error`; one that does not fails the
//! test.

mod support;

use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};
use tower::{Layer, ServiceBuilder};
use tower_lb::balance::{Balance, BalanceLayer, LeastInFlight, Upstream};
use tower_lb::discover::{Registration, Registry};
use tower_lb::failover::{FailoverConfig, FailoverLayer};
use tower_lb::http::{ServerErrorsAreFailures, SetAuthority};
use tower_lb::pool::DiscoverLayer;
use tower_lb::retry::{Backoff, Hedge, HttpPolicy, Retry, RetryBudget, RetryLayer};
use tower_lb::{Endpoint, Error};

use support::{Backend, ClosingBackend, GetError, Reply, ReqBody};

const SERVICE: &str = "backend";
/// The seed of every balancer and retry layer here.
const SEED: u64 = 7;
/// No request may take longer than this; one that does counts as lost.
const REQUEST_LIMIT: Duration = Duration::from_secs(3);
/// The longest any other wait in these tests may take.
const WAIT_LIMIT: Duration = Duration::from_secs(3);

/// What the balancer picks from: the shared client, pointed at one
/// endpoint.
type EndpointService = SetAuthority<Client<HttpConnector, ReqBody>>;
/// The client under test.
type RetryClient =
    Retry<Balance<EndpointService, LeastInFlight, ServerErrorsAreFailures>, HttpPolicy>;

/// Endpoints registered for [`SERVICE`]; they leave the registry when this
/// is dropped.
struct Cluster {
    registry: Registry,
    _registrations: Vec<Registration>,
}

impl Cluster {
    fn new(endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        let registry = Registry::new();
        let registrations = endpoints
            .into_iter()
            .map(|e| registry.register(SERVICE, e).expect("register"))
            .collect();
        Cluster {
            registry,
            _registrations: registrations,
        }
    }

    /// `retry` over `Balance(5xx = failure)` over the registry's pool
    /// (through failover with `failover`, if given) over a shared client;
    /// returns once the pool holds every registered endpoint.
    async fn client(
        &self,
        retry: RetryLayer<HttpPolicy>,
        failover: Option<FailoverConfig>,
    ) -> RetryClient {
        let pool = DiscoverLayer::new(self.registry.watch(SERVICE).expect("watch"))
            .layer(support::connector_with(support::retry_client()));
        let pool: Upstream<_> = match failover {
            Some(config) => FailoverLayer::new(config).layer(pool).into(),
            None => pool.into(),
        };
        let revision = self.registry.revision_of(SERVICE);
        let applied = timeout(WAIT_LIMIT, pool.applied(revision)).await;
        assert_eq!(applied.ok(), Some(true), "discovery caught up");
        ServiceBuilder::new()
            .layer(retry)
            .layer(
                BalanceLayer::new(LeastInFlight)
                    .seed(SEED)
                    .classify(ServerErrorsAreFailures),
            )
            .service(pool)
    }
}

/// A request to `path` with an empty replayable body, tagged with `id`.
fn request(method: Method, path: &str, id: u64) -> Request<ReqBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("x-request-id", id.to_string())
        .body(support::empty_body())
        .expect("a valid request")
}

/// Sends `req`, failing the test if it neither answers nor fails (with a
/// typed error) within [`REQUEST_LIMIT`].
async fn send(client: &RetryClient, req: Request<ReqBody>) -> Result<Reply, GetError> {
    match timeout(REQUEST_LIMIT, support::send(client, req)).await {
        Ok(out) => out,
        Err(_) => panic!("no answer or error within {REQUEST_LIMIT:?}: the request was lost"),
    }
}

/// The rendered `source()` chain of an error.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

/// Waits (polling every 5 ms, at most [`WAIT_LIMIT`]) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() <= WAIT_LIMIT,
            "{what}: not within {WAIT_LIMIT:?}"
        );
        sleep(Duration::from_millis(5)).await;
    }
}

fn total_hits(backends: &[Backend]) -> u64 {
    backends.iter().map(Backend::hits).sum()
}

// ---------------------------------------------------------------------------
// Budget

/// Every backend answers 503, through the full stack (failover included).
/// Four tasks send GETs for 1.5 s. Without a budget each would be sent
/// three times; the budget (1 s window, ratio 0.2, floor 5/s) caps the
/// attempts counted at the backends at `requests × 1.2 + 5 × seconds`, plus
/// the one window's allowance at the edges that the `RetryBudget` docs
/// state. A request whose retry is refused gets the 503 itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_outage_of_503s_sends_no_more_than_the_budget_allows() {
    const WINDOW: Duration = Duration::from_secs(1);
    const RATIO: f64 = 0.2;
    const MIN_PER_SECOND: u32 = 5;
    const TASKS: u64 = 4;
    const RUN: Duration = Duration::from_millis(1500);

    let backends = Backend::start_all(&["a", "b", "c"]).await.expect("start");
    for b in &backends {
        b.set_status(StatusCode::SERVICE_UNAVAILABLE);
    }
    let cluster = Cluster::new(backends.iter().map(Backend::endpoint));
    let retry = RetryLayer::new(HttpPolicy::new())
        .budget(RetryBudget::new(WINDOW, RATIO, MIN_PER_SECOND))
        .backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ))
        .max_attempts(3)
        .seed(SEED);
    let client = cluster.client(retry, Some(FailoverConfig::new())).await;

    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while start.elapsed() < RUN {
                let reply = send(&client, request(Method::GET, "/", t * 1_000_000 + sent)).await;
                match reply {
                    Ok(r) => assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE),
                    Err(e) => panic!("the 503 itself comes back, not {e}"),
                }
                sent += 1;
                sleep(Duration::from_millis(2)).await;
            }
            sent
        }));
    }
    let mut requests = 0;
    for task in tasks {
        requests += task.await.expect("task");
    }
    let seconds = start.elapsed().as_secs_f64();
    let attempts = total_hits(&backends);
    let stats = client.stats();

    assert_eq!(stats.requests, requests);
    assert_eq!(
        attempts,
        stats.requests + stats.retries,
        "every attempt landed"
    );
    assert!(stats.budget_exhausted > 0, "the budget refused retries");
    assert!(stats.retries > 0, "the budget allowed some retries");
    let per_window = requests as f64 / seconds * WINDOW.as_secs_f64();
    let edge = RATIO * per_window + f64::from(MIN_PER_SECOND) * WINDOW.as_secs_f64();
    let bound = requests as f64 * (1.0 + RATIO) + f64::from(MIN_PER_SECOND) * seconds + edge;
    assert!(
        attempts as f64 <= bound,
        "{attempts} attempts for {requests} requests over {seconds:.2} s; the budget allows {bound:.0}"
    );
}

// ---------------------------------------------------------------------------
// Non-idempotent requests

/// A POST that a backend answered with 503 has reached it and may have done
/// its work: by default it is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_answered_503_is_not_retried_by_default() {
    const POSTS: u64 = 10;
    let backends = Backend::start_all(&["a", "b"]).await.expect("start");
    for b in &backends {
        b.set_status(StatusCode::SERVICE_UNAVAILABLE);
    }
    let cluster = Cluster::new(backends.iter().map(Backend::endpoint));
    let retry = RetryLayer::new(HttpPolicy::new()).seed(SEED);
    let client = cluster.client(retry, None).await;
    for id in 0..POSTS {
        let reply = send(&client, request(Method::POST, "/", id))
            .await
            .expect("answer");
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        total_hits(&backends),
        POSTS,
        "each POST reached a backend once"
    );
    assert_eq!(client.stats().retries, 0);
}

/// With `retry_non_idempotent(true)` the same POST is retried, on the
/// other backend: every POST succeeds, and the failing backend saw each
/// POST at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_answered_503_is_retried_when_non_idempotent_retries_are_on() {
    const POSTS: u64 = 20;
    let backends = Backend::start_all(&["failing", "healthy"])
        .await
        .expect("start");
    backends[0].set_status(StatusCode::SERVICE_UNAVAILABLE);
    let cluster = Cluster::new(backends.iter().map(Backend::endpoint));
    let retry = RetryLayer::new(HttpPolicy::new().retry_non_idempotent(true))
        .max_attempts(2)
        .seed(SEED);
    let client = cluster.client(retry, None).await;
    for id in 0..POSTS {
        let reply = send(&client, request(Method::POST, "/", id))
            .await
            .expect("answer");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "healthy")
        );
    }
    let failed = backends[0].hits();
    assert!(failed > 0, "the failing backend was picked at times");
    assert_eq!(client.stats().retries, failed);
    assert_eq!(backends[1].hits(), POSTS);
    assert!(
        backends[0]
            .arrivals()
            .iter()
            .all(|a| a.method == Method::POST)
    );
}

/// A backend reads each request and closes the connection unanswered. A
/// POST that got that far is not retried: the caller gets the connection
/// error, typed, and the backend read exactly one copy. A GET (idempotent)
/// to the same backend is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_connection_dropped_after_it_was_read_is_not_retried() {
    const POSTS: u64 = 5;
    let closing = ClosingBackend::start().await.expect("start");
    let cluster = Cluster::new([closing.endpoint()]);
    let retry = RetryLayer::new(HttpPolicy::new())
        .max_attempts(2)
        .backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ))
        .seed(SEED);
    let client = cluster.client(retry, None).await;
    for id in 0..POSTS {
        let req = Request::post("/")
            .header("x-request-id", id.to_string())
            .body(support::full_body("place order"))
            .expect("request");
        match send(&client, req).await {
            Err(GetError::Balance(e @ Error::Inner(_))) => {
                assert!(!Error::never_sent(&e), "it was sent: {}", chain(&e));
            }
            other => panic!("expected the connection error, got {other:?}"),
        }
    }
    eventually("the backend counted every POST", || {
        closing.requests() == POSTS
    })
    .await;
    assert_eq!(closing.requests(), POSTS, "each POST was read once");
    assert_eq!(client.stats().retries, 0);

    let err = send(&client, request(Method::GET, "/", 99)).await;
    assert!(
        matches!(err, Err(GetError::Balance(Error::Inner(_)))),
        "{err:?}"
    );
    eventually("the GET and its retry were read", || {
        closing.requests() == POSTS + 2
    })
    .await;
    assert_eq!(client.stats().retries, 1);
}

/// A POST refused at connect never reached a server, so it is retried
/// whatever its method, and succeeds on the healthy endpoint, which saw
/// each POST exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_refused_at_connect_is_retried_on_another_endpoint() {
    const POSTS: u64 = 20;
    let healthy = Backend::start("healthy").await.expect("start");
    let closed = support::closed_endpoint().await.expect("a free port");
    let cluster = Cluster::new([closed, healthy.endpoint()]);
    let retry = RetryLayer::new(HttpPolicy::new())
        .max_attempts(2)
        .backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ))
        .seed(SEED);
    let client = cluster.client(retry, None).await;
    for id in 0..POSTS {
        let req = Request::post("/")
            .header("x-request-id", id.to_string())
            .body(support::full_body("place order"))
            .expect("request");
        let reply = send(&client, req)
            .await
            .unwrap_or_else(|e| panic!("POST {id} failed: {e}"));
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "healthy")
        );
    }
    assert_eq!(healthy.hits(), POSTS, "each POST arrived once");
    assert!(
        client.stats().retries > 0,
        "some POSTs went to the closed port first and were retried"
    );
}

// ---------------------------------------------------------------------------
// Another endpoint

/// One of three backends always answers 503. Over 60 GETs with three
/// attempts, none fails; the failing backend sees each request at most
/// once (by request id); each request is answered by exactly one healthy
/// backend; and there is one retry per 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_land_on_a_healthy_endpoint() {
    const REQUESTS: u64 = 60;
    let backends = Backend::start_all(&["failing", "b", "c"])
        .await
        .expect("start");
    backends[0].set_status(StatusCode::SERVICE_UNAVAILABLE);
    let cluster = Cluster::new(backends.iter().map(Backend::endpoint));
    let retry = RetryLayer::new(HttpPolicy::new())
        .budget(RetryBudget::new(Duration::from_secs(10), 1.0, 100))
        .backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ))
        .max_attempts(3)
        .seed(SEED);
    let client = cluster.client(retry, None).await;
    for id in 0..REQUESTS {
        let reply = send(&client, request(Method::GET, "/", id))
            .await
            .unwrap_or_else(|e| panic!("GET {id} failed: {e}"));
        assert_eq!(reply.status, StatusCode::OK, "GET {id}: {}", reply.body);
        assert_ne!(reply.body, "failing");
    }
    let ids = |b: &Backend| -> Vec<u64> {
        let mut ids: Vec<u64> = b
            .arrivals()
            .iter()
            .map(|a| {
                a.id.as_deref()
                    .and_then(|i| i.parse().ok())
                    .expect("tagged")
            })
            .collect();
        ids.sort_unstable();
        ids
    };
    let failing = ids(&backends[0]);
    assert!(
        !failing.is_empty(),
        "the failing backend was picked at times"
    );
    let mut unique = failing.clone();
    unique.dedup();
    assert_eq!(
        unique, failing,
        "no request tried the failing backend twice"
    );
    let mut answered = ids(&backends[1]);
    answered.extend(ids(&backends[2]));
    answered.sort_unstable();
    assert_eq!(answered, (0..REQUESTS).collect::<Vec<_>>());
    assert_eq!(client.stats().retries, failing.len() as u64);
}

// ---------------------------------------------------------------------------
// Replayed bodies

/// A streaming body of unknown length, fed through a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
    }
}

/// A streamed upload of `chunks` distinct 1000-byte chunks, replayable up
/// to [`support::REPLAY_CAP`]; returns the body and the bytes it carries.
fn upload(chunks: usize) -> (ReqBody, Vec<u8>) {
    let parts: Vec<Vec<u8>> = (0..chunks)
        .map(|c| (0..1000).map(|i| (c * 31 + i * 7) as u8).collect())
        .collect();
    let expected = parts.concat();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for part in parts {
            if tx.send(Bytes::from(part)).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    (
        support::replay(ChannelBody(rx), support::REPLAY_CAP),
        expected,
    )
}

/// A 40 000-byte streamed PUT (under the 64 KiB cap) answered 503 twice is
/// sent a second and a third time byte for byte: the backend's checksum of
/// every attempt equals that of the original, and the caller gets the
/// third attempt's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_under_the_cap_is_replayed_byte_for_byte() {
    let backend = Backend::start("echo").await.expect("start");
    backend.fail_next(2);
    let cluster = Cluster::new([backend.endpoint()]);
    let retry = RetryLayer::new(HttpPolicy::new())
        .max_attempts(3)
        .backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ))
        .seed(SEED);
    let client = cluster.client(retry, None).await;
    let (body, expected) = upload(40);
    let req = Request::put("/echo").body(body).expect("request");
    let reply = send(&client, req).await.expect("answer");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, support::echo_of(&expected));
    let seen: Vec<_> = backend.arrivals().iter().map(|a| a.body).collect();
    let want = Some((expected.len(), support::checksum(&expected)));
    assert_eq!(seen, vec![want; 3], "three complete, identical uploads");
    assert_eq!(client.stats().retries, 2);
}

/// A 100 000-byte streamed PUT (over the cap) answered 503 is not sent
/// again: the backend saw it once, whole, and the caller gets the 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_over_the_cap_is_sent_once() {
    let backend = Backend::start("echo").await.expect("start");
    backend.set_status(StatusCode::SERVICE_UNAVAILABLE);
    let cluster = Cluster::new([backend.endpoint()]);
    let retry = RetryLayer::new(HttpPolicy::new())
        .max_attempts(3)
        .backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ))
        .seed(SEED);
    let client = cluster.client(retry, None).await;
    let (body, expected) = upload(100);
    let req = Request::put("/echo").body(body).expect("request");
    let reply = send(&client, req).await.expect("answer");
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, support::echo_of(&expected));
    let seen: Vec<_> = backend.arrivals().iter().map(|a| a.body).collect();
    assert_eq!(
        seen,
        vec![Some((expected.len(), support::checksum(&expected)))],
        "one complete upload"
    );
    assert_eq!(client.stats().retries, 0);
}

// ---------------------------------------------------------------------------
// Retry-After

/// A real backend answers 503 with `Retry-After: 1` once: the retry
/// arrives at least 1 s after the first attempt arrived (and, allowing for
/// a loaded machine, within 1.5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_from_a_backend_delays_the_retry() {
    let backend = Backend::start("later").await.expect("start");
    backend.fail_next(1);
    backend.set_retry_after(Some("1"));
    let cluster = Cluster::new([backend.endpoint()]);
    let retry = RetryLayer::new(HttpPolicy::new())
        .backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ))
        .seed(SEED);
    let client = cluster.client(retry, None).await;
    let reply = send(&client, request(Method::GET, "/", 1))
        .await
        .expect("answer");
    assert_eq!(reply.status, StatusCode::OK);
    let arrivals = backend.arrivals();
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1].at - arrivals[0].at;
    assert!(
        gap >= Duration::from_secs(1) && gap <= Duration::from_millis(1500),
        "retry {gap:?} after the first attempt"
    );
}

// ---------------------------------------------------------------------------
// Hedging

/// One backend answers in 500 ms, the other in 5 ms; GETs are hedged after
/// 20 ms. Over 100 sequential GETs the p99 latency stays under 100 ms (the
/// fast path is 5–30 ms; the margin is for a loaded machine), every answer
/// comes from the fast backend, and every attempt the slow backend
/// received was abandoned: its handler was dropped unfinished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_cuts_the_tail_and_cancels_the_slow_attempt() {
    const REQUESTS: u64 = 100;
    let backends = Backend::start_all(&["slow", "fast"]).await.expect("start");
    backends[0].set_delay(Duration::from_millis(500));
    backends[1].set_delay(Duration::from_millis(5));
    let cluster = Cluster::new(backends.iter().map(Backend::endpoint));
    let retry = RetryLayer::new(HttpPolicy::new().hedging(true))
        .hedge(Hedge::after(Duration::from_millis(20)))
        .budget(RetryBudget::new(Duration::from_secs(10), 1.0, 100))
        .seed(SEED);
    let client = cluster.client(retry, None).await;
    let mut latencies = Vec::new();
    for id in 0..REQUESTS {
        let start = Instant::now();
        let reply = send(&client, request(Method::GET, "/", id))
            .await
            .expect("answer");
        latencies.push(start.elapsed());
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "fast")
        );
    }
    latencies.sort_unstable();
    let p99 = latencies[98];
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    let slow = &backends[0];
    assert!(slow.hits() > 0, "the slow backend was picked at times");
    assert!(
        client.stats().hedges >= slow.hits(),
        "each slow attempt was hedged"
    );
    eventually("every slow attempt was cancelled", || {
        slow.cancelled() == slow.hits()
    })
    .await;
}

// ---------------------------------------------------------------------------
// Deadline

/// Both backends answer 503 after 300 ms; the deadline is 500 ms. Five
/// concurrent GETs each end in `DeadlineExceeded` between 500 ms and
/// 600 ms (100 ms tolerance for a loaded machine), and the attempt each had
/// in flight at the deadline is cancelled at the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_bounds_slow_failures_and_cancels_attempts_in_flight() {
    const REQUESTS: u64 = 5;
    const DEADLINE: Duration = Duration::from_millis(500);
    let backends = Backend::start_all(&["a", "b"]).await.expect("start");
    for b in &backends {
        b.set_delay(Duration::from_millis(300));
        b.set_status(StatusCode::SERVICE_UNAVAILABLE);
    }
    let cluster = Cluster::new(backends.iter().map(Backend::endpoint));
    let retry = RetryLayer::new(HttpPolicy::new())
        .deadline(DEADLINE)
        .max_attempts(10)
        .backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(20),
        ))
        .budget(RetryBudget::new(Duration::from_secs(10), 1.0, 100))
        .seed(SEED);
    let client = cluster.client(retry, None).await;
    let mut tasks = Vec::new();
    for id in 0..REQUESTS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let out = send(&client, request(Method::GET, "/", id)).await;
            (out, start.elapsed())
        }));
    }
    for task in tasks {
        let (out, took) = task.await.expect("task");
        match out {
            Err(GetError::Balance(Error::DeadlineExceeded {
                deadline, attempts, ..
            })) => {
                assert_eq!(deadline, DEADLINE);
                assert!(attempts >= 2, "a retry fitted in: {attempts}");
            }
            other => panic!("expected DeadlineExceeded, got {other:?}"),
        }
        assert!(
            took >= DEADLINE && took <= DEADLINE + Duration::from_millis(100),
            "took {took:?}"
        );
    }
    assert_eq!(client.stats().deadlines_exceeded, REQUESTS);
    eventually("one attempt per request was cancelled", || {
        backends.iter().map(Backend::cancelled).sum::<u64>() == REQUESTS
    })
    .await;
    sleep(Duration::from_millis(400)).await;
    let cancelled: u64 = backends.iter().map(Backend::cancelled).sum();
    assert_eq!(cancelled, REQUESTS, "and no other attempt was");
}
