//! Helpers for the health checker's tests: a checker driven by hand, a
//! loopback listener, a task that ends with its handle.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
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
