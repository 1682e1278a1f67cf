//! HTTP helpers (feature `http`).
//!
//! [`SetAuthority`] points each request at its endpoint: a connector can
//! wrap one shared HTTP client (hyper-util's, reqwest's through tower, …)
//! in a `SetAuthority` bound to the endpoint's address, so the connection
//! pool stays shared while every request goes where the balancer sent it.
//! [`ServerErrorsAreFailures`] makes 5xx answers count against an
//! endpoint's health.
//!
//! Key extractors for the hash strategies ([`BalanceLayer::key`]):
//! [`HeaderKey`], [`CookieKey`], [`PathKey`] and [`AuthorityKey`]. Each
//! hashes bytes borrowed from the request, without allocating; a request
//! without the key goes to the strategy's fallback.
//!
//! [`BalanceLayer::key`]: crate::balance::BalanceLayer::key
//!
//! With the `http-client` feature, [`Client`] builds the whole stack
//! (retries, balancer, failover, discovery, a hyper-util client) from a
//! source in one expression; with `http-tls`, [`Tls`] makes it speak HTTPS
//! through rustls.

#[cfg(feature = "http-client")]
mod client;
#[cfg(feature = "http-client")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-client")))]
pub use client::{BoxClient, Client, ClientBuilder, EndpointClient, Stack};
#[cfg(feature = "http-tls")]
mod tls;
/// hyper-rustls, whose `HttpsConnector` a TLS [`Client`] is typed with
/// (feature `http-tls`).
#[cfg(feature = "http-tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-tls")))]
pub use hyper_rustls;
/// The rustls crate [`Tls`] is configured with (feature `http-tls`), so
/// that its `ClientConfig` and root store need no dependency of your own.
#[cfg(feature = "http-tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-tls")))]
pub use rustls;
#[cfg(feature = "http-tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-tls")))]
pub use tls::Tls;

use std::task::{Context, Poll};

use http::header::{COOKIE, HOST, HeaderName};
use http::uri::{Authority, Scheme};
use http::{Request, Uri};
use tower_service::Service;

use crate::balance::{KeyHash, KeyOf};
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

/// Keys requests by a header's value (the first, if it repeats), such as a
/// user or session id.
///
/// ```
/// use tower_lb::balance::{BalanceLayer, Maglev};
/// use tower_lb::http::HeaderKey;
///
/// let layer = BalanceLayer::new(Maglev::new()).key(HeaderKey::parse("X-User-Id").unwrap());
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Keys by header `name`.
    pub fn new(name: HeaderName) -> Self {
        HeaderKey { name }
    }

    /// Keys by the header called `name` (any case), or fails if that is
    /// not a valid header name.
    pub fn parse(name: &str) -> Result<Self, http::header::InvalidHeaderName> {
        Ok(HeaderKey {
            name: HeaderName::from_bytes(name.as_bytes())?,
        })
    }
}

impl<B> KeyOf<Request<B>> for HeaderKey {
    #[inline]
    fn key_of(&self, req: &Request<B>, hash: KeyHash) -> Option<u64> {
        let value = req.headers().get(&self.name)?;
        Some(hash.hash(value.as_bytes()))
    }
}

/// Keys requests by a cookie's value (the first cookie of that name across
/// the `Cookie` headers; surrounding double quotes are not part of it).
#[derive(Debug, Clone)]
pub struct CookieKey {
    name: Box<str>,
}

impl CookieKey {
    /// Keys by the cookie called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        CookieKey {
            name: name.into().into_boxed_str(),
        }
    }
}

impl<B> KeyOf<Request<B>> for CookieKey {
    #[inline]
    fn key_of(&self, req: &Request<B>, hash: KeyHash) -> Option<u64> {
        let name = self.name.as_bytes();
        req.headers()
            .get_all(COOKIE)
            .iter()
            .find_map(|header| cookie_value(header.as_bytes(), name))
            .map(|value| hash.hash(value))
    }
}

/// The value of cookie `name` in one `Cookie` header (`a=1; b=2`).
fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        if pair[..eq].trim_ascii() != name {
            return None;
        }
        let value = pair[eq + 1..].trim_ascii();
        Some(match value {
            [b'"', inner @ .., b'"'] => inner,
            v => v,
        })
    })
}

/// Keys requests by their URI path (without the query): each resource
/// sticks to one endpoint, for cache affinity.
#[derive(Debug, Clone, Copy, Default)]
pub struct PathKey;

impl<B> KeyOf<Request<B>> for PathKey {
    #[inline]
    fn key_of(&self, req: &Request<B>, hash: KeyHash) -> Option<u64> {
        Some(hash.hash(req.uri().path().as_bytes()))
    }
}

/// Keys requests by their authority: the URI's, else the `Host` header
/// (virtual hosts sharing endpoints, each sticking to some).
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthorityKey;

impl<B> KeyOf<Request<B>> for AuthorityKey {
    #[inline]
    fn key_of(&self, req: &Request<B>, hash: KeyHash) -> Option<u64> {
        let bytes = match req.uri().authority() {
            Some(a) => a.as_str().as_bytes(),
            None => req.headers().get(HOST)?.as_bytes(),
        };
        Some(hash.hash(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[test]
    fn key_extractors_read_without_allocating_copies() {
        let h = |b: &[u8]| KeyHash::Xxh64.hash(b);
        let req = Request::get("http://example.com:8080/a/b?q=1")
            .header("x-user-id", "alice")
            .header(COOKIE, "theme=dark; session=\"s-42\"")
            .header(COOKIE, "session=later")
            .body(())
            .unwrap();
        let user = HeaderKey::new(HeaderName::from_static("x-user-id"));
        assert_eq!(user.key_of(&req, KeyHash::Xxh64), Some(h(b"alice")));
        assert_eq!(
            user.key_of(&req, KeyHash::Crc32),
            Some(u64::from(crate::balance::hash::crc32(b"alice")))
        );
        assert_eq!(
            HeaderKey::parse("X-Other")
                .unwrap()
                .key_of(&req, KeyHash::Xxh64),
            None
        );
        assert_eq!(
            CookieKey::new("session").key_of(&req, KeyHash::Xxh64),
            Some(h(b"s-42"))
        );
        assert_eq!(
            CookieKey::new("theme").key_of(&req, KeyHash::Xxh64),
            Some(h(b"dark"))
        );
        assert_eq!(CookieKey::new("sess").key_of(&req, KeyHash::Xxh64), None);
        assert_eq!(PathKey.key_of(&req, KeyHash::Xxh64), Some(h(b"/a/b")));
        assert_eq!(
            AuthorityKey.key_of(&req, KeyHash::Xxh64),
            Some(h(b"example.com:8080"))
        );
        let relative = Request::get("/x")
            .header(HOST, "svc.local")
            .body(())
            .unwrap();
        assert_eq!(
            AuthorityKey.key_of(&relative, KeyHash::Xxh64),
            Some(h(b"svc.local"))
        );
        assert_eq!(AuthorityKey.key_of(&Request::new(()), KeyHash::Xxh64), None);
        assert_eq!(cookie_value(b"a=1;b", b"b"), None);
        assert!(HeaderKey::parse("bad header").is_err());
        assert_eq!(cookie_value(b" a = 1 ", b"a"), Some(&b"1"[..]));
    }

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
