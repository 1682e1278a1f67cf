//! The `metrics` feature through metrics-util's debugging recorder, over
//! `http::Client` and real backends on loopback: a backend that answers
//! 503 is ejected, then recovers and is re-admitted, and the counters,
//! gauges and labels follow; the latency histogram counts each answer once,
//! in a bucket that holds its latency. Every request is bounded in time.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::StatusCode;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::time::{Instant, timeout};
use tower_lb::balance::{RoundRobin, Strategy};
use tower_lb::discover::Registry;
use tower_lb::http::{Client, ClientBuilder};
use tower_lb::metrics::{MetricsConfig, MetricsExporter};
use tower_lb::status::{EndpointState, Observe, Status};

use support::{Backend, client_get};

const SERVICE: &str = "api";

/// One snapshot of the recorder: the debugging recorder's snapshot takes
/// the values (counters read as what was added since the last one).
type Snap = Vec<(String, Vec<(String, String)>, f64)>;

fn take(snapshotter: &Snapshotter) -> Snap {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, v)| {
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort_unstable();
            let v = match v {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(h) => h.len() as f64,
            };
            (key.name().to_owned(), labels, v)
        })
        .collect()
}

/// The value of the one series named `name` whose labels are exactly
/// `service="api"` and `labels`.
fn value(snap: &Snap, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = [("service", SERVICE)]
        .iter()
        .chain(labels)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    want.sort_unstable();
    let found: Vec<f64> = snap
        .iter()
        .filter(|(n, l, _)| n == name && *l == want)
        .map(|(.., v)| *v)
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?}: {found:?}");
    found.first().copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejection_and_a_readmission_move_the_counters_gauges_and_labels() {
    let good = Backend::start("good").await.unwrap();
    let bad = Backend::start("bad").await.unwrap();
    bad.set_status(StatusCode::SERVICE_UNAVAILABLE);
    let registry = Registry::new();
    let _r = [
        registry.register(SERVICE, good.endpoint()).unwrap(),
        registry.register(SERVICE, bad.endpoint()).unwrap(),
    ];
    let client: Client = Client::builder().build(registry.watch(SERVICE).unwrap());
    timeout(Duration::from_secs(5), client.balance().pool().changed(0))
        .await
        .unwrap();
    let bad_key = bad.endpoint().key().to_owned();

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mut exporter = MetricsExporter::new(MetricsConfig::new().per_endpoint(10));
    let export = |exporter: &mut MetricsExporter| {
        let status = client.status();
        metrics::with_local_recorder(&recorder, || exporter.record(&status));
        (status, take(&snapshotter))
    };
    let s = |v: &'static str| [("state", v)];
    let (_, snap) = export(&mut exporter);
    assert_eq!(
        value(&snap, "tower_lb_discovery_revision_lag", &[]),
        Some(0.0),
        "a registry watch can tell"
    );

    // Before any traffic: two healthy endpoints, nothing counted.
    let (_, snap) = export(&mut exporter);
    assert_eq!(value(&snap, "tower_lb_endpoints", &s("healthy")), Some(2.0));
    assert_eq!(value(&snap, "tower_lb_endpoints", &s("ejected")), Some(0.0));
    assert_eq!(
        value(&snap, "tower_lb_requests_total", &[("outcome", "failure")]),
        Some(0.0)
    );

    // Traffic until the 503 backend is ejected; every request is answered
    // 200 (retried on the good one).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0u64;
    while client.status().endpoint(&bad_key).unwrap().state != EndpointState::Ejected {
        assert!(
            Instant::now() < deadline,
            "not ejected after {sent} requests"
        );
        assert_eq!(client_get(&client).await, StatusCode::OK);
        sent += 1;
    }
    let (status, snap) = export(&mut exporter);
    assert_eq!(
        value(&snap, "tower_lb_endpoints", &s("ejected")),
        Some(1.0),
        "{status}"
    );
    assert_eq!(
        value(&snap, "tower_lb_endpoints", &s("healthy")),
        Some(1.0),
        "{status}"
    );
    assert_eq!(
        value(
            &snap,
            "tower_lb_ejections_total",
            &[("reason", "consecutive_failures")]
        ),
        Some(1.0),
        "{status}"
    );
    let failures = value(&snap, "tower_lb_requests_total", &[("outcome", "failure")]);
    assert_eq!(failures, Some(5.0), "five 503s in a row eject: {status}");
    let per_bad = [("endpoint", bad_key.as_str()), ("outcome", "failure")];
    assert_eq!(
        value(&snap, "tower_lb_endpoint_requests_total", &per_bad),
        Some(5.0)
    );
    let bad_ejected = [("endpoint", bad_key.as_str()), ("state", "ejected")];
    assert_eq!(
        value(&snap, "tower_lb_endpoint_state", &bad_ejected),
        Some(1.0)
    );
    let client_requests = value(&snap, "tower_lb_client_requests_total", &[]);
    assert_eq!(client_requests, Some(sent as f64));
    assert_eq!(value(&snap, "tower_lb_retries_total", &[]), Some(5.0));
    assert!(value(&snap, "tower_lb_retry_budget_available", &[]).unwrap() > 0.0);
    assert_eq!(
        value(&snap, "tower_lb_tier_load_percent", &[("tier", "0")]),
        Some(100.0)
    );
    assert_eq!(value(&snap, "tower_lb_panic", &[]), Some(0.0));
    assert_eq!(
        value(
            &snap,
            "tower_lb_discovery_updates_total",
            &[("result", "applied")]
        ),
        Some(1.0)
    );
    let picks = value(
        &snap,
        "tower_lb_picks_total",
        &[("strategy", "p2c_peak_ewma")],
    );
    assert_eq!(picks, Some((sent + 5) as f64), "every attempt was a pick");

    // The backend recovers: its trial request passes and it is back.
    bad.set_status(StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.status().endpoint(&bad_key).unwrap().state != EndpointState::Healthy {
        assert!(
            Instant::now() < deadline,
            "not re-admitted:\n{}",
            client.status()
        );
        assert_eq!(client_get(&client).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, snap) = export(&mut exporter);
    assert_eq!(
        value(&snap, "tower_lb_endpoints", &s("healthy")),
        Some(2.0),
        "{status}"
    );
    assert_eq!(
        value(&snap, "tower_lb_endpoints", &s("ejected")),
        Some(0.0),
        "{status}"
    );
    assert_eq!(
        value(&snap, "tower_lb_readmissions_total", &[("from", "ejected")]),
        Some(1.0),
        "{status}"
    );
    let bad_healthy = [("endpoint", bad_key.as_str()), ("state", "healthy")];
    assert_eq!(
        value(&snap, "tower_lb_endpoint_state", &bad_healthy),
        Some(1.0)
    );
    assert_eq!(
        value(&snap, "tower_lb_endpoint_state", &bad_ejected),
        Some(0.0)
    );
    let per_bad_ok = [("endpoint", bad_key.as_str()), ("outcome", "success")];
    assert!(value(&snap, "tower_lb_endpoint_requests_total", &per_bad_ok).unwrap() >= 1.0);
}

/// An endpoint ejected and back between two exports is still counted: one
/// ejection with its reason and one re-admission (the exporter reads counts
/// that only grow, not the state at each export).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejection_and_return_between_two_exports_are_both_counted() {
    let good = Backend::start("good").await.unwrap();
    let bad = Backend::start("bad").await.unwrap();
    let registry = Registry::new();
    let _r = [
        registry.register(SERVICE, good.endpoint()).unwrap(),
        registry.register(SERVICE, bad.endpoint()).unwrap(),
    ];
    let client: Client = Client::builder().build(registry.watch(SERVICE).unwrap());
    timeout(Duration::from_secs(5), client.balance().pool().changed(0))
        .await
        .unwrap();
    let bad_key = bad.endpoint().key().to_owned();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mut exporter = MetricsExporter::new(MetricsConfig::new());
    let mut export = || {
        let status = client.status();
        metrics::with_local_recorder(&recorder, || exporter.record(&status));
        (status, take(&snapshotter))
    };
    let (status, snap) = export();
    assert_eq!(
        value(
            &snap,
            "tower_lb_ejections_total",
            &[("reason", "consecutive_failures")]
        ),
        Some(0.0),
        "{status}"
    );

    bad.set_status(StatusCode::SERVICE_UNAVAILABLE);
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.status().endpoint(&bad_key).unwrap().state != EndpointState::Ejected {
        assert!(Instant::now() < deadline, "not ejected");
        assert_eq!(client_get(&client).await, StatusCode::OK);
    }
    bad.set_status(StatusCode::OK);
    while client.status().endpoint(&bad_key).unwrap().state != EndpointState::Healthy {
        assert!(Instant::now() < deadline, "not back:\n{}", client.status());
        assert_eq!(client_get(&client).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, snap) = export();
    let t = status.endpoint(&bad_key).unwrap().transitions;
    assert_eq!(
        (t.ejected_consecutive_failures, t.back_from_ejection),
        (1, 1),
        "{t:?}"
    );
    assert_eq!(
        value(
            &snap,
            "tower_lb_ejections_total",
            &[("reason", "consecutive_failures")]
        ),
        Some(1.0),
        "{status}"
    );
    assert_eq!(
        value(&snap, "tower_lb_readmissions_total", &[("from", "ejected")]),
        Some(1.0),
        "{status}"
    );
    assert_eq!(
        value(&snap, "tower_lb_endpoints", &[("state", "healthy")]),
        Some(2.0)
    );
    // Nothing happened since: nothing more is counted.
    let (status, snap) = export();
    assert_eq!(
        value(
            &snap,
            "tower_lb_ejections_total",
            &[("reason", "consecutive_failures")]
        ),
        Some(0.0),
        "{status}"
    );
    assert_eq!(
        value(&snap, "tower_lb_readmissions_total", &[("from", "ejected")]),
        Some(0.0),
        "{status}"
    );
}

/// Without `per_endpoint`, no series has an `endpoint` label; with a cap,
/// only that many endpoints get series.
#[tokio::test]
async fn endpoint_labels_are_opt_in_and_capped() {
    let registry = Registry::new();
    let _r: Vec<_> = (0..5)
        .map(|i| {
            let addr = format!("127.0.0.1:{}", 9100 + i).parse().unwrap();
            registry
                .register(SERVICE, tower_lb::Endpoint::new(addr))
                .unwrap()
        })
        .collect();
    let client: Client = Client::builder().build(registry.watch(SERVICE).unwrap());
    timeout(Duration::from_secs(5), client.balance().pool().changed(0))
        .await
        .unwrap();
    let status = client.status();
    let endpoints_labelled = |config: MetricsConfig| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let mut exporter = MetricsExporter::new(config);
        metrics::with_local_recorder(&recorder, || exporter.record(&status));
        let mut keys: Vec<String> = take(&snapshotter)
            .into_iter()
            .filter_map(|(_, labels, _)| {
                labels
                    .into_iter()
                    .find(|(k, _)| k == "endpoint")
                    .map(|(_, v)| v)
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    };
    assert_eq!(endpoints_labelled(MetricsConfig::new()), 0);
    assert_eq!(endpoints_labelled(MetricsConfig::new().per_endpoint(3)), 3);
    assert_eq!(
        endpoints_labelled(MetricsConfig::new().per_endpoint(100)),
        5
    );
}

/// The values a histogram named `name` with exactly `service="api"` and
/// `labels` received since the last snapshot.
fn histogram(snapshotter: &Snapshotter, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    let mut want: Vec<(String, String)> = [("service", SERVICE)]
        .iter()
        .chain(labels)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    want.sort_unstable();
    let mut found = Vec::new();
    for (key, _, _, v) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut have: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        have.sort_unstable();
        if let (true, DebugValue::Histogram(h)) = (key.name() == name && have == want, v) {
            found.extend(h.into_iter().map(|x| x.into_inner()));
        }
    }
    found
}

/// The latency histogram, with Peak-EWMA (which times requests anyway) and
/// with round robin (whose requests are timed only for the histogram): none
/// until asked for; then every answer counted once, in a bucket that holds
/// its latency, per endpoint in the report and for the service in the
/// exported histogram; an export adds only what is new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latency_histogram_counts_each_answer_once_in_its_bucket() {
    latency_histogram_case(Client::builder()).await;
    latency_histogram_case(Client::builder().strategy(RoundRobin)).await;
}

async fn latency_histogram_case<St: Strategy + Clone>(builder: ClientBuilder<St>) {
    const SLOW: Duration = Duration::from_millis(40);
    let fast = Backend::start("fast").await.unwrap();
    let slow = Backend::start("slow").await.unwrap();
    slow.set_delay(SLOW);
    let registry = Registry::new();
    let _fast = registry.register(SERVICE, fast.endpoint()).unwrap();
    let client: Client<Full<Bytes>, St> = builder.build(registry.watch(SERVICE).unwrap());
    let pool = client.balance().pool().clone();
    timeout(Duration::from_secs(5), pool.changed(0))
        .await
        .unwrap();
    let (fast_key, slow_key) = (
        fast.endpoint().key().to_owned(),
        slow.endpoint().key().to_owned(),
    );
    // To the fast one: were it to the slow one, Peak-EWMA would have
    // measured it and sent it none of the requests below.
    assert_eq!(client_get(&client).await, StatusCode::OK);
    assert!(
        client
            .status()
            .endpoints
            .iter()
            .all(|e| e.latency_histogram.is_none()),
        "kept only once asked for"
    );
    // The slow one joins unmeasured, costed as its rival, and gets picked.
    let _slow = registry.register(SERVICE, slow.endpoint()).unwrap();
    let revision = pool.snapshot().revision();
    timeout(Duration::from_secs(5), pool.changed(revision))
        .await
        .unwrap();
    assert_eq!(pool.snapshot().len(), 2);

    client.record_latency();
    for _ in 0..20 {
        assert_eq!(client_get(&client).await, StatusCode::OK);
    }
    let status = client.status();
    let of = |status: &Status, key: &str| {
        let e = status.endpoint(key).unwrap().clone();
        let h = e.latency_histogram.clone().expect("kept");
        (e, h)
    };
    let (fast_e, fast_h) = of(&status, &fast_key);
    let (slow_e, slow_h) = of(&status, &slow_key);
    assert_eq!(fast_h.count() + slow_h.count(), 20, "{status}");
    // The request before `record_latency` was not counted.
    assert_eq!(
        fast_h.count() + slow_h.count() + 1,
        fast_e.successes + slow_e.successes
    );
    assert!(slow_h.count() > 0 && fast_h.count() > 0, "{status}");
    assert!(slow_h.quantile(0.0).unwrap() > SLOW, "{slow_h:?}");
    assert!(
        slow_h.quantile(1.0).unwrap() < Duration::from_secs(2),
        "{slow_h:?}"
    );
    assert!(fast_h.quantile(0.5).unwrap() < SLOW, "{fast_h:?}");
    assert_eq!(slow_h.quantile(1.5), None);

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mut exporter = MetricsExporter::new(MetricsConfig::new().per_endpoint(10));
    let export = |exporter: &mut MetricsExporter, status: &Status| {
        metrics::with_local_recorder(&recorder, || exporter.record(status));
    };
    export(&mut exporter, &status);
    // Taken in one snapshot: each read of the debugging recorder drains
    // every histogram.
    let all = {
        let snap = snapshotter.snapshot().into_vec();
        let mut by_name = std::collections::HashMap::<String, Vec<f64>>::new();
        for (key, _, _, v) in snap {
            let endpoint = key
                .key()
                .labels()
                .find(|l| l.key() == "endpoint")
                .map(|l| l.value().to_owned());
            if let DebugValue::Histogram(h) = v {
                let name = match endpoint {
                    Some(e) => format!("{}/{e}", key.key().name()),
                    None => key.key().name().to_owned(),
                };
                by_name
                    .entry(name)
                    .or_default()
                    .extend(h.into_iter().map(|x| x.into_inner()));
            }
        }
        by_name
    };
    let service = &all["tower_lb_request_duration_seconds"];
    assert_eq!(service.len(), 20, "{all:?}");
    let slow_secs = SLOW.as_secs_f64() / 1.25;
    assert_eq!(
        service.iter().filter(|s| **s >= slow_secs).count() as u64,
        slow_h.count(),
        "{service:?}"
    );
    let per_slow = &all[&format!("tower_lb_endpoint_request_duration_seconds/{slow_key}")];
    assert_eq!(per_slow.len() as u64, slow_h.count());
    assert!(
        per_slow.iter().all(|s| *s >= slow_secs && *s < 2.0),
        "{per_slow:?}"
    );
    let per_fast = &all[&format!("tower_lb_endpoint_request_duration_seconds/{fast_key}")];
    assert_eq!(per_fast.len() as u64, fast_h.count());

    // The same report again: nothing new.
    export(&mut exporter, &status);
    assert!(histogram(&snapshotter, "tower_lb_request_duration_seconds", &[]).is_empty());
    // Four more answers: four more values.
    for _ in 0..4 {
        assert_eq!(client_get(&client).await, StatusCode::OK);
    }
    export(&mut exporter, &client.status());
    assert_eq!(
        histogram(&snapshotter, "tower_lb_request_duration_seconds", &[]).len(),
        4
    );
}
