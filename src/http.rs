//! HTTP helpers (feature `http`).
//!
//! [`SetAuthority`] points each request at its endpoint: a connector can
//! wrap one shared HTTP client (hyper-util's, reqwest's through tower, …)
//! in a `SetAuthority` bound to the endpoint's address, so the connection
//! pool stays shared while every request goes where the balancer sent it.
//! [`ServerErrorsAreFailures`] makes 5xx answers count against an
//! endpoint's health.

use std::task::{Context, Poll};

use http::uri::{Authority, Scheme};
use http::{Request, Uri};
use tower_service::Service;

use crate::endpoint::Endpoint;
use crate::error::InvalidEndpoint;

/// Rewrites each request's URI to the endpoint's scheme and authority,
/// keeping its path and query.
#[derive(Debug, Clone)]
pub struct SetAuthority<S> {
    inner: S,
    scheme: Scheme,
    authority: Authority,
}

impl<S> SetAuthority<S> {
    /// Sends through `inner` to `endpoint`'s address (or its key, when it
    /// has none) over plain HTTP.
    pub fn new(inner: S, endpoint: &Endpoint) -> Result<Self, InvalidEndpoint> {
        Self::with_scheme(inner, endpoint, Scheme::HTTP)
    }

    /// As [`new`](SetAuthority::new), with another scheme.
    pub fn with_scheme(
        inner: S,
        endpoint: &Endpoint,
        scheme: Scheme,
    ) -> Result<Self, InvalidEndpoint> {
        let text = endpoint
            .address()
            .map_or_else(|| endpoint.key().to_owned(), |a| a.to_string());
        let authority = text
            .parse::<Authority>()
            .map_err(|_| InvalidEndpoint::BadKeyCharacter { key: text })?;
        Ok(SetAuthority {
            inner,
            scheme,
            authority,
        })
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for SetAuthority<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        // Scheme, authority and path are all set, so this cannot fail; fall
        // back to the bare authority rather than panic.
        *req.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| {
            Uri::builder()
                .scheme(self.scheme.clone())
                .authority(self.authority.clone())
                .path_and_query("/")
                .build()
                .unwrap_or_default()
        });
        self.inner.call(req)
    }
}

/// Classifies HTTP outcomes for endpoint health: an `Err` (refused
/// connection, timeout, reset) or a 5xx response is the endpoint's
/// failure; anything else, 4xx included, is a success (the endpoint
/// answered; the request was at fault).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerErrorsAreFailures;

impl<B, E> crate::balance::Classify<http::Response<B>, E> for ServerErrorsAreFailures {
    #[inline]
    fn is_failure(&self, outcome: Result<&http::Response<B>, &E>) -> bool {
        match outcome {
            Ok(res) => res.status().is_server_error(),
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn rewrites_scheme_and_authority_keeping_path() {
        let ep = Endpoint::new("127.0.0.1:8080".parse().unwrap());
        let svc = tower::service_fn(|req: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(req.uri().to_string())
        });
        let svc = SetAuthority::new(svc, &ep).unwrap();
        let req = Request::get("/a/b?c=1").body(()).unwrap();
        assert_eq!(
            svc.clone().oneshot(req).await.unwrap(),
            "http://127.0.0.1:8080/a/b?c=1"
        );
        let req = Request::get("http://example.com/x").body(()).unwrap();
        assert_eq!(svc.oneshot(req).await.unwrap(), "http://127.0.0.1:8080/x");
    }
}
