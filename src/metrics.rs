//! Metrics through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`): whatever recorder the application installs
//! (`metrics-exporter-prometheus`, StatsD, …) receives them.
//!
//! A [`MetricsExporter`] reads a client's [`Status`] once per interval
//! (1 s by default) and turns it into counters and gauges, so the request
//! path does no metrics work at all: the counts it exports are the
//! atomics every request already updates. Every name starts with
//! `tower_lb_` and carries a `service` label
//! ([`PoolConfig::service`](crate::pool::PoolConfig::service), by default
//! the source's name). Labels per endpoint are opt-in
//! ([`MetricsConfig::per_endpoint`]) and capped, to bound cardinality.
//! `METRICS.md` lists every metric.
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

use std::collections::HashMap;
use std::time::Duration;

use ::metrics::{Label, counter, gauge};
use tokio::task::JoinHandle;

use crate::status::{EndpointState, Observe, Status};

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
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            interval: Duration::from_secs(1),
            per_endpoint: false,
            max_endpoints: 100,
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

    /// Exports per endpoint, for at most `max` endpoints.
    #[must_use]
    pub fn per_endpoint(mut self, max: usize) -> Self {
        self.per_endpoint = max > 0;
        self.max_endpoints = max;
        self
    }
}

/// What an endpoint looked like at the last export.
#[derive(Debug, Clone, Copy)]
struct Seen {
    successes: u64,
    failures: u64,
    times_ejected: u32,
    state: EndpointState,
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
        }
    }

    /// Exports `of`'s status every [`interval`](MetricsConfig::interval)
    /// on the current tokio runtime, until the returned task is dropped.
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
            loop {
                tick.tick().await;
                exporter.record(&of.status());
            }
        });
        ExportTask { task }
    }

    /// Exports one report to the recorder installed now.
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
        let mut seen = HashMap::with_capacity(status.endpoints.len());
        for (i, e) in status.endpoints.iter().enumerate() {
            let before = self.seen.get(&e.key).copied();
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
            let prior_ejections = before.map_or(0, |b| b.times_ejected);
            if e.times_ejected > prior_ejections {
                // The reason while it is out; one ejected and back within
                // one interval has none left to read.
                let reason = e.ejection_reason.map_or("unknown", |r| r.label());
                *ejected.entry(reason).or_default() += u64::from(e.times_ejected - prior_ejections);
            }
            if let Some(b) = before {
                if !b.state.in_rotation() && e.state.in_rotation() {
                    let from = match b.state {
                        EndpointState::Down => "down",
                        EndpointState::FailingChecks => "failing_checks",
                        _ => "ejected",
                    };
                    *readmitted.entry(from).or_default() += 1;
                }
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
                    times_ejected: e.times_ejected,
                    state: e.state,
                },
            );
        }
        self.seen = seen;

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
