//! TLS for [`Client`](super::Client): rustls through hyper-rustls.

use std::fmt;
use std::sync::Arc;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::ClientConfig;
use rustls::pki_types::{InvalidDnsNameError, ServerName};

/// How a [`Client`](super::Client) speaks TLS to every endpoint (feature
/// `http-tls`): a rustls [`ClientConfig`] (its roots, client certificate
/// and protocol versions) and the name each server's certificate must
/// carry.
///
/// Endpoints are usually addresses, so by default the certificate is
/// checked against the endpoint's IP address (or its key, for an endpoint
/// without one). Most services' certificates name a host instead: set it
/// with [`server_name`](Tls::server_name), as tonic's
/// `ClientTlsConfig::domain_name` does.
///
/// ```
/// use tower_lb::http::Tls;
/// use tower_lb::http::rustls::{ClientConfig, RootCertStore};
///
/// let roots = RootCertStore::empty(); // add your CA here
/// let config = ClientConfig::builder_with_provider(
///     tower_lb::http::rustls::crypto::ring::default_provider().into(),
/// )
/// .with_safe_default_protocol_versions()
/// .unwrap()
/// .with_root_certificates(roots)
/// .with_no_client_auth();
/// let tls = Tls::new(config).server_name("api.internal").unwrap();
/// # let _ = tls;
/// ```
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl Tls {
    /// TLS with `config`, checking each certificate against the
    /// endpoint's address.
    pub fn new(config: impl Into<Arc<ClientConfig>>) -> Self {
        Tls {
            config: config.into(),
            server_name: None,
        }
    }

    /// Checks every endpoint's certificate against `name` (a DNS name or
    /// an IP address) and sends it as SNI.
    ///
    /// # Errors
    ///
    /// When `name` is neither a valid DNS name nor an IP address.
    pub fn server_name(mut self, name: &str) -> Result<Self, InvalidDnsNameError> {
        self.server_name = Some(ServerName::try_from(name.to_owned())?);
        Ok(self)
    }

    /// The connector: HTTPS only (a plain `http://` request fails rather
    /// than go out unencrypted), HTTP/1, over `http`.
    pub(super) fn connector(&self, mut http: HttpConnector) -> HttpsConnector<HttpConnector> {
        http.enforce_http(false);
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(ClientConfig::clone(&self.config))
            .https_only();
        let builder = match &self.server_name {
            Some(name) => {
                builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone()))
            }
            None => builder,
        };
        builder.enable_http1().wrap_connector(http)
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .field("alpn_protocols", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}
