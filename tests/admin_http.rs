//! The admin service mounted in an axum server on loopback, in front of
//! `http::Client` over real backends (one answers 503), with
//! metrics-exporter-prometheus as the recorder: `/metrics` scraped over
//! HTTP parses as Prometheus text and its values move when traffic flows;
//! `/status.json` and `/` answer too. Every request is bounded in time.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep, timeout};
use tower_lb::admin::AdminService;
use tower_lb::discover::Registry;
use tower_lb::http::Client;
use tower_lb::metrics::{MetricsConfig, MetricsExporter};
use tower_lb::status::Status;

use support::{Backend, client_get};

const SERVICE: &str = "api";
const REQUEST_LIMIT: Duration = Duration::from_secs(5);

/// GETs `url`: its status, content type and body.
async fn get(url: &str) -> (StatusCode, String, String) {
    let http = HyperClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let res = timeout(REQUEST_LIMIT, http.get(url.parse().unwrap()))
        .await
        .expect("an answer in time")
        .expect("an answer");
    let status = res.status();
    let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, kind, String::from_utf8(body.to_vec()).unwrap())
}

/// Prometheus text exposition, parsed strictly enough to fail on
/// anything malformed: every line a `# HELP`/`# TYPE` comment, blank, or
/// `name{label="value",…} number`. Series by their text before the value.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut series = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let name_end = key.find('{').unwrap_or(key.len());
        let name = &key[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {line:?}"
        );
        if name_end < key.len() {
            let labels = key[name_end..]
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'));
            let labels = labels.unwrap_or_else(|| panic!("bad labels: {line:?}"));
            for pair in labels.split("\",") {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label: {line:?}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line:?}"
                );
                assert!(!v.contains('\n'), "{line:?}");
            }
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line:?}"));
        series.insert(key.to_owned(), value);
    }
    series
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_route_parses_and_moves_with_traffic_and_the_other_routes_answer() {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");

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
    let interval = Duration::from_millis(100);
    let _export = MetricsExporter::spawn(client.clone(), MetricsConfig::new().interval(interval));

    let admin = AdminService::new(client.clone()).prometheus(move || handle.render());
    let app = Router::new().nest_service("/lb", admin);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let base = format!("http://{addr}/lb");

    let ok = format!("tower_lb_requests_total{{service=\"{SERVICE}\",outcome=\"success\"}}");
    let failed = format!("tower_lb_requests_total{{service=\"{SERVICE}\",outcome=\"failure\"}}");
    let client_requests = format!("tower_lb_client_requests_total{{service=\"{SERVICE}\"}}");
    let healthy = format!("tower_lb_endpoints{{service=\"{SERVICE}\",state=\"healthy\"}}");

    // Wait for the first export, then take the values before traffic.
    let deadline = Instant::now() + Duration::from_secs(5);
    let before = loop {
        let (status, kind, text) = get(&format!("{base}/metrics")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
        let series = parse(&text);
        if series.contains_key(&healthy) {
            break series;
        }
        assert!(
            Instant::now() < deadline,
            "no tower_lb metrics yet:\n{text}"
        );
        sleep(interval).await;
    };
    assert_eq!(before[&healthy], 2.0);
    let ok_before = before.get(&ok).copied().unwrap_or(0.0);

    const REQUESTS: u64 = 40;
    for _ in 0..REQUESTS {
        assert_eq!(client_get(&client).await, StatusCode::OK);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let series = parse(&get(&format!("{base}/metrics")).await.2);
        if series.get(&client_requests).copied() == Some(REQUESTS as f64) {
            break series;
        }
        assert!(
            Instant::now() < deadline,
            "metrics did not follow the traffic: {series:?}"
        );
        sleep(interval).await;
    };
    assert_eq!(
        after[&ok] - ok_before,
        REQUESTS as f64,
        "every request answered 200 once"
    );
    assert!(
        after[&failed] >= 1.0,
        "the 503 backend's answers count as failures"
    );
    let ejected = format!("tower_lb_endpoints{{service=\"{SERVICE}\",state=\"ejected\"}}");
    let status = client.status();
    assert_eq!(
        after[&ejected],
        status.count(tower_lb::status::EndpointState::Ejected) as f64,
        "{status}"
    );

    let (code, kind, json) = get(&format!("{base}/status.json")).await;
    assert_eq!((code, kind.as_str()), (StatusCode::OK, "application/json"));
    let report: Status = serde_json::from_str(&json).unwrap();
    assert_eq!(report.service, SERVICE);
    assert_eq!(report.endpoints.len(), 2);

    for page in [base.clone(), format!("{base}/")] {
        let (code, kind, html) = get(&page).await;
        assert_eq!(
            (code, kind.as_str()),
            (StatusCode::OK, "text/html; charset=utf-8"),
            "{page}"
        );
        assert!(html.contains("<table id=\"endpoints\">"), "{page}");
    }
    server.abort();
}
