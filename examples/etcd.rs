//! etcd discovery end to end: two HTTP backends register themselves in
//! etcd with leases, and a client discovers them through an `EtcdSource`
//! and balances across them, printing which backend answered.
//!
//! ```text
//! cargo run --example etcd --features etcd
//! ```
//!
//! Which etcd: the one at `ETCD_ENDPOINT` when that is set; otherwise, when
//! `etcd` is on the `PATH`, one this example starts on free loopback ports
//! with a temporary data directory (and stops at the end); otherwise
//! `127.0.0.1:2379`. Records go under `/tower-lb-example/<pid>/`.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_lb::balance::{BalanceLayer, WeightedRoundRobin};
use tower_lb::discover::{EtcdConfig, EtcdRegistrar, EtcdSource};
use tower_lb::http::SetAuthority;
use tower_lb::pool::DiscoverLayer;
use tower_lb::{BoxError, Endpoint};

/// How long any wait here may take.
const LIMIT: Duration = Duration::from_secs(10);

/// An etcd this example started, killed (and its data removed) on drop.
struct OwnEtcd {
    child: Child,
    dir: PathBuf,
}

impl Drop for OwnEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn etcd_on_path() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// The etcd to use, and the one started here, if any.
fn find_etcd() -> Result<(String, Option<OwnEtcd>), BoxError> {
    if let Ok(endpoint) = std::env::var("ETCD_ENDPOINT") {
        return Ok((endpoint, None));
    }
    let Some(binary) = etcd_on_path() else {
        return Ok(("127.0.0.1:2379".to_owned(), None));
    };
    let (client, peer) = (free_port()?, free_port()?);
    let dir = std::env::temp_dir().join(format!("tower-lb-etcd-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(binary)
        .arg("--name=example")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=example={peer_url}"))
        .arg("--heartbeat-interval=10")
        .arg("--election-timeout=100")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    println!(
        "started etcd on 127.0.0.1:{client} (data in {})",
        dir.display()
    );
    Ok((format!("127.0.0.1:{client}"), Some(OwnEtcd { child, dir })))
}

/// Waits until etcd answers.
async fn wait_for_etcd(config: &EtcdConfig) -> Result<(), BoxError> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let attempt = async {
            let mut c = config.connect().await?;
            c.get("ready", None).await?;
            Ok::<_, BoxError>(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(
                    format!("etcd at {:?} does not answer: {e}", config.endpoints()).into(),
                );
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// An axum backend on 127.0.0.1 that answers `GET /` with its name.
async fn backend(name: &'static str) -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let app = Router::new().route("/", get(move || async move { name }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// Sends `n` GETs through `lb` and prints who answered each.
async fn send<S>(lb: &S, n: usize) -> Result<(), BoxError>
where
    S: Service<Request<Empty<Bytes>>, Response = hyper::Response<hyper::body::Incoming>> + Clone,
    S::Error: Into<BoxError>,
{
    let mut answers = Vec::with_capacity(n);
    for _ in 0..n {
        let req = Request::get("/").body(Empty::new())?;
        let res = lb.clone().oneshot(req).await.map_err(Into::into)?;
        let body = res.into_body().collect().await?.to_bytes();
        answers.push(String::from_utf8_lossy(&body).into_owned());
    }
    println!("  answered by: {}", answers.join(" "));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (endpoint, _own) = find_etcd()?;
    let config = EtcdConfig::new([endpoint]);
    wait_for_etcd(&config).await?;
    let prefix = format!("/tower-lb-example/{}/", std::process::id());

    // The backends, each registering itself with a lease.
    let alpha_addr = backend("alpha").await?;
    let beta_addr = backend("beta").await?;
    let registrar = EtcdRegistrar::new(config.clone(), prefix.clone()).ttl(Duration::from_secs(5));
    let alpha = Endpoint::new(alpha_addr);
    let mut alpha_reg = registrar.register("alpha", &alpha).await?;
    let beta_reg = registrar
        .register("beta", &Endpoint::new(beta_addr).with_weight(3))
        .await?;
    println!("registered alpha ({alpha_addr}, weight 1) and beta ({beta_addr}, weight 3)");
    println!(
        "  under {prefix}: {} and {}",
        alpha_reg.key(),
        beta_reg.key()
    );

    // The client: etcd → pool → weighted round robin → hyper.
    let source = EtcdSource::new(config, prefix);
    let status = source.status();
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let connector =
        service_fn(move |ep: Endpoint| std::future::ready(SetAuthority::new(client.clone(), &ep)));
    let lb = ServiceBuilder::new()
        .layer(BalanceLayer::new(WeightedRoundRobin))
        .layer(DiscoverLayer::new(source))
        .service(connector);
    let pool = lb.pool().clone();
    let wait_for = |n: usize, weight_of_alpha: u32| {
        let pool = pool.clone();
        async move {
            tokio::time::timeout(LIMIT, async {
                loop {
                    let snap = pool.snapshot();
                    let alpha_weight = snap
                        .get(&alpha_addr.to_string())
                        .map_or(0, |m| m.endpoint().weight());
                    if snap.len() == n && (alpha_weight == weight_of_alpha || n == 1) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .map_err(|_| format!("the set did not settle: {:?}", pool.discovery()))
        }
    };

    wait_for(2, 1).await?;
    println!("\ndiscovered 2 endpoints; 8 requests, weights 1:3");
    send(&lb, 8).await?;

    alpha_reg.update(&alpha.clone().with_weight(3)).await?;
    wait_for(2, 3).await?;
    println!("\nalpha raised its weight to 3 (compare-and-swap); 8 requests, 3:3");
    send(&lb, 8).await?;

    beta_reg.deregister().await?;
    wait_for(1, 3).await?;
    println!("\nbeta deregistered; 4 requests");
    send(&lb, 4).await?;

    println!(
        "\nwatch status: connected {}, etcd revision {:?}, last answer {:?} ago",
        status.is_connected(),
        status.revision(),
        status.since_contact().unwrap_or_default()
    );
    alpha_reg.deregister().await?;
    Ok(())
}
