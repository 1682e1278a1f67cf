//! SRV records into endpoints: RFC 2782's rules, priorities ranked into
//! tiers, weights kept, each usable target resolved to its addresses.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;

use super::source::{Problem, Resolved, addresses, min_ttl, no_records, problem, secs, sorted};
use crate::endpoint::Endpoint;

/// The tag an SRV-discovered endpoint carries: the record's target name.
const TARGET_TAG: &str = "dns.srv.target";

/// One round for an SRV name: its records, the addresses of their usable
/// targets, and the endpoints those make.
pub(super) async fn resolve(resolver: &TokioResolver, name: &str) -> Result<Resolved, NetError> {
    let (records, ttl) = records(resolver, name).await?;
    let plan = plan(&records);
    let mut problems = plan.problems;
    let (targets, ttl) = targets(resolver, &plan.usable, ttl, &mut problems).await?;
    let endpoints = endpoints(&plan.usable, &targets, &mut problems);
    Ok(Resolved {
        endpoints: sorted(endpoints),
        problems,
        ttl: secs(ttl),
    })
}

/// The SRV records of `name` and the shortest TTL among them; none for a
/// name with none.
async fn records(
    resolver: &TokioResolver,
    name: &str,
) -> Result<(Vec<SrvRecord>, Option<u32>), NetError> {
    match resolver.srv_lookup(name).await {
        Ok(lookup) => {
            let mut ttl = None;
            let mut records = Vec::new();
            for r in lookup.answers() {
                ttl = min_ttl(ttl, r.ttl);
                if let RData::SRV(srv) = &r.data {
                    records.push(SrvRecord {
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        target: srv.target.to_string(),
                    });
                }
            }
            Ok((records, ttl))
        }
        Err(e) => match no_records(&e) {
            Some(negative) => Ok((Vec::new(), negative)),
            None => Err(e),
        },
    }
}

/// The addresses of each usable target, looked up once whatever the
/// number of records naming it, with `ttl` lowered to the shortest seen.
/// A target with no address is reported in `problems`.
async fn targets<'a>(
    resolver: &TokioResolver,
    usable: &'a [(SrvRecord, u8)],
    mut ttl: Option<u32>,
    problems: &mut Vec<Problem>,
) -> Result<(Vec<(&'a str, Vec<IpAddr>)>, Option<u32>), NetError> {
    let targets: BTreeSet<&str> = usable.iter().map(|(r, _)| &*r.target).collect();
    let mut resolved = Vec::with_capacity(targets.len());
    for target in targets {
        let (ips, t) = addresses(resolver, target).await?;
        if let Some(t) = t {
            ttl = min_ttl(ttl, t);
        }
        if ips.is_empty() {
            problems.push(problem(
                format!("SRV target {target}"),
                "it has no address; left out",
            ));
        }
        resolved.push((target, ips));
    }
    Ok((resolved, ttl))
}

/// One endpoint per address of each usable record's target; a record
/// that makes no valid endpoint is reported in `problems`.
fn endpoints(
    usable: &[(SrvRecord, u8)],
    targets: &[(&str, Vec<IpAddr>)],
    problems: &mut Vec<Problem>,
) -> Vec<Endpoint> {
    let mut endpoints = Vec::new();
    for (record, tier) in usable {
        let Some((_, ips)) = targets.iter().find(|(t, _)| *t == record.target) else {
            continue;
        };
        for ip in ips {
            match srv_endpoint(record, *tier, *ip) {
                Ok(e) => endpoints.push(e),
                Err(e) => problems.push((record.to_string(), e)),
            }
        }
    }
    endpoints
}

/// One SRV record's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SrvRecord {
    priority: u16,
    weight: u16,
    port: u16,
    /// As DNS prints it, with the trailing dot.
    target: String,
}

impl fmt::Display for SrvRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SRV {} {} {} {}",
            self.priority, self.weight, self.port, self.target
        )
    }
}

/// Which records to use, at which tier, and which were left out and why.
#[derive(Debug, PartialEq)]
struct Plan {
    usable: Vec<(SrvRecord, u8)>,
    problems: Vec<Problem>,
}

fn is_root(target: &str) -> bool {
    target == "." || target.is_empty()
}

/// Applies RFC 2782's rules to a record set and ranks the priorities of
/// the usable records into tiers.
fn plan(records: &[SrvRecord]) -> Plan {
    let mut problems = Vec::new();
    // A lone "." target: the service is decidedly not available here.
    if let [only] = records {
        if is_root(&only.target) {
            return Plan {
                usable: Vec::new(),
                problems,
            };
        }
    }
    let mut usable = Vec::new();
    for r in records {
        if r.port == 0 {
            problems.push(problem(r.to_string(), "port 0 is invalid; left out"));
        } else if is_root(&r.target) {
            problems.push(problem(
                r.to_string(),
                "target \".\" (service not available) among other records; left out",
            ));
        } else {
            usable.push(r.clone());
        }
    }
    let ranks: Vec<u16> = usable
        .iter()
        .map(|r| r.priority)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let usable = usable
        .into_iter()
        .map(|r| {
            let tier = tier(&ranks, r.priority);
            (r, tier)
        })
        .collect();
    Plan { usable, problems }
}

/// The tier of `priority` among the distinct priorities `ranks` (sorted
/// ascending): its rank, saturating at 255.
fn tier(ranks: &[u16], priority: u16) -> u8 {
    let rank = ranks.partition_point(|p| *p < priority);
    u8::try_from(rank).unwrap_or(u8::MAX)
}

fn srv_endpoint(
    record: &SrvRecord,
    tier: u8,
    ip: IpAddr,
) -> Result<Endpoint, crate::InvalidEndpoint> {
    let address = SocketAddr::new(ip, record.port);
    Endpoint::builder(address.to_string())
        .address(address)
        .weight(u32::from(record.weight))
        .priority(tier)
        .tag(TARGET_TAG, record.target.clone())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.to_owned(),
        }
    }

    #[test]
    fn priorities_rank_into_tiers() {
        let p = plan(&[
            rec(50, 1, 80, "c."),
            rec(10, 1, 80, "a."),
            rec(20, 1, 80, "b."),
            rec(20, 2, 81, "b."),
        ]);
        let tiers: Vec<(u16, u8)> = p.usable.iter().map(|(r, t)| (r.priority, *t)).collect();
        assert_eq!(tiers, [(50, 2), (10, 0), (20, 1), (20, 1)]);
        assert!(p.problems.is_empty());
    }

    #[test]
    fn tiers_saturate_at_255() {
        let ranks: Vec<u16> = (0..300).map(|p| p * 2).collect();
        assert_eq!(tier(&ranks, 0), 0);
        assert_eq!(tier(&ranks, 2), 1);
        assert_eq!(tier(&ranks, 510), 255);
        assert_eq!(tier(&ranks, 598), 255);
    }

    #[test]
    fn port_zero_is_left_out_and_reported() {
        let p = plan(&[rec(0, 1, 0, "a."), rec(5, 1, 80, "b.")]);
        assert_eq!(
            p.usable,
            [(rec(5, 1, 80, "b."), 0)],
            "tiers rank usable records only"
        );
        assert_eq!(p.problems.len(), 1);
        let (record, why) = &p.problems[0];
        assert_eq!(record, "SRV 0 1 0 a.");
        assert!(why.to_string().contains("port 0"), "{why}");
    }

    #[test]
    fn a_lone_root_target_means_not_available() {
        let p = plan(&[rec(0, 0, 0, ".")]);
        assert!(p.usable.is_empty());
        assert!(p.problems.is_empty(), "a definite answer, not a problem");

        let p = plan(&[rec(0, 0, 80, "."), rec(0, 1, 80, "a.")]);
        assert_eq!(p.usable.len(), 1);
        assert_eq!(p.problems.len(), 1);
    }

    #[test]
    fn records_become_endpoints_keyed_by_address() {
        let e = srv_endpoint(&rec(10, 7, 8080, "a.test."), 1, "10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(e.key(), "10.0.0.1:8080");
        assert_eq!(e.address(), Some("10.0.0.1:8080".parse().unwrap()));
        assert_eq!((e.weight(), e.priority()), (7, 1));
        assert_eq!(e.tag(TARGET_TAG), Some("a.test."));

        let e = srv_endpoint(&rec(0, 0, 443, "b."), 0, "::1".parse().unwrap()).unwrap();
        assert_eq!(e.key(), "[::1]:443");
        assert_eq!(e.weight(), 0, "weight 0 stays 0");
    }

    #[test]
    fn one_endpoint_per_key_the_lowest_tier() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let backup = srv_endpoint(&rec(20, 1, 80, "a."), 1, ip).unwrap();
        let primary = srv_endpoint(&rec(10, 5, 80, "a."), 0, ip).unwrap();
        let other = Endpoint::new("10.0.0.0:80".parse().unwrap());
        let s = sorted(vec![backup, primary.clone(), other.clone()]);
        assert_eq!(s, [other, primary]);
    }
}
