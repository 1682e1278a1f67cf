//! The HTTP probe: one `GET` over HTTP/1.1 with hyper's client, on a
//! connection of its own, judged by the status code.

use std::error::Error as _;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;

use http::header::{CONNECTION, HOST, USER_AGENT};
use http::{HeaderValue, Request};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::probe::Failure;

/// Why an HTTP probe failed after its connection opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HttpFailure {
    /// The path is not an origin-form request target.
    BadPath,
    /// The connection closed before a whole response head arrived.
    Truncated,
    /// What came back is not an HTTP/1.x response.
    Malformed,
    /// A final response with another status than the expected one.
    Status { got: u16, expected: u16 },
    /// Reading or writing the connection failed.
    Io(io::ErrorKind),
    /// The exchange failed for another reason.
    Exchange,
}

impl fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpFailure::BadPath => {
                f.write_str("request path is not `/…` without spaces or control characters")
            }
            HttpFailure::Truncated => f.write_str("connection closed before a response"),
            HttpFailure::Malformed => f.write_str("no HTTP/1.x response"),
            HttpFailure::Status { got, expected } => {
                write!(f, "status {got}, expected {expected}")
            }
            HttpFailure::Io(kind) => write!(f, "I/O error: {kind}"),
            HttpFailure::Exchange => f.write_str("HTTP/1.1 exchange failed"),
        }
    }
}

/// `GET path` to `address`; passes when the final status is `expect`.
/// Interim `1xx` responses are skipped (hyper's client does that); the
/// body is never read.
pub(super) async fn probe(address: SocketAddr, path: &str, expect: u16) -> Result<(), Failure> {
    let request = request(address, path).map_err(Failure::Http)?;
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| Failure::Connect(e.kind()))?;
    let status = exchange(stream, request).await.map_err(Failure::Http)?;
    if status == expect {
        Ok(())
    } else {
        Err(Failure::Http(HttpFailure::Status {
            got: status,
            expected: expect,
        }))
    }
}

/// The probe's request: `Host` is the address, and `Connection: close`
/// tells the server the connection ends with the answer. An empty path
/// means `/`.
fn request(address: SocketAddr, path: &str) -> Result<Request<String>, HttpFailure> {
    let path = if path.is_empty() { "/" } else { path };
    if !path.starts_with('/') {
        return Err(HttpFailure::BadPath);
    }
    let host = HeaderValue::try_from(address.to_string()).map_err(|_| HttpFailure::BadPath)?;
    Request::get(path)
        .header(HOST, host)
        .header(CONNECTION, "close")
        .header(USER_AGENT, "tower-lb")
        .body(String::new())
        .map_err(|_| HttpFailure::BadPath)
}

/// Sends `request` over `stream` and returns the final status code. The
/// connection is driven here, not in a task of its own, so dropping the
/// probe (its timeout) closes it.
async fn exchange(stream: TcpStream, request: Request<String>) -> Result<u16, HttpFailure> {
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(failure)?;
    let mut connection = pin!(connection);
    let mut response = pin!(sender.send_request(request));
    let response = tokio::select! {
        response = response.as_mut() => response,
        // The connection ended first (it can end in the same poll that
        // hands the response over): the sender has the answer or the
        // reason there is none.
        _ = connection.as_mut() => response.await,
    };
    Ok(response.map_err(failure)?.status().as_u16())
}

fn failure(error: hyper::Error) -> HttpFailure {
    if error.is_parse() {
        HttpFailure::Malformed
    } else if let Some(io) = error.source().and_then(|s| s.downcast_ref::<io::Error>()) {
        HttpFailure::Io(io.kind())
    } else if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        HttpFailure::Truncated
    } else {
        HttpFailure::Exchange
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicU16, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::{Instant, sleep};

    use super::super::HealthCheck;
    use super::super::probe::check_once;
    use super::super::test_support::{AbortOnDrop, Checker, fast, listener, verdict};
    use crate::endpoint::Endpoint;

    /// Reads a request head (up to the blank line, at most 4 KiB).
    async fn read_head(stream: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut buf = [0; 512];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// An HTTP backend answering every request with the status in `status`.
    struct HttpBackend {
        endpoint: Endpoint,
        status: Arc<AtomicU16>,
        /// Statuses served, in order; pushed before the response is written.
        served: Arc<Mutex<Vec<u16>>>,
        last_request: Arc<Mutex<String>>,
        _task: AbortOnDrop,
    }

    impl HttpBackend {
        async fn start(status: u16) -> Self {
            let (listener, endpoint) = listener().await;
            let status = Arc::new(AtomicU16::new(status));
            let served = Arc::new(Mutex::new(Vec::new()));
            let last_request = Arc::new(Mutex::new(String::new()));
            let (st, sv, lr) = (status.clone(), served.clone(), last_request.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (st, sv, lr) = (st.clone(), sv.clone(), lr.clone());
                    tokio::spawn(async move {
                        *lr.lock().unwrap() = read_head(&mut stream).await;
                        let code = st.load(Ordering::SeqCst);
                        sv.lock().unwrap().push(code);
                        let reply = format!(
                            "HTTP/1.1 {code} Status\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                        let _ = stream.write_all(reply.as_bytes()).await;
                    });
                }
            });
            HttpBackend {
                endpoint,
                status,
                served,
                last_request,
                _task: AbortOnDrop(task),
            }
        }

        fn served(&self, code: u16) -> usize {
            let served = self.served.lock().unwrap();
            served.iter().filter(|&&c| c == code).count()
        }
    }

    /// A backend that reads the request, writes `reply` and, if `hold`,
    /// keeps the connection open instead of closing it.
    async fn raw_backend(reply: &'static [u8], hold: bool) -> (Endpoint, AbortOnDrop) {
        let (listener, endpoint) = listener().await;
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                read_head(&mut stream).await;
                let _ = stream.write_all(reply).await;
                if hold {
                    held.push(stream);
                }
            }
        });
        (endpoint, AbortOnDrop(task))
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
                "GET /healthz HTTP/1.1\r\nhost: {}\r\nconnection: close\r\nuser-agent: tower-lb\r\n\r\n",
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
            Err(Failure::Http(HttpFailure::Status {
                got: 204,
                expected: 200
            }))
        );
        assert_eq!(check_once(&check.expect_status(204), &ep).await, Ok(()));
        // A path that would break the request line, or is not a path, is
        // never sent.
        for bad in ["/a b\r\nX: y", "healthz"] {
            let bad = HealthCheck::http(bad);
            assert_eq!(
                check_once(&bad, &ep).await,
                Err(Failure::Http(HttpFailure::BadPath))
            );
        }
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
        use HttpFailure::{Malformed, Truncated};
        // More than hyper buffers for a response head (about 400 KiB).
        let long_line: &'static [u8] = Box::leak(
            [&b"HTTP/1.1 200 "[..], &[b'x'; 512 * 1024]]
                .concat()
                .into_boxed_slice(),
        );
        let cases: &[(&'static [u8], bool, HttpFailure)] = &[
            (b"garbage\r\n\r\n", false, Malformed),
            (b"HTTP/1.1 2OO OK\r\n\r\n", false, Malformed),
            (b"HTTP/2 200\r\n\r\n", false, Malformed),
            (b"\x00\xff\r\n", false, Malformed),
            (b"HTTP/1.1 20", false, Truncated),
            (b"HTTP/1.1 100 Continue\r\n\r\n", false, Truncated),
            (b"", false, Truncated),
            // Held open: only the bound on the head can end the read (not
            // EOF, not the timeout).
            (long_line, true, Malformed),
        ];
        let check = HealthCheck::http("/healthz").timeout(Duration::from_secs(1));
        for &(reply, hold, expected) in cases {
            let (ep, _backend) = raw_backend(reply, hold).await;
            assert_eq!(
                check_once(&check, &ep).await,
                Err(Failure::Http(expected)),
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

    /// Real servers on loopback: 200 passes; 503, a refused port and
    /// interim responses before the final one are judged as such.
    #[tokio::test]
    async fn http_probe_against_loopback_servers() {
        let check = HealthCheck::http("/healthz");
        let ok = HttpBackend::start(200).await;
        assert_eq!(check_once(&check, &ok.endpoint).await, Ok(()));
        let unavailable = HttpBackend::start(503).await;
        assert_eq!(
            check_once(&check, &unavailable.endpoint).await,
            Err(Failure::Http(HttpFailure::Status {
                got: 503,
                expected: 200
            }))
        );

        let (listener, refused) = listener().await;
        drop(listener);
        assert!(
            matches!(
                check_once(&check, &refused).await,
                Err(Failure::Connect(io::ErrorKind::ConnectionRefused))
            ),
            "a refused port is a connect failure"
        );

        let interim: &'static [u8] = b"HTTP/1.1 100 Continue\r\n\r\n\
            HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
            HTTP/1.1 204 No Content\r\n\r\n";
        let (ep, _backend) = raw_backend(interim, false).await;
        assert_eq!(check_once(&check.expect_status(204), &ep).await, Ok(()));
    }
}
