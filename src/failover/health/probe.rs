//! One probe of one endpoint: a TCP connect, an HTTP `GET`, or a custom
//! check, bounded by the check's timeout.

use std::fmt;
use std::io;

use tokio::net::TcpStream;
use tokio::time;

#[cfg(feature = "http")]
use super::http_get::{self, HttpFailure};
use super::{HealthCheck, Probe};
use crate::endpoint::Endpoint;

/// Whether one probe of `endpoint` passes; for probing a down endpoint
/// back.
pub(crate) async fn passes(check: &HealthCheck, endpoint: &Endpoint) -> bool {
    check_once(check, endpoint).await.is_ok()
}

/// One probe of one endpoint, bounded by the check's timeout.
pub(super) async fn check_once(check: &HealthCheck, endpoint: &Endpoint) -> Result<(), Failure> {
    let probe = async {
        match &check.probe {
            #[cfg(feature = "http")]
            Probe::Http { path, expect } => {
                let address = endpoint.address().ok_or(Failure::NoAddress)?;
                http_get::probe(address, path, *expect).await
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

/// Why a probe failed; goes into `tracing` events as `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    NoAddress,
    TimedOut,
    Connect(io::ErrorKind),
    #[cfg(feature = "http")]
    Http(HttpFailure),
    Rejected,
    Panicked,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoAddress => f.write_str("endpoint has no address"),
            Failure::TimedOut => f.write_str("timed out"),
            Failure::Connect(kind) => write!(f, "connect failed: {kind}"),
            #[cfg(feature = "http")]
            Failure::Http(failure) => fmt::Display::fmt(failure, f),
            Failure::Rejected => f.write_str("custom check returned false"),
            Failure::Panicked => f.write_str("probe panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use tokio::time::sleep;

    use super::super::test_support::{AbortOnDrop, Checker, fast, listener, verdict};

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

    #[tokio::test(start_paused = true)]
    async fn endpoint_without_address_is_unhealthy() {
        let ep = Endpoint::builder("no-address").build().unwrap();
        let mut checks = vec![HealthCheck::tcp()];
        #[cfg(feature = "http")]
        checks.insert(0, HealthCheck::http("/healthz"));
        for check in checks {
            assert_eq!(check_once(&check, &ep).await, Err(Failure::NoAddress));
            let mut checker =
                Checker::start(check.unhealthy_threshold(1), std::slice::from_ref(&ep));
            assert_eq!(checker.next_verdict().await, verdict(&ep, false));
        }
    }
}
