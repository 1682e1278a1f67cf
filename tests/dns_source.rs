//! The DNS source against a real DNS server: each test starts its own
//! `dnsmasq` on a free loopback port, serving SRV and A/AAAA records for
//! `test.lb`.
//!
//! These tests are ignored ("needs dnsmasq") so a plain `cargo test` passes on machines
//! without dnsmasq; `.ci/run` installs it and runs them with
//! `--include-ignored`. Run them locally with
//! `cargo test --test dns_source -- --include-ignored`.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tower::{Layer, service_fn};
use tower_lb::balance::{Balance, BalanceLayer, WeightedRoundRobin};
use tower_lb::discover::{Change, DnsSource, Source};
use tower_lb::failover::{FailoverConfig, FailoverLayer};
use tower_lb::pool::{DiscoverLayer, Pool};
use tower_lb::{DiscoveryError, Endpoint};

/// How long any wait in these tests may take.
const LIMIT: Duration = Duration::from_secs(10);

/// Flags every dnsmasq here runs with: loopback only, no upstream, no
/// files, authoritative for `test.lb` with a 1 s TTL.
const BASE: &[&str] = &[
    "--keep-in-foreground",
    "--listen-address=127.0.0.1",
    "--bind-interfaces",
    "--no-resolv",
    "--no-hosts",
    "--no-daemon",
    "--conf-file=/dev/null",
    "--pid-file",
    "--log-facility=-",
    "--local=/test.lb/",
    "--local-ttl=1",
];

/// `_api._tcp.test.lb`: a (weight 3) and b (weight 1) at priority 10, c at
/// priority 20, and a record with port 0.
const API: &[&str] = &[
    "--srv-host=_api._tcp.test.lb,a.test.lb,8080,10,3",
    "--srv-host=_api._tcp.test.lb,b.test.lb,8080,10,1",
    "--srv-host=_api._tcp.test.lb,c.test.lb,9090,20,1",
    "--srv-host=_api._tcp.test.lb,d.test.lb,0,10,5",
    "--host-record=a.test.lb,127.0.0.2",
    "--host-record=b.test.lb,127.0.0.3",
    "--host-record=c.test.lb,127.0.0.4",
    "--host-record=d.test.lb,127.0.0.5",
];

/// The dnsmasq binary; panics when it is missing, so CI fails loudly
/// rather than skipping.
fn dnsmasq_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("dnsmasq"));
    on_path
        .chain(["/usr/sbin/dnsmasq".into(), "/sbin/dnsmasq".into()])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "dnsmasq is not installed: these tests need a real DNS server \
                 (Debian: apt-get install dnsmasq-base; .ci/run installs it)"
            )
        })
}

/// A loopback port free for both UDP and TCP right now.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A dnsmasq child, killed on drop.
struct Dnsmasq {
    child: Child,
    port: u16,
}

impl Dnsmasq {
    fn start(records: &[&str]) -> Self {
        Dnsmasq::start_on(free_port(), records)
    }

    fn start_on(port: u16, records: &[&str]) -> Self {
        let child = Command::new(dnsmasq_binary())
            .args(BASE)
            .arg(format!("--port={port}"))
            .args(records)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dnsmasq");
        let mut d = Dnsmasq { child, port };
        d.wait_ready();
        d
    }

    /// Waits until dnsmasq accepts TCP connections on its port.
    fn wait_ready(&mut self) {
        // Checked every 10 ms, up to LIMIT.
        for _ in 0..LIMIT.as_millis() / 10 {
            if let Some(status) = self.child.try_wait().expect("poll dnsmasq") {
                let mut err = String::new();
                if let Some(e) = &mut self.child.stderr {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("dnsmasq exited with {status}: {err}");
            }
            if TcpStream::connect(self.addr()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("dnsmasq not ready on port {} within {LIMIT:?}", self.port);
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops this server and starts another with `records` on the same
    /// port.
    fn restart(&mut self, records: &[&str]) {
        self.stop();
        *self = Dnsmasq::start_on(self.port, records);
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A source pointed at `dns` that refreshes quickly.
fn srv(dns: &Dnsmasq, name: &str) -> DnsSource {
    DnsSource::srv(name)
        .nameserver(dns.addr())
        .min_ttl(Duration::from_millis(50))
        .max_ttl(Duration::from_millis(200))
        .timeout(Duration::from_millis(500))
}

fn pool(source: DnsSource) -> Pool<()> {
    let connector = service_fn(|_: Endpoint| async { Ok::<_, std::convert::Infallible>(()) });
    DiscoverLayer::new(source).layer(connector)
}

/// `(key, tier, weight)` of every member.
fn members(pool: &Pool<()>) -> Vec<(String, u8, u32)> {
    pool.snapshot()
        .members()
        .iter()
        .map(|m| {
            let e = m.endpoint();
            (e.key().to_owned(), e.priority(), e.weight())
        })
        .collect()
}

fn keys(pool: &Pool<()>) -> Vec<String> {
    members(pool).into_iter().map(|(k, ..)| k).collect()
}

async fn applied(pool: &Pool<()>, revision: u64) {
    assert!(
        tokio::time::timeout(LIMIT, pool.applied(revision))
            .await
            .unwrap_or_else(|_| panic!("revision {revision} not applied: {:?}", pool.discovery())),
        "source ended"
    );
}

/// Waits until discovery has reported `n` errors.
async fn errors(pool: &Pool<()>, n: u64) {
    tokio::time::timeout(LIMIT, async {
        while pool.discovery().errors < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("expected {n} errors, have {:?}", pool.discovery()));
}

/// The first item a source yields.
async fn first(source: &mut DnsSource) -> Result<tower_lb::discover::Update, DiscoveryError> {
    tokio::time::timeout(LIMIT, source.next_update())
        .await
        .expect("an answer in time")
        .expect("the source does not end")
}

fn snapshot_len(update: &tower_lb::discover::Update) -> usize {
    match update.change() {
        Change::Snapshot(e) => e.len(),
        Change::Delta { .. } => panic!("a DNS source sends snapshots"),
    }
}

#[tokio::test]
#[ignore = "needs dnsmasq; run by .ci/run"]
async fn srv_priorities_become_tiers_and_weights_become_shares() {
    let dns = Dnsmasq::start(API);
    let pool = pool(srv(&dns, "_api._tcp.test.lb"));
    applied(&pool, 1).await;
    assert_eq!(
        members(&pool),
        [
            ("127.0.0.2:8080".to_owned(), 0, 3),
            ("127.0.0.3:8080".to_owned(), 0, 1),
            ("127.0.0.4:9090".to_owned(), 1, 1),
        ],
        "priority 10 is tier 0, 20 tier 1; the port-0 record is left out"
    );
    assert_eq!(
        pool.snapshot().members()[0]
            .endpoint()
            .tag("dns.srv.target"),
        Some("a.test.lb.")
    );
    errors(&pool, 1).await;
    let last = pool.discovery().last_error.unwrap();
    assert!(last.contains("port 0"), "{last}");

    // Balance → Failover → Pool: tier 0 takes all the traffic, split 3:1
    // by weight; smooth weighted round robin is exact over whole cycles.
    let view = FailoverLayer::new(FailoverConfig::new()).layer(pool.clone());
    let lb: Balance<(), WeightedRoundRobin> =
        BalanceLayer::new(WeightedRoundRobin).seed(7).layer(view);
    tokio::time::timeout(LIMIT, async {
        while lb.snapshot().members().len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the view has the primaries");
    let mut hits: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let snapshot = lb.snapshot();
        let i = lb.pick_index().expect("a pick");
        *hits
            .entry(snapshot.members()[i].endpoint().key().to_owned())
            .or_default() += 1;
    }
    assert_eq!(hits.get("127.0.0.2:8080"), Some(&300), "{hits:?}");
    assert_eq!(hits.get("127.0.0.3:8080"), Some(&100), "{hits:?}");
    assert_eq!(hits.get("127.0.0.4:9090"), None, "the backup tier is idle");
}

#[tokio::test]
#[ignore = "needs dnsmasq; run by .ci/run"]
async fn a_names_give_every_address_at_the_port() {
    let dns = Dnsmasq::start(&["--host-record=m.test.lb,127.0.0.6,::6"]);
    let pool = pool(
        DnsSource::a("m.test.lb", 80)
            .nameserver(dns.addr())
            .min_ttl(Duration::from_millis(50)),
    );
    applied(&pool, 1).await;
    assert_eq!(
        members(&pool),
        [
            ("127.0.0.6:80".to_owned(), 0, 1),
            ("[::6]:80".to_owned(), 0, 1)
        ]
    );
}

#[tokio::test]
#[ignore = "needs dnsmasq; run by .ci/run"]
async fn a_changed_record_set_is_picked_up_when_the_ttl_expires() {
    let mut dns = Dnsmasq::start(&[
        "--srv-host=_api._tcp.test.lb,a.test.lb,8080,10,1",
        "--host-record=a.test.lb,127.0.0.2",
    ]);
    let pool = pool(srv(&dns, "_api._tcp.test.lb"));
    applied(&pool, 1).await;
    assert_eq!(keys(&pool), ["127.0.0.2:8080"]);

    // Several refreshes of the same answer send nothing new.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(pool.discovery().applied_revision, Some(1));

    dns.restart(&[
        "--srv-host=_api._tcp.test.lb,a.test.lb,8080,10,1",
        "--srv-host=_api._tcp.test.lb,b.test.lb,8081,5,2",
        "--host-record=a.test.lb,127.0.0.2",
        "--host-record=b.test.lb,127.0.0.3",
    ]);
    applied(&pool, 2).await;
    assert_eq!(
        members(&pool),
        [
            ("127.0.0.2:8080".to_owned(), 1, 1),
            ("127.0.0.3:8081".to_owned(), 0, 2),
        ],
        "b's lower priority makes it the new primary"
    );
}

#[tokio::test]
#[ignore = "needs dnsmasq; run by .ci/run"]
async fn a_server_down_keeps_the_last_good_set_and_reports_once() {
    let mut dns = Dnsmasq::start(API);
    let pool = pool(srv(&dns, "_api._tcp.test.lb"));
    applied(&pool, 1).await;
    errors(&pool, 1).await; // the port-0 record
    let before = keys(&pool);
    assert_eq!(before.len(), 3);

    dns.stop();
    errors(&pool, 2).await;
    let last = pool.discovery().last_error.unwrap();
    assert!(last.contains("_api._tcp.test.lb"), "{last}");
    // Retries keep failing, but one streak is one report.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = pool.discovery();
    assert_eq!(status.errors, 2, "{status:?}");
    assert_eq!(status.applied_revision, Some(1));
    assert_eq!(keys(&pool), before, "last good set kept");

    // Back up with the same records: nothing to send.
    dns.restart(API);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(pool.discovery().applied_revision, Some(1));
    assert_eq!(keys(&pool), before);
}

#[tokio::test]
#[ignore = "needs dnsmasq; run by .ci/run"]
async fn past_max_staleness_the_set_is_emptied() {
    let mut dns = Dnsmasq::start(&[
        "--srv-host=_api._tcp.test.lb,a.test.lb,8080,10,1",
        "--host-record=a.test.lb,127.0.0.2",
    ]);
    let pool = pool(srv(&dns, "_api._tcp.test.lb").max_staleness(Duration::from_millis(500)));
    applied(&pool, 1).await;
    dns.stop();
    applied(&pool, 2).await;
    assert!(pool.snapshot().is_empty());
    assert_eq!(pool.discovery().errors, 1);

    dns.restart(&[
        "--srv-host=_api._tcp.test.lb,a.test.lb,8080,10,1",
        "--host-record=a.test.lb,127.0.0.2",
    ]);
    applied(&pool, 3).await;
    assert_eq!(keys(&pool), ["127.0.0.2:8080"]);
}

#[tokio::test]
#[ignore = "needs dnsmasq; run by .ci/run"]
async fn nxdomain_is_an_empty_set_not_an_error() {
    let dns = Dnsmasq::start(API);
    for mut source in [
        srv(&dns, "_missing._tcp.test.lb"),
        DnsSource::a("missing.test.lb", 80).nameserver(dns.addr()),
    ] {
        let update = first(&mut source).await.expect("a definite answer");
        assert_eq!(update.revision(), 1);
        assert_eq!(snapshot_len(&update), 0);
    }
}

#[tokio::test]
#[ignore = "needs dnsmasq; run by .ci/run"]
async fn a_lone_root_target_is_an_empty_set() {
    // With no target, dnsmasq serves the RFC 2782 "not available" record
    // (target ".").
    let dns = Dnsmasq::start(&["--srv-host=_none._tcp.test.lb"]);
    let mut source = srv(&dns, "_none._tcp.test.lb");
    let update = first(&mut source).await.expect("a definite answer");
    assert_eq!(update.revision(), 1);
    assert_eq!(snapshot_len(&update), 0);
}

/// `_api._tcp.test.lb` with records but not one usable: a port-0 record
/// and a target with no address.
const UNUSABLE: &[&str] = &[
    "--srv-host=_api._tcp.test.lb,a.test.lb,0,10,3",
    "--srv-host=_api._tcp.test.lb,nowhere.test.lb,8080,10,1",
    "--host-record=a.test.lb,127.0.0.2",
];

#[tokio::test]
#[ignore = "needs dnsmasq; run by .ci/run"]
async fn srv_records_none_of_them_usable_keep_the_last_good_set() {
    let mut dns = Dnsmasq::start(&[
        "--srv-host=_api._tcp.test.lb,a.test.lb,8080,10,1",
        "--host-record=a.test.lb,127.0.0.2",
    ]);
    let pool = pool(srv(&dns, "_api._tcp.test.lb"));
    applied(&pool, 1).await;

    dns.restart(UNUSABLE);
    let reported = tokio::time::timeout(LIMIT, async {
        while !pool
            .discovery()
            .last_error
            .is_some_and(|e| e.contains("none of the 2 record(s) from `_api._tcp.test.lb`"))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(reported.is_ok(), "{:?}", pool.discovery());
    // Several rounds of the same answer: reported once, nothing applied.
    let errors = pool.discovery().errors;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = pool.discovery();
    assert_eq!(status.errors, errors, "{status:?}");
    assert_eq!(status.applied_revision, Some(1));
    assert_eq!(keys(&pool), ["127.0.0.2:8080"], "last good set kept");

    // A definite "not available" does empty the set.
    dns.restart(&["--srv-host=_api._tcp.test.lb"]);
    applied(&pool, 2).await;
    assert!(pool.snapshot().is_empty());
}

#[tokio::test]
#[ignore = "needs dnsmasq; run by .ci/run"]
async fn unusable_srv_records_are_invalid_records_then_no_valid_records_once() {
    let dns = Dnsmasq::start(UNUSABLE);
    let mut source = srv(&dns, "_api._tcp.test.lb");
    let mut texts = Vec::new();
    for _ in 0..2 {
        match first(&mut source).await {
            Err(DiscoveryError::InvalidRecord { record, source }) => {
                assert!(record.starts_with("_api._tcp.test.lb SRV "), "{record}");
                texts.push(format!("{record}: {source}"));
            }
            other => panic!("expected an invalid record, got {other:?}"),
        }
    }
    assert!(texts.iter().any(|t| t.contains("port 0")), "{texts:?}");
    assert!(
        texts.iter().any(|t| t.contains("nowhere.test.lb")),
        "{texts:?}"
    );
    match first(&mut source).await {
        Err(DiscoveryError::NoValidRecords { origin, invalid }) => {
            assert_eq!((origin.as_str(), invalid), ("_api._tcp.test.lb", 2));
        }
        other => panic!("expected NoValidRecords, got {other:?}"),
    }
    // No snapshot, and no repeat, over several refreshes.
    let more = tokio::time::timeout(Duration::from_millis(500), source.next_update()).await;
    assert!(more.is_err(), "nothing more expected, got {more:?}");
}

#[tokio::test]
#[ignore = "needs dnsmasq; run by .ci/run"]
async fn a_silent_server_fails_the_lookup_within_the_timeout() {
    // A bound socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let timeout = Duration::from_millis(300);
    let mut source = DnsSource::srv("_api._tcp.test.lb")
        .nameserver(silent.local_addr().unwrap())
        .timeout(timeout);
    let started = tokio::time::Instant::now();
    let err = first(&mut source).await.expect_err("no answer is an error");
    let took = started.elapsed();
    assert!(took < timeout + Duration::from_millis(500), "took {took:?}");
    assert!(
        took >= timeout / 2,
        "failed at once ({took:?}), not by timing out: {err:?}"
    );
    let DiscoveryError::Source(cause) = err else {
        panic!("{err:?}")
    };
    assert!(cause.to_string().contains("_api._tcp.test.lb"), "{cause}");
}
