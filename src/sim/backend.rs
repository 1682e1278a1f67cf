//! A simulated backend: a `Service` that answers after a drawn latency.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::RngCore;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower_service::Service;

use super::latency::{from_nanos_f64, unit};
use super::{Fault, FaultSchedule, InvalidSim, Latency, SimError};
use crate::PickRng;

/// A simulated backend: a `tower::Service` for any request type that
/// answers after a latency drawn from its [`Latency`] distribution, fails
/// at its error rate, serves at most its concurrency limit at once
/// (others queue, first come first served) and suffers its scheduled
/// [`Fault`]s.
///
/// Time is tokio's: under a paused clock (`tokio::time::pause`,
/// `#[tokio::test(start_paused = true)]`) the runtime skips ahead whenever
/// every task waits on a timer, so a simulated minute takes about as long
/// as the work it holds. Randomness comes from one seeded generator per
/// backend, shared by its clones, so a single-threaded run is repeatable.
///
/// Clones share everything (one `Arc`): hand a clone to a connector per
/// endpoint and read [`stats`](SimBackend::stats) from another.
///
/// ```
/// use std::time::Duration;
/// use tower::ServiceExt;
/// use tower_lb::sim::{Fault, Latency, SimBackend};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let s = Duration::from_secs;
/// let backend = SimBackend::builder("db", Latency::constant(Duration::from_millis(20)))
///     .fault(s(10)..s(20), Fault::Slow(10.0))
///     .seed(7)
///     .build()
///     .unwrap();
/// let res = backend.clone().oneshot(()).await.unwrap();
/// assert_eq!(res.latency, Duration::from_millis(20));
/// tokio::time::sleep(s(10)).await;
/// let res = backend.clone().oneshot(()).await.unwrap();
/// assert_eq!(res.latency, Duration::from_millis(200));
/// assert_eq!(backend.stats().succeeded, 2);
/// # }
/// ```
#[derive(Clone)]
pub struct SimBackend {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    latency: Latency,
    error_rate: f64,
    limit: Option<Arc<Semaphore>>,
    faults: FaultSchedule,
    origin: Instant,
    rng: PickRng,
    received: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    in_flight: AtomicU64,
}

impl fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("SimBackend")
            .field("name", &i.name)
            .field("latency", &i.latency)
            .field("error_rate", &i.error_rate)
            .field("concurrency", &i.limit.as_ref().map(|_| ".."))
            .field("faults", &i.faults)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Builds a [`SimBackend`]; see [`SimBackend::builder`].
#[derive(Debug, Clone)]
pub struct SimBackendBuilder {
    name: String,
    latency: Latency,
    error_rate: f64,
    concurrency: Option<usize>,
    faults: Vec<(Range<Duration>, Fault)>,
    origin: Option<Instant>,
    seed: Option<u64>,
}

/// A simulated backend's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Requests called, whatever became of them.
    pub received: u64,
    /// Requests answered with a response.
    pub succeeded: u64,
    /// Requests answered with [`SimError::Failed`].
    pub failed: u64,
    /// Requests refused at once with [`SimError::Down`].
    pub refused: u64,
    /// Requests queued or being served now.
    pub in_flight: u64,
}

/// A simulated backend's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimResponse {
    /// The backend's name.
    pub backend: Arc<str>,
    /// From `call` to the answer: queueing for a concurrency slot plus the
    /// drawn (and possibly slowed) latency.
    pub latency: Duration,
}

/// A 64-bit FNV-1a hash: a default seed that differs by name.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl SimBackend {
    /// A backend named `name` (its endpoint key in a
    /// [`SimCluster`](super::SimCluster)) with latency `latency`, no
    /// errors, no concurrency limit and no faults.
    pub fn builder(name: impl Into<String>, latency: Latency) -> SimBackendBuilder {
        SimBackendBuilder {
            name: name.into(),
            latency,
            error_rate: 0.0,
            concurrency: None,
            faults: Vec::new(),
            origin: None,
            seed: None,
        }
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The instant its fault windows are measured from.
    pub fn origin(&self) -> Instant {
        self.inner.origin
    }

    /// Its counters now.
    pub fn stats(&self) -> SimStats {
        let i = &self.inner;
        SimStats {
            received: i.received.load(Relaxed),
            succeeded: i.succeeded.load(Relaxed),
            failed: i.failed.load(Relaxed),
            refused: i.refused.load(Relaxed),
            in_flight: i.in_flight.load(Relaxed),
        }
    }

    /// The fault in force now, if any.
    pub fn fault_now(&self) -> Option<Fault> {
        self.inner
            .faults
            .at(Instant::now().saturating_duration_since(self.inner.origin))
    }
}

impl SimBackendBuilder {
    /// The share of requests that fail (after their latency), in `[0, 1]`.
    #[must_use]
    pub fn error_rate(mut self, rate: f64) -> Self {
        self.error_rate = rate;
        self
    }

    /// Serves at most `n` requests at once; the rest wait in line.
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// Adds a fault for a window of time after the origin (see
    /// [`FaultSchedule`] for how overlapping windows combine).
    #[must_use]
    pub fn fault(mut self, window: Range<Duration>, fault: Fault) -> Self {
        self.faults.push((window, fault));
        self
    }

    /// Measures fault windows from `origin` instead of from when the
    /// backend is built; give every backend of a scenario the same one.
    #[must_use]
    pub fn origin(mut self, origin: Instant) -> Self {
        self.origin = Some(origin);
        self
    }

    /// Seeds the backend's random draws (latencies and errors). Without a
    /// seed, the seed is derived from the name, so runs still repeat.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validates the parameters and builds the backend.
    pub fn build(self) -> Result<SimBackend, InvalidSim> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(InvalidSim::Probability(self.error_rate));
        }
        let limit = match self.concurrency {
            Some(0) => return Err(InvalidSim::ZeroConcurrency),
            Some(n) => Some(Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)))),
            None => None,
        };
        let mut faults = FaultSchedule::new();
        for (window, fault) in self.faults {
            faults = faults.with(window, fault)?;
        }
        let seed = self.seed.unwrap_or_else(|| fnv1a(&self.name));
        Ok(SimBackend {
            inner: Arc::new(Inner {
                name: self.name.into(),
                latency: self.latency,
                error_rate: self.error_rate,
                limit,
                faults,
                origin: self.origin.unwrap_or_else(Instant::now),
                rng: PickRng::seeded(seed),
                received: AtomicU64::new(0),
                succeeded: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                in_flight: AtomicU64::new(0),
            }),
        })
    }
}

/// Draws from a backend's shared generator.
struct Draws<'a>(&'a PickRng);

impl RngCore for Draws<'_> {
    fn next_u32(&mut self) -> u32 {
        (self.0.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.0.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Counts a request as in flight until it is answered or dropped.
struct InFlight(Arc<Inner>);

impl InFlight {
    fn start(inner: Arc<Inner>) -> Self {
        inner.in_flight.fetch_add(1, Relaxed);
        InFlight(inner)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

type Answer = Result<SimResponse, SimError>;

/// The future of a [`SimBackend`] request.
pub struct ResponseFuture {
    state: State,
}

enum State {
    Done(Option<Answer>),
    Waiting(Pin<Box<dyn Future<Output = Answer> + Send>>),
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Done(_) => "done",
            State::Waiting(_) => "waiting",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl Future for ResponseFuture {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        match &mut self.state {
            State::Done(answer) => match answer.take() {
                Some(a) => Poll::Ready(a),
                // Polled again after completion: stay pending rather than
                // panic.
                None => Poll::Pending,
            },
            State::Waiting(fut) => fut.as_mut().poll(cx),
        }
    }
}

impl<Req> Service<Req> for SimBackend {
    type Response = SimResponse;
    type Error = SimError;
    type Future = ResponseFuture;

    /// Always ready: a backend at its concurrency limit queues requests.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), SimError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Req) -> ResponseFuture {
        let inner = &self.inner;
        inner.received.fetch_add(1, Relaxed);
        let arrived = Instant::now();
        let fault = inner
            .faults
            .at(arrived.saturating_duration_since(inner.origin));
        if fault == Some(Fault::Down) {
            inner.refused.fetch_add(1, Relaxed);
            return ResponseFuture {
                state: State::Done(Some(Err(SimError::Down {
                    backend: inner.name.clone(),
                }))),
            };
        }
        // Draw now, in call order, so a run repeats whatever order the
        // answers come back in.
        let mut rng = Draws(&inner.rng);
        let mut latency = inner.latency.sample(&mut rng);
        if let Some(Fault::Slow(factor)) = fault {
            latency = from_nanos_f64(latency.as_nanos() as f64 * factor);
        }
        let fails = fault == Some(Fault::Fail)
            || (inner.error_rate > 0.0 && unit(&mut rng) < inner.error_rate);
        let guard = InFlight::start(inner.clone());
        ResponseFuture {
            state: State::Waiting(Box::pin(async move {
                let inner = &guard.0;
                // The permit is held until the answer; a closed semaphore
                // cannot happen (it is never closed), so serve without one.
                let _permit = match &inner.limit {
                    Some(limit) => limit.clone().acquire_owned().await.ok(),
                    None => None,
                };
                tokio::time::sleep(latency).await;
                if fails {
                    inner.failed.fetch_add(1, Relaxed);
                    Err(SimError::Failed {
                        backend: inner.name.clone(),
                    })
                } else {
                    inner.succeeded.fetch_add(1, Relaxed);
                    Ok(SimResponse {
                        backend: inner.name.clone(),
                        latency: arrived.elapsed(),
                    })
                }
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_limit_queues() {
        let b = SimBackend::builder("b", Latency::constant(ms(10)))
            .concurrency(2)
            .build()
            .unwrap();
        let calls: Vec<_> = (0..5).map(|_| b.clone().oneshot(())).collect();
        let answers = futures_join(calls).await;
        let mut latencies: Vec<_> = answers.into_iter().map(|a| a.unwrap().latency).collect();
        latencies.sort();
        assert_eq!(latencies, [ms(10), ms(10), ms(20), ms(20), ms(30)]);
        assert_eq!(b.stats().in_flight, 0);
        assert_eq!(b.stats().succeeded, 5);
    }

    async fn futures_join<F: Future + Send + 'static>(futs: Vec<F>) -> Vec<F::Output>
    where
        F::Output: Send,
    {
        let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn faults_follow_the_schedule() {
        let s = Duration::from_secs;
        let b = SimBackend::builder("b", Latency::constant(ms(10)))
            .fault(s(1)..s(2), Fault::Slow(3.0))
            .fault(s(2)..s(3), Fault::Fail)
            .fault(s(3)..s(4), Fault::Down)
            .build()
            .unwrap();
        let start = Instant::now();
        let at = |t| tokio::time::sleep_until(start + t);
        assert_eq!(b.clone().oneshot(()).await.unwrap().latency, ms(10));
        at(s(1)).await;
        assert_eq!(b.fault_now(), Some(Fault::Slow(3.0)));
        assert_eq!(b.clone().oneshot(()).await.unwrap().latency, ms(30));
        at(s(2)).await;
        let t = Instant::now();
        assert!(matches!(
            b.clone().oneshot(()).await,
            Err(SimError::Failed { .. })
        ));
        assert_eq!(t.elapsed(), ms(10), "a failure takes its latency");
        at(s(3)).await;
        let t = Instant::now();
        assert!(matches!(
            b.clone().oneshot(()).await,
            Err(SimError::Down { .. })
        ));
        assert_eq!(t.elapsed(), Duration::ZERO, "down refuses at once");
        at(s(4)).await;
        assert_eq!(b.clone().oneshot(()).await.unwrap().latency, ms(10));
        let st = b.stats();
        assert_eq!(
            (st.received, st.succeeded, st.failed, st.refused),
            (5, 3, 1, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn error_rate_is_seeded() {
        let run = |seed| async move {
            let b = SimBackend::builder("b", Latency::constant(ms(1)))
                .error_rate(0.25)
                .seed(seed)
                .build()
                .unwrap();
            let mut fails = Vec::new();
            for _ in 0..2000 {
                fails.push(b.clone().oneshot(()).await.is_err());
            }
            fails
        };
        let a = run(1).await;
        assert_eq!(a, run(1).await);
        assert_ne!(a, run(2).await);
        let n = a.iter().filter(|&&f| f).count();
        assert!((400..600).contains(&n), "{n} failures of 2000 at 25 %");
    }

    #[test]
    fn builder_rejects_bad_parameters() {
        let l = Latency::constant(ms(1));
        assert!(
            SimBackend::builder("b", l.clone())
                .error_rate(1.5)
                .build()
                .is_err()
        );
        assert!(
            SimBackend::builder("b", l.clone())
                .concurrency(0)
                .build()
                .is_err()
        );
        assert!(
            SimBackend::builder("b", l)
                .fault(ms(5)..ms(1), Fault::Fail)
                .build()
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_requests_leave_no_in_flight() {
        let b = SimBackend::builder("b", Latency::constant(ms(100)))
            .build()
            .unwrap();
        let r = tokio::time::timeout(ms(10), b.clone().oneshot(())).await;
        assert!(r.is_err());
        assert_eq!(b.stats().in_flight, 0);
        assert_eq!(b.stats().received, 1);
    }
}
