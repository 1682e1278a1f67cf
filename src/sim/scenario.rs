//! linkerd's "Beyond Round Robin" experiment as a reusable scenario.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;
use tower::timeout::Timeout;
use tower::timeout::error::Elapsed;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    Fault, InvalidSim, Latency, LatencyRecorder, OpenLoop, Outcome, QuantileTable, SimBackend,
    SimCluster, SimError, SimResponse,
};
use crate::BoxError;
use crate::balance::{
    BalanceLayer, ClassifyFn, LeastInFlight, PeakEwma, Random, RoundRobin, Strategy,
};
use crate::failover::{FailoverConfig, FailoverLayer};
use crate::pool::{DiscoverLayer, Pool};
use crate::retry::{Hedge, RetryErrors, RetryLayer};

/// linkerd's "Beyond Round Robin" experiment (2016), with its parameters
/// open to change: backends answering with the
/// [published latencies](QuantileTable::beyond_round_robin), the last of
/// them slower by a factor for a window of the run, under open-loop load,
/// run through one client stack at a time.
///
/// [`run`](Scenario::run) builds one of the tower-lb [`Stack`]s over fresh
/// backends; [`run_with`](Scenario::run_with) runs any `Service<()>` you
/// build over the [`SimCluster`] (tower's own balancers, your stack). With
/// a [`timeout`](Scenario::timeout), `tower::timeout::Timeout` wraps the
/// whole stack, so it bounds the request, retries and hedges included.
///
/// Every backend draws from its own generator, seeded from
/// [`seed`](Scenario::seed) and its index, in the order it receives
/// requests: stacks are compared on the same draws, and on a
/// current-thread runtime under a paused clock a seed repeats a run
/// exactly. What the numbers of a [`ScenarioRun`] mean:
///
/// - *success rate*: the share of requests answered with a response
///   within [`success_within`](Scenario::success_within) of their due
///   time. A timed-out request is a failure.
/// - *latency* of a request: from its due time to its answer; for a
///   timed-out one, to its cancellation: its timeout, plus any wait for
///   the stack to be ready (none for tower-lb's stacks, always ready).
/// - *slower than the bound*: requests with no answer within
///   `success_within`: answered later, or timed out. These, the successes
///   and the errors within the bound make up every request.
/// - *slow share*: of the requests the backends received while the slow
///   one was slow (hedged copies included), the share it received.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::sim::{Scenario, Stack};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let s = Duration::from_secs;
/// let mut sc = Scenario::beyond_round_robin();
/// sc.duration = s(6);
/// sc.slow = s(1)..s(5);
/// let rr = sc.run(Stack::RoundRobin).await.unwrap();
/// let ewma = sc.run(Stack::PeakEwma).await.unwrap();
/// assert_eq!(ewma.record.len(), 6000);
/// // Round robin gives the slow backend its 1/11 while slow.
/// assert!((rr.slow_share - 1.0 / 11.0).abs() < 0.005);
/// assert!(ewma.slow_share < rr.slow_share / 4.0);
/// assert!(ewma.slower() < rr.slower());
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Scenario {
    /// How many backends; the last one turns slow. At least 2.
    pub backends: usize,
    /// Requests per second, open loop ([`OpenLoop`]).
    pub rate: f64,
    /// How long the load runs.
    pub duration: Duration,
    /// The slow backend's latency multiplier ([`Fault::Slow`]).
    pub slow_factor: f64,
    /// When the last backend is slow, from the start of the run.
    pub slow: Range<Duration>,
    /// A request succeeds if answered within this.
    pub success_within: Duration,
    /// Cancels each request not answered within this: `tower::timeout::Timeout`
    /// around the whole stack. `None`, as in the published experiment, is
    /// no timeout.
    pub timeout: Option<Duration>,
    /// Seeds every random draw: the backends' and the stack's.
    pub seed: u64,
}

impl Default for Scenario {
    /// The published experiment; see [`Scenario::beyond_round_robin`].
    fn default() -> Self {
        Scenario {
            backends: 11,
            rate: 1000.0,
            duration: Duration::from_secs(60),
            slow_factor: 10.0,
            slow: Duration::from_secs(15)..Duration::from_secs(45),
            success_within: Duration::from_secs(1),
            timeout: None,
            seed: 1,
        }
    }
}

/// The client stacks tower-lb offers for a [`Scenario`], each over the
/// cluster's [`Pool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stack {
    /// [`RoundRobin`].
    RoundRobin,
    /// [`Random`].
    Random,
    /// P2C over requests in flight ([`LeastInFlight`]).
    LeastInFlight,
    /// P2C over [`PeakEwma`].
    PeakEwma,
    /// Peak-EWMA over a [`FailoverLayer`] view with the default outlier
    /// detection, where an answer slower than the success bound counts as
    /// the endpoint's failure (`BalanceLayer::classify`), so a backend
    /// that turns slow is ejected after five such answers in a row.
    PeakEwmaFailover,
    /// Peak-EWMA under a [`RetryLayer`] that hedges: a second copy to
    /// another backend once a request is slower than the layer's recent
    /// p95 (`Hedge::at_percentile(95.0, 50 ms, success bound)`), within
    /// the retry budget; the first answer wins, the other is cancelled.
    PeakEwmaHedge,
    /// Both: the failover stack under the hedging [`RetryLayer`].
    PeakEwmaFailoverHedge,
}

impl Stack {
    /// Every stack, in the order above.
    pub const ALL: [Stack; 7] = [
        Stack::RoundRobin,
        Stack::Random,
        Stack::LeastInFlight,
        Stack::PeakEwma,
        Stack::PeakEwmaFailover,
        Stack::PeakEwmaHedge,
        Stack::PeakEwmaFailoverHedge,
    ];

    /// Its name, as [`FromStr`] reads it: `peak-ewma-failover-hedge`.
    pub fn name(self) -> &'static str {
        match self {
            Stack::RoundRobin => "round-robin",
            Stack::Random => "random",
            Stack::LeastInFlight => "least-in-flight",
            Stack::PeakEwma => "peak-ewma",
            Stack::PeakEwmaFailover => "peak-ewma-failover",
            Stack::PeakEwmaHedge => "peak-ewma-hedge",
            Stack::PeakEwmaFailoverHedge => "peak-ewma-failover-hedge",
        }
    }

    /// A label for tables: `Peak-EWMA + failover + hedge`.
    pub fn label(self) -> &'static str {
        match self {
            Stack::RoundRobin => "round robin",
            Stack::Random => "random",
            Stack::LeastInFlight => "P2C least-in-flight",
            Stack::PeakEwma => "P2C Peak-EWMA",
            Stack::PeakEwmaFailover => "Peak-EWMA + failover",
            Stack::PeakEwmaHedge => "Peak-EWMA + hedge",
            Stack::PeakEwmaFailoverHedge => "Peak-EWMA + failover + hedge",
        }
    }
}

impl fmt::Display for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Stack {
    type Err = InvalidSim;

    fn from_str(s: &str) -> Result<Self, InvalidSim> {
        Stack::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| InvalidSim::UnknownStack(s.to_owned()))
    }
}

/// One stack's run of a [`Scenario`]; see there for what the numbers mean.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScenarioRun {
    /// Every request's sample, in request order.
    pub record: LatencyRecorder,
    /// Of the requests the backends received while the slow one was slow,
    /// the share it received, in `[0, 1]`; 0 if the window is empty.
    pub slow_share: f64,
    /// The scenario's success bound.
    pub success_within: Duration,
    /// The backends, after the run: their [`stats`](SimBackend::stats)
    /// say what each received.
    pub cluster: SimCluster,
}

impl ScenarioRun {
    /// The share of requests answered with a response within the success
    /// bound ([`LatencyRecorder::success_rate`]).
    pub fn success_rate(&self) -> f64 {
        self.record.success_rate(self.success_within)
    }

    /// How many requests had no answer within the success bound: answered
    /// later, or timed out ([`LatencyRecorder::slower_than`]).
    pub fn slower(&self) -> usize {
        self.record.slower_than(self.success_within)
    }
}

impl Scenario {
    /// The published experiment: 11 backends, 1000 requests/s for 60 s,
    /// the last backend ×10 slower from 15 s to 45 s, success within 1 s,
    /// no timeout, seed 1.
    pub fn beyond_round_robin() -> Self {
        Self::default()
    }

    /// Checks the parameters: at least two backends, a valid rate, slow
    /// factor and window.
    pub fn validate(&self) -> Result<(), InvalidSim> {
        OpenLoop::new(self.rate, self.duration)?;
        self.cluster(Instant::now()).map(drop)
    }

    /// The scenario's backends, fresh, with their faults counted from
    /// `origin`: `backend-00` … , the last one the one that turns slow.
    pub fn cluster(&self, origin: Instant) -> Result<SimCluster, InvalidSim> {
        if self.backends < 2 {
            return Err(InvalidSim::TooFewBackends(self.backends));
        }
        let latency = Latency::empirical(QuantileTable::beyond_round_robin());
        let slow = self.backends - 1;
        let backends = (0..self.backends).map(|i| {
            let b = SimBackend::builder(format!("backend-{i:02}"), latency.clone())
                .origin(origin)
                .seed(self.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let b = if i == slow {
                b.fault(self.slow.clone(), Fault::Slow(self.slow_factor))
            } else {
                b
            };
            b.build()
        });
        SimCluster::new(backends.collect::<Result<Vec<_>, _>>()?)
    }

    /// Runs the scenario through `stack` over fresh backends. Call it on a
    /// current-thread runtime with a paused clock for a repeatable run
    /// that takes about a second of wall time per simulated minute.
    pub async fn run(&self, stack: Stack) -> Result<ScenarioRun, InvalidSim> {
        let seed = self.seed;
        let within = self.success_within;
        match stack {
            Stack::RoundRobin => self.run_with(|c| balance(c, RoundRobin, seed)).await,
            Stack::Random => self.run_with(|c| balance(c, Random, seed)).await,
            Stack::LeastInFlight => self.run_with(|c| balance(c, LeastInFlight, seed)).await,
            Stack::PeakEwma => self.run_with(|c| balance(c, PeakEwma::new(), seed)).await,
            Stack::PeakEwmaFailover => self.run_with(|c| failover(c, seed, within)).await,
            Stack::PeakEwmaHedge => {
                self.run_with(|c| async move {
                    hedge(balance(c, PeakEwma::new(), seed).await, seed, within)
                })
                .await
            }
            Stack::PeakEwmaFailoverHedge => {
                self.run_with(
                    |c| async move { hedge(failover(c, seed, within).await, seed, within) },
                )
                .await
            }
        }
    }

    /// Runs the scenario through the service `make` builds over fresh
    /// backends (wrapped in the timeout, if there is one). The backends'
    /// fault windows count from when `make` is called.
    pub async fn run_with<M, Fut, S>(&self, make: M) -> Result<ScenarioRun, InvalidSim>
    where
        M: FnOnce(SimCluster) -> Fut,
        Fut: Future<Output = S>,
        S: Service<()>,
        S::Response: Send + 'static,
        S::Error: Into<BoxError> + Send + 'static,
        S::Future: Send + 'static,
    {
        let load = OpenLoop::new(self.rate, self.duration)?;
        let origin = Instant::now();
        let cluster = self.cluster(origin)?;
        let service = make(cluster.clone()).await;
        let record = async {
            match self.timeout {
                Some(timeout) => {
                    load.run_classified(Timeout::new(service, timeout), |_| (), timed_out)
                        .await
                }
                None => load.run(service, |_| ()).await,
            }
        };
        let share = slow_share(
            &cluster,
            origin,
            self.slow.start..self.slow.end.min(self.duration),
        );
        let (record, slow_share) = tokio::join!(record, share);
        Ok(ScenarioRun {
            record,
            slow_share,
            success_within: self.success_within,
            cluster,
        })
    }
}

/// The outcome of an answer through `Timeout`.
fn timed_out<R>(answer: Result<&R, &BoxError>) -> Outcome {
    match answer {
        Ok(_) => Outcome::Ok,
        Err(e) if e.is::<Elapsed>() => Outcome::TimedOut,
        Err(_) => Outcome::Failed,
    }
}

/// The slow backend's (the last one's) share of the requests all backends
/// received within `window` after `origin`.
async fn slow_share(cluster: &SimCluster, origin: Instant, window: Range<Duration>) -> f64 {
    if window.is_empty() {
        return 0.0;
    }
    let counts = || -> Vec<u64> { cluster.backends().map(|b| b.stats().received).collect() };
    tokio::time::sleep_until(origin + window.start).await;
    let before = counts();
    tokio::time::sleep_until(origin + window.end).await;
    let after = counts();
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: u64 = delta.iter().sum();
    match (delta.last(), total) {
        (Some(&slow), 1..) => slow as f64 / total as f64,
        _ => 0.0,
    }
}

/// The cluster's pool, once discovery has applied its endpoints.
async fn pool(cluster: &SimCluster) -> Pool<SimBackend> {
    let pool = DiscoverLayer::new(cluster.source()).layer(cluster.connector());
    pool.applied(1).await;
    pool
}

/// A balancer with `strategy` over the cluster.
async fn balance<St: Strategy + Clone>(
    cluster: SimCluster,
    strategy: St,
    seed: u64,
) -> impl Service<(), Response = SimResponse, Error = crate::Error, Future: Send + 'static> + Clone
{
    BalanceLayer::new(strategy)
        .seed(seed)
        .layer(pool(&cluster).await)
}

/// Peak-EWMA over a failover view where answers slower than `within`
/// count as the endpoint's failures.
async fn failover(
    cluster: SimCluster,
    seed: u64,
    within: Duration,
) -> impl Service<(), Response = SimResponse, Error = crate::Error, Future: Send + 'static> + Clone
{
    let slow_is_failure = ClassifyFn(move |r: Result<&SimResponse, &SimError>| {
        r.map_or(true, |res| res.latency > within)
    });
    let view = FailoverLayer::new(FailoverConfig::new()).layer(pool(&cluster).await);
    view.applied(1).await;
    BalanceLayer::new(PeakEwma::new())
        .seed(seed)
        .classify(slow_is_failure)
        .layer(view)
}

/// Hedging at the recent p95 (at least 50 ms, at most `within`) over
/// `inner`.
fn hedge<S>(
    inner: S,
    seed: u64,
    within: Duration,
) -> impl Service<(), Response = SimResponse, Error = crate::Error, Future: Send + 'static>
where
    S: Service<(), Response = SimResponse, Error = crate::Error, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let min = Duration::from_millis(50);
    // A bound under 50 ms hedges at 50 ms.
    let hedge = Hedge::at_percentile(95.0, min, within.max(min));
    RetryLayer::new(RetryErrors::new().hedging())
        .hedge(hedge)
        .seed(seed)
        .layer(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for st in Stack::ALL {
            assert_eq!(st.name().parse::<Stack>(), Ok(st));
        }
        assert_eq!(
            "peak-ewma-failover-hedge".parse::<Stack>(),
            Ok(Stack::PeakEwmaFailoverHedge)
        );
        assert!(matches!(
            "nope".parse::<Stack>(),
            Err(InvalidSim::UnknownStack(s)) if s == "nope"
        ));
    }

    #[test]
    fn rejects_bad_parameters() {
        let mut sc = Scenario::beyond_round_robin();
        assert!(sc.validate().is_ok());
        sc.backends = 1;
        assert_eq!(sc.validate(), Err(InvalidSim::TooFewBackends(1)));
        let mut sc = Scenario::beyond_round_robin();
        sc.rate = 0.0;
        assert_eq!(sc.validate(), Err(InvalidSim::Rate(0.0)));
        let mut sc = Scenario::beyond_round_robin();
        sc.slow_factor = -1.0;
        assert_eq!(sc.validate(), Err(InvalidSim::SlowFactor(-1.0)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_bounds_every_request() {
        let ms = Duration::from_millis;
        let mut sc = Scenario::beyond_round_robin();
        sc.duration = ms(2000);
        sc.slow = ms(0)..ms(2000);
        sc.timeout = Some(ms(500));
        let run = sc.run(Stack::RoundRobin).await.unwrap();
        let timed_out = run.record.count(Outcome::TimedOut);
        // Round robin sends the slow backend every 11th request, and each
        // of those takes over 1.6 s.
        assert!((170..=190).contains(&timed_out), "{timed_out} timed out");
        assert_eq!(run.record.latencies().max(), Some(ms(500)));
        assert_eq!(run.slower(), timed_out);
        assert_eq!(run.record.count(Outcome::Ok), 2000 - timed_out);
        assert!(
            run.cluster.backends().all(|b| b.stats().in_flight == 0),
            "timed-out requests are cancelled"
        );
    }
}
