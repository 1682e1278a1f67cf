use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};

use super::backoff::parse_retry_after;
use super::{Decision, Policy};
use crate::error::Error;

/// A request body a retry can send again.
pub trait RetryBody: Sized {
    /// Another copy of the body from its start, or `None` when that is no
    /// longer possible.
    fn try_clone_body(&self) -> Option<Self>;
}

impl RetryBody for () {
    fn try_clone_body(&self) -> Option<Self> {
        Some(())
    }
}

impl RetryBody for String {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl RetryBody for Vec<u8> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl RetryBody for Bytes {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

/// A `Full` body not yet polled holds all of its data, so a copy is the
/// whole body again: `Retry` takes `Request<Full<Bytes>>` as it is.
impl<D: Clone> RetryBody for http_body_util::Full<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> RetryBody for http_body_util::Empty<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(http_body_util::Empty::new())
    }
}

/// A streamed body (`BoxBody`, `UnsyncBoxBody`, hyper's `Incoming`) is
/// retried through [`ReplayBody`](super::ReplayBody), which keeps what it
/// sent, up to its cap, to send again.
impl<B> RetryBody for super::ReplayBody<B> {
    fn try_clone_body(&self) -> Option<Self> {
        self.is_replayable().then(|| self.clone())
    }
}

/// What HTTP (and gRPC) requests are retried.
///
/// - A request that was provably **never sent** (no endpoint, connection
///   refused) is retried whatever its method.
/// - Other errors (reset, timeout: sent, but no answer) and retryable
///   statuses (502, 503, 504 and 429 by default) are retried only for
///   idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), unless
///   [`retry_non_idempotent`](HttpPolicy::retry_non_idempotent) opts in:
///   a POST that reached a server may have done its work.
/// - `Retry-After` (seconds or HTTP-date) sets the least pause before the
///   next attempt.
/// - With [`grpc`](HttpPolicy::grpc), a `grpc-status` of UNAVAILABLE is
///   retried, and RESOURCE_EXHAUSTED only when the server sends
///   `grpc-retry-pushback-ms` (a negative pushback means do not retry).
///   gRPC calls are POSTs; enabling this asserts your methods are safe to
///   repeat, as a gRPC retry policy does.
///
/// Requests are copied with their body through [`RetryBody`]: wrap
/// streaming bodies in a [`ReplayBody`](super::ReplayBody).
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    /// Retryable statuses, as a bitset over 0..640.
    statuses: [u64; 10],
    non_idempotent: bool,
    grpc: bool,
    hedge: bool,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        let mut p = HttpPolicy {
            statuses: [0; 10],
            non_idempotent: false,
            grpc: false,
            hedge: false,
        };
        for s in [502, 503, 504, 429] {
            p.set(s, true);
        }
        p
    }
}

impl HttpPolicy {
    /// The defaults described above.
    pub fn new() -> Self {
        Self::default()
    }

    fn set(&mut self, status: u16, on: bool) {
        let (word, bit) = (usize::from(status / 64), status % 64);
        if let Some(w) = self.statuses.get_mut(word) {
            if on {
                *w |= 1 << bit;
            } else {
                *w &= !(1 << bit);
            }
        }
    }

    fn retryable(&self, status: StatusCode) -> bool {
        let s = status.as_u16();
        self.statuses
            .get(usize::from(s / 64))
            .is_some_and(|w| w & (1 << (s % 64)) != 0)
    }

    /// Replaces the retryable statuses.
    #[must_use]
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = [0; 10];
        for s in statuses {
            self.set(s.as_u16(), true);
        }
        self
    }

    /// Retries non-idempotent requests (POST, PATCH) even when they may
    /// have been sent.
    #[must_use]
    pub fn retry_non_idempotent(mut self, yes: bool) -> Self {
        self.non_idempotent = yes;
        self
    }

    /// Understands gRPC status codes in response headers.
    #[must_use]
    pub fn grpc(mut self, yes: bool) -> Self {
        self.grpc = yes;
        self
    }

    /// Allows hedging idempotent requests (and, with
    /// [`retry_non_idempotent`](HttpPolicy::retry_non_idempotent), all).
    #[must_use]
    pub fn hedging(mut self, yes: bool) -> Self {
        self.hedge = yes;
        self
    }

    fn repeatable(&self, method: &Method) -> bool {
        self.non_idempotent || self.grpc || is_idempotent(method)
    }
}

/// Idempotent methods (RFC 9110, 9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl<B, RB, E> Policy<Request<B>, Response<RB>, E> for HttpPolicy
where
    B: RetryBody,
    E: std::error::Error + 'static,
{
    fn clone_request(&self, req: &Request<B>) -> Option<Request<B>> {
        let body = req.body().try_clone_body()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }

    fn decide(&self, req: &Request<B>, outcome: Result<&Response<RB>, &E>) -> Decision {
        let repeatable = self.repeatable(req.method());
        match outcome {
            Err(e) if Error::never_sent(e) || repeatable => Decision::Retry { after: None },
            Err(_) => Decision::Accept,
            Ok(res) => {
                if self.grpc {
                    if let Some(d) = grpc_decision(res.headers()) {
                        return d;
                    }
                }
                if repeatable && self.retryable(res.status()) {
                    let after = res
                        .headers()
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    Decision::Retry { after }
                } else {
                    Decision::Accept
                }
            }
        }
    }

    fn hedgeable(&self, req: &Request<B>) -> bool {
        self.hedge && self.repeatable(req.method())
    }
}

/// gRPC status codes that matter here.
const UNAVAILABLE: &str = "14";
const RESOURCE_EXHAUSTED: &str = "8";

fn grpc_decision(headers: &HeaderMap) -> Option<Decision> {
    let status = headers.get("grpc-status")?.to_str().ok()?.trim();
    let pushback = headers
        .get("grpc-retry-pushback-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    if pushback.is_some_and(|ms| ms < 0) {
        return Some(Decision::Accept);
    }
    let after = pushback.map(|ms| Duration::from_millis(ms.unsigned_abs()));
    match status {
        UNAVAILABLE => Some(Decision::Retry { after }),
        RESOURCE_EXHAUSTED if after.is_some() => Some(Decision::Retry { after }),
        _ => Some(Decision::Accept),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Out<'a> = Result<&'a Response<()>, &'a Error>;

    fn decide(p: &HttpPolicy, method: Method, out: Out<'_>) -> Decision {
        let req = Request::builder().method(method).body(()).unwrap();
        Policy::<Request<()>, Response<()>, Error>::decide(p, &req, out)
    }

    fn status(code: u16) -> Response<()> {
        Response::builder().status(code).body(()).unwrap()
    }

    #[test]
    fn methods_statuses_and_never_sent() {
        let p = HttpPolicy::new();
        let retry = Decision::Retry { after: None };
        assert_eq!(decide(&p, Method::GET, Ok(&status(503))), retry);
        assert_eq!(decide(&p, Method::GET, Ok(&status(500))), Decision::Accept);
        assert_eq!(decide(&p, Method::POST, Ok(&status(503))), Decision::Accept);
        let refused = Error::Inner(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        let reset = Error::Inner(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(decide(&p, Method::POST, Err(&refused)), retry);
        assert_eq!(decide(&p, Method::POST, Err(&Error::NoEndpoints)), retry);
        assert_eq!(decide(&p, Method::POST, Err(&reset)), Decision::Accept);
        assert_eq!(decide(&p, Method::PUT, Err(&reset)), retry);
        let p = p.retry_non_idempotent(true);
        assert_eq!(decide(&p, Method::POST, Err(&reset)), retry);
    }

    #[test]
    fn retry_after_and_grpc() {
        let p = HttpPolicy::new();
        let mut res = status(429);
        res.headers_mut()
            .insert(http::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(
            decide(&p, Method::GET, Ok(&res)),
            Decision::Retry {
                after: Some(Duration::from_secs(3))
            }
        );
        let p = HttpPolicy::new().grpc(true);
        let grpc = |code: &str, pushback: Option<&str>| {
            let mut res = status(200);
            res.headers_mut()
                .insert("grpc-status", code.parse().unwrap());
            if let Some(ms) = pushback {
                res.headers_mut()
                    .insert("grpc-retry-pushback-ms", ms.parse().unwrap());
            }
            decide(&p, Method::POST, Ok(&res))
        };
        assert_eq!(grpc("14", None), Decision::Retry { after: None });
        assert_eq!(grpc("8", None), Decision::Accept);
        assert_eq!(
            grpc("8", Some("250")),
            Decision::Retry {
                after: Some(Duration::from_millis(250))
            }
        );
        assert_eq!(grpc("14", Some("-1")), Decision::Accept);
        assert_eq!(grpc("0", None), Decision::Accept);
    }

    #[test]
    fn requests_are_copied_with_headers_and_extensions() {
        let p = HttpPolicy::new();
        let mut req = Request::put("http://x/a?b=1")
            .header("x-k", "v")
            .body(Bytes::from_static(b"hi"))
            .unwrap();
        req.extensions_mut().insert(7u32);
        let copy = Policy::<Request<Bytes>, Response<()>, Error>::clone_request(&p, &req).unwrap();
        assert_eq!(copy.method(), Method::PUT);
        assert_eq!(copy.uri(), req.uri());
        assert_eq!(copy.headers()["x-k"], "v");
        assert_eq!(copy.extensions().get::<u32>(), Some(&7));
        assert_eq!(copy.body(), "hi");
    }
}
