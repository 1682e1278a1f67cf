//! Metrics through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`): whatever recorder the application installs
//! (`metrics-exporter-prometheus`, StatsD, …) receives them.
//!
//! A [`MetricsExporter`] reads a client's [`Status`] once per interval
//! (1 s by default) and turns it into counters, gauges and a histogram,
//! so the request path makes no call to the facade: the counts it exports
//! are the atomics every request already updates. Every name starts with
//! `tower_lb_` and carries a `service` label
//! ([`PoolConfig::service`](crate::pool::PoolConfig::service), by default
//! the source's name). Labels per endpoint are opt-in
//! ([`MetricsConfig::per_endpoint`]) and capped, to bound cardinality.
//! `METRICS.md` lists every metric.
//!
//! Latency is a histogram, `tower_lb_request_duration_seconds`: the
//! exporter has the pool keep one per endpoint
//! ([`Observe::record_latency`]), in buckets of atomics that a response
//! adds one to, and hands each interval's new counts to the recorder with
//! `Histogram::record_many`, each at its bucket's typical value (buckets
//! are at most 1.25× wide, finer than Prometheus's defaults). Above
//! [`MetricsConfig::latency_samples_per_second`] answers a second, a
//! strategy that does not time requests anyway times a random sample of
//! them, each counted for the answers it stands for. With
//! `metrics-exporter-prometheus`, set buckets for it
//! (`set_buckets_for_metric`) to get a Prometheus histogram rather than
//! its default summary.
//!
//! ```
//! use tower_lb::discover::Registry;
//! use tower_lb::http::Client;
//! use tower_lb::metrics::{MetricsConfig, MetricsExporter};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // Install the recorder first (metrics_exporter_prometheus, …).
//! let registry = Registry::new();
//! let client: Client = Client::builder().build(registry.watch("api").unwrap());
//! // Exports until `task` is dropped.
//! let task = MetricsExporter::spawn(client.clone(), MetricsConfig::new());
//! # drop(task);
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ::metrics::{Label, counter, gauge, histogram};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::failover::{EjectionReason, Transitions};
use crate::status::{EndpointState, EndpointStatus, LatencyBucket, Observe, Status};

/// How a [`MetricsExporter`] exports.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MetricsConfig {
    /// How often the status is read and exported. 1 s by default: a
    /// Prometheus scrape every 15 s sees values at most a second old.
    pub interval: Duration,
    /// Whether to export metrics per endpoint (label `endpoint`, its key).
    /// Off by default: an endpoint label multiplies series by the fleet's
    /// size.
    pub per_endpoint: bool,
    /// With [`per_endpoint`](Self::per_endpoint), at most this many
    /// endpoints get series of their own (the first in the pool's order);
    /// 100 by default.
    pub max_endpoints: usize,
    /// Whether to export the latency histogram. On by default; it has
    /// every endpoint keep a histogram (848 bytes each), and a balancer
    /// whose strategy does not time requests (all but Peak-EWMA) then
    /// reads the clock twice for each answer it times for it (see
    /// [`latency_samples_per_second`](Self::latency_samples_per_second)).
    pub latency_histograms: bool,
    /// With a strategy that does not time requests anyway (all but
    /// Peak-EWMA): below this many answers a second in all, on average
    /// over the interval, every answer is timed for the histograms; above,
    /// one in a power of two, chosen at random and counted that many
    /// times, so that between this many and twice as many are timed a
    /// second. 20 000 by default: a p99 over a minute then rests on at
    /// least 12 000 answers above it, the two clock reads a timed answer
    /// costs (30–40 ns on a 2-vCPU guest) are no longer paid on every
    /// request where requests are so frequent that they would add up, and
    /// the recorder, which takes one sample per answer timed, gets a
    /// bounded stream (Prometheus's timestamps and sketches every sample).
    /// `u32::MAX` times every answer.
    pub latency_samples_per_second: u32,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            interval: Duration::from_secs(1),
            per_endpoint: false,
            max_endpoints: 100,
            latency_histograms: true,
            latency_samples_per_second: 20_000,
        }
    }
}

impl MetricsConfig {
    /// The defaults (see [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// See [`interval`](Self::interval); zero is taken as 1 ms.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// See [`latency_histograms`](Self::latency_histograms).
    #[must_use]
    pub fn latency_histograms(mut self, on: bool) -> Self {
        self.latency_histograms = on;
        self
    }

    /// See [`latency_samples_per_second`](Self::latency_samples_per_second);
    /// zero is taken as 1.
    #[must_use]
    pub fn latency_samples_per_second(mut self, n: u32) -> Self {
        self.latency_samples_per_second = n.max(1);
        self
    }

    /// Exports per endpoint, for at most `max` endpoints.
    #[must_use]
    pub fn per_endpoint(mut self, max: usize) -> Self {
        self.per_endpoint = max > 0;
        self.max_endpoints = max;
        self
    }
}

/// What an endpoint looked like at the last export.
#[derive(Debug, Clone)]
struct Seen {
    successes: u64,
    failures: u64,
    transitions: Transitions,
    /// Its latency histogram's counts, by bucket start.
    latency: Vec<(u64, u64)>,
}

/// Turns [`Status`] reports into metrics; see [the module](self).
///
/// Counters stay monotonic across pool changes: what an endpoint did is
/// added as the difference from the last report, so one that leaves the
/// pool takes nothing back with it.
#[derive(Debug)]
pub struct MetricsExporter {
    config: MetricsConfig,
    seen: HashMap<String, Seen>,
    /// Answers counted by the last export.
    answers: u64,
    /// At least one answer in how many is handed to the recorder: what
    /// [`spawn`](Self::spawn) last had the client sample, which also thins
    /// what a strategy that times every answer (Peak-EWMA) counted.
    one_in: u64,
}

/// Exports until dropped (it aborts the task), as
/// [`MetricsExporter::spawn`] returns it.
#[derive(Debug)]
pub struct ExportTask {
    task: JoinHandle<()>,
}

impl Drop for ExportTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MetricsExporter {
    /// An exporter that has seen nothing yet.
    pub fn new(config: MetricsConfig) -> Self {
        MetricsExporter {
            config,
            seen: HashMap::new(),
            answers: 0,
            one_in: 1,
        }
    }

    /// Exports `of`'s status every [`interval`](MetricsConfig::interval)
    /// on the current tokio runtime, until the returned task is dropped.
    /// With [latency histograms](MetricsConfig::latency_histograms), it
    /// also has `of` keep them and, after each export, sets how many
    /// answers are timed for them from the interval's request rate
    /// ([`Observe::sample_latency`],
    /// [`MetricsConfig::latency_samples_per_second`]).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn<O>(of: O, config: MetricsConfig) -> ExportTask
    where
        O: Observe + Send + Sync + 'static,
    {
        let interval = config.interval;
        let mut exporter = MetricsExporter::new(config);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = Instant::now();
            loop {
                tick.tick().await;
                let histograms = exporter.config.latency_histograms;
                if histograms {
                    // Each time: it also catches endpoints that joined.
                    of.record_latency();
                }
                let status = of.status();
                exporter.record(&status);
                if histograms {
                    let now = Instant::now();
                    let one_in = sample_one_in(
                        exporter.answers,
                        now.saturating_duration_since(last),
                        exporter.config.latency_samples_per_second,
                    );
                    of.sample_latency(one_in);
                    exporter.one_in = u64::from(one_in);
                    last = now;
                }
            }
        });
        ExportTask { task }
    }

    /// Exports one report to the recorder installed now. Latency
    /// histograms are in the report only once its client keeps them
    /// ([`Observe::record_latency`], which [`spawn`](Self::spawn) calls).
    pub fn record(&mut self, status: &Status) {
        let service = Label::new("service", status.service.clone());
        let labels = |more: &[(&'static str, String)]| {
            let mut all = vec![service.clone()];
            all.extend(more.iter().map(|(k, v)| Label::new(*k, v.clone())));
            all
        };

        for state in EndpointState::ALL {
            let n = status.count(state);
            gauge!(
                "tower_lb_endpoints",
                labels(&[("state", state.as_str().into())])
            )
            .set(n as f64);
        }
        let in_flight: u64 = status.endpoints.iter().map(|e| e.in_flight).sum();
        gauge!("tower_lb_in_flight", labels(&[])).set(in_flight as f64);

        let mut successes = 0;
        let mut failures = 0;
        let mut readmitted: HashMap<&'static str, u64> = HashMap::new();
        let mut ejected: HashMap<&'static str, u64> = HashMap::new();
        // The new latency counts of all endpoints, by bucket start.
        let mut latency: BTreeMap<u64, (LatencyBucket, u64)> = BTreeMap::new();
        // The recorder gets one sample per answer timed, not per answer
        // it stands for, and no more than the sampling rate allows when
        // the strategy timed every answer.
        let one_in = u64::from(status.latency_one_in.unwrap_or(1))
            .max(self.one_in)
            .max(1);
        let mut seen = HashMap::with_capacity(status.endpoints.len());
        for (i, e) in status.endpoints.iter().enumerate() {
            let before = self.seen.get(&e.key);
            let new_latency = latency_since(e, before);
            for (b, n) in &new_latency {
                latency.entry(b.from_ns).or_insert((*b, 0)).1 += n;
            }
            // An endpoint whose counts went down is a new one under an old
            // key: all of its counts are new.
            let (ds, df) = match before {
                Some(b) if b.successes <= e.successes && b.failures <= e.failures => {
                    (e.successes - b.successes, e.failures - b.failures)
                }
                _ => (e.successes, e.failures),
            };
            successes += ds;
            failures += df;
            // What changed since the last report, from counts that only
            // grow: all of them for an endpoint not seen, or whose counts
            // went down (a new one under an old key).
            let (now, was) = (e.transitions, before.map(|b| b.transitions));
            let was = was
                .filter(|w| transitions_grew(w, &now))
                .unwrap_or_default();
            for reason in EjectionReason::ALL {
                *ejected.entry(reason.label()).or_default() +=
                    u64::from(now.ejections(reason) - was.ejections(reason));
            }
            for (from, n, m) in [
                ("ejected", now.back_from_ejection, was.back_from_ejection),
                ("down", now.back_from_down, was.back_from_down),
                (
                    "failing_checks",
                    now.back_from_failing_checks,
                    was.back_from_failing_checks,
                ),
            ] {
                *readmitted.entry(from).or_default() += u64::from(n - m);
            }
            if self.config.per_endpoint && i < self.config.max_endpoints {
                let ep = |more: &[(&'static str, String)]| {
                    let mut all = labels(&[("endpoint", e.key.clone())]);
                    all.extend(more.iter().map(|(k, v)| Label::new(*k, v.clone())));
                    all
                };
                counter!(
                    "tower_lb_endpoint_requests_total",
                    ep(&[("outcome", "success".into())])
                )
                .increment(ds);
                counter!(
                    "tower_lb_endpoint_requests_total",
                    ep(&[("outcome", "failure".into())])
                )
                .increment(df);
                gauge!("tower_lb_endpoint_in_flight", ep(&[])).set(e.in_flight as f64);
                if let Some(ms) = e.latency_ms {
                    gauge!("tower_lb_endpoint_latency_seconds", ep(&[])).set(ms / 1e3);
                }
                gauge!("tower_lb_endpoint_weight_factor", ep(&[])).set(e.weight_factor);
                let h = histogram!("tower_lb_endpoint_request_duration_seconds", ep(&[]));
                for (b, n) in &new_latency {
                    h.record_many(b.typical().as_secs_f64(), samples(*n, one_in));
                }
                for state in EndpointState::ALL {
                    let on = f64::from(u8::from(e.state == state));
                    gauge!(
                        "tower_lb_endpoint_state",
                        ep(&[("state", state.as_str().into())])
                    )
                    .set(on);
                }
            }
            seen.insert(
                e.key.clone(),
                Seen {
                    successes: e.successes,
                    failures: e.failures,
                    transitions: e.transitions,
                    latency: e.latency_histogram.as_ref().map_or_else(Vec::new, |h| {
                        h.buckets.iter().map(|b| (b.from_ns, b.count)).collect()
                    }),
                },
            );
        }
        self.seen = seen;
        if !latency.is_empty() {
            let h = histogram!("tower_lb_request_duration_seconds", labels(&[]));
            for (b, n) in latency.values() {
                h.record_many(b.typical().as_secs_f64(), samples(*n, one_in));
            }
        }

        counter!(
            "tower_lb_requests_total",
            labels(&[("outcome", "success".into())])
        )
        .increment(successes);
        counter!(
            "tower_lb_requests_total",
            labels(&[("outcome", "failure".into())])
        )
        .increment(failures);
        self.answers = successes + failures;
        if let Some(n) = status.latency_one_in {
            gauge!("tower_lb_latency_one_in", labels(&[])).set(f64::from(n));
        }
        if let Some(strategy) = &status.strategy {
            counter!(
                "tower_lb_picks_total",
                labels(&[("strategy", strategy.clone())])
            )
            .increment(successes + failures);
        }
        for (reason, n) in ejected {
            counter!(
                "tower_lb_ejections_total",
                labels(&[("reason", reason.into())])
            )
            .increment(n);
        }
        for (from, n) in readmitted {
            counter!(
                "tower_lb_readmissions_total",
                labels(&[("from", from.into())])
            )
            .increment(n);
        }

        if status.failover {
            counter!("tower_lb_downs_total", labels(&[])).absolute(status.downs);
            gauge!("tower_lb_panic", labels(&[])).set(f64::from(u8::from(status.panic)));
        }
        for t in &status.tiers {
            let tier = labels(&[("tier", t.priority.to_string())]);
            gauge!("tower_lb_tier_health_percent", tier.clone()).set(t.health_percent);
            if let Some(load) = t.load_percent {
                gauge!("tower_lb_tier_load_percent", tier).set(load);
            }
        }

        let d = &status.discovery;
        for (result, n) in [
            ("applied", d.updates_applied),
            ("stale", d.stale_ignored),
            ("empty_ignored", d.empty_ignored),
        ] {
            counter!(
                "tower_lb_discovery_updates_total",
                labels(&[("result", result.into())])
            )
            .absolute(n);
        }
        counter!("tower_lb_discovery_errors_total", labels(&[])).absolute(d.errors);
        counter!("tower_lb_connect_failures_total", labels(&[])).absolute(d.connect_failures);
        gauge!("tower_lb_discovery_revision", labels(&[]))
            .set(d.applied_revision.unwrap_or(0) as f64);
        gauge!("tower_lb_discovery_ended", labels(&[])).set(f64::from(u8::from(d.ended)));
        if let Some(lag) = d.revision_lag() {
            gauge!("tower_lb_discovery_revision_lag", labels(&[])).set(lag as f64);
        }

        if let Some(r) = &status.retry {
            counter!("tower_lb_client_requests_total", labels(&[])).absolute(r.requests);
            counter!("tower_lb_retries_total", labels(&[])).absolute(r.retries);
            counter!("tower_lb_hedges_total", labels(&[])).absolute(r.hedges);
            counter!("tower_lb_retry_budget_exhausted_total", labels(&[]))
                .absolute(r.budget_exhausted);
            counter!("tower_lb_deadlines_exceeded_total", labels(&[]))
                .absolute(r.deadlines_exceeded);
            gauge!("tower_lb_retry_budget_available", labels(&[])).set(r.budget_available);
        }
    }
}

/// What a recorder is handed for `answers` counted in a bucket while one
/// in `one_in` is sampled: one sample per answer timed, `answers /
/// one_in`. What does not divide (counts made while the sampling changed,
/// or by a strategy that timed every answer) is rounded up or down at
/// random in proportion, so that no bucket, however rare, is rounded away
/// on average.
fn samples(answers: u64, one_in: u64) -> usize {
    let one_in = one_in.max(1);
    let (whole, rest) = (answers / one_in, answers % one_in);
    let up = rest > 0 && rand::random_range(0..one_in) < rest;
    usize::try_from(whole + u64::from(up)).unwrap_or(usize::MAX)
}

/// One answer in how many to time for the latency histograms, so that at
/// least `per_second` are timed a second, given `answers` over `elapsed`;
/// 1 (every answer) below that rate.
fn sample_one_in(answers: u64, elapsed: Duration, per_second: u32) -> u32 {
    let secs = elapsed.as_secs_f64();
    if per_second == u32::MAX || secs <= 0.0 {
        return 1;
    }
    let rate = answers as f64 / secs;
    // Saturates; `Pool::sample_latency` caps it.
    (rate / f64::from(per_second.max(1))).max(1.0) as u32
}

/// The buckets of `e`'s latency histogram with the answers counted since
/// `before` (all of them for an endpoint not seen, or one whose counts went
/// down: a new endpoint under an old key). Both lists are in bucket order.
fn latency_since(e: &EndpointStatus, before: Option<&Seen>) -> Vec<(LatencyBucket, u64)> {
    let Some(h) = &e.latency_histogram else {
        return Vec::new();
    };
    let prior: &[(u64, u64)] = before.map_or(&[], |b| &b.latency);
    // Each earlier count matched with the bucket that has it now.
    let mut now = h.buckets.iter().peekable();
    let mut matched = Vec::with_capacity(prior.len());
    for &(from, n) in prior {
        while now.next_if(|b| b.from_ns < from).is_some() {}
        match now.peek() {
            Some(b) if b.from_ns == from && b.count >= n => matched.push((from, n)),
            _ => {
                matched.clear();
                break;
            }
        }
    }
    let reset = matched.len() < prior.len();
    let mut earlier = matched.iter().peekable();
    h.buckets
        .iter()
        .map(|b| {
            let was = match earlier.next_if(|(from, _)| *from == b.from_ns) {
                Some((_, n)) if !reset => *n,
                _ => 0,
            };
            (*b, b.count - was)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Whether every count of `now` is at least that of `was`: the same
/// endpoint, later.
fn transitions_grew(was: &Transitions, now: &Transitions) -> bool {
    let pairs = [
        (
            was.ejected_consecutive_failures,
            now.ejected_consecutive_failures,
        ),
        (
            was.ejected_failure_percentage,
            now.ejected_failure_percentage,
        ),
        (was.ejected_failed_trial, now.ejected_failed_trial),
        (was.back_from_ejection, now.back_from_ejection),
        (was.down, now.down),
        (was.back_from_down, now.back_from_down),
        (was.failing_checks, now.failing_checks),
        (was.back_from_failing_checks, now.back_from_failing_checks),
    ];
    pairs.iter().all(|(w, n)| w <= n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_sampled_only_above_the_rate_asked_for() {
        let s = Duration::from_secs(1);
        assert_eq!(sample_one_in(0, s, 20_000), 1);
        assert_eq!(sample_one_in(20_000, s, 20_000), 1);
        assert_eq!(sample_one_in(39_999, s, 20_000), 1);
        assert_eq!(sample_one_in(40_000, s, 20_000), 2);
        assert_eq!(sample_one_in(20_000_000, s, 20_000), 1_000);
        assert_eq!(sample_one_in(20_000_000, 2 * s, 20_000), 500);
        assert_eq!(sample_one_in(u64::MAX, s, 1), u32::MAX, "saturates");
        assert_eq!(sample_one_in(20_000_000, s, u32::MAX), 1, "exact");
        assert_eq!(sample_one_in(20_000_000, Duration::ZERO, 20_000), 1);
    }

    #[test]
    fn a_recorder_gets_one_sample_per_answer_timed() {
        assert_eq!(samples(40, 1), 40);
        assert_eq!(samples(40, 8), 5);
        assert_eq!(samples(0, 8), 0);
        assert!((5..=6).contains(&samples(44, 8)));
        assert_eq!(samples(u64::MAX, 1), usize::MAX);
        // A rare bucket is handed on in proportion, not rounded away.
        let n: usize = (0..8_000).map(|_| samples(3, 8)).sum();
        assert!((2_700..3_300).contains(&n), "{n} for 3 000 expected");
    }
}
