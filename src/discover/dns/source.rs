//! The DNS source: its settings, the resolver, one lookup round at a time,
//! and what a round's success or failure sends.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use tokio::time::{Instant, Sleep};

use crate::discover::{Source, Update};
use crate::endpoint::Endpoint;
use crate::error::{BoxError, DiscoveryError, InvalidEndpoint, InvalidSetting, check, valid};
use crate::trace::event;

type Round = Pin<Box<dyn Future<Output = Result<Resolved, BoxError>> + Send>>;

/// What to look up.
#[derive(Clone, Debug)]
enum Query {
    /// Every address of `name`, at `port`.
    Ip { name: String, port: u16 },
    /// The SRV records of `name`.
    Srv { name: String },
}

impl Query {
    fn name(&self) -> &str {
        match self {
            Query::Ip { name, .. } | Query::Srv { name } => name,
        }
    }
}

/// Endpoints from DNS: the addresses of a name (A/AAAA) or the records of
/// an SRV name, re-resolved when their TTL expires (feature `dns`).
///
/// # A/AAAA ([`DnsSource::a`])
///
/// Every IPv4 and IPv6 address of the name becomes an endpoint at the
/// given port, keyed `ip:port`, weight 1, priority 0.
///
/// # SRV ([`DnsSource::srv`])
///
/// One endpoint per address of each record's target, keyed `ip:port` (the
/// same key [`Endpoint::new`] and [`DnsSource::a`] give, so stats carry
/// over when a name moves from one record type to the other, and a target
/// with several addresses gets one distinct endpoint per address). Each
/// endpoint is tagged `dns.srv.target` with the record's target name.
///
/// - **priority → tier**: the distinct SRV priorities of the usable records
///   are ranked, lowest first; rank 0 is tier 0 (primary), the next tier 1,
///   and so on, saturating at 255. Priorities 10, 20, 20, 50 become tiers
///   0, 1, 1, 2.
/// - **weight → weight**, unchanged. A weight-0 record is drained while a
///   non-zero one in its tier is eligible (RFC 2782 gives weight 0 "a very
///   small chance"); when every weight is 0 they stay 0, and the balancer
///   then serves them uniformly.
/// - A single record whose target is `.` means "service not available"
///   (RFC 2782): an empty set. Among other records, a `.` target is left
///   out and reported.
/// - A record with port 0, and a target with no address, are left out and
///   reported (each as a [`DiscoveryError::InvalidRecord`] naming the
///   name and the record) each time the set of such
///   problems changes. When they leave no usable record at all, the answer
///   counts as broken, not empty: no snapshot is sent (the pool keeps its
///   last good set) and [`DiscoveryError::NoValidRecords`] follows the
///   problems.
/// - Two records that lead to the same `ip:port` make one endpoint, the one
///   with the lower tier.
///
/// # Refresh and failures
///
/// The name is resolved again when the shortest TTL in the answer expires,
/// clamped to [`min_ttl`](DnsSource::min_ttl) (default 1 s) and
/// [`max_ttl`](DnsSource::max_ttl) (default 5 min); a snapshot is sent only
/// when the sorted endpoint list changed (the first one always). A name
/// that does not exist (NXDOMAIN) or has no records of the type is a
/// definite answer: an empty set, not an error. Revisions count up from 1.
///
/// A lookup that fails (no answer within [`timeout`](DnsSource::timeout),
/// default 2 s, or a server failure) is reported once per streak of
/// failures as a [`DiscoveryError::Source`]; the pool keeps the last good
/// set and the lookup is retried every `min_ttl`. With
/// [`max_staleness`](DnsSource::max_staleness) set, a streak that has
/// lasted that long since the last success sends an empty snapshot. By
/// default there is no limit: when DNS is down, the addresses it last gave
/// are usually still serving, and an empty set would fail every request.
/// (A pool built with `keep_last_on_empty` ignores empty snapshots, both
/// these and NXDOMAIN's.)
///
/// The resolver is built on the first poll, inside the pool's runtime: it
/// uses the system configuration (`/etc/resolv.conf` on Unix), or one
/// server given with [`nameserver`](DnsSource::nameserver). A name with a
/// trailing dot is absolute; without one, the system's search list may
/// apply. A name that is not a valid DNS name is reported as a failure.
///
/// ```no_run
/// use std::time::Duration;
/// use tower::service_fn;
/// use tower::ServiceBuilder;
/// use tower_lb::balance::{BalanceLayer, WeightedRoundRobin};
/// use tower_lb::discover::DnsSource;
/// use tower_lb::pool::DiscoverLayer;
/// use tower_lb::Endpoint;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Tiers and weights straight from the zone:
/// //   _api._tcp.example.com. 30 IN SRV 10 3 8080 a.example.com.
/// //   _api._tcp.example.com. 30 IN SRV 10 1 8080 b.example.com.
/// //   _api._tcp.example.com. 30 IN SRV 20 1 8080 backup.example.com.
/// let source = DnsSource::srv("_api._tcp.example.com.")
///     .max_ttl(Duration::from_secs(60))
///     .max_staleness(Duration::from_secs(3600));
///
/// let connector = service_fn(|ep: Endpoint| async move {
///     Ok::<_, std::convert::Infallible>(service_fn(move |req: String| {
///         let ep = ep.clone();
///         async move { Ok::<_, std::convert::Infallible>(format!("{ep} got {req}")) }
///     }))
/// });
/// let client = ServiceBuilder::new()
///     .layer(BalanceLayer::new(WeightedRoundRobin))
///     .layer(DiscoverLayer::new(source))
///     .service(connector);
/// # let _ = client;
/// # }
/// ```
pub struct DnsSource {
    query: Query,
    nameserver: Option<SocketAddr>,
    min_ttl: Duration,
    max_ttl: Duration,
    max_staleness: Option<Duration>,
    timeout: Duration,
    resolver: Option<TokioResolver>,
    round: Option<Round>,
    timer: Option<Pin<Box<Sleep>>>,
    revision: u64,
    /// The set last sent, sorted by key.
    last: Option<Vec<Endpoint>>,
    /// When a round last succeeded.
    last_success: Option<Instant>,
    /// Whether the current failure streak was reported.
    failing: bool,
    /// Record problems last reported.
    problems: Vec<Problem>,
    pending: VecDeque<Result<Update, DiscoveryError>>,
}

impl fmt::Debug for DnsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsSource")
            .field("query", &self.query)
            .field("nameserver", &self.nameserver)
            .field("min_ttl", &self.min_ttl)
            .field("max_ttl", &self.max_ttl)
            .field("max_staleness", &self.max_staleness)
            .field("timeout", &self.timeout)
            .field("revision", &self.revision)
            .field("failing", &self.failing)
            .finish()
    }
}

impl Clone for DnsSource {
    /// Another watch of the same name with the same settings, starting
    /// afresh (revision 1 is its first snapshot).
    fn clone(&self) -> Self {
        DnsSource {
            nameserver: self.nameserver,
            min_ttl: self.min_ttl,
            max_ttl: self.max_ttl,
            max_staleness: self.max_staleness,
            timeout: self.timeout,
            ..DnsSource::new(self.query.clone())
        }
    }
}

impl DnsSource {
    fn new(query: Query) -> Self {
        DnsSource {
            query,
            nameserver: None,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            max_staleness: None,
            timeout: Duration::from_secs(2),
            resolver: None,
            round: None,
            timer: None,
            revision: 0,
            last: None,
            last_success: None,
            failing: false,
            problems: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    /// Every A and AAAA address of `name`, each an endpoint at `port` with
    /// weight 1, keyed `ip:port`.
    ///
    /// # Panics
    ///
    /// When `port` is 0, which no endpoint can be reached at;
    /// [`try_a`](DnsSource::try_a) returns the error instead.
    #[track_caller]
    pub fn a(name: &str, port: u16) -> Self {
        valid(Self::try_a(name, port))
    }

    /// [`a`](DnsSource::a), refusing port 0.
    pub fn try_a(name: &str, port: u16) -> Result<Self, InvalidSetting> {
        check(port != 0, "DnsSource::a", port, "port must not be 0")?;
        Ok(DnsSource::new(Query::Ip {
            name: name.to_owned(),
            port,
        }))
    }

    /// One endpoint per address of each SRV record of `name` (such as
    /// `_api._tcp.example.com.`): SRV priorities become tiers, SRV weights
    /// become weights; see the [type docs](DnsSource#srv-dnssourcesrv).
    pub fn srv(name: &str) -> Self {
        DnsSource::new(Query::Srv {
            name: name.to_owned(),
        })
    }

    /// Asks this server (over UDP, falling back to TCP) instead of the
    /// system's configured ones.
    #[must_use]
    pub fn nameserver(mut self, addr: SocketAddr) -> Self {
        self.nameserver = Some(addr);
        self
    }

    /// The shortest time between lookups (default 1 s): a shorter TTL is
    /// raised to it, and failed lookups are retried this often. At least
    /// 1 ms.
    ///
    /// # Panics
    ///
    /// When `ttl` is shorter than 1 ms;
    /// [`try_min_ttl`](DnsSource::try_min_ttl) returns the error instead.
    #[must_use]
    #[track_caller]
    pub fn min_ttl(self, ttl: Duration) -> Self {
        valid(self.try_min_ttl(ttl))
    }

    /// [`min_ttl`](DnsSource::min_ttl), refusing less than 1 ms.
    pub fn try_min_ttl(mut self, ttl: Duration) -> Result<Self, InvalidSetting> {
        check(
            ttl >= Duration::from_millis(1),
            "DnsSource::min_ttl",
            ttl,
            "must be at least 1ms",
        )?;
        self.min_ttl = ttl;
        Ok(self)
    }

    /// The longest time between lookups (default 5 min): a longer TTL is
    /// lowered to it. Never below [`min_ttl`](DnsSource::min_ttl).
    #[must_use]
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }

    /// How long the last good set is kept while lookups fail; after that an
    /// empty snapshot is sent. Default: no limit.
    #[must_use]
    pub fn max_staleness(mut self, staleness: Duration) -> Self {
        self.max_staleness = Some(staleness);
        self
    }

    /// How long one lookup (with an SRV name, the SRV query and its
    /// targets' address queries together) may take before it counts as a
    /// failure (default 2 s).
    ///
    /// # Panics
    ///
    /// When `timeout` is zero (every lookup would fail);
    /// [`try_timeout`](DnsSource::try_timeout) returns the error instead.
    #[must_use]
    #[track_caller]
    pub fn timeout(self, timeout: Duration) -> Self {
        valid(self.try_timeout(timeout))
    }

    /// [`timeout`](DnsSource::timeout), refusing zero.
    pub fn try_timeout(mut self, timeout: Duration) -> Result<Self, InvalidSetting> {
        check(
            !timeout.is_zero(),
            "DnsSource::timeout",
            timeout,
            "must be longer than zero",
        )?;
        self.timeout = timeout;
        Ok(self)
    }

    /// The name being watched.
    pub fn name(&self) -> &str {
        self.query.name()
    }

    fn resolver(&mut self) -> Result<TokioResolver, BoxError> {
        if let Some(r) = &self.resolver {
            return Ok(r.clone());
        }
        let mut builder = match self.nameserver {
            Some(addr) => {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut server.connections {
                    c.port = addr.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio()
                .map_err(|e| format!("reading the system DNS configuration: {e}"))?,
        };
        let opts = builder.options_mut();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = self.timeout;
        if self.nameserver.is_some() {
            opts.use_hosts_file = ResolveHosts::Never;
        }
        let resolver = builder.build()?;
        self.resolver = Some(resolver.clone());
        Ok(resolver)
    }

    fn start(&mut self) {
        let resolver = match self.resolver() {
            Ok(r) => r,
            Err(e) => {
                let wait = self.failed(e);
                self.wait(wait);
                return;
            }
        };
        // Without this the resolver's cache would answer until the record's
        // own TTL, whatever `max_ttl` says.
        resolver.clear_cache();
        let query = self.query.clone();
        let timeout = self.timeout;
        self.round = Some(Box::pin(async move {
            let name = query.name().to_owned();
            match tokio::time::timeout(timeout, resolve(resolver, query)).await {
                Ok(r) => r.map_err(|e| format!("resolving {name}: {e}").into()),
                Err(_) => Err(format!("resolving {name}: no answer within {timeout:?}").into()),
            }
        }));
    }

    fn wait(&mut self, wait: Duration) {
        crate::discover::source::arm(&mut self.timer, Instant::now() + wait);
    }

    /// Records a successful round; returns how long to wait for the next.
    fn succeeded(&mut self, resolved: Resolved) -> Duration {
        self.failing = false;
        self.last_success = Some(Instant::now());
        let name = self.query.name();
        let ttl = clamp(resolved.ttl, self.min_ttl, self.max_ttl);
        // Records, but not one usable: a broken answer, not "no instances".
        let unusable = resolved.endpoints.is_empty() && !resolved.problems.is_empty();
        if resolved.problems != self.problems {
            for (record, why) in &resolved.problems {
                self.pending.push_back(Err(DiscoveryError::InvalidRecord {
                    record: format!("{name} {record}"),
                    source: why.clone(),
                }));
            }
            if unusable {
                event!(
                    warn,
                    name,
                    "dns: no usable record; keeping the last good set"
                );
                self.pending.push_back(Err(DiscoveryError::NoValidRecords {
                    origin: name.to_owned(),
                    invalid: resolved.problems.len(),
                }));
            }
            self.problems = resolved.problems;
        }
        if unusable {
            return ttl;
        }
        let endpoints = resolved.endpoints;
        if self.last.as_ref() != Some(&endpoints) {
            self.revision += 1;
            event!(
                debug,
                name,
                revision = self.revision,
                endpoints = endpoints.len(),
                "dns: new endpoint set"
            );
            self.pending
                .push_back(Ok(Update::snapshot(self.revision, endpoints.clone())));
            self.last = Some(endpoints);
        }
        ttl
    }

    /// Records a failed round; returns how long to wait for the retry.
    fn failed(&mut self, error: BoxError) -> Duration {
        if !self.failing {
            self.failing = true;
            event!(warn, name = self.query.name(), error = %error, "dns: lookup failed");
            self.pending.push_back(Err(DiscoveryError::Source(error)));
        }
        if let (Some(max), Some(since)) = (self.max_staleness, self.last_success) {
            let nonempty = self.last.as_ref().is_some_and(|l| !l.is_empty());
            if nonempty && since.elapsed() >= max {
                self.revision += 1;
                event!(
                    warn,
                    name = self.query.name(),
                    revision = self.revision,
                    "dns: last good set too old, sending an empty set"
                );
                self.pending
                    .push_back(Ok(Update::snapshot(self.revision, Vec::new())));
                self.last = Some(Vec::new());
            }
        }
        self.min_ttl
    }
}

impl Source for DnsSource {
    /// The name resolved (without a trailing dot).
    fn name(&self) -> Option<&str> {
        Some(self.query.name().trim_end_matches('.'))
    }

    fn poll_update(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Update, DiscoveryError>>> {
        loop {
            if let Some(next) = self.pending.pop_front() {
                return Poll::Ready(Some(next));
            }
            if let Some(round) = &mut self.round {
                let result = match round.as_mut().poll(cx) {
                    Poll::Ready(r) => r,
                    Poll::Pending => return Poll::Pending,
                };
                self.round = None;
                let wait = match result {
                    Ok(resolved) => self.succeeded(resolved),
                    Err(e) => self.failed(e),
                };
                self.wait(wait);
                continue;
            }
            if let Some(timer) = &mut self.timer {
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            self.start();
        }
    }
}

/// A record left out of an answer: which (as DNS prints it) and why.
pub(super) type Problem = (String, InvalidEndpoint);

/// A [`Problem`] whose cause is one of DNS's own rules.
pub(super) fn problem(record: String, reason: &str) -> Problem {
    let reason = reason.to_owned();
    (record, InvalidEndpoint::Malformed { reason })
}

/// The outcome of one successful round.
#[derive(Debug)]
pub(super) struct Resolved {
    /// Sorted by key, one per key.
    pub(super) endpoints: Vec<Endpoint>,
    /// Records left out, and why.
    pub(super) problems: Vec<Problem>,
    /// The shortest TTL seen, if any record was.
    pub(super) ttl: Option<Duration>,
}

fn clamp(ttl: Option<Duration>, min: Duration, max: Duration) -> Duration {
    ttl.unwrap_or(min).min(max).max(min)
}

/// A "no such name" or "no such record" answer, with its negative TTL.
pub(super) fn no_records(e: &NetError) -> Option<Option<u32>> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(nr)) => Some(nr.negative_ttl),
        _ => None,
    }
}

pub(super) fn min_ttl(a: Option<u32>, b: u32) -> Option<u32> {
    Some(a.map_or(b, |a| a.min(b)))
}

pub(super) fn secs(ttl: Option<u32>) -> Option<Duration> {
    ttl.map(|s| Duration::from_secs(u64::from(s)))
}

/// The addresses of `name` and the shortest TTL among them; an empty list
/// for a name with none.
pub(super) async fn addresses(
    resolver: &TokioResolver,
    name: &str,
) -> Result<(Vec<IpAddr>, Option<u32>), NetError> {
    match resolver.lookup_ip(name).await {
        Ok(lookup) => {
            let mut ttl = None;
            for r in lookup.as_lookup().answers() {
                ttl = min_ttl(ttl, r.ttl);
            }
            Ok((lookup.iter().collect(), ttl))
        }
        Err(e) => match no_records(&e) {
            Some(negative) => Ok((Vec::new(), negative)),
            None => Err(e),
        },
    }
}

async fn resolve(resolver: TokioResolver, query: Query) -> Result<Resolved, NetError> {
    match query {
        Query::Ip { name, port } => {
            let (ips, ttl) = addresses(&resolver, &name).await?;
            let endpoints = ips
                .into_iter()
                .map(|ip| Endpoint::new(SocketAddr::new(ip, port)))
                .collect();
            Ok(Resolved {
                endpoints: sorted(endpoints),
                problems: Vec::new(),
                ttl: secs(ttl),
            })
        }
        Query::Srv { name } => super::srv::resolve(&resolver, &name).await,
    }
}

/// Sorts by key and keeps one endpoint per key: the one with the lowest
/// tier (then the first found).
pub(super) fn sorted(mut endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    endpoints.sort_by(|a, b| a.key().cmp(b.key()).then(a.priority().cmp(&b.priority())));
    endpoints.dedup_by(|later, earlier| later.key() == earlier.key());
    endpoints
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_a_source_refuses_port_0() {
        let e = DnsSource::try_a("api.example.com", 0).unwrap_err();
        assert_eq!(
            (e.setting(), e.value(), e.reason()),
            ("DnsSource::a", "0", "port must not be 0")
        );
        assert!(DnsSource::try_a("api.example.com", 80).is_ok());
    }

    #[test]
    fn ttl_is_clamped() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(clamp(None, min, max), min);
        assert_eq!(clamp(Some(Duration::ZERO), min, max), min);
        assert_eq!(
            clamp(Some(Duration::from_secs(30)), min, max),
            Duration::from_secs(30)
        );
        assert_eq!(clamp(Some(Duration::from_secs(86400)), min, max), max);
        // A max below the min yields to the min.
        assert_eq!(
            clamp(Some(Duration::from_secs(5)), min, Duration::ZERO),
            min
        );
    }

    #[test]
    fn min_ttl_and_timeout_refuse_out_of_range_values() {
        let ms = Duration::from_millis;
        let src = || DnsSource::a("svc.example.", 80);
        assert_eq!(src().try_min_ttl(ms(1)).unwrap().min_ttl, ms(1));
        assert_eq!(src().try_timeout(ms(1)).unwrap().timeout, ms(1));
        let refused = |r: Result<DnsSource, InvalidSetting>| r.err().unwrap().to_string();
        assert_eq!(
            refused(src().try_min_ttl(Duration::ZERO)),
            "invalid setting DnsSource::min_ttl = 0ns: must be at least 1ms"
        );
        assert_eq!(
            refused(src().try_min_ttl(Duration::from_micros(10))),
            "invalid setting DnsSource::min_ttl = 10µs: must be at least 1ms"
        );
        assert_eq!(
            refused(src().try_timeout(Duration::ZERO)),
            "invalid setting DnsSource::timeout = 0ns: must be longer than zero"
        );
    }

    #[test]
    #[should_panic(expected = "invalid setting DnsSource::min_ttl = 0ns")]
    fn a_zero_min_ttl_panics() {
        let _ = DnsSource::a("svc.example.", 80).min_ttl(Duration::ZERO);
    }
}
