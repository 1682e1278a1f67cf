//! The `metrics` feature through metrics-util's debugging recorder, over
//! `http::Client` and real backends on loopback: a backend that answers
//! 503 is ejected, then recovers and is re-admitted, and the counters,
//! gauges and labels follow. Every request is bounded in time.

mod support;

use std::time::Duration;

use hyper::StatusCode;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::time::{Instant, timeout};
use tower_lb::discover::Registry;
use tower_lb::http::Client;
use tower_lb::metrics::{MetricsConfig, MetricsExporter};
use tower_lb::status::EndpointState;

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
