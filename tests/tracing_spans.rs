//! The request and attempt spans, captured by a layer over
//! tracing-subscriber's registry while `http::Client` sends to real
//! backends on loopback: a retried request is one `request` span with two
//! `attempt` children on different endpoints, and a hedged one shows its
//! hedge. Every request is bounded in time.

mod support;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;
use tokio::time::timeout;
use tower_lb::discover::Registry;
use tower_lb::http::Client;
use tower_lb::retry::{Hedge, HttpPolicy, RetryLayer};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use support::{Backend, client_get};

const SERVICE: &str = "api";

/// One span as captured: its name, its parent (an index into the list)
/// and its fields as text.
#[derive(Debug, Clone)]
struct Captured {
    name: &'static str,
    target: String,
    parent: Option<usize>,
    fields: BTreeMap<String, String>,
    closed: bool,
}

#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<Captured>>>,
    /// The registry reuses ids once spans close: the live span of each id.
    live: Arc<Mutex<BTreeMap<u64, usize>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut live = self.live.lock().unwrap();
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .and_then(|p| live.get(&p.id().into_u64()).copied());
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.push(Captured {
            name: attrs.metadata().name(),
            target: attrs.metadata().target().to_owned(),
            parent,
            fields,
            closed: false,
        });
        live.insert(id.into_u64(), spans.len() - 1);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let live = self.live.lock().unwrap();
        if let Some(&at) = live.get(&id.into_u64()) {
            values.record(&mut Fields(&mut self.spans.lock().unwrap()[at].fields));
        }
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        if let Some(at) = self.live.lock().unwrap().remove(&id.into_u64()) {
            self.spans.lock().unwrap()[at].closed = true;
        }
    }
}

impl Capture {
    fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut *self.spans.lock().unwrap())
    }
}

/// A request span and its attempt spans, in order.
fn trees(spans: &[Captured]) -> Vec<(Captured, Vec<Captured>)> {
    spans
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name == "request")
        .map(|(at, s)| {
            let children = spans
                .iter()
                .filter(|c| c.parent == Some(at) && c.name == "attempt")
                .cloned()
                .collect();
            (s.clone(), children)
        })
        .collect()
}

/// `f` with `capture` as this thread's subscriber; the runtime is a
/// current-thread one, so every span of the stack is made on this thread.
fn with_capture(capture: &Capture, f: impl std::future::Future<Output = ()>) {
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f);
}

/// One backend answers 503, the other 200: a request that went to the
/// 503 first is retried on the other, and its spans say so.
#[test]
fn a_retried_request_is_one_request_span_with_two_attempts_on_different_endpoints() {
    let capture = Capture::default();
    with_capture(&capture, async {
        let bad = Backend::start("bad").await.unwrap();
        bad.set_status(StatusCode::SERVICE_UNAVAILABLE);
        let good = Backend::start("good").await.unwrap();
        let registry = Registry::new();
        let _r = [
            registry.register(SERVICE, bad.endpoint()).unwrap(),
            registry.register(SERVICE, good.endpoint()).unwrap(),
        ];
        let client: Client = Client::builder().build(registry.watch(SERVICE).unwrap());
        let pool = client.balance().pool().clone();
        timeout(Duration::from_secs(5), pool.changed(0))
            .await
            .unwrap();

        let mut retried = None;
        for _ in 0..50 {
            assert_eq!(client_get(&client).await, StatusCode::OK);
            let spans = capture.take();
            let mut found = trees(&spans);
            assert_eq!(found.len(), 1, "one request span per request: {spans:#?}");
            let (request, attempts) = found.pop().unwrap();
            assert!(request.closed, "{request:?}");
            assert_eq!(request.target, "tower_lb::retry::service");
            if attempts.len() == 2 {
                retried = Some((request, attempts));
                break;
            }
            assert_eq!(attempts.len(), 1, "{spans:#?}");
        }
        let (request, attempts) = retried.expect("a request went to the 503 backend first");
        assert_eq!(request.fields["attempts"], "2", "{request:?}");
        assert_eq!(request.fields["outcome"], "ok", "{request:?}");
        let (first, retry) = (&attempts[0].fields, &attempts[1].fields);
        assert_eq!(first["endpoint"], bad.endpoint().key(), "{attempts:#?}");
        assert_eq!(retry["endpoint"], good.endpoint().key(), "{attempts:#?}");
        assert_eq!((&*first["attempt"], &*retry["attempt"]), ("1", "2"));
        assert_eq!((&*first["kind"], &*retry["kind"]), ("first", "retry"));
        assert_eq!(
            (&*first["outcome"], &*retry["outcome"]),
            ("failure", "success")
        );
        assert_eq!((&*first["tier"], &*retry["tier"]), ("0", "0"));
        assert!(
            attempts
                .iter()
                .all(|a| a.target == "tower_lb::balance::service" && a.closed)
        );
    });
}

/// One backend answers in 300 ms, the other at once; GETs are hedged
/// after 20 ms. A request that went to the slow one first shows a hedge
/// attempt that answered while the first was cancelled.
#[test]
fn a_hedged_request_shows_its_hedge_attempt() {
    let capture = Capture::default();
    with_capture(&capture, async {
        let slow = Backend::start("slow").await.unwrap();
        slow.set_delay(Duration::from_millis(300));
        let fast = Backend::start("fast").await.unwrap();
        let registry = Registry::new();
        let _r = [
            registry.register(SERVICE, slow.endpoint()).unwrap(),
            registry.register(SERVICE, fast.endpoint()).unwrap(),
        ];
        let retry = RetryLayer::new(HttpPolicy::new().hedging(true))
            .hedge(Hedge::after(Duration::from_millis(20)));
        let client: Client = Client::builder()
            .retry(retry)
            .build(registry.watch(SERVICE).unwrap());
        let pool = client.balance().pool().clone();
        timeout(Duration::from_secs(5), pool.changed(0))
            .await
            .unwrap();

        let mut hedged = None;
        for _ in 0..30 {
            assert_eq!(client_get(&client).await, StatusCode::OK);
            let spans = capture.take();
            let (request, attempts) = trees(&spans).pop().expect("a request span");
            if attempts.len() == 2 {
                hedged = Some((request, attempts));
                break;
            }
        }
        let (request, attempts) = hedged.expect("a request went to the slow backend first");
        assert_eq!(request.fields["attempts"], "2", "{request:?}");
        let (first, hedge) = (&attempts[0].fields, &attempts[1].fields);
        assert_eq!(first["endpoint"], slow.endpoint().key(), "{attempts:#?}");
        assert_eq!(hedge["endpoint"], fast.endpoint().key(), "{attempts:#?}");
        assert_eq!((&*first["kind"], &*hedge["kind"]), ("first", "hedge"));
        assert_eq!(
            (&*first["outcome"], &*hedge["outcome"]),
            ("cancelled", "success")
        );
    });
}
