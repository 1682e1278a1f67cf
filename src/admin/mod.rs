//! A status page for operators (feature `admin`): a tower [`Service`]
//! that the application mounts in its own axum or hyper server. The crate
//! opens no port by itself.
//!
//! | path | answer |
//! |---|---|
//! | `/` | one self-contained HTML page (no external assets): endpoints coloured and named by state, tiers' health and load, the retry budget, and a chart of requests and failures per endpoint over the last minutes; it refreshes itself |
//! | `/status.json` | the [`Status`] report as JSON |
//! | `/metrics` | Prometheus text, from the render function given with [`AdminService::prometheus`] (404 without one) |
//!
//! ```
//! use axum::Router;
//! use tower_lb::admin::AdminService;
//! use tower_lb::discover::Registry;
//! use tower_lb::http::Client;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let registry = Registry::new();
//! let client: Client = Client::builder().build(registry.watch("api").unwrap());
//! // With metrics-exporter-prometheus installed as the recorder:
//! // let handle = PrometheusBuilder::new().install_recorder()?;
//! // let admin = AdminService::new(client.clone()).prometheus(move || handle.render());
//! let admin = AdminService::new(client.clone());
//! let app: Router = Router::new().nest_service("/lb", admin);
//! # let _ = app;
//! # }
//! ```
//!
//! The page asks for `status.json` next to its own address, so it works
//! wherever it is mounted (`/lb` and `/lb/` alike). It keeps the last 120
//! samples (4 minutes at its 2 s refresh) per endpoint in a ring buffer of
//! its own, and shows 50 endpoints per page, with a filter by state and by
//! key, so a fleet of thousands stays readable.

use std::convert::Infallible;
use std::fmt;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tower_service::Service;

use crate::status::{Observe, Status};

/// The page served at `/`.
const PAGE: &str = include_str!("page.html");

/// Serves the status page, `/status.json` and `/metrics` for one client;
/// see [the module](self). Cheap to clone.
pub struct AdminService<O> {
    observed: O,
    prometheus: Option<Arc<dyn Fn() -> String + Send + Sync>>,
}

impl<O: Clone> Clone for AdminService<O> {
    fn clone(&self) -> Self {
        AdminService {
            observed: self.observed.clone(),
            prometheus: self.prometheus.clone(),
        }
    }
}

impl<O> fmt::Debug for AdminService<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminService")
            .field("prometheus", &self.prometheus.is_some())
            .finish_non_exhaustive()
    }
}

impl<O: Observe> AdminService<O> {
    /// The page for `observed`: any layer of a client (a clone of it).
    pub fn new(observed: O) -> Self {
        AdminService {
            observed,
            prometheus: None,
        }
    }

    /// Serves `/metrics` with what `render` returns: Prometheus text, as
    /// `metrics_exporter_prometheus::PrometheusHandle::render` gives it.
    /// Pair it with a [`MetricsExporter`](crate::metrics::MetricsExporter)
    /// (feature `metrics`) so the client's metrics are in it.
    #[must_use]
    pub fn prometheus(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.prometheus = Some(Arc::new(render));
        self
    }

    /// The answer to `method` on `path` (the part after where the service
    /// is mounted).
    pub fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        }
        match path.trim_end_matches('/') {
            "" | "/index.html" => {
                with_type(StatusCode::OK, "text/html; charset=utf-8", PAGE.into())
            }
            "/status.json" => {
                let status: Status = self.observed.status();
                match serde_json::to_vec(&status) {
                    Ok(json) => with_type(StatusCode::OK, "application/json", json.into()),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
                }
            }
            "/metrics" => match &self.prometheus {
                Some(render) => with_type(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    render().into(),
                ),
                None => text(
                    StatusCode::NOT_FOUND,
                    "no Prometheus recorder: give AdminService::prometheus the handle's render\n",
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /, /status.json or /metrics\n",
            ),
        }
    }
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    res
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    with_type(
        status,
        "text/plain; charset=utf-8",
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

impl<O: Observe, B> Service<Request<B>> for AdminService<O> {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(req.method(), req.uri().path())))
    }
}

#[cfg(test)]
mod tests;
