//! One probe of one endpoint: a TCP connect, an HTTP `GET`, or a custom
//! check, bounded by the check's timeout.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time;

use super::{HealthCheck, Probe};
use crate::endpoint::Endpoint;

/// The most of a response an HTTP probe reads while looking for its status
/// line.
const MAX_RESPONSE_HEAD: usize = 1024;

/// Whether one probe of `endpoint` passes; for probing a down endpoint
/// back.
pub(crate) async fn passes(check: &HealthCheck, endpoint: &Endpoint) -> bool {
    check_once(check, endpoint).await.is_ok()
}

/// One probe of one endpoint, bounded by the check's timeout.
pub(super) async fn check_once(check: &HealthCheck, endpoint: &Endpoint) -> Result<(), Failure> {
    let probe = async {
        match &check.probe {
            Probe::Http { path, expect } => {
                let address = endpoint.address().ok_or(Failure::NoAddress)?;
                http_probe(address, path, *expect).await
            }
            Probe::Tcp => {
                let address = endpoint.address().ok_or(Failure::NoAddress)?;
                TcpStream::connect(address)
                    .await
                    .map(drop)
                    .map_err(|e| Failure::Connect(e.kind()))
            }
            Probe::Custom(check) => {
                if check(endpoint.clone()).await {
                    Ok(())
                } else {
                    Err(Failure::Rejected)
                }
            }
        }
    };
    time::timeout(check.timeout, probe)
        .await
        .unwrap_or(Err(Failure::TimedOut))
}

async fn http_probe(address: SocketAddr, path: &str, expect: u16) -> Result<(), Failure> {
    let path = if path.is_empty() { "/" } else { path };
    if path.bytes().any(|b| b == b' ' || b.is_ascii_control()) {
        return Err(Failure::BadPath);
    }
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|e| Failure::Connect(e.kind()))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nUser-Agent: tower-lb\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| Failure::Io(e.kind()))?;

    let mut head = [0; MAX_RESPONSE_HEAD];
    let mut len = 0;
    loop {
        let Some(free) = head.get_mut(len..).filter(|free| !free.is_empty()) else {
            return Err(Failure::Malformed);
        };
        let read = stream.read(free).await.map_err(|e| Failure::Io(e.kind()))?;
        if read == 0 {
            return Err(Failure::Truncated);
        }
        len += read;
        match parse_status(&head[..len]) {
            Status::Final(status) if status == expect => return Ok(()),
            Status::Final(status) => {
                return Err(Failure::Status {
                    got: status,
                    expected: expect,
                });
            }
            Status::Malformed => return Err(Failure::Malformed),
            Status::Incomplete => {}
        }
    }
}

/// What the start of a response says so far.
#[derive(Debug, PartialEq, Eq)]
enum Status {
    /// The status code of the final (non-`1xx`) response.
    Final(u16),
    /// Not an HTTP/1.x response.
    Malformed,
    /// More bytes are needed.
    Incomplete,
}

/// Reads the status code of the final response from the start of `head`,
/// skipping interim `1xx` responses (except `101`, which is final).
fn parse_status(mut head: &[u8]) -> Status {
    const PREFIX: &[u8] = b"HTTP/1.";
    loop {
        let Some(end) = head.iter().position(|&b| b == b'\n') else {
            // Give up early on what cannot become a status line.
            let n = head.len().min(PREFIX.len());
            return if head[..n] == PREFIX[..n] {
                Status::Incomplete
            } else {
                Status::Malformed
            };
        };
        let line = &head[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(code) = status_code(line) else {
            return Status::Malformed;
        };
        if !(100..200).contains(&code) || code == 101 {
            return Status::Final(code);
        }
        match skip_header_block(&head[end + 1..]) {
            Some(rest) => head = rest,
            None => return Status::Incomplete,
        }
    }
}

/// The code in an `HTTP/1.x NNN[ reason]` status line.
fn status_code(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (minor, rest) = rest.split_first()?;
    if !minor.is_ascii_digit() {
        return None;
    }
    let rest = rest.strip_prefix(b" ")?;
    let (digits, rest) = rest.split_at_checked(3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(rest.is_empty() || rest[0] == b' ') {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0, |code, digit| code * 10 + u16::from(digit - b'0')),
    )
}

/// What follows the empty line that ends a header block, if it has arrived.
fn skip_header_block(mut rest: &[u8]) -> Option<&[u8]> {
    loop {
        let end = rest.iter().position(|&b| b == b'\n')?;
        let line = &rest[..end];
        rest = &rest[end + 1..];
        if line.is_empty() || line == b"\r" {
            return Some(rest);
        }
    }
}

/// Why a probe failed; goes into `tracing` events as `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    NoAddress,
    TimedOut,
    Connect(io::ErrorKind),
    Io(io::ErrorKind),
    BadPath,
    Truncated,
    Malformed,
    Status { got: u16, expected: u16 },
    Rejected,
    Panicked,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoAddress => f.write_str("endpoint has no address"),
            Failure::TimedOut => f.write_str("timed out"),
            Failure::Connect(kind) => write!(f, "connect failed: {kind}"),
            Failure::Io(kind) => write!(f, "I/O error: {kind}"),
            Failure::BadPath => f.write_str("request path contains a space or a control character"),
            Failure::Truncated => f.write_str("connection closed before a status line"),
            Failure::Malformed => f.write_str("no HTTP/1.x status line in the response"),
            Failure::Status { got, expected } => {
                write!(f, "status {got}, expected {expected}")
            }
            Failure::Rejected => f.write_str("custom check returned false"),
            Failure::Panicked => f.write_str("probe panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use tokio::time::{Instant, sleep};

    use super::super::test_support::{
        AbortOnDrop, Checker, HttpBackend, fast, listener, raw_backend, verdict,
    };

    #[test]
    fn status_line_parsing() {
        use Status::*;
        let cases: &[(&[u8], Status)] = &[
            (b"HTTP/1.1 200 OK\r\n", Final(200)),
            (
                b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0",
                Final(503),
            ),
            (b"HTTP/1.1 204\r\n", Final(204)),
            (b"HTTP/1.1 404 Not Found\n", Final(404)),
            (b"HTTP/1.1 101 Switching Protocols\r\n", Final(101)),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
                Final(200),
            ),
            (
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 503 X\r\n",
                Final(503),
            ),
            (b"", Incomplete),
            (b"HTT", Incomplete),
            (b"HTTP/1.1 200 OK", Incomplete),
            (b"HTTP/1.1 100 Continue\r\n", Incomplete),
            (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n", Incomplete),
            (b"garbage\r\n\r\n", Malformed),
            (b"garbage", Malformed),
            (b"\r\nHTTP/1.1 200 OK\r\n", Malformed),
            (b"HTTP/2 200\r\n", Malformed),
            (b"HTTP/1.x 200 OK\r\n", Malformed),
            (b"HTTP/1.1 20 OK\r\n", Malformed),
            (b"HTTP/1.1 2000 OK\r\n", Malformed),
            (b"HTTP/1.1 2O0 OK\r\n", Malformed),
            (b"HTTP/1.1  200 OK\r\n", Malformed),
            (b"HTTP/1.1 200OK\r\n", Malformed),
            (b"HTTP/1.1 \xff\xfe\xfd\r\n", Malformed),
            (b"HTTP/1.1 100 Continue\r\n\r\ngarbage\r\n", Malformed),
        ];
        for (head, expected) in cases {
            assert_eq!(
                &parse_status(head),
                expected,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[tokio::test]
    async fn http_probe_marks_unhealthy_after_threshold_and_recovers() {
        let backend = HttpBackend::start(200).await;
        let ep = backend.endpoint.clone();
        let check = fast(HealthCheck::http("/healthz"))
            .unhealthy_threshold(3)
            .healthy_threshold(2);
        let mut checker = Checker::start(check, std::slice::from_ref(&ep));

        sleep(Duration::from_millis(100)).await;
        checker.assert_no_verdict();
        assert!(backend.served(200) >= 2, "{:?}", backend.served);
        assert_eq!(
            *backend.last_request.lock().unwrap(),
            format!(
                "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: tower-lb\r\n\r\n",
                ep.key()
            )
        );

        backend.status.store(503, Ordering::SeqCst);
        assert_eq!(checker.next_verdict().await, verdict(&ep, false));
        assert!(backend.served(503) >= 3, "{:?}", backend.served);

        let passes_before = backend.served(200);
        backend.status.store(200, Ordering::SeqCst);
        assert_eq!(checker.next_verdict().await, verdict(&ep, true));
        assert!(
            backend.served(200) - passes_before >= 2,
            "{:?}",
            backend.served
        );
    }

    #[tokio::test]
    async fn http_probe_checks_the_expected_status() {
        let backend = HttpBackend::start(204).await;
        let ep = backend.endpoint.clone();
        let check = HealthCheck::http("/healthz");
        assert_eq!(
            check_once(&check, &ep).await,
            Err(Failure::Status {
                got: 204,
                expected: 200
            })
        );
        assert_eq!(check_once(&check.expect_status(204), &ep).await, Ok(()));
        // A path that would break the request line is never sent.
        let bad = HealthCheck::http("/a b\r\nX: y");
        assert_eq!(check_once(&bad, &ep).await, Err(Failure::BadPath));
    }

    #[tokio::test]
    async fn tcp_probe_marks_a_closed_port_unhealthy() {
        let (listener, ep) = listener().await;
        let accept = AbortOnDrop(tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        }));
        let check = fast(HealthCheck::tcp()).unhealthy_threshold(2);
        assert_eq!(check_once(&check, &ep).await, Ok(()));
        let mut checker = Checker::start(check.clone(), std::slice::from_ref(&ep));

        sleep(Duration::from_millis(100)).await;
        checker.assert_no_verdict();

        drop(accept); // closes the listener
        assert_eq!(checker.next_verdict().await, verdict(&ep, false));
        assert!(
            matches!(check_once(&check, &ep).await, Err(Failure::Connect(_))),
            "a closed port is a connect failure"
        );
    }

    #[tokio::test]
    async fn hung_endpoint_is_unhealthy_by_timeout() {
        // Accepts and reads the request, never answers.
        let (ep, _backend) = raw_backend(b"", true).await;
        let check = HealthCheck::http("/healthz")
            .interval(Duration::from_millis(20))
            .timeout(Duration::from_millis(100))
            .unhealthy_threshold(2);

        let started = Instant::now();
        assert_eq!(check_once(&check, &ep).await, Err(Failure::TimedOut));
        assert!(started.elapsed() >= Duration::from_millis(100));

        let mut checker = Checker::start(check, std::slice::from_ref(&ep));
        assert_eq!(checker.next_verdict().await, verdict(&ep, false));
    }

    #[tokio::test]
    async fn malformed_http_responses_fail_without_panicking() {
        let long_line: &'static [u8] = Box::leak(
            [&b"HTTP/1.1 200 "[..], &[b'x'; 2 * MAX_RESPONSE_HEAD]]
                .concat()
                .into_boxed_slice(),
        );
        let cases: &[(&'static [u8], bool, Failure)] = &[
            (b"garbage\r\n\r\n", false, Failure::Malformed),
            (b"HTTP/1.1 2OO OK\r\n\r\n", false, Failure::Malformed),
            (b"\x00\xff\r\n", false, Failure::Malformed),
            (b"HTTP/1.1 20", false, Failure::Truncated),
            (b"", false, Failure::Truncated),
            // Held open: only the 1 KiB bound can end the read (not EOF,
            // not the timeout).
            (long_line, true, Failure::Malformed),
        ];
        let check = HealthCheck::http("/healthz").timeout(Duration::from_secs(1));
        for &(reply, hold, expected) in cases {
            let (ep, _backend) = raw_backend(reply, hold).await;
            assert_eq!(
                check_once(&check, &ep).await,
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(&reply[..reply.len().min(20)])
            );
        }

        let (ep, _backend) = raw_backend(b"garbage\r\n\r\n", false).await;
        let mut checker = Checker::start(
            fast(HealthCheck::http("/healthz")).unhealthy_threshold(2),
            std::slice::from_ref(&ep),
        );
        assert_eq!(checker.next_verdict().await, verdict(&ep, false));
    }

    #[tokio::test(start_paused = true)]
    async fn endpoint_without_address_is_unhealthy() {
        let ep = Endpoint::builder("no-address").build().unwrap();
        for check in [HealthCheck::http("/healthz"), HealthCheck::tcp()] {
            assert_eq!(check_once(&check, &ep).await, Err(Failure::NoAddress));
            let mut checker =
                Checker::start(check.unhealthy_threshold(1), std::slice::from_ref(&ep));
            assert_eq!(checker.next_verdict().await, verdict(&ep, false));
        }
    }
}
