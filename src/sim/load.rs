//! An open-loop load driver.

use std::future::poll_fn;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tower_service::Service;

use super::{InvalidSim, LatencyRecorder, Outcome, Sample};

/// Open-loop load: requests at a fixed rate for a duration, each sent on
/// schedule whether or not earlier ones have answered, as independent
/// clients do.
///
/// A closed loop (N workers, each waiting for its answer) slows down when
/// the service does, and so hides the slowness it should measure
/// (coordinated omission). Here every request is sent at its due time and
/// its latency counts from that time, including any wait for the service
/// to become ready. Each request runs in its own task; with a timeout, an
/// unanswered request is cancelled at its deadline.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::sim::{Latency, OpenLoop, SimBackend};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let backend = SimBackend::builder("b", Latency::constant(Duration::from_millis(5)))
///     .build()
///     .unwrap();
/// let load = OpenLoop::new(100.0, Duration::from_secs(2)).unwrap();
/// let rec = load.run(backend, |_i| ()).await;
/// assert_eq!(rec.len(), 200);
/// assert_eq!(rec.latencies().max(), Some(Duration::from_millis(5)));
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct OpenLoop {
    rate: f64,
    duration: Duration,
    timeout: Option<Duration>,
}

impl OpenLoop {
    /// `rate` requests per second for `duration`. The rate must be finite
    /// and above zero.
    pub fn new(rate: f64, duration: Duration) -> Result<Self, InvalidSim> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(InvalidSim::Rate(rate));
        }
        Ok(OpenLoop {
            rate,
            duration,
            timeout: None,
        })
    }

    /// Cancels each request not answered within `timeout` of its due time
    /// and records it as [`Outcome::TimedOut`].
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How many requests a run sends: rate × duration, rounded.
    pub fn requests(&self) -> u64 {
        let n = (self.rate * self.duration.as_secs_f64()).round();
        if n >= u64::MAX as f64 {
            u64::MAX
        } else {
            n as u64
        }
    }

    /// When request `i` is due, from the start of the run.
    fn due(&self, i: u64) -> Duration {
        Duration::from_nanos((i as f64 * 1e9 / self.rate).round() as u64)
    }

    /// Runs the load through `service`, making request `i` with
    /// `request(i)`, and returns every request's sample in request order
    /// once all have ended. A response is [`Outcome::Ok`], an error
    /// [`Outcome::Failed`]. Needs a tokio runtime; under a paused clock a
    /// current-thread runtime makes the run repeatable.
    pub async fn run<S, Req, F>(&self, service: S, request: F) -> LatencyRecorder
    where
        S: Service<Req>,
        S::Future: Send + 'static,
        S::Response: Send + 'static,
        S::Error: Send + 'static,
        F: FnMut(u64) -> Req,
    {
        self.run_classified(service, request, |answer| match answer {
            Ok(_) => Outcome::Ok,
            Err(_) => Outcome::Failed,
        })
        .await
    }

    /// Like [`run`](OpenLoop::run), but `classify` turns each answer into
    /// its outcome: say, [`Outcome::TimedOut`] for the error of a timeout
    /// layer in the stack (`tower::timeout::error::Elapsed`).
    pub async fn run_classified<S, Req, F, C>(
        &self,
        mut service: S,
        mut request: F,
        classify: C,
    ) -> LatencyRecorder
    where
        S: Service<Req>,
        S::Future: Send + 'static,
        S::Response: Send + 'static,
        S::Error: Send + 'static,
        F: FnMut(u64) -> Req,
        C: Fn(Result<&S::Response, &S::Error>) -> Outcome + Clone + Send + 'static,
    {
        let n = self.requests();
        let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
        let start = Instant::now();
        for i in 0..n {
            let sent_at = self.due(i);
            // Only a run longer than the clock can count ends here.
            let Some(due) = start.checked_add(sent_at) else {
                break;
            };
            if Instant::now() < due {
                tokio::time::sleep_until(due).await;
            }
            let sample = |outcome| Sample::new(i, sent_at, due.elapsed(), outcome);
            if poll_fn(|cx| service.poll_ready(cx)).await.is_err() {
                let _ = tx.send(sample(Outcome::Failed));
                continue;
            }
            let fut = service.call(request(i));
            let tx = tx.clone();
            let classify = classify.clone();
            // A deadline past the clock's range is no deadline.
            let deadline = self.timeout.and_then(|t| due.checked_add(t));
            tokio::spawn(async move {
                let outcome = match deadline {
                    Some(deadline) => match tokio::time::timeout_at(deadline, fut).await {
                        Ok(answer) => classify(answer.as_ref()),
                        Err(_) => Outcome::TimedOut,
                    },
                    None => {
                        let answer = fut.await;
                        classify(answer.as_ref())
                    }
                };
                let _ = tx.send(Sample::new(i, sent_at, due.elapsed(), outcome));
            });
        }
        // Every task holds a sender: the channel closes when the last ends.
        drop(tx);
        let capacity = usize::try_from(n).unwrap_or(usize::MAX).min(1 << 20);
        let mut recorder = LatencyRecorder::with_capacity(capacity);
        while let Some(sample) = rx.recv().await {
            recorder.record(sample);
        }
        recorder.sort();
        recorder
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Fault, Latency, SimBackend};

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rejects_bad_rates() {
        for r in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(OpenLoop::new(r, ms(1)).is_err());
        }
        assert_eq!(
            OpenLoop::new(1000.0, ms(60_000)).unwrap().requests(),
            60_000
        );
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_keeps_sending_while_the_service_is_slow() {
        // Constant 1 s latency at 10 requests/s: a closed loop would send
        // one; the open loop sends all twenty on time.
        let b = SimBackend::builder("b", Latency::constant(ms(1000)))
            .build()
            .unwrap();
        let start = Instant::now();
        let rec = OpenLoop::new(10.0, ms(2000))
            .unwrap()
            .run(b.clone(), |_| ())
            .await;
        assert_eq!(rec.len(), 20);
        for (i, s) in rec.samples().iter().enumerate() {
            assert_eq!(s.index, i as u64);
            assert_eq!(s.sent_at, ms(100 * i as u64));
            assert_eq!(s.latency, ms(1000));
        }
        assert_eq!(start.elapsed(), ms(2900), "last sent at 1.9 s");
        assert_eq!(b.stats().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_and_failures_are_recorded() {
        let b = SimBackend::builder("b", Latency::constant(ms(50)))
            .fault(ms(0)..ms(100), Fault::Slow(10.0))
            .fault(ms(100)..ms(200), Fault::Fail)
            .build()
            .unwrap();
        let rec = OpenLoop::new(100.0, ms(300))
            .unwrap()
            .timeout(ms(200))
            .run(b.clone(), |_| ())
            .await;
        assert_eq!(rec.len(), 30);
        assert_eq!(rec.count(Outcome::TimedOut), 10);
        assert_eq!(rec.count(Outcome::Failed), 10);
        assert_eq!(rec.count(Outcome::Ok), 10);
        assert!(
            rec.samples()
                .iter()
                .filter(|s| s.outcome == Outcome::TimedOut)
                .all(|s| s.latency == ms(200))
        );
        assert_eq!(b.stats().in_flight, 0, "timed-out requests are cancelled");
    }
}
