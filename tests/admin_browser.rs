//! The status page in a real browser: headless Chromium (Debian's
//! `chromium`, which `.ci/run` installs) loads it from a running stack on
//! loopback, and the test reads the rendered DOM: a row per endpoint with
//! its state in text and colour class, the tiers' loads, the retry budget;
//! no console output at all; and the page updates itself when an endpoint
//! changes state while it is open. It writes a screenshot to
//! `target/status-page.png`.
//!
//! The page refreshes every 2 s of its own time; Chromium's virtual time
//! runs that clock fast while each fetch of `status.json` (held back
//! 150 ms here) takes real time, so one run of the browser spans a few
//! real seconds and about twenty refreshes.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::{Request, StatusCode};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep, timeout};
use tower::ServiceExt;
use tower_lb::admin::AdminService;
use tower_lb::discover::Registry;
use tower_lb::http::Client;
use tower_lb::status::{EndpointState, Observe};

use support::{Backend, client_get};

const SERVICE: &str = "api";

/// The browser, or a loud failure: this test only runs when asked for.
fn chromium() -> PathBuf {
    for candidate in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        let path = PathBuf::from(candidate);
        if path.exists() {
            return path;
        }
    }
    panic!("no Chromium found (install Debian's `chromium` package; .ci/run does)");
}

/// Runs headless Chromium on `url` with `args`: its stdout and stderr.
fn browse(args: &[&str], url: &str) -> (String, String) {
    let profile = std::env::temp_dir().join(format!("tower-lb-chromium-{}", std::process::id()));
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1400,1000",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The lines where the page wrote to the console (it writes nothing).
fn console(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium; run by .ci/run"]
async fn the_page_renders_endpoints_states_and_tiers_and_updates_itself() {
    let good = Backend::start("good").await.unwrap();
    let flaky = Backend::start("flaky").await.unwrap();
    let backup = Backend::start("backup").await.unwrap();
    let registry = Registry::new();
    let _r = [
        registry.register(SERVICE, good.endpoint()).unwrap(),
        registry.register(SERVICE, flaky.endpoint()).unwrap(),
        registry
            .register(SERVICE, backup.endpoint().with_priority(1))
            .unwrap(),
    ];
    let client: Client = Client::builder().build(registry.watch(SERVICE).unwrap());
    timeout(Duration::from_secs(5), client.balance().pool().changed(0))
        .await
        .unwrap();
    // Latency histograms, for the page's p99 column.
    client.record_latency();
    for _ in 0..10 {
        assert_eq!(client_get(&client).await, StatusCode::OK);
    }

    // Each fetch of status.json takes 150 ms of real time, so the
    // browser's refreshes are spread over real seconds.
    // The fetches are counted, so the endpoint fails only once the page
    // has shown it healthy.
    let admin = AdminService::new(client.clone());
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    let slow = tower::service_fn(move |req: Request<axum::body::Body>| {
        let admin = admin.clone();
        let counted = counted.clone();
        async move {
            if req.uri().path().ends_with("status.json") {
                sleep(Duration::from_millis(150)).await;
                counted.fetch_add(1, Ordering::Relaxed);
            }
            admin.oneshot(req).await
        }
    });
    let app = Router::new().nest_service("/lb", slow);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/lb/");
    let flaky_key = flaky.endpoint().key().to_owned();

    // While the browser has the page open, and once the page has fetched
    // the report twice, `flaky` starts answering 503 and traffic ejects it.
    let change = {
        let client = client.clone();
        let flaky_key = flaky_key.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while fetches.load(Ordering::Relaxed) < 2 {
                assert!(
                    Instant::now() < deadline,
                    "the page never fetched the report twice"
                );
                sleep(Duration::from_millis(20)).await;
            }
            flaky.set_status(StatusCode::SERVICE_UNAVAILABLE);
            let deadline = Instant::now() + Duration::from_secs(10);
            while client.status().endpoint(&flaky_key).unwrap().state != EndpointState::Ejected {
                assert!(
                    Instant::now() < deadline,
                    "not ejected:\n{}",
                    client.status()
                );
                assert_eq!(client_get(&client).await, StatusCode::OK);
            }
            // Kept running: dropped, it would be down rather than ejected.
            flaky
        })
    };
    let dom_url = url.clone();
    let (dom, stderr) = tokio::task::spawn_blocking(move || {
        browse(&["--virtual-time-budget=40000", "--dump-dom"], &dom_url)
    })
    .await
    .unwrap();
    let _flaky = change.await.unwrap();

    assert!(
        console(&stderr).is_empty(),
        "console output: {:#?}",
        console(&stderr)
    );
    let refreshes: u32 = dom
        .split("data-refreshes=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("the page counts its refreshes");
    assert!(refreshes >= 5, "{refreshes} refreshes:\n{dom}");

    for e in [&good, &backup] {
        let row = format!(
            "<tr data-key=\"{}\" data-state=\"healthy\">",
            e.endpoint().key()
        );
        assert!(dom.contains(&row), "{row} missing:\n{dom}");
    }
    // The good endpoint answered, so its p99 is a time.
    let good_row = format!("<tr data-key=\"{}\"", good.endpoint().key());
    let row = dom
        .split(&good_row)
        .nth(1)
        .and_then(|r| r.split("</tr>").next());
    let p99 = row
        .and_then(|r| r.split("<td class=\"num p99\">").nth(1))
        .and_then(|c| c.split("</td>").next())
        .unwrap_or_else(|| panic!("no p99 cell:\n{dom}"));
    assert!(
        p99.ends_with(" ms") || p99.ends_with(" µs") || p99.ends_with(" s"),
        "p99 {p99:?}"
    );
    assert!(p99.starts_with(|c: char| c.is_ascii_digit()), "p99 {p99:?}");
    // Ejected, or on trial once the ejection's second has passed (the
    // page's clock runs fast): out of rotation either way, in text and in
    // the badge's colour class.
    let out = ["ejected", "on_trial"].iter().find(|state| {
        dom.contains(&format!(
            "<tr data-key=\"{flaky_key}\" data-state=\"{state}\">"
        ))
    });
    let out = out.unwrap_or_else(|| panic!("the page did not update:\n{dom}"));
    let badge = format!(
        "<span class=\"badge s-{out}\">{}</span>",
        out.replace('_', " ")
    );
    assert!(dom.contains(&badge), "{badge} missing:\n{dom}");
    assert!(
        dom.contains("consecutive failures"),
        "the reason is shown:\n{dom}"
    );
    let change_item = format!("<li data-key=\"{flaky_key}\" data-to=\"ejected\">");
    assert!(dom.contains(&change_item), "the change is listed:\n{dom}");
    assert!(dom.contains("healthy → ejected"), "{dom}");
    assert!(
        dom.contains("<tr data-tier=\"0\">") && dom.contains("<tr data-tier=\"1\">"),
        "{dom}"
    );
    assert!(dom.contains("budget left (retries)"), "{dom}");
    assert!(
        dom.contains(&format!("<h1 id=\"service\">{SERVICE}</h1>")),
        "{dom}"
    );

    // A screenshot of the page as it is now (flaky ejected).
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../status-page.png");
    let arg = format!("--screenshot={}", shot.display());
    let (_, stderr) =
        tokio::task::spawn_blocking(move || browse(&["--virtual-time-budget=8000", &arg], &url))
            .await
            .unwrap();
    assert!(
        console(&stderr).is_empty(),
        "console output: {:#?}",
        console(&stderr)
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    // `TOWER_LB_DOCS_SCREENSHOT=1` refreshes the README's picture.
    if std::env::var_os("TOWER_LB_DOCS_SCREENSHOT").is_some() {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
        std::fs::write(docs, &png).expect("docs/status-page.png written");
    }
    server.abort();
}
