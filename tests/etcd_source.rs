//! The etcd source and registrar against a real etcd: each test starts its
//! own `etcd` on free loopback ports with a temporary data directory, and
//! kills it at the end.
//!
//! These tests are ignored ("needs etcd") so a plain `cargo test` passes
//! on machines without etcd; `.ci/run` installs it and runs them with
//! `--include-ignored`. Run them locally with
//! `cargo test --features etcd --test etcd_source -- --include-ignored`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::JoinHandle;
use tower::{Layer, ServiceExt, service_fn};
use tower_lb::balance::{Balance, BalanceLayer, WeightedRoundRobin};
use tower_lb::discover::etcd_client::{
    Client, CompactionOptions, DeleteOptions, PutOptions, Txn, TxnOp,
};
use tower_lb::discover::{
    EtcdConfig, EtcdError, EtcdRegistrar, EtcdSource, EtcdStatus, Source, Update,
};
use tower_lb::pool::{DiscoverLayer, Pool};
use tower_lb::{DiscoveryError, Endpoint, InvalidEndpoint};

/// How long any wait in these tests may take.
const LIMIT: Duration = Duration::from_secs(15);

/// The etcd binary; panics when it is missing, so CI fails loudly rather
/// than skipping.
fn etcd_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("etcd"));
    on_path
        .chain(["/usr/bin/etcd".into(), "/usr/local/bin/etcd".into()])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "etcd is not installed: these tests need a real etcd server \
                 (Debian: apt-get install etcd-server; .ci/run installs it)"
            )
        })
}

/// A loopback TCP port free right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a TCP socket")
        .local_addr()
        .unwrap()
        .port()
}

/// An etcd child on its own ports and data directory, killed on drop.
struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    /// Its member name, and every member's `name=peer URL` (itself alone
    /// unless it is one of a cluster).
    name: String,
    initial_cluster: String,
    /// Serve clients over TLS, with the certificates `tls_files` made in
    /// `dir`.
    tls: bool,
}

impl Etcd {
    async fn start() -> Etcd {
        Etcd::start_with(false).await
    }

    async fn start_with(tls: bool) -> Etcd {
        let mut etcd = Etcd::new("lb-test", tls);
        etcd.initial_cluster = format!("lb-test=http://127.0.0.1:{}", etcd.peer_port);
        if tls {
            tls_files(&etcd.dir);
        }
        etcd.spawn().await;
        etcd
    }

    /// A cluster of `n` members, started together (none answers before a
    /// majority is up).
    async fn cluster(n: usize) -> Vec<Etcd> {
        let mut members: Vec<Etcd> = (0..n).map(|i| Etcd::new(&format!("m{i}"), false)).collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.initial_cluster.clone_from(&initial);
            m.launch();
        }
        for m in &mut members {
            m.wait_ready().await;
        }
        members
    }

    /// Ports and a data directory, nothing started.
    fn new(name: &str, tls: bool) -> Etcd {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tower-lb-etcd-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut client_port = free_port();
        let mut peer_port = free_port();
        while peer_port == client_port || client_port == 2379 || peer_port == 2380 {
            client_port = free_port();
            peer_port = free_port();
        }
        Etcd {
            child: None,
            client_port,
            peer_port,
            dir,
            name: name.to_owned(),
            initial_cluster: String::new(),
            tls,
        }
    }

    async fn spawn(&mut self) {
        self.launch();
        self.wait_ready().await;
    }

    fn launch(&mut self) {
        let scheme = if self.tls { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let tls_args = if self.tls {
            vec![
                format!("--cert-file={}", self.dir.join("server.pem").display()),
                format!("--key-file={}", self.dir.join("server.key").display()),
            ]
        } else {
            Vec::new()
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        // A lone member elects itself at once; members of a cluster talk to
        // each other, which a busy machine can slow down, so they wait
        // longer before calling an election.
        let timing = if self.initial_cluster.contains(',') {
            ["--heartbeat-interval=25", "--election-timeout=500"]
        } else {
            ["--heartbeat-interval=10", "--election-timeout=100"]
        };
        let child = Command::new(etcd_binary())
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-token=tower-lb-test")
            .args(timing)
            .args(tls_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    /// Waits until etcd answers a read.
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
                panic!("etcd exited with {status}: {log}");
            }
            let config = self.config();
            let ready = async {
                let mut c = config.connect().await.ok()?;
                c.get("ready", None).await.ok()
            };
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), ready).await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd not ready on port {} within {LIMIT:?}",
                self.client_port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills etcd and starts it again on the same ports and data.
    async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn client(&self) -> Client {
        Client::connect([self.endpoint()], None)
            .await
            .expect("connect to etcd")
    }

    fn config(&self) -> EtcdConfig {
        #[cfg(feature = "etcd-tls")]
        if self.tls {
            use tower_lb::discover::etcd_client::{Certificate, TlsOptions};
            let ca = std::fs::read(self.dir.join("ca.pem")).expect("read ca.pem");
            return config_for(&format!("https://127.0.0.1:{}", self.client_port))
                .tls(TlsOptions::new().ca_certificate(Certificate::from_pem(ca)));
        }
        assert!(!self.tls, "TLS needs the etcd-tls feature");
        config_for(&self.endpoint())
    }
}

/// Makes a CA and a server certificate for 127.0.0.1 signed by it, in
/// `dir`, with the `openssl` command; panics when it is missing.
fn tls_files(dir: &std::path::Path) {
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         basicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=tower-lb test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "openssl is needed to make test certificates \
                     (Debian: apt-get install openssl): {e}"
                )
            });
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config_for(endpoint: &str) -> EtcdConfig {
    EtcdConfig::new([endpoint.to_owned()])
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(2))
}

/// A source that reconnects and notices silence quickly.
fn source(config: EtcdConfig, prefix: &str) -> EtcdSource {
    EtcdSource::new(config, prefix)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .progress_interval(Duration::from_millis(100))
}

/// An endpoint's service: answers every request with the endpoint's key.
#[derive(Clone, Debug)]
struct KeyService(Arc<str>);

impl tower::Service<()> for KeyService {
    type Response = String;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<String, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        std::future::ready(Ok(self.0.to_string()))
    }
}

/// A pool over `source` whose endpoint services answer with their key.
fn pool(source: EtcdSource) -> Pool<KeyService> {
    let connector = service_fn(|ep: Endpoint| async move {
        Ok::<_, std::convert::Infallible>(KeyService(ep.key().into()))
    });
    DiscoverLayer::new(source).layer(connector)
}

/// `key → weight` of every member.
fn members(pool: &Pool<KeyService>) -> BTreeMap<String, u32> {
    pool.snapshot()
        .members()
        .iter()
        .map(|m| (m.endpoint().key().to_owned(), m.endpoint().weight()))
        .collect()
}

fn set(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
    pairs.iter().map(|(k, w)| ((*k).to_owned(), *w)).collect()
}

/// Waits until the pool holds exactly `want`.
async fn converge(pool: &Pool<KeyService>, want: &BTreeMap<String, u32>) {
    let done = tokio::time::timeout(LIMIT, async {
        while members(pool) != *want {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "expected {want:?}, have {:?}; discovery {:?}",
        members(pool),
        pool.discovery()
    );
}

/// Waits until `check` holds for the status.
async fn status_until(status: &EtcdStatus, what: &str, check: impl Fn(&EtcdStatus) -> bool) {
    let done = tokio::time::timeout(LIMIT, async {
        while !check(status) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(done.is_ok(), "status never {what}: {status:?}");
}

/// The source is back, holds `want` (written up to revision `last` while it
/// was away) and got there by resuming its watch, not by listing again.
async fn resumed_without_listing(
    pool: &Pool<KeyService>,
    status: &EtcdStatus,
    want: &BTreeMap<String, u32>,
    last: u64,
) {
    converge(pool, want).await;
    assert!(pool.discovery().applied_revision >= Some(last));
    status_until(status, "reconnected", EtcdStatus::is_connected).await;
    assert!(status.reconnects() >= 1, "{status:?}");
    assert_eq!(
        status.lists(),
        1,
        "resumed from its revision, not listed again"
    );
}

async fn put(client: &mut Client, key: &str, value: &str) -> u64 {
    let r = client.put(key, value, None).await.expect("put");
    u64::try_from(r.header().unwrap().revision()).unwrap()
}

fn record(addr: &str, weight: u32) -> String {
    format!(r#"{{"address": "{addr}", "weight": {weight}}}"#)
}

/// Sends `n` requests through a balancer and counts the answers by key.
async fn picks(pool: &Pool<KeyService>, n: usize) -> BTreeMap<String, usize> {
    let lb: Balance<KeyService, WeightedRoundRobin> = BalanceLayer::new(WeightedRoundRobin)
        .seed(1)
        .layer(pool.clone());
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let key = tokio::time::timeout(LIMIT, lb.clone().oneshot(()))
            .await
            .expect("a pick in time")
            .expect("an answer");
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
#[ignore = "needs etcd; run by .ci/run"]
async fn registered_instances_are_discovered_and_balanced() {
    let etcd = Etcd::start().await;
    let registrar = EtcdRegistrar::new(etcd.config(), "/svc/api/").ttl(Duration::from_secs(5));
    let a = Endpoint::new("127.0.0.1:7001".parse().unwrap()).with_weight(3);
    let b = Endpoint::builder("b")
        .address("127.0.0.1:7002".parse().unwrap())
        .zone("z1")
        .tag("version", "7")
        .build()
        .unwrap();
    let ra = registrar.register("a", &a).await.unwrap();
    let rb = registrar.register("b", &b).await.unwrap();
    assert_eq!(ra.key(), "/svc/api/a");
    assert!(rb.mod_revision() > ra.mod_revision());

    let source = source(etcd.config(), "/svc/api/");
    let status = source.status();
    let pool = pool(source);
    converge(&pool, &set(&[("127.0.0.1:7001", 3), ("b", 1)])).await;
    // Zone and tags come through the record.
    let snap = pool.snapshot();
    let got = snap.get("b").unwrap().endpoint();
    assert_eq!((got.zone(), got.tag("version")), (Some("z1"), Some("7")));
    assert!(
        pool.discovery().applied_revision >= Some(u64::try_from(rb.mod_revision()).unwrap()),
        "update revisions are etcd revisions: {:?}",
        pool.discovery()
    );
    status_until(&status, "connected", EtcdStatus::is_connected).await;
    assert_eq!(status.lists(), 1);
    // The pool reads the watch's revision: caught up, no lag.
    let d = pool.discovery();
    assert_eq!(d.source_revision, status.revision(), "{d:?}");
    assert_eq!(d.revision_lag(), Some(0), "{d:?}");
    // A quiet watch stays up: progress answers keep it alive (ten progress
    // intervals here) and refresh the contact time.
    let contact = status.last_contact().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(status.reconnects(), 0, "{status:?}");
    assert!(status.last_contact().unwrap() > contact, "{status:?}");
    assert!(status.since_contact().unwrap() < Duration::from_millis(500));

    // Smooth weighted round robin is exact over whole cycles: 3:1.
    let counts = picks(&pool, 40).await;
    assert_eq!(counts["127.0.0.1:7001"], 30, "{counts:?}");
    assert_eq!(counts["b"], 10, "{counts:?}");

    // Deregistering removes the record at once, not after the TTL.
    ra.deregister().await.unwrap();
    converge(&pool, &set(&[("b", 1)])).await;
    assert_eq!(picks(&pool, 5).await["b"], 5);
    rb.deregister().await.unwrap();
    converge(&pool, &set(&[])).await;
}

#[tokio::test]
#[ignore = "needs etcd; run by .ci/run"]
async fn a_dead_registrars_record_expires_with_its_lease() {
    let etcd = Etcd::start().await;
    let pool = pool(source(etcd.config(), "/svc/lease/"));
    let survivor = EtcdRegistrar::new(etcd.config(), "/svc/lease/")
        .ttl(Duration::from_secs(1))
        .register(
            "survivor",
            &Endpoint::new("127.0.0.1:7102".parse().unwrap()),
        )
        .await
        .unwrap();

    // The dying process: its own runtime, gone without deregistering.
    let config = etcd.config();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let registration = rt.block_on(async {
            EtcdRegistrar::new(config, "/svc/lease/")
                .ttl(Duration::from_secs(1))
                .register("doomed", &Endpoint::new("127.0.0.1:7101".parse().unwrap()))
                .await
                .unwrap()
        });
        // Like a crash: no revoke, and the keep-alive task dies with the
        // runtime.
        std::mem::forget(registration);
        drop(rt);
    })
    .join()
    .unwrap();

    converge(&pool, &set(&[("127.0.0.1:7101", 1), ("127.0.0.1:7102", 1)])).await;
    // Its keep-alives stopped: gone within about a TTL; the survivor's
    // keep-alives hold it.
    converge(&pool, &set(&[("127.0.0.1:7102", 1)])).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(members(&pool), set(&[("127.0.0.1:7102", 1)]));
    assert!(survivor.is_alive());
    survivor.deregister().await.unwrap();
}

#[tokio::test]
#[ignore = "needs etcd; run by .ci/run"]
async fn a_weight_update_moves_the_picker() {
    let etcd = Etcd::start().await;
    let registrar = EtcdRegistrar::new(etcd.config(), "/svc/w/");
    let a = Endpoint::new("127.0.0.1:7201".parse().unwrap());
    let b = Endpoint::new("127.0.0.1:7202".parse().unwrap());
    let mut ra = registrar.register("a", &a).await.unwrap();
    let _rb = registrar.register("b", &b).await.unwrap();
    let pool = pool(source(etcd.config(), "/svc/w/"));
    converge(&pool, &set(&[("127.0.0.1:7201", 1), ("127.0.0.1:7202", 1)])).await;
    let even = picks(&pool, 20).await;
    assert_eq!(even["127.0.0.1:7201"], 10, "{even:?}");

    let before = ra.mod_revision();
    ra.update(&a.clone().with_weight(4)).await.unwrap();
    assert!(ra.mod_revision() > before);
    converge(&pool, &set(&[("127.0.0.1:7201", 4), ("127.0.0.1:7202", 1)])).await;
    let skewed = picks(&pool, 50).await;
    assert_eq!(skewed["127.0.0.1:7201"], 40, "{skewed:?}");
    assert_eq!(skewed["127.0.0.1:7202"], 10, "{skewed:?}");

    // Drain: weight 0 takes no traffic while another is eligible.
    ra.update(&a.clone().with_weight(0)).await.unwrap();
    converge(&pool, &set(&[("127.0.0.1:7201", 0), ("127.0.0.1:7202", 1)])).await;
    let drained = picks(&pool, 10).await;
    assert_eq!(drained.get("127.0.0.1:7201"), None, "{drained:?}");
}

#[tokio::test]
#[ignore = "needs etcd; run by .ci/run"]
async fn an_etcd_restart_mid_watch_loses_no_update() {
    let mut etcd = Etcd::start().await;
    let mut direct = etcd.client().await;
    put(&mut direct, "/svc/r/a", &record("127.0.0.1:7301", 1)).await;
    put(&mut direct, "/svc/r/b", &record("127.0.0.1:7302", 1)).await;
    // Slow to come back, so the writes below land while it is away.
    let source = source(etcd.config(), "/svc/r/")
        .backoff(Duration::from_millis(500), Duration::from_millis(500));
    let status = source.status();
    let pool = pool(source);
    let both = set(&[("127.0.0.1:7301", 1), ("127.0.0.1:7302", 1)]);
    converge(&pool, &both).await;
    status_until(&status, "connected", EtcdStatus::is_connected).await;

    etcd.kill();
    status_until(&status, "disconnected", |s| !s.is_connected()).await;
    // The last good set stays, and the failure is reported.
    assert_eq!(members(&pool), both);
    let errors = pool.discovery().errors;
    assert!(errors >= 1, "{:?}", pool.discovery());
    let last_contact = status.last_contact().unwrap();

    etcd.restart().await;
    let mut direct = etcd.client().await;
    direct.delete("/svc/r/a", None).await.unwrap();
    put(&mut direct, "/svc/r/c", &record("127.0.0.1:7303", 1)).await;
    let last = put(&mut direct, "/svc/r/b", &record("127.0.0.1:7302", 5)).await;
    let want = set(&[("127.0.0.1:7302", 5), ("127.0.0.1:7303", 1)]);
    resumed_without_listing(&pool, &status, &want, last).await;
    assert!(status.last_contact().unwrap() > last_contact);
    assert!(status.revision() >= Some(last), "{status:?}");
}

/// A source pointed at every member of a three-member cluster loses the
/// member its watch runs through: it carries on through another member,
/// from the revision it had reached, and misses nothing written meanwhile.
#[tokio::test]
#[ignore = "needs etcd; run by .ci/run"]
async fn losing_the_watched_cluster_member_loses_no_update() {
    let mut cluster = Etcd::cluster(3).await;
    let endpoints: Vec<String> = cluster.iter().map(Etcd::endpoint).collect();
    let config = EtcdConfig::new(endpoints)
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(2));
    let mut direct = cluster[0].client().await;
    put(&mut direct, "/svc/m/a", &record("127.0.0.1:7401", 1)).await;
    put(&mut direct, "/svc/m/b", &record("127.0.0.1:7402", 1)).await;
    let source = source(config, "/svc/m/");
    let status = source.status();
    let pool = pool(source);
    let both = set(&[("127.0.0.1:7401", 1), ("127.0.0.1:7402", 1)]);
    converge(&pool, &both).await;
    status_until(&status, "connected", EtcdStatus::is_connected).await;

    // The member holding the source's watch (the only watch there is).
    let watched = tokio::time::timeout(LIMIT, async {
        loop {
            let mut counts = Vec::new();
            for member in &cluster {
                counts.push(watchers(member).await);
            }
            if counts.iter().sum::<u64>() == 1 {
                return counts.iter().position(|&c| c == 1).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("one watch on one member");
    cluster[watched].kill();

    // If that member led the cluster, writes wait for a new leader: the
    // writer tries again until one is elected (each write may be repeated).
    let survivor = &cluster[(watched + 1) % cluster.len()];
    let mut direct = survivor.client().await;
    let elected = tokio::time::timeout(LIMIT, async {
        while direct.delete("/svc/m/a", None).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        elected.is_ok(),
        "the cluster took no write after losing a member"
    );
    put(&mut direct, "/svc/m/c", &record("127.0.0.1:7403", 1)).await;
    let last = put(&mut direct, "/svc/m/b", &record("127.0.0.1:7402", 5)).await;
    let want = set(&[("127.0.0.1:7402", 5), ("127.0.0.1:7403", 1)]);
    resumed_without_listing(&pool, &status, &want, last).await;
    // The watch now runs through a member that is still up.
    let moved = tokio::time::timeout(LIMIT, async {
        loop {
            let mut total = 0;
            for (i, member) in cluster.iter().enumerate() {
                if i != watched {
                    total += watchers(member).await;
                }
            }
            if total == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(moved.is_ok(), "the watch did not move to a live member");
}

/// A TCP proxy in front of etcd that can be cut and restored, so a test
/// can take etcd away from one client only.
struct Proxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let open = open.clone();
            let conns = conns.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: connection closed
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                    });
                    conns.lock().unwrap().push(task);
                }
            }
        });
        Proxy {
            addr,
            open,
            conns,
            accept,
        }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[tokio::test]
#[ignore = "needs etcd; run by .ci/run"]
async fn a_compacted_revision_forces_a_relist() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(etcd.addr()).await;
    let mut direct = etcd.client().await;
    put(&mut direct, "/svc/c/a", &record("127.0.0.1:7401", 1)).await;
    put(&mut direct, "/svc/c/b", &record("127.0.0.1:7402", 1)).await;
    let source = source(config_for(&proxy.addr.to_string()), "/svc/c/");
    let status = source.status();
    let pool = pool(source);
    converge(&pool, &set(&[("127.0.0.1:7401", 1), ("127.0.0.1:7402", 1)])).await;
    status_until(&status, "connected", EtcdStatus::is_connected).await;
    assert_eq!(status.lists(), 1);

    proxy.cut();
    status_until(&status, "disconnected", |s| !s.is_connected()).await;
    // While it is away: changes, then history compacted past them.
    direct.delete("/svc/c/a", None).await.unwrap();
    put(&mut direct, "/svc/c/c", &record("127.0.0.1:7403", 2)).await;
    put(&mut direct, "/svc/c/d", &record("127.0.0.1:7404", 1)).await;
    direct.delete("/svc/c/d", None).await.unwrap();
    let last = put(&mut direct, "/other/key", "x").await;
    direct
        .compact(
            i64::try_from(last).unwrap(),
            Some(CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    proxy.restore();

    converge(&pool, &set(&[("127.0.0.1:7402", 1), ("127.0.0.1:7403", 2)])).await;
    status_until(&status, "listed again", |s| s.lists() == 2).await;
    status_until(&status, "reconnected", EtcdStatus::is_connected).await;

    // And it watches on from the new listing.
    put(&mut direct, "/svc/c/e", &record("127.0.0.1:7405", 1)).await;
    converge(
        &pool,
        &set(&[
            ("127.0.0.1:7402", 1),
            ("127.0.0.1:7403", 2),
            ("127.0.0.1:7405", 1),
        ]),
    )
    .await;
}

#[tokio::test]
#[ignore = "needs etcd; run by .ci/run"]
async fn malformed_records_are_skipped_and_named() {
    let etcd = Etcd::start().await;
    let mut direct = etcd.client().await;
    put(&mut direct, "/svc/m/good", &record("127.0.0.1:7501", 2)).await;
    put(&mut direct, "/svc/m/not-json", "{not json").await;
    put(
        &mut direct,
        "/svc/m/bad-address",
        r#"{"address": "nowhere"}"#,
    )
    .await;
    let source = source(etcd.config(), "/svc/m/");
    let status = source.status();
    let pool = pool(source);
    converge(&pool, &set(&[("127.0.0.1:7501", 2)])).await;
    let deadline = tokio::time::timeout(LIMIT, async {
        while pool.discovery().errors < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    assert!(deadline.await.is_ok(), "{:?}", pool.discovery());

    // In the watch: a bad new key, and a good key overwritten with garbage,
    // which keeps its last good endpoint.
    put(
        &mut direct,
        "/svc/m/weight-text",
        r#"{"address": "127.0.0.1:7502", "weight": "lots"}"#,
    )
    .await;
    put(&mut direct, "/svc/m/good", "garbage").await;
    let last = put(&mut direct, "/svc/m/other", &record("127.0.0.1:7503", 1)).await;
    converge(&pool, &set(&[("127.0.0.1:7501", 2), ("127.0.0.1:7503", 1)])).await;
    tokio::time::timeout(LIMIT, pool.applied(last))
        .await
        .unwrap();
    let discovery = pool.discovery();
    assert!(discovery.errors >= 4, "{discovery:?}");
    let status_error = status.last_error().unwrap_or_default();
    assert!(
        status_error.contains("/svc/m/good") || status_error.contains("/svc/m/weight-text"),
        "{status_error}"
    );
    assert!(
        discovery
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("/svc/m/"),
        "{discovery:?}"
    );

    // Fixing the record applies it; deleting it removes the endpoint.
    put(&mut direct, "/svc/m/good", &record("127.0.0.1:7501", 7)).await;
    converge(&pool, &set(&[("127.0.0.1:7501", 7), ("127.0.0.1:7503", 1)])).await;
    direct.delete("/svc/m/good", None).await.unwrap();
    converge(&pool, &set(&[("127.0.0.1:7503", 1)])).await;
}

/// Waits until the pool has seen `n` discovery errors, then checks that no
/// more come within three progress intervals (each bad value is reported
/// once).
async fn errors_settle_at(pool: &Pool<KeyService>, n: u64) {
    let reached = tokio::time::timeout(LIMIT, async {
        while pool.discovery().errors < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "expected {n} errors: {:?}",
        pool.discovery()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.discovery().errors, n, "{:?}", pool.discovery());
}

/// The next item the source yields, within [`LIMIT`].
async fn next_item(source: &mut EtcdSource) -> Result<Update, DiscoveryError> {
    tokio::time::timeout(LIMIT, source.next_update())
        .await
        .expect("an item in time")
        .expect("the etcd source never ends")
}

#[tokio::test]
#[ignore = "needs etcd; run by .ci/run"]
async fn every_kind_of_bad_value_is_an_invalid_record_named_by_its_key() {
    let etcd = Etcd::start().await;
    let mut direct = etcd.client().await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // etcd refuses values over 1.5 MiB by default; 1 MiB is as big as it
    // gets.
    let big = format!(r#"{{"address": "{}"}}"#, "x".repeat(1 << 20));
    let values: Vec<(&str, Vec<u8>)> = vec![
        ("a-good", record("127.0.0.1:7601", 2).into_bytes()),
        ("b-garbage", b"\xff\xfe\x00garbage".to_vec()),
        (
            "c-unknown-field",
            br#"{"address": "127.0.0.1:7603", "surprise": 1}"#.to_vec(),
        ),
        (
            "d-nan",
            br#"{"address": "127.0.0.1:7604", "weight": "NaN"}"#.to_vec(),
        ),
        (
            "e-infinite",
            br#"{"address": "127.0.0.1:7605", "weight": 1e999}"#.to_vec(),
        ),
        (
            "f-negative",
            br#"{"address": "127.0.0.1:7606", "weight": -1}"#.to_vec(),
        ),
        (
            "g-huge",
            br#"{"address": "127.0.0.1:7607", "weight": 1e12}"#.to_vec(),
        ),
        ("h-deep", deep.into_bytes()),
        ("i-big", big.into_bytes()),
        ("j-zero", record("127.0.0.1:7610", 0).into_bytes()),
        // The same endpoint as a-good: the greater etcd key wins.
        ("k-duplicate", record("127.0.0.1:7601", 5).into_bytes()),
    ];
    for (key, value) in &values {
        direct
            .put(format!("/svc/bad/{key}"), value.clone(), None)
            .await
            .expect("put");
    }

    let mut source = source(etcd.config(), "/svc/bad/");
    let mut causes = Vec::new();
    let update = loop {
        match next_item(&mut source).await {
            Ok(update) => break update,
            Err(DiscoveryError::InvalidRecord { record, source }) => causes.push((record, source)),
            Err(other) => panic!("expected an InvalidRecord, got {other:?}"),
        }
    };
    let names: Vec<&str> = causes.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "/svc/bad/b-garbage",
            "/svc/bad/c-unknown-field",
            "/svc/bad/d-nan",
            "/svc/bad/e-infinite",
            "/svc/bad/f-negative",
            "/svc/bad/g-huge",
            "/svc/bad/h-deep",
            "/svc/bad/i-big",
        ]
    );
    let malformed = |i: usize| matches!(causes[i].1, InvalidEndpoint::Malformed { .. });
    assert!((0..4).all(malformed) && malformed(6), "{causes:?}");
    let InvalidEndpoint::Malformed { reason } = &causes[1].1 else {
        unreachable!()
    };
    assert!(reason.contains("unknown field `surprise`"), "{reason}");
    assert!(matches!(
        causes[4].1,
        InvalidEndpoint::WeightNotFinite { .. }
    ));
    assert!(matches!(
        causes[5].1,
        InvalidEndpoint::WeightTooLarge { .. }
    ));
    let InvalidEndpoint::BadAddress { address } = &causes[7].1 else {
        panic!("{:?}", causes[7]);
    };
    assert!(
        address.len() < 300,
        "a short error: {} bytes",
        address.len()
    );
    let got: Vec<(&str, u32)> = update.endpoints().map(|e| (e.key(), e.weight())).collect();
    assert_eq!(got, [("127.0.0.1:7601", 5), ("127.0.0.1:7610", 0)]);
    drop(source);

    // Through a pool: each reported once, and only the weighted endpoint
    // picked.
    let pool = pool(source_for(&etcd, "/svc/bad/"));
    converge(&pool, &set(&[("127.0.0.1:7601", 5), ("127.0.0.1:7610", 0)])).await;
    errors_settle_at(&pool, 8).await;
    let hits = picks(&pool, 20).await;
    assert_eq!(
        hits.into_iter().collect::<Vec<_>>(),
        [("127.0.0.1:7601".to_owned(), 20)]
    );
}

fn source_for(etcd: &Etcd, prefix: &str) -> EtcdSource {
    source(etcd.config(), prefix)
}

#[tokio::test]
#[ignore = "needs etcd; run by .ci/run"]
async fn a_prefix_whose_every_value_turns_invalid_keeps_the_last_good_set() {
    let etcd = Etcd::start().await;
    let mut direct = etcd.client().await;
    put(&mut direct, "/svc/i/a", &record("127.0.0.1:7701", 1)).await;
    let listed = put(&mut direct, "/svc/i/b", &record("127.0.0.1:7702", 1)).await;
    let pool = pool(source_for(&etcd, "/svc/i/"));
    let good = set(&[("127.0.0.1:7701", 1), ("127.0.0.1:7702", 1)]);
    converge(&pool, &good).await;

    // One write leaves only invalid values under the prefix.
    let txn = Txn::new().and_then([
        TxnOp::delete("/svc/i/a", None),
        TxnOp::delete("/svc/i/b", None),
        TxnOp::put("/svc/i/c", "garbage", None),
        TxnOp::put("/svc/i/d", r#"{"address": "nope"}"#, None),
    ]);
    direct.txn(txn).await.expect("txn");
    // Both values, then the prefix as a whole.
    errors_settle_at(&pool, 3).await;
    assert_eq!(members(&pool), good, "the last good set is kept");
    assert_eq!(pool.discovery().applied_revision, Some(listed));
    let last = pool.discovery().last_error.unwrap_or_default();
    assert!(
        last.contains("none of the 2 record(s) from `/svc/i/`"),
        "{last}"
    );
    assert_eq!(picks(&pool, 10).await.len(), 2, "still served");

    // Another bad value while held: reported, still nothing applied.
    put(&mut direct, "/svc/i/e", r#"{"weight": 1}"#).await;
    errors_settle_at(&pool, 4).await;
    assert_eq!(members(&pool), good);

    // A good value: the whole current set, not a delta on the old one.
    put(&mut direct, "/svc/i/f", &record("127.0.0.1:7706", 2)).await;
    converge(&pool, &set(&[("127.0.0.1:7706", 2)])).await;

    // No keys at all is an empty set.
    let delete = Txn::new().and_then([TxnOp::delete(
        "/svc/i/",
        Some(DeleteOptions::new().with_prefix()),
    )]);
    direct.txn(delete).await.expect("txn");
    converge(&pool, &set(&[])).await;
    assert!(pool.snapshot().discovered());
    assert_eq!(pool.discovery().errors, 4);
}

#[tokio::test]
#[ignore = "needs etcd; run by .ci/run"]
async fn a_listing_whose_every_value_is_invalid_keeps_the_last_good_set() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(etcd.addr()).await;
    let mut direct = etcd.client().await;
    put(&mut direct, "/svc/l/x", "garbage").await;
    let source = source(config_for(&proxy.addr.to_string()), "/svc/l/");
    let status = source.status();
    let pool = pool(source);
    // The first listing: one bad value, so no set at all yet.
    errors_settle_at(&pool, 2).await;
    assert!(!pool.snapshot().discovered(), "{:?}", pool.discovery());

    put(&mut direct, "/svc/l/a", &record("127.0.0.1:7801", 1)).await;
    converge(&pool, &set(&[("127.0.0.1:7801", 1)])).await;
    status_until(&status, "connected", EtcdStatus::is_connected).await;

    proxy.cut();
    status_until(&status, "disconnected", |s| !s.is_connected()).await;
    // While it is away: the good key goes, a bad one comes, and history is
    // compacted past both.
    direct.delete("/svc/l/a", None).await.unwrap();
    let last = put(&mut direct, "/svc/l/y", r#"{"address": "nope"}"#).await;
    direct
        .compact(
            i64::try_from(last).unwrap(),
            Some(CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    proxy.restore();

    status_until(&status, "listed again", |s| s.lists() == 2).await;
    // The broken watch, the new bad value and the prefix as a whole; the
    // old bad value is not reported again.
    errors_settle_at(&pool, 5).await;
    assert_eq!(members(&pool), set(&[("127.0.0.1:7801", 1)]));
    let last = pool.discovery().last_error.unwrap_or_default();
    assert!(last.contains("none of the 2 record(s)"), "{last}");

    put(&mut direct, "/svc/l/b", &record("127.0.0.1:7802", 1)).await;
    converge(&pool, &set(&[("127.0.0.1:7802", 1)])).await;
}

#[tokio::test]
#[ignore = "needs etcd; run by .ci/run"]
async fn two_registrars_never_clobber_each_other() {
    let etcd = Etcd::start().await;
    let pool = pool(source(etcd.config(), "/svc/cas/"));
    let first = EtcdRegistrar::new(etcd.config(), "/svc/cas/");
    let second = EtcdRegistrar::new(etcd.config(), "/svc/cas/");
    let one = Endpoint::new("127.0.0.1:7601".parse().unwrap());
    let two = Endpoint::new("127.0.0.1:7602".parse().unwrap());

    let mut r1 = first.register("x", &one).await.unwrap();
    // A plain second registration under the same key is refused.
    match second.register("x", &two).await {
        Err(EtcdError::AlreadyRegistered { key, found }) => {
            assert_eq!((key.as_str(), found), ("/svc/cas/x", r1.mod_revision()));
        }
        other => panic!("expected AlreadyRegistered, got {other:?}"),
    }
    converge(&pool, &set(&[("127.0.0.1:7601", 1)])).await;

    // A take-over wins, and the first writer's next update is refused
    // rather than silently overwriting it.
    let mut r2 = second
        .replace_existing(true)
        .register("x", &two)
        .await
        .unwrap();
    converge(&pool, &set(&[("127.0.0.1:7602", 1)])).await;
    match r1.update(&one.clone().with_weight(9)).await {
        Err(EtcdError::Conflict {
            key,
            expected,
            found,
        }) => {
            assert_eq!(key, "/svc/cas/x");
            assert_eq!(found, Some(r2.mod_revision()));
            assert!(expected < r2.mod_revision());
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    r2.update(&two.clone().with_weight(3)).await.unwrap();
    converge(&pool, &set(&[("127.0.0.1:7602", 3)])).await;

    // An outside write is a conflict too.
    let mut direct = etcd.client().await;
    let outside = put(&mut direct, "/svc/cas/x", &record("127.0.0.1:7609", 1)).await;
    match r2.update(&two).await {
        Err(EtcdError::Conflict { found, .. }) => {
            assert_eq!(found, Some(i64::try_from(outside).unwrap()));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }

    // The first registration's lease no longer holds the key: revoking it
    // leaves the record alone.
    r1.deregister().await.unwrap();
    let _ = direct
        .put(
            "/svc/cas/x",
            record("127.0.0.1:7602", 3),
            Some(PutOptions::new().with_lease(r2.lease_id())),
        )
        .await
        .unwrap();
    converge(&pool, &set(&[("127.0.0.1:7602", 3)])).await;
    r2.deregister().await.unwrap();
    converge(&pool, &set(&[])).await;
}

#[tokio::test]
#[ignore = "needs etcd; run by .ci/run"]
async fn a_lost_lease_registers_again() {
    let etcd = Etcd::start().await;
    let pool = pool(source(etcd.config(), "/svc/lost/"));
    let me = Endpoint::new("127.0.0.1:7701".parse().unwrap());
    let registration = EtcdRegistrar::new(etcd.config(), "/svc/lost/")
        .ttl(Duration::from_secs(1))
        .register("me", &me)
        .await
        .unwrap();
    converge(&pool, &set(&[("127.0.0.1:7701", 1)])).await;

    // Someone revokes the lease: the record goes, and comes back under a
    // new lease once the keep-alive hears the lease is gone.
    let old = registration.lease_id();
    let mut direct = etcd.client().await;
    direct.lease_revoke(old).await.unwrap();
    converge(&pool, &set(&[])).await;
    converge(&pool, &set(&[("127.0.0.1:7701", 1)])).await;
    assert_ne!(registration.lease_id(), old);
    assert!(!registration.is_lost());
    registration.deregister().await.unwrap();
    converge(&pool, &set(&[])).await;
}

#[tokio::test]
#[ignore = "needs etcd; run by .ci/run"]
async fn registrations_survive_an_etcd_restart() {
    let mut etcd = Etcd::start().await;
    let registration = EtcdRegistrar::new(etcd.config(), "/svc/keep/")
        .ttl(Duration::from_secs(2))
        .register("me", &Endpoint::new("127.0.0.1:7801".parse().unwrap()))
        .await
        .unwrap();
    etcd.restart().await;
    // Well past the TTL: the keep-alives found the restarted etcd.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut direct = etcd.client().await;
    let r = direct.get("/svc/keep/me", None).await.unwrap();
    assert_eq!(r.kvs().len(), 1, "the record outlived its TTL");
    assert_eq!(r.kvs()[0].lease(), registration.lease_id());
    assert!(registration.is_alive());
    registration.deregister().await.unwrap();
    let r = direct.get("/svc/keep/me", None).await.unwrap();
    assert!(r.kvs().is_empty());
}

#[tokio::test]
#[ignore = "needs etcd; run by .ci/run"]
async fn credentials_pass_through_and_stay_out_of_sight() {
    let etcd = Etcd::start().await;
    let mut direct = etcd.client().await;
    let _ = direct.role_add("root").await; // may exist already
    direct.user_add("root", "root-secret", None).await.unwrap();
    direct.user_grant_role("root", "root").await.unwrap();
    direct.auth_enable().await.unwrap();

    let good = etcd.config().user("root", "root-secret");
    assert!(!format!("{good:?}").contains("root-secret"));
    let registrar = EtcdRegistrar::new(good.clone(), "/svc/auth/");
    assert!(!format!("{registrar:?}").contains("root-secret"));
    let registration = registrar
        .register("a", &Endpoint::new("127.0.0.1:7901".parse().unwrap()))
        .await
        .unwrap();
    assert!(!format!("{registration:?}").contains("root-secret"));
    let authed = source(good, "/svc/auth/");
    assert!(!format!("{authed:?}").contains("root-secret"));
    let authed = pool(authed);
    converge(&authed, &set(&[("127.0.0.1:7901", 1)])).await;

    // Without credentials, or with wrong ones, nothing is read and the
    // failure (not the password) is reported.
    for config in [etcd.config(), etcd.config().user("root", "wrong-secret")] {
        let source = source(config, "/svc/auth/");
        let status = source.status();
        let pool = pool(source);
        status_until(&status, "failing", |s| s.last_error().is_some()).await;
        assert!(pool.snapshot().is_empty());
        assert!(!status.is_connected());
        let error = status.last_error().unwrap();
        assert!(!error.contains("secret"), "{error}");
    }
    registration.deregister().await.unwrap();
}

/// The number of watchers etcd holds, from its metrics.
async fn watchers(etcd: &Etcd) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(etcd.addr()).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no watcher gauge in etcd's metrics"))
}

#[tokio::test]
#[ignore = "needs etcd; run by .ci/run"]
async fn nothing_outlives_its_owner() {
    let etcd = Etcd::start().await;
    assert_eq!(watchers(&etcd).await, 0);
    let source = source(etcd.config(), "/svc/drop/");
    let status = source.status();
    let pool = pool(source);
    status_until(&status, "connected", EtcdStatus::is_connected).await;
    assert_eq!(watchers(&etcd).await, 1);

    // Dropping the pool drops the source, which stops its watch task.
    drop(pool);
    let gone = tokio::time::timeout(LIMIT, async {
        while watchers(&etcd).await != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the watch outlived the pool");

    // Dropping a registration revokes its lease: the record goes at once,
    // long before its TTL.
    let registration = EtcdRegistrar::new(etcd.config(), "/svc/drop/")
        .ttl(Duration::from_secs(60))
        .register("a", &Endpoint::new("127.0.0.1:7951".parse().unwrap()))
        .await
        .unwrap();
    let mut direct = etcd.client().await;
    assert_eq!(
        direct.get("/svc/drop/a", None).await.unwrap().kvs().len(),
        1
    );
    drop(registration);
    let revoked = tokio::time::timeout(LIMIT, async {
        while !direct
            .get("/svc/drop/a", None)
            .await
            .unwrap()
            .kvs()
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(revoked.is_ok(), "the record outlived its registration");
}

#[cfg(feature = "etcd-tls")]
#[tokio::test]
#[ignore = "needs etcd; run by .ci/run"]
async fn tls_passes_through() {
    let etcd = Etcd::start_with(true).await;
    let registration = EtcdRegistrar::new(etcd.config(), "/svc/tls/")
        .register("a", &Endpoint::new("127.0.0.1:7961".parse().unwrap()))
        .await
        .unwrap();
    let secure = pool(source(etcd.config(), "/svc/tls/"));
    converge(&secure, &set(&[("127.0.0.1:7961", 1)])).await;

    // Plain HTTP/2 to a TLS port gets nowhere; the failure is reported.
    let plain = source(config_for(&etcd.endpoint()), "/svc/tls/");
    let status = plain.status();
    let _plain = pool(plain);
    status_until(&status, "failing", |s| s.last_error().is_some()).await;
    assert!(!status.is_connected());
    registration.deregister().await.unwrap();
    converge(&secure, &set(&[])).await;
}
