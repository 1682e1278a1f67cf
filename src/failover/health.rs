//! Active health checks: probes sent off the request path, so an endpoint
//! that is down leaves rotation before a request has to find out.
//!
//! Passive outlier detection learns only from requests that already
//! failed. An endpoint that gets little traffic can stay broken for a long
//! time before anyone notices, and one that still accepts connections but
//! reports itself unready (a `503` from its readiness path while it drains
//! or warms up) may never fail a request the passive side can see. Active
//! checks ask every endpoint directly, on a timer, the way Envoy's active
//! health checking, HAProxy's `check` with `rise`/`fall`, and Kubernetes
//! readiness probes do. The results feed the same eligibility as passive
//! ejection.
//!
//! Each [`interval`](HealthCheck::interval) one task probes every current
//! endpoint concurrently, each probe bounded by the
//! [`timeout`](HealthCheck::timeout); a timeout is a failure. A round
//! finishes before the next one starts, so probes of one endpoint never
//! overlap, and a slow round delays the next. Endpoints start healthy. A
//! healthy endpoint is marked unhealthy after
//! [`unhealthy_threshold`](HealthCheck::unhealthy_threshold) consecutive
//! failures (HAProxy's `fall`), an unhealthy one healthy again after
//! [`healthy_threshold`](HealthCheck::healthy_threshold) consecutive passes
//! (`rise`), so a single lost probe or a single lucky one moves nothing. An
//! endpoint that leaves the set is forgotten; if it comes back it starts
//! healthy again.
//!
//! A [`Probe`] is one of:
//!
//! - [`Probe::Http`]: `GET path` over HTTP/1.1 to the endpoint's address,
//!   healthy when the status code is the expected one. The request is
//!   written by hand (this crate does not depend on an HTTP client): it
//!   sends `Connection: close`, reads at most 1 KiB, and looks only at the
//!   status line, skipping interim `1xx` responses. Anything that is not an
//!   `HTTP/1.x NNN` status line is a failure.
//! - [`Probe::Tcp`]: healthy when a TCP connection to the address opens.
//! - [`Probe::Custom`]: your own async check (gRPC health, a Redis `PING`,
//!   an admin API), given the endpoint.
//!
//! An endpoint without an [address](Endpoint::address) fails HTTP and TCP
//! probes; give such endpoints a custom probe.
//!
//! ```
//! use std::time::Duration;
//! use tower_lb::failover::HealthCheck;
//! use tower_lb::Endpoint;
//!
//! // HAProxy's defaults, as here: two passes to come back, three failures to leave.
//! let http = HealthCheck::http("/healthz")
//!     .expect_status(204)
//!     .interval(Duration::from_secs(2))
//!     .timeout(Duration::from_millis(500))
//!     .healthy_threshold(2)
//!     .unhealthy_threshold(3);
//!
//! // Only that the port accepts connections.
//! let tcp = HealthCheck::tcp();
//!
//! // Your own check, for example a tag your deploy tooling sets.
//! let custom = HealthCheck::custom(|ep: Endpoint| async move {
//!     ep.tag("maintenance") != Some("true")
//! });
//! # let _ = (http, tcp, custom);
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{self, Interval, MissedTickBehavior};

use crate::endpoint::Endpoint;
use crate::trace::event;

/// A boxed future returned by a custom check.
pub type CheckFuture = Pin<Box<dyn Future<Output = bool> + Send + 'static>>;

/// What a probe does.
#[derive(Clone)]
#[non_exhaustive]
pub enum Probe {
    /// `GET path` over HTTP/1.1 to the endpoint's address; healthy when the
    /// status equals `expect`.
    Http {
        /// The request path, e.g. `/healthz`.
        path: String,
        /// The expected status code.
        expect: u16,
    },
    /// Healthy when a TCP connection to the endpoint's address opens.
    Tcp,
    /// Your own check.
    Custom(Arc<dyn Fn(Endpoint) -> CheckFuture + Send + Sync>),
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Http { path, expect } => f
                .debug_struct("Http")
                .field("path", path)
                .field("expect", expect)
                .finish(),
            Probe::Tcp => f.write_str("Tcp"),
            Probe::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Active health checking for a pool: which [`Probe`] to send, how often,
/// how long to wait for it, and how many results in a row change an
/// endpoint's state. Give it to
/// [`FailoverConfig::health_check`](crate::failover::FailoverConfig::health_check).
///
/// Every endpoint starts healthy. Each interval all endpoints are probed
/// concurrently; a probe that fails or outlives the timeout is a failure.
/// A healthy endpoint is left out after `unhealthy_threshold` failures in a
/// row and let back in after `healthy_threshold` passes in a row. An
/// endpoint that leaves discovery is forgotten.
///
/// Defaults: every 5 s, a 1 s timeout, 2 passes to become healthy again, 3
/// failures to become unhealthy.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::failover::{FailoverConfig, HealthCheck};
///
/// let config = FailoverConfig::new().health_check(
///     HealthCheck::http("/ready").interval(Duration::from_secs(10)),
/// );
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub(crate) probe: Probe,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) healthy_threshold: u32,
    pub(crate) unhealthy_threshold: u32,
}

const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Shorter intervals are raised to this, so a zero interval cannot spin.
const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// The most of a response an HTTP probe reads while looking for its status
/// line.
const MAX_RESPONSE_HEAD: usize = 1024;

impl HealthCheck {
    /// A check that sends `probe`, with the default timings and thresholds.
    pub fn new(probe: Probe) -> Self {
        HealthCheck {
            probe,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
        }
    }

    /// An HTTP/1.1 `GET path` to each endpoint's address, healthy when the
    /// status is 200 (see [`expect_status`](HealthCheck::expect_status)).
    ///
    /// An empty path means `/`. A path containing a space or a control
    /// character cannot be sent as a request line: every probe fails, with
    /// that reason in the `tracing` event.
    pub fn http(path: impl Into<String>) -> Self {
        Self::new(Probe::Http {
            path: path.into(),
            expect: 200,
        })
    }

    /// A TCP connect to each endpoint's address; healthy when it opens.
    pub fn tcp() -> Self {
        Self::new(Probe::Tcp)
    }

    /// Your own check: `check` is called with each endpoint every interval
    /// and its future's `true` means healthy. The future is bounded by the
    /// [timeout](HealthCheck::timeout) like any probe, and a check that
    /// panics counts as a failure.
    pub fn custom<F, Fut>(check: F) -> Self
    where
        F: Fn(Endpoint) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        Self::new(Probe::Custom(Arc::new(move |endpoint| {
            Box::pin(check(endpoint)) as CheckFuture
        })))
    }

    /// How often each endpoint is probed (default 5 s). The first round
    /// starts at once; intervals under 1 ms are raised to 1 ms.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long one probe may take, connect included, before it counts as a
    /// failure (default 1 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The status code an HTTP probe expects (default 200). No effect on
    /// other probes.
    #[must_use]
    pub fn expect_status(mut self, status: u16) -> Self {
        if let Probe::Http { expect, .. } = &mut self.probe {
            *expect = status;
        }
        self
    }

    /// How many passes in a row bring an unhealthy endpoint back (default
    /// 2); 0 is taken as 1.
    #[must_use]
    pub fn healthy_threshold(mut self, passes: u32) -> Self {
        self.healthy_threshold = passes.max(1);
        self
    }

    /// How many failures in a row mark a healthy endpoint unhealthy
    /// (default 3); 0 is taken as 1.
    #[must_use]
    pub fn unhealthy_threshold(mut self, failures: u32) -> Self {
        self.unhealthy_threshold = failures.max(1);
        self
    }
}

/// One endpoint's active-check verdict changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) key: Arc<str>,
    pub(crate) healthy: bool,
}

/// Probes every endpoint in `targets` each interval until `verdicts` is
/// closed or `targets`' sender is dropped; sends a [`Verdict`] whenever an
/// endpoint crosses a threshold.
///
/// Dropping the future (aborting its task) also aborts the probes in
/// flight.
pub(crate) async fn run(
    check: Arc<HealthCheck>,
    mut targets: watch::Receiver<Arc<[Endpoint]>>,
    verdicts: mpsc::UnboundedSender<Verdict>,
) {
    let rise = check.healthy_threshold.max(1);
    let fall = check.unhealthy_threshold.max(1);
    let mut ticker = time::interval(check.interval.max(MIN_INTERVAL));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut states: HashMap<Arc<str>, State> = HashMap::new();

    let mut idle = false;
    while next_round(&mut ticker, &mut targets, &verdicts, idle).await {
        let round = targets.borrow_and_update().clone();
        idle = round.is_empty();
        let mut outcomes = probe_all(&check, &round).await;

        // Endpoints that left while the round ran are forgotten now, so no
        // verdict names an endpoint that is no longer in the set.
        let current = targets.borrow_and_update().clone();
        let live: HashSet<&str> = current.iter().map(Endpoint::key).collect();
        states.retain(|key, _| live.contains(&**key));

        for endpoint in round.iter() {
            // `remove` also skips a key listed twice.
            let Some(outcome) = outcomes.remove(endpoint.key()) else {
                continue;
            };
            if !live.contains(endpoint.key()) {
                continue;
            }
            let key = endpoint.key_arc();
            let state = states.entry(Arc::clone(key)).or_default();
            let verdict = state.record(outcome.is_ok(), rise, fall);
            trace_outcome(key, &check.probe, &outcome, verdict);
            if let Some(healthy) = verdict {
                let verdict = Verdict {
                    key: Arc::clone(key),
                    healthy,
                };
                if verdicts.send(verdict).is_err() {
                    return;
                }
            }
        }
    }
}

/// Waits for the next tick. `false` when the checker should stop: the
/// verdict receiver is gone or the targets' sender was dropped.
async fn next_round(
    ticker: &mut Interval,
    targets: &mut watch::Receiver<Arc<[Endpoint]>>,
    verdicts: &mpsc::UnboundedSender<Verdict>,
    idle: bool,
) -> bool {
    enum Wake {
        Tick,
        Changed,
        Stop,
    }
    loop {
        if verdicts.is_closed() {
            return false;
        }
        let mut changed = pin!(targets.changed());
        let mut closed = pin!(verdicts.closed());
        let wake = poll_fn(|cx| {
            if closed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Stop);
            }
            if let Poll::Ready(result) = changed.as_mut().poll(cx) {
                return Poll::Ready(if result.is_ok() {
                    Wake::Changed
                } else {
                    Wake::Stop
                });
            }
            ticker.poll_tick(cx).map(|_| Wake::Tick)
        })
        .await;
        match wake {
            Wake::Tick => return true,
            // A checker that had nothing to probe (the pool was still
            // empty) starts as soon as it has something, rather than a
            // whole interval later.
            Wake::Changed if idle => return true,
            Wake::Changed => {}
            Wake::Stop => return false,
        }
    }
}

/// Probes each distinct endpoint of `round` in its own task and waits for
/// all of them; each is bounded by the check's timeout.
async fn probe_all(
    check: &Arc<HealthCheck>,
    round: &[Endpoint],
) -> HashMap<Arc<str>, Result<(), Failure>> {
    let mut outcomes = HashMap::with_capacity(round.len());
    let mut probes = JoinSet::new();
    for endpoint in round {
        if outcomes.contains_key(endpoint.key()) {
            continue;
        }
        // Stays a failure if the probe's task panics.
        outcomes.insert(Arc::clone(endpoint.key_arc()), Err(Failure::Panicked));
        let check = Arc::clone(check);
        let endpoint = endpoint.clone();
        probes.spawn(async move {
            let outcome = check_once(&check, &endpoint).await;
            (Arc::clone(endpoint.key_arc()), outcome)
        });
    }
    while let Some(joined) = probes.join_next().await {
        if let Ok((key, outcome)) = joined {
            outcomes.insert(key, outcome);
        }
    }
    outcomes
}

/// Whether one probe of `endpoint` passes; for probing a down endpoint
/// back.
pub(crate) async fn passes(check: &HealthCheck, endpoint: &Endpoint) -> bool {
    check_once(check, endpoint).await.is_ok()
}

/// One probe of one endpoint, bounded by the check's timeout.
async fn check_once(check: &HealthCheck, endpoint: &Endpoint) -> Result<(), Failure> {
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
enum Failure {
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

/// One endpoint's checker state.
#[derive(Debug, Default)]
struct State {
    unhealthy: bool,
    /// Consecutive results that disagree with the current state.
    streak: u32,
}

impl State {
    /// Records one probe result; the new state when it crosses a threshold.
    fn record(&mut self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        let healthy = !self.unhealthy;
        if passed == healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < if healthy { fall } else { rise } {
            return None;
        }
        self.unhealthy = healthy;
        self.streak = 0;
        Some(passed)
    }
}

#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
fn trace_outcome(key: &str, probe: &Probe, outcome: &Result<(), Failure>, verdict: Option<bool>) {
    match (outcome, verdict) {
        (Err(reason), Some(false)) => event!(
            warn,
            endpoint = %key,
            probe = ?probe,
            reason = %reason,
            "active health check failed; endpoint marked unhealthy"
        ),
        (Ok(()), Some(true)) => event!(
            info,
            endpoint = %key,
            probe = ?probe,
            "active health check passed; endpoint marked healthy again"
        ),
        (Err(reason), _) => event!(
            debug,
            endpoint = %key,
            probe = ?probe,
            reason = %reason,
            "active health probe failed"
        ),
        (Ok(()), _) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};

    use tokio::net::TcpListener;
    use tokio::sync::mpsc::error::TryRecvError;
    use tokio::task::JoinHandle;
    use tokio::time::{Instant, sleep, sleep_until, timeout};

    /// A bound on every wait for a verdict over real sockets.
    const WAIT: Duration = Duration::from_secs(2);

    struct Checker {
        targets: watch::Sender<Arc<[Endpoint]>>,
        verdicts: mpsc::UnboundedReceiver<Verdict>,
        task: JoinHandle<()>,
    }

    impl Checker {
        fn start(check: HealthCheck, endpoints: &[Endpoint]) -> Self {
            let (targets, targets_rx) = watch::channel(Arc::from(endpoints.to_vec()));
            let (verdicts_tx, verdicts) = mpsc::unbounded_channel();
            let task = tokio::spawn(run(Arc::new(check), targets_rx, verdicts_tx));
            Checker {
                targets,
                verdicts,
                task,
            }
        }

        fn set_targets(&self, endpoints: &[Endpoint]) {
            self.targets.send_replace(Arc::from(endpoints.to_vec()));
        }

        async fn next_verdict(&mut self) -> Verdict {
            timeout(WAIT, self.verdicts.recv())
                .await
                .expect("no verdict in time")
                .expect("checker stopped")
        }

        fn assert_no_verdict(&mut self) {
            assert_eq!(self.verdicts.try_recv(), Err(TryRecvError::Empty));
        }
    }

    impl Drop for Checker {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn verdict(endpoint: &Endpoint, healthy: bool) -> Verdict {
        Verdict {
            key: endpoint.key().into(),
            healthy,
        }
    }

    async fn listener() -> (TcpListener, Endpoint) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Endpoint::new(listener.local_addr().unwrap());
        (listener, endpoint)
    }

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

    struct AbortOnDrop(JoinHandle<()>);

    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    fn fast(check: HealthCheck) -> HealthCheck {
        check
            .interval(Duration::from_millis(20))
            .timeout(Duration::from_millis(500))
    }

    #[test]
    fn builders_set_defaults_overrides_and_clamp_zero_thresholds() {
        let check = HealthCheck::tcp();
        assert!(matches!(check.probe, Probe::Tcp));
        assert_eq!(check.interval, Duration::from_secs(5));
        assert_eq!(check.timeout, Duration::from_secs(1));
        assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (2, 3));

        let check = HealthCheck::http("/ready")
            .expect_status(204)
            .interval(Duration::from_millis(250))
            .timeout(Duration::from_millis(100))
            .healthy_threshold(0)
            .unhealthy_threshold(0);
        assert!(
            matches!(&check.probe, Probe::Http { path, expect: 204 } if path == "/ready"),
            "{:?}",
            check.probe
        );
        assert_eq!(check.interval, Duration::from_millis(250));
        assert_eq!(check.timeout, Duration::from_millis(100));
        assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (1, 1));

        // `expect_status` leaves other probes alone; Debug never shows a closure.
        let check = HealthCheck::custom(|_| async { true }).expect_status(204);
        assert_eq!(format!("{:?}", check.probe), "Custom(..)");
    }

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

    #[tokio::test(start_paused = true)]
    async fn custom_probe_verdicts_respect_thresholds_exactly() {
        let ok = Arc::new(AtomicBool::new(true));
        let calls = Arc::new(AtomicUsize::new(0));
        let (ok2, calls2) = (ok.clone(), calls.clone());
        let check = HealthCheck::custom(move |_| {
            calls2.fetch_add(1, Ordering::SeqCst);
            let ok = ok2.load(Ordering::SeqCst);
            async move { ok }
        })
        .interval(Duration::from_secs(1))
        .unhealthy_threshold(3)
        .healthy_threshold(2);
        let ep = Endpoint::builder("svc-1").build().unwrap();
        let t0 = Instant::now();
        let mut checker = Checker::start(check, std::slice::from_ref(&ep));
        // Rounds run at t = 0 s, 1 s, 2 s, …; look (and flip) half-way between.
        let at = |secs: f64| sleep_until(t0 + Duration::from_secs_f64(secs));
        // (time, probe result from the next round on, verdict expected by then)
        let script: &[(f64, bool, Option<bool>)] = &[
            (0.5, false, None), // round 0 passed
            (1.5, false, None), // 1 failure
            (2.5, false, None), // 2 failures: still healthy
            (3.5, true, Some(false)),
            (4.5, true, None), // 1 pass: still unhealthy
            (5.5, false, Some(true)),
            (6.5, true, None),  // fail, then …
            (7.5, false, None), // … a pass resets the count
            (8.5, false, None),
            (9.5, false, None), // 2 failures in a row
            (10.5, true, Some(false)),
        ];
        for &(secs, next, expected) in script {
            at(secs).await;
            match expected {
                Some(healthy) => {
                    assert_eq!(
                        checker.verdicts.try_recv(),
                        Ok(verdict(&ep, healthy)),
                        "t = {secs}"
                    );
                }
                None => checker.assert_no_verdict(),
            }
            ok.store(next, Ordering::SeqCst);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 11, "one probe per round");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_thresholds_and_interval_are_clamped() {
        let ok = Arc::new(AtomicBool::new(false));
        let ok2 = ok.clone();
        let mut check = HealthCheck::custom(move |_| {
            let ok = ok2.load(Ordering::SeqCst);
            async move { ok }
        });
        // As if built in the crate without the builder's clamping.
        check.interval = Duration::ZERO;
        check.healthy_threshold = 0;
        check.unhealthy_threshold = 0;
        let ep = Endpoint::builder("svc-1").build().unwrap();
        let mut checker = Checker::start(check, std::slice::from_ref(&ep));
        let t0 = Instant::now();
        assert_eq!(checker.next_verdict().await, verdict(&ep, false));
        ok.store(true, Ordering::SeqCst);
        assert_eq!(checker.next_verdict().await, verdict(&ep, true));
        // Rounds at t = 0 and 1 ms: a zero interval neither panics nor spins.
        assert_eq!(t0.elapsed(), MIN_INTERVAL);
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
    async fn run_returns_when_verdicts_are_dropped() {
        let check = HealthCheck::custom(|_| async { true }).interval(Duration::from_secs(1));
        let ep = Endpoint::builder("svc-1").build().unwrap();
        let (_targets, targets_rx) = watch::channel(Arc::from(vec![ep]));
        let (verdicts_tx, verdicts_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(Arc::new(check), targets_rx, verdicts_tx));
        sleep(Duration::from_millis(1500)).await; // two rounds ran
        drop(verdicts_rx);
        // Well before the next round is due.
        timeout(Duration::from_millis(10), task)
            .await
            .expect("run kept going without a verdict receiver")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn run_returns_when_targets_sender_is_dropped() {
        let check = HealthCheck::custom(|_| async { true }).interval(Duration::from_secs(1));
        let ep = Endpoint::builder("svc-1").build().unwrap();
        let (targets, targets_rx) = watch::channel(Arc::from(vec![ep]));
        let (verdicts_tx, _verdicts_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(Arc::new(check), targets_rx, verdicts_tx));
        sleep(Duration::from_millis(1500)).await;
        // An update not yet read, then the sender goes: still stops.
        targets.send_replace(Arc::from(Vec::new()));
        drop(targets);
        timeout(Duration::from_millis(10), task)
            .await
            .expect("run kept going without a targets sender")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn departed_endpoints_are_forgotten() {
        let a = Endpoint::builder("a").build().unwrap();
        let b = Endpoint::builder("b").build().unwrap();
        let a_ok = Arc::new(AtomicBool::new(false));
        let probed = Arc::new(Mutex::new(Vec::<String>::new()));
        let (a_ok2, probed2) = (a_ok.clone(), probed.clone());
        let check = HealthCheck::custom(move |ep: Endpoint| {
            probed2.lock().unwrap().push(ep.key().to_owned());
            let ok = ep.key() != "a" || a_ok2.load(Ordering::SeqCst);
            async move { ok }
        })
        .interval(Duration::from_secs(1))
        .unhealthy_threshold(2)
        .healthy_threshold(1);
        let t0 = Instant::now();
        let at = |secs: f64| sleep_until(t0 + Duration::from_secs_f64(secs));
        let taken = || std::mem::take(&mut *probed.lock().unwrap());

        // A key listed twice is probed once per round.
        let mut checker = Checker::start(check, &[a.clone(), b.clone(), a.clone()]);
        at(0.5).await; // a: 1 failure
        assert_eq!(taken(), ["a", "b"]);
        checker.set_targets(std::slice::from_ref(&b));
        at(1.5).await; // a not probed
        assert_eq!(taken(), ["b"]);
        checker.set_targets(&[a.clone(), b.clone()]);
        at(2.5).await; // a: 1 failure again, its earlier one forgotten
        checker.assert_no_verdict();
        at(3.5).await; // a: 2 failures
        assert_eq!(checker.verdicts.try_recv(), Ok(verdict(&a, false)));

        // Unhealthy a leaves; back with passing probes, it starts healthy,
        // so no verdict is needed.
        checker.set_targets(std::slice::from_ref(&b));
        at(4.5).await;
        assert_eq!(taken(), ["a", "b", "a", "b", "b"]); // t = 2 s, 3 s, 4 s
        a_ok.store(true, Ordering::SeqCst);
        checker.set_targets(&[a.clone(), b.clone()]);
        at(6.5).await;
        checker.assert_no_verdict();
        assert_eq!(taken().iter().filter(|k| *k == "a").count(), 2);
        // And a healthy-to-unhealthy verdict again takes the full threshold.
        a_ok.store(false, Ordering::SeqCst);
        at(7.5).await;
        checker.assert_no_verdict();
        at(8.5).await;
        assert_eq!(checker.verdicts.try_recv(), Ok(verdict(&a, false)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_checker_started_empty_probes_its_first_endpoints_at_once() {
        let a = Endpoint::builder("a").build().unwrap();
        let probed = Arc::new(Mutex::new(Vec::<Instant>::new()));
        let probed2 = probed.clone();
        let check = HealthCheck::custom(move |_| {
            probed2.lock().unwrap().push(Instant::now());
            async { true }
        })
        .interval(Duration::from_secs(10));
        let t0 = Instant::now();
        let checker = Checker::start(check, &[]);
        sleep(Duration::from_secs(1)).await;
        assert!(probed.lock().unwrap().is_empty());
        checker.set_targets(std::slice::from_ref(&a));
        sleep(Duration::from_millis(10)).await;
        let first = probed.lock().unwrap().clone();
        assert_eq!(first.len(), 1, "probed once, at once");
        assert!(
            first[0] - t0 < Duration::from_secs(2),
            "not a whole interval later"
        );
        // Later changes wait for the next tick.
        checker.set_targets(&[a.clone(), Endpoint::builder("b").build().unwrap()]);
        sleep(Duration::from_millis(10)).await;
        assert_eq!(probed.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_verdict_for_an_endpoint_that_left_during_its_probe() {
        let a = Endpoint::builder("a").build().unwrap();
        let b = Endpoint::builder("b").build().unwrap();
        // Every probe fails after 100 ms.
        let check = HealthCheck::custom(|_| async {
            sleep(Duration::from_millis(100)).await;
            false
        })
        .interval(Duration::from_secs(1))
        .unhealthy_threshold(1);
        let t0 = Instant::now();
        let mut checker = Checker::start(check, &[a.clone(), b.clone()]);
        sleep_until(t0 + Duration::from_millis(50)).await;
        checker.set_targets(std::slice::from_ref(&b));
        assert_eq!(checker.next_verdict().await, verdict(&b, false));
        sleep_until(t0 + Duration::from_millis(500)).await;
        checker.assert_no_verdict();
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

    #[tokio::test(start_paused = true)]
    async fn panicking_or_slow_custom_probe_is_a_failure() {
        let check = HealthCheck::custom(|_| async { panic!("probe bug") })
            .interval(Duration::from_secs(1))
            .unhealthy_threshold(2);
        let ep = Endpoint::builder("svc-1").build().unwrap();
        let t0 = Instant::now();
        let mut checker = Checker::start(check, std::slice::from_ref(&ep));
        // Two rounds (t = 0 s, 1 s): the checker survived the first panic.
        assert_eq!(checker.next_verdict().await, verdict(&ep, false));
        assert_eq!(t0.elapsed(), Duration::from_secs(1));

        let check =
            HealthCheck::custom(|_| std::future::pending()).timeout(Duration::from_millis(300));
        assert_eq!(check_once(&check, &ep).await, Err(Failure::TimedOut));
    }
}
