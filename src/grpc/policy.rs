//! gRPC's retry rules (gRFC A6) as a retry [`Policy`].

use std::time::Duration;

use http::{HeaderMap, Request, Response, StatusCode};
use tonic::Code;

use super::status::code_of;
use crate::error::Error;
use crate::retry::{Decision, Policy, ReplayBody, RetryBody};

/// A set of gRPC status codes, as a bitset over the 17 codes.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Codes(u32);

impl Codes {
    /// No code.
    pub const NONE: Codes = Codes(0);

    /// The codes in `codes`.
    pub fn new(codes: impl IntoIterator<Item = Code>) -> Self {
        codes.into_iter().fold(Codes::NONE, Codes::with)
    }

    /// This set and `code`.
    #[must_use]
    pub const fn with(self, code: Code) -> Self {
        Codes(self.0 | 1 << (code as i32 as u32 & 31))
    }

    /// Whether `code` is in the set.
    pub const fn contains(self, code: Code) -> bool {
        self.0 & (1 << (code as i32 as u32 & 31)) != 0
    }

    /// The codes in the set, in numeric order.
    pub fn iter(self) -> impl Iterator<Item = Code> {
        (0..=16)
            .map(Code::from_i32)
            .filter(move |c| self.contains(*c))
    }
}

impl std::fmt::Debug for Codes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<Code> for Codes {
    fn from_iter<I: IntoIterator<Item = Code>>(iter: I) -> Self {
        Codes::new(iter)
    }
}

/// What gRPC calls are retried, by gRPC's rules (gRFC A6).
///
/// - A call is **committed** once the server sends response headers: from
///   then on its outcome goes to the caller, whatever the trailers say.
///   Only a *trailers-only* response (the status in the headers, no
///   message) and a transport failure before any response are retried.
/// - Those are retried when their status code is one of the retryable
///   codes: UNAVAILABLE by default, which is also what a transport
///   failure (a refused or reset connection) is.
///   [`codes`](GrpcPolicy::codes) changes the set. A call that provably
///   never left (no endpoint, connection refused) is retried whatever its
///   code, as gRPC's transparent retries are.
/// - `grpc-retry-pushback-ms` from the server sets the pause before the
///   next attempt; a negative or unreadable pushback means no retry.
/// - A non-`200` HTTP status without a gRPC status is mapped as gRPC
///   does (502, 503, 504 and 429 are UNAVAILABLE, 404 is UNIMPLEMENTED).
/// - Hedging is off until [`hedging`](GrpcPolicy::hedging) turns it on.
///
/// Attempts, backoff, the budget and hedging's delay belong to the
/// [`RetryLayer`](crate::retry::RetryLayer) around it; A6's `maxAttempts`
/// is [`max_attempts`](crate::retry::RetryLayer::max_attempts) there.
#[derive(Debug, Clone)]
pub struct GrpcPolicy {
    retryable: Codes,
    hedge: bool,
}

impl Default for GrpcPolicy {
    fn default() -> Self {
        GrpcPolicy {
            retryable: Codes::NONE.with(Code::Unavailable),
            hedge: false,
        }
    }
}

impl GrpcPolicy {
    /// Retries UNAVAILABLE; no hedging.
    pub fn new() -> Self {
        Self::default()
    }

    /// Retries these codes instead (A6's `retryableStatusCodes`).
    #[must_use]
    pub fn codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.retryable = Codes::new(codes);
        self
    }

    /// The retryable codes.
    pub fn retryable(&self) -> Codes {
        self.retryable
    }

    /// Allows hedging every call (A6's hedging policy). Calls must be safe
    /// to run twice.
    #[must_use]
    pub fn hedging(mut self, yes: bool) -> Self {
        self.hedge = yes;
        self
    }

    /// The decision for a response head, by the rules above.
    fn decide_head(&self, status: StatusCode, headers: &HeaderMap) -> Decision {
        let code = match headers.get("grpc-status") {
            Some(v) => Code::from_bytes(v.as_bytes()),
            None if status == StatusCode::OK => return Decision::Accept,
            None => code_of_http(status),
        };
        if !self.retryable.contains(code) {
            return Decision::Accept;
        }
        match headers.get("grpc-retry-pushback-ms") {
            None => Decision::Retry { after: None },
            Some(v) => match parse_pushback(v.as_bytes()) {
                Some(after) => Decision::Retry { after: Some(after) },
                None => Decision::Accept,
            },
        }
    }
}

/// `grpc-retry-pushback-ms`: a non-negative count of milliseconds.
fn parse_pushback(value: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>().ok().map(Duration::from_millis)
}

/// gRPC's mapping of an HTTP status without a `grpc-status`
/// (`doc/http-grpc-status-mapping.md`).
pub(crate) fn code_of_http(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

impl<B, RB, E> Policy<Request<ReplayBody<B>>, Response<RB>, E> for GrpcPolicy
where
    E: std::error::Error + 'static,
{
    fn clone_request(&self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        let body = req.body().try_clone_body()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }

    fn decide(
        &self,
        _req: &Request<ReplayBody<B>>,
        outcome: Result<&Response<RB>, &E>,
    ) -> Decision {
        match outcome {
            Err(e) if Error::never_sent(e) || self.retryable.contains(code_of(e)) => {
                Decision::Retry { after: None }
            }
            Err(_) => Decision::Accept,
            Ok(res) => self.decide_head(res.status(), res.headers()),
        }
    }

    fn hedgeable(&self, _req: &Request<ReplayBody<B>>) -> bool {
        self.hedge
    }
}

/// The `grpc-timeout` header: up to 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`).
pub(crate) fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, headers: &[(&'static str, &'static str)]) -> (StatusCode, HeaderMap) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, v.parse().unwrap());
        }
        (StatusCode::from_u16(status).unwrap(), map)
    }

    fn decide(p: &GrpcPolicy, status: u16, headers: &[(&'static str, &'static str)]) -> Decision {
        let (s, h) = head(status, headers);
        p.decide_head(s, &h)
    }

    #[test]
    fn only_trailers_only_responses_with_a_retryable_code_are_retried() {
        let p = GrpcPolicy::new();
        let retry = Decision::Retry { after: None };
        assert_eq!(decide(&p, 200, &[]), Decision::Accept, "committed");
        assert_eq!(decide(&p, 200, &[("grpc-status", "14")]), retry);
        assert_eq!(decide(&p, 200, &[("grpc-status", "3")]), Decision::Accept);
        assert_eq!(decide(&p, 200, &[("grpc-status", "0")]), Decision::Accept);
        assert_eq!(
            decide(&p, 200, &[("grpc-status", "8")]),
            Decision::Accept,
            "RESOURCE_EXHAUSTED is not retryable by default"
        );
        assert_eq!(decide(&p, 503, &[]), retry, "503 is UNAVAILABLE");
        assert_eq!(decide(&p, 404, &[]), Decision::Accept);
        let p = p.codes([Code::ResourceExhausted, Code::Aborted]);
        assert_eq!(decide(&p, 200, &[("grpc-status", "8")]), retry);
        assert_eq!(decide(&p, 200, &[("grpc-status", "10")]), retry);
        assert_eq!(decide(&p, 200, &[("grpc-status", "14")]), Decision::Accept);
    }

    #[test]
    fn pushback_sets_the_pause_and_a_bad_one_stops_retries() {
        let p = GrpcPolicy::new();
        assert_eq!(
            decide(
                &p,
                200,
                &[("grpc-status", "14"), ("grpc-retry-pushback-ms", "250")]
            ),
            Decision::Retry {
                after: Some(Duration::from_millis(250))
            }
        );
        for bad in ["-1", "soon", "", "1.5"] {
            let mut map = HeaderMap::new();
            map.insert("grpc-status", "14".parse().unwrap());
            map.insert("grpc-retry-pushback-ms", bad.parse().unwrap());
            assert_eq!(
                p.decide_head(StatusCode::OK, &map),
                Decision::Accept,
                "{bad:?}"
            );
        }
        assert_eq!(
            decide(
                &p,
                200,
                &[("grpc-status", "3"), ("grpc-retry-pushback-ms", "10")]
            ),
            Decision::Accept,
            "pushback does not make a code retryable"
        );
    }

    #[test]
    fn grpc_timeout_parses_every_unit_and_refuses_the_rest() {
        let ms = |v: &str| parse_grpc_timeout(v.as_bytes());
        assert_eq!(ms("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(ms("2M"), Some(Duration::from_secs(120)));
        assert_eq!(ms("3S"), Some(Duration::from_secs(3)));
        assert_eq!(ms("250m"), Some(Duration::from_millis(250)));
        assert_eq!(ms("7u"), Some(Duration::from_micros(7)));
        assert_eq!(ms("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S", "१S"] {
            assert_eq!(ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn codes_hold_what_they_are_given() {
        let c: Codes = [Code::Unavailable, Code::Ok, Code::Unauthenticated]
            .into_iter()
            .collect();
        assert!(c.contains(Code::Ok) && c.contains(Code::Unauthenticated));
        assert!(!c.contains(Code::Internal));
        assert_eq!(
            c.iter().collect::<Vec<_>>(),
            [Code::Ok, Code::Unavailable, Code::Unauthenticated]
        );
        assert_eq!(format!("{:?}", Codes::NONE), "{}");
    }
}
