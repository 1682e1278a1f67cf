//! DNS discovery: resolves a name with `DnsSource`, prints the endpoint
//! set it found (tier, weight, SRV target) and a few picks a weighted
//! balancer makes over it, lowest tier first.
//!
//! ```text
//! cargo run --example dns --features dns -- localhost --port 8080
//! cargo run --example dns --features dns -- _api._tcp.example.com. --nameserver 127.0.0.1:5353
//! ```
//!
//! A name that starts with `_` (or any name with `--srv`) is looked up as
//! SRV records; any other as A/AAAA, at `--port` (default 80). Without
//! `--nameserver`, the system's resolver configuration is used. `--picks`
//! sets how many picks to show (default 8).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tower::{Layer, ServiceExt, service_fn};
use tower_lb::balance::{BalanceLayer, WeightedRoundRobin};
use tower_lb::discover::DnsSource;
use tower_lb::failover::{FailoverConfig, FailoverLayer};
use tower_lb::pool::DiscoverLayer;
use tower_lb::{BoxError, Endpoint};

const USAGE: &str = "usage: dns NAME [--srv] [--port N] [--nameserver IP:PORT] [--picks N]";

/// What the command line asked for.
struct Args {
    name: String,
    srv: bool,
    port: u16,
    nameserver: Option<SocketAddr>,
    picks: usize,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = std::env::args().skip(1);
    let mut name = None;
    let mut srv = false;
    let mut port = 80;
    let mut nameserver = None;
    let mut picks = 8;
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--srv" => srv = true,
            "--port" => port = value("--port")?.parse()?,
            "--nameserver" => nameserver = Some(value("--nameserver")?.parse()?),
            "--picks" => picks = value("--picks")?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}").into()),
            _ if name.is_none() => name = Some(arg),
            _ => return Err(format!("unexpected argument {arg:?}").into()),
        }
    }
    let name = name.ok_or(USAGE)?;
    Ok(Args {
        srv: srv || name.starts_with('_'),
        name,
        port,
        nameserver,
        picks,
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let mut source = if args.srv {
        DnsSource::srv(&args.name)
    } else {
        DnsSource::a(&args.name, args.port)
    };
    if let Some(ns) = args.nameserver {
        source = source.nameserver(ns);
    }
    println!(
        "resolving {} ({}){}",
        args.name,
        if args.srv {
            "SRV".to_owned()
        } else {
            format!("A/AAAA, port {}", args.port)
        },
        args.nameserver
            .map(|ns| format!(" at {ns}"))
            .unwrap_or_default()
    );

    // Each endpoint's "service" answers with the endpoint's key, so the
    // picks can be printed without sending anything anywhere.
    let connector = service_fn(|ep: Endpoint| async move {
        let key = ep.key().to_owned();
        Ok::<_, std::convert::Infallible>(service_fn(move |()| {
            std::future::ready(Ok::<_, std::convert::Infallible>(key.clone()))
        }))
    });
    let pool = DiscoverLayer::new(source).layer(connector);
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let d = pool.discovery();
            if d.applied_revision.is_some() {
                return Ok(());
            }
            if d.errors > 0 {
                return Err(d.last_error.unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    match first {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("lookup failed: {e}").into()),
        Err(_) => return Err("no answer within 10 s".into()),
    }
    let problems = pool.discovery();
    if problems.errors > 0 {
        println!(
            "({} record(s) left out; last: {})",
            problems.errors,
            problems.last_error.unwrap_or_default()
        );
    }

    let snapshot = pool.snapshot();
    if snapshot.is_empty() {
        println!("no endpoints: the name has no records of that type");
        return Ok(());
    }
    println!("{} endpoint(s):", snapshot.len());
    println!("  {:<44} {:>4} {:>6}  target", "key", "tier", "weight");
    for m in snapshot.members() {
        let e = m.endpoint();
        println!(
            "  {:<44} {:>4} {:>6}  {}",
            e.key(),
            e.priority(),
            e.weight(),
            e.tag("dns.srv.target").unwrap_or("-")
        );
    }

    // Failover serves the lowest tier; weighted round robin splits it by
    // weight.
    let view = FailoverLayer::new(FailoverConfig::new()).layer(pool.clone());
    let lb = BalanceLayer::new(WeightedRoundRobin).layer(view);
    let mut picks = Vec::with_capacity(args.picks);
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..args.picks {
        let key = lb.clone().oneshot(()).await?;
        *tally.entry(key.clone()).or_default() += 1;
        picks.push(key);
    }
    println!("{} picks: {}", args.picks, picks.join(", "));
    for (key, n) in tally {
        println!("  {key}: {n}");
    }
    Ok(())
}
