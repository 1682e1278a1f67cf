//! `tower_lb::http::Client` over HTTPS (`ClientBuilder::build_tls`):
//! real TLS servers on loopback (hyper over tokio-rustls) with a
//! self-signed certificate made at test time. A client that trusts the
//! certificate balances over both servers; one that does not gets a typed
//! error and no request reaches a server.

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tower_lb::Endpoint;
use tower_lb::balance::RoundRobin;
use tower_lb::discover::{Registration, Registry};
use tower_lb::http::rustls::pki_types::pem::PemObject;
use tower_lb::http::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tower_lb::http::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tower_lb::http::{Client, Tls};

const SERVICE: &str = "secure";
/// No request may take longer than this.
const REQUEST_LIMIT: Duration = Duration::from_secs(5);

fn provider() -> Arc<tower_lb::http::rustls::crypto::CryptoProvider> {
    Arc::new(tower_lb::http::rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `names`, as (certificate, key) PEM.
fn certificate(names: &[&str]) -> (String, String) {
    let made = rcgen::generate_simple_self_signed(
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    )
    .expect("a certificate");
    (made.cert.pem(), made.signing_key.serialize_pem())
}

/// A rustls client config trusting `roots` (PEM certificates).
fn client_config(roots: &[&str]) -> ClientConfig {
    let mut store = RootCertStore::empty();
    for pem in roots {
        store
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM"))
            .expect("a root");
    }
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(store)
        .with_no_client_auth()
}

/// An HTTPS server answering `GET /` with its name.
struct TlsBackend {
    name: &'static str,
    addr: SocketAddr,
    /// Requests answered.
    requests: Arc<AtomicU64>,
    /// TLS handshakes that completed.
    handshakes: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TlsBackend {
    async fn start(name: &'static str, cert: &str, key: &str) -> TlsBackend {
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("PEM")],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("PEM key"),
            )
            .expect("a server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicU64::new(0));
        let handshakes = Arc::new(AtomicU64::new(0));
        let (req_count, hs_count) = (requests.clone(), handshakes.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let (req_count, hs_count) = (req_count.clone(), hs_count.clone());
                tokio::spawn(async move {
                    // A client that does not trust the certificate aborts
                    // the handshake; the connection just ends.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    hs_count.fetch_add(1, SeqCst);
                    let service = hyper::service::service_fn(move |_req| {
                        req_count.fetch_add(1, SeqCst);
                        async move {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(name.as_bytes()),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsBackend {
            name,
            addr,
            requests,
            handshakes,
            task,
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::builder(self.name)
            .address(self.addr)
            .build()
            .expect("an endpoint")
    }

    fn requests(&self) -> u64 {
        self.requests.load(SeqCst)
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn register(registry: &Registry, backends: &[TlsBackend]) -> Vec<Registration> {
    backends
        .iter()
        .map(|b| registry.register(SERVICE, b.endpoint()).expect("register"))
        .collect()
}

/// Sends a GET; the body's text, or the error with its source chain.
async fn get<C>(client: &Client<Full<Bytes>, RoundRobin, C>) -> Result<String, String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let req = Request::get("/")
        .body(Full::new(Bytes::new()))
        .expect("a request");
    match timeout(REQUEST_LIMIT, client.clone().oneshot(req)).await {
        Ok(Ok(res)) => {
            assert_eq!(res.status(), StatusCode::OK);
            let body = res.into_body().collect().await.expect("a body");
            Ok(String::from_utf8(body.to_bytes().to_vec()).expect("UTF-8"))
        }
        Ok(Err(e)) => {
            let mut text = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            Err(text)
        }
        Err(_) => panic!("no answer or error within {REQUEST_LIMIT:?}"),
    }
}

#[tokio::test]
async fn a_trusting_client_balances_over_https_and_an_untrusting_one_sends_nothing() {
    let (cert, key) = certificate(&["localhost"]);
    let backends = vec![
        TlsBackend::start("a", &cert, &key).await,
        TlsBackend::start("b", &cert, &key).await,
    ];
    let registry = Registry::new();
    let _regs = register(&registry, &backends);

    // The certificate names "localhost"; the endpoints are addresses.
    let tls = Tls::new(client_config(&[&cert]))
        .server_name("localhost")
        .expect("a DNS name");
    let client = Client::builder()
        .strategy(RoundRobin)
        .build_tls(registry.watch(SERVICE).expect("watch"), &tls);
    let mut answered_by = Vec::new();
    for _ in 0..20 {
        answered_by.push(get(&client).await.expect("an answer over TLS"));
    }
    for b in &backends {
        let n = answered_by.iter().filter(|s| *s == b.name).count();
        assert!(n >= 5, "{} answered {n} of 20: {answered_by:?}", b.name);
        assert_eq!(b.requests(), n as u64);
    }
    // The connection pool keeps the TLS sessions: far fewer handshakes
    // than requests.
    let handshakes: u64 = backends.iter().map(|b| b.handshakes.load(SeqCst)).sum();
    assert!(handshakes <= 4, "{handshakes} handshakes for 20 requests");

    // Without the certificate's root no handshake completes, so no request
    // is written; the caller gets an error naming the certificate.
    let before: Vec<u64> = backends.iter().map(TlsBackend::requests).collect();
    let untrusting = Client::builder().strategy(RoundRobin).build_tls(
        registry.watch(SERVICE).expect("watch"),
        &Tls::new(client_config(&[]))
            .server_name("localhost")
            .unwrap(),
    );
    let error = get(&untrusting).await.expect_err("an untrusted server");
    assert!(
        error.to_lowercase().contains("certificate"),
        "the error names the certificate: {error}"
    );
    let after: Vec<u64> = backends.iter().map(TlsBackend::requests).collect();
    assert_eq!(before, after, "no request reaches an untrusted server");
}

/// Without a server name, the certificate is checked against the
/// endpoint's IP address: one made for 127.0.0.1 verifies, one made only
/// for "localhost" does not.
#[tokio::test]
async fn without_a_server_name_the_endpoint_address_is_checked() {
    let (ip_cert, ip_key) = certificate(&["127.0.0.1"]);
    let by_ip = [TlsBackend::start("ip", &ip_cert, &ip_key).await];
    let registry = Registry::new();
    let _regs = register(&registry, &by_ip);
    let client = Client::builder().strategy(RoundRobin).build_tls(
        registry.watch(SERVICE).expect("watch"),
        &Tls::new(client_config(&[&ip_cert])),
    );
    assert_eq!(
        get(&client).await.expect("an IP certificate verifies"),
        "ip"
    );

    let (name_cert, name_key) = certificate(&["localhost"]);
    let by_name = [TlsBackend::start("name", &name_cert, &name_key).await];
    let other = Registry::new();
    let _regs = register(&other, &by_name);
    let client = Client::builder().strategy(RoundRobin).build_tls(
        other.watch(SERVICE).expect("watch"),
        &Tls::new(client_config(&[&name_cert])),
    );
    let error = get(&client).await.expect_err("the name does not match");
    assert!(
        error.to_lowercase().contains("certificate"),
        "the error names the certificate: {error}"
    );
    assert_eq!(by_name[0].requests(), 0);
}

#[test]
fn a_server_name_that_is_neither_a_name_nor_an_address_is_refused() {
    let tls = Tls::new(client_config(&[]));
    assert!(tls.clone().server_name("not a name!").is_err());
    assert!(tls.clone().server_name("").is_err());
    assert!(tls.clone().server_name("api.internal").is_ok());
    assert!(tls.server_name("::1").is_ok());
}
