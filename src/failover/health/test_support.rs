//! Helpers for the health checker's tests: a checker driven by hand and
//! backends on loopback.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::HealthCheck;
use super::scheduler::{Verdict, run};
use crate::endpoint::Endpoint;

/// A bound on every wait for a verdict over real sockets.
pub(super) const WAIT: Duration = Duration::from_secs(2);

pub(super) struct Checker {
    targets: watch::Sender<Arc<[Endpoint]>>,
    pub(super) verdicts: mpsc::UnboundedReceiver<Verdict>,
    task: JoinHandle<()>,
}

impl Checker {
    pub(super) fn start(check: HealthCheck, endpoints: &[Endpoint]) -> Self {
        let (targets, targets_rx) = watch::channel(Arc::from(endpoints.to_vec()));
        let (verdicts_tx, verdicts) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(Arc::new(check), targets_rx, verdicts_tx));
        Checker {
            targets,
            verdicts,
            task,
        }
    }

    pub(super) fn set_targets(&self, endpoints: &[Endpoint]) {
        self.targets.send_replace(Arc::from(endpoints.to_vec()));
    }

    pub(super) async fn next_verdict(&mut self) -> Verdict {
        timeout(WAIT, self.verdicts.recv())
            .await
            .expect("no verdict in time")
            .expect("checker stopped")
    }

    pub(super) fn assert_no_verdict(&mut self) {
        assert_eq!(self.verdicts.try_recv(), Err(TryRecvError::Empty));
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) fn verdict(endpoint: &Endpoint, healthy: bool) -> Verdict {
    Verdict {
        key: endpoint.key().into(),
        healthy,
    }
}

pub(super) async fn listener() -> (TcpListener, Endpoint) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = Endpoint::new(listener.local_addr().unwrap());
    (listener, endpoint)
}

/// Reads a request head (up to the blank line, at most 4 KiB).
pub(super) async fn read_head(stream: &mut TcpStream) -> String {
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
pub(super) struct HttpBackend {
    pub(super) endpoint: Endpoint,
    pub(super) status: Arc<AtomicU16>,
    /// Statuses served, in order; pushed before the response is written.
    pub(super) served: Arc<Mutex<Vec<u16>>>,
    pub(super) last_request: Arc<Mutex<String>>,
    _task: AbortOnDrop,
}

impl HttpBackend {
    pub(super) async fn start(status: u16) -> Self {
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

    pub(super) fn served(&self, code: u16) -> usize {
        let served = self.served.lock().unwrap();
        served.iter().filter(|&&c| c == code).count()
    }
}

/// A backend that reads the request, writes `reply` and, if `hold`,
/// keeps the connection open instead of closing it.
pub(super) async fn raw_backend(reply: &'static [u8], hold: bool) -> (Endpoint, AbortOnDrop) {
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

pub(super) struct AbortOnDrop(pub(super) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) fn fast(check: HealthCheck) -> HealthCheck {
    check
        .interval(Duration::from_millis(20))
        .timeout(Duration::from_millis(500))
}
