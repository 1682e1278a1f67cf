//! `tower_lb::grpc::Channel` against real tonic servers on loopback: a
//! server killed and restarted, status codes and retries, pushback,
//! deadlines, `grpc.health.v1`, and TLS.

mod grpc_support;

use std::time::Duration;

use tokio::time::Instant;

use grpc_support::greeter::HelloRequest;
use grpc_support::{Answer, GreeterClient, GreeterServer, hello};
use tonic::Code;
use tower_lb::balance::RoundRobin;
use tower_lb::discover::{Registration, Registry};
use tower_lb::grpc::{Channel, EndpointTemplate, health_check};

/// The servers, registered under "greeter".
fn register(registry: &Registry, servers: &[GreeterServer]) -> Vec<Registration> {
    servers
        .iter()
        .map(|s| registry.register("greeter", s.endpoint()).unwrap())
        .collect()
}

fn start(names: &[&str]) -> Vec<GreeterServer> {
    names.iter().map(|n| GreeterServer::start(n)).collect()
}

fn calls(servers: &[GreeterServer]) -> Vec<u64> {
    servers.iter().map(GreeterServer::calls).collect()
}

#[test]
fn the_channel_is_clone_send_and_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<Channel>();
    check::<Channel<RoundRobin>>();
    check::<GreeterClient<Channel>>();
}

#[tokio::test]
async fn killing_the_busiest_server_loses_no_call_and_it_is_back_after_a_restart() {
    let mut servers = start(&["a", "b", "c"]);
    let registry = Registry::new();
    let _regs = register(&registry, &servers);
    let channel: Channel = Channel::builder().build(registry.watch("greeter").unwrap());
    let mut client = GreeterClient::new(channel.clone());

    let mut failures = Vec::new();
    let mut killed = None;
    let mut restarted_at = None;
    let mut before_restart = 0;
    for i in 0..3000 {
        if i == 1000 {
            let counts = calls(&servers);
            let busiest = (0..3).max_by_key(|&s| counts[s]).unwrap();
            servers[busiest].kill();
            killed = Some(busiest);
        }
        if i == 2000 {
            let k = killed.unwrap();
            before_restart = servers[k].calls();
            servers[k].restart();
            restarted_at = Some(Instant::now());
        }
        if let Err(status) = hello(&mut client, "x").await {
            failures.push((i, status.code(), status.message().to_owned()));
        }
    }
    let k = killed.unwrap();
    // The run may end before the restarted server's first call; keep
    // calling, for at most 5 s after the restart.
    let restarted_at = restarted_at.unwrap();
    while servers[k].calls() == before_restart && restarted_at.elapsed() < Duration::from_secs(5) {
        if let Err(status) = hello(&mut client, "x").await {
            failures.push((usize::MAX, status.code(), status.message().to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let back_after = servers[k]
        .arrivals()
        .into_iter()
        .filter(|t| *t >= restarted_at)
        .min()
        .map(|t| t - restarted_at);
    let counts = calls(&servers);
    println!(
        "calls per server {counts:?}; killed {}; back after {back_after:?}; retries {:?}",
        servers[k].name(),
        channel.stats()
    );
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    let back_after = back_after.expect("the restarted server got no call within 5 s");
    assert!(back_after <= Duration::from_secs(5), "{back_after:?}");
}

#[tokio::test]
async fn unavailable_is_retried_on_another_server_and_invalid_argument_is_not() {
    let servers = start(&["sick", "well"]);
    servers[0].answer_with(Answer::Status(Code::Unavailable, None));
    let registry = Registry::new();
    let _regs = register(&registry, &servers);
    let channel = Channel::builder()
        .strategy(RoundRobin)
        .without_failover()
        .build(registry.watch("greeter").unwrap());
    let mut client = GreeterClient::new(channel.clone());
    for _ in 0..50 {
        let reply = hello(&mut client, "x").await.expect("retried on `well`");
        assert_eq!(reply.server, "well");
    }
    let sick = servers[0].calls();
    assert!(sick > 0, "round robin sent some calls to `sick`");
    assert_eq!(
        channel.stats().retries,
        sick,
        "each UNAVAILABLE was retried once"
    );

    servers[0].answer_with(Answer::Status(Code::InvalidArgument, None));
    let before = (calls(&servers), channel.stats().retries);
    let mut invalid = 0;
    for _ in 0..50 {
        match hello(&mut client, "x").await {
            Ok(reply) => assert_eq!(reply.server, "well"),
            Err(status) => {
                assert_eq!(status.code(), Code::InvalidArgument);
                assert_eq!(status.message(), "sick says InvalidArgument");
                invalid += 1;
            }
        }
    }
    let after = calls(&servers);
    assert_eq!(
        after[0] - before.0[0],
        invalid,
        "every call to `sick` failed"
    );
    assert!(invalid > 0);
    assert_eq!(
        (after[0] + after[1]) - (before.0[0] + before.0[1]),
        50,
        "no call was sent twice"
    );
    assert_eq!(channel.stats().retries, before.1);
}

#[tokio::test]
async fn pushback_delays_the_retry_and_a_negative_one_stops_it() {
    let servers = start(&["pushing", "well"]);
    servers[0].answer_with(Answer::Status(Code::Unavailable, Some("300")));
    let registry = Registry::new();
    let _regs = register(&registry, &servers);
    let channel = Channel::builder()
        .strategy(RoundRobin)
        .without_failover()
        .build(registry.watch("greeter").unwrap());
    let mut client = GreeterClient::new(channel);
    for _ in 0..4 {
        hello(&mut client, "x").await.expect("retried on `well`");
    }
    let pushed = servers[0].arrivals();
    let well = servers[1].arrivals();
    assert!(!pushed.is_empty(), "round robin reached `pushing`");
    for at in &pushed {
        // The retry of that call is the next arrival at `well`.
        let retry = well
            .iter()
            .filter(|t| *t > at)
            .min()
            .expect("the call was retried");
        assert!(
            *retry - *at >= Duration::from_millis(300),
            "retried {:?} after a pushback of 300 ms",
            *retry - *at
        );
    }

    servers[0].answer_with(Answer::Status(Code::Unavailable, Some("-1")));
    let before = servers[0].calls();
    let mut refused = 0;
    for _ in 0..4 {
        if let Err(status) = hello(&mut client, "x").await {
            assert_eq!(status.code(), Code::Unavailable);
            refused += 1;
        }
    }
    assert!(refused > 0);
    assert_eq!(
        servers[0].calls() - before,
        refused,
        "a negative pushback is not retried"
    );
}

#[tokio::test]
async fn no_endpoints_and_refused_connections_are_unavailable() {
    let registry = Registry::new();
    let channel: Channel = Channel::builder().build(registry.watch("greeter").unwrap());
    let mut client = GreeterClient::new(channel);
    let status = hello(&mut client, "x").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("no endpoints"),
        "{}",
        status.message()
    );

    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let _reg = registry
        .register("closed", tower_lb::Endpoint::new(addr))
        .unwrap();
    let channel: Channel = Channel::builder().build(registry.watch("closed").unwrap());
    let mut client = GreeterClient::new(channel);
    let status = hello(&mut client, "x").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let source = std::error::Error::source(&status).expect("the cause is kept as the source");
    let chain = {
        let mut out = vec![source.to_string()];
        let mut next = source.source();
        while let Some(e) = next {
            out.push(e.to_string());
            next = e.source();
        }
        out.join(": ")
    };
    assert!(
        status.message().to_lowercase().contains("refused")
            || status.message().contains("none of the"),
        "the message carries the cause: {}",
        status.message()
    );
    assert!(!chain.is_empty());
}

#[tokio::test]
async fn grpc_timeout_is_the_deadline_of_the_whole_call() {
    let servers = start(&["slow"]);
    servers[0].answer_with(Answer::Slow(Duration::from_secs(3)));
    let registry = Registry::new();
    let _regs = register(&registry, &servers);
    let channel: Channel = Channel::builder().build(registry.watch("greeter").unwrap());
    let mut client = GreeterClient::new(channel);
    let mut request = tonic::Request::new(HelloRequest { name: "x".into() });
    request.set_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let status = client.say_hello(request).await.unwrap_err();
    let took = started.elapsed();
    assert!(status.code() == Code::DeadlineExceeded, "{status:?}");
    assert!(took < Duration::from_secs(2), "ended after {took:?}");
}

#[tokio::test]
async fn a_server_reporting_not_serving_drains_and_serving_brings_it_back() {
    let servers = start(&["draining", "steady"]);
    let registry = Registry::new();
    let _regs = register(&registry, &servers);
    let check = health_check(&EndpointTemplate::new(), "greeter.Greeter")
        .interval(Duration::from_millis(50))
        .timeout(Duration::from_millis(500))
        .unhealthy_threshold(2)
        .healthy_threshold(2);
    let channel = Channel::builder()
        .strategy(RoundRobin)
        .health_check(check)
        .build(registry.watch("greeter").unwrap());
    let mut client = GreeterClient::new(channel);
    for _ in 0..20 {
        hello(&mut client, "x").await.unwrap();
    }
    assert!(servers[0].calls() > 0);

    servers[0].set_serving(false).await;
    // Drained within a few rounds of checks.
    let deadline = Instant::now() + Duration::from_secs(5);
    let drained_at = loop {
        let before = servers[0].calls();
        for _ in 0..10 {
            hello(&mut client, "x").await.unwrap();
        }
        if servers[0].calls() == before {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "NOT_SERVING never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let before = servers[0].calls();
    for _ in 0..100 {
        hello(&mut client, "x").await.unwrap();
    }
    assert_eq!(servers[0].calls(), before, "a drained server gets no call");

    servers[0].set_serving(true).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while servers[0].calls() == before {
        assert!(Instant::now() < deadline, "SERVING never brought it back");
        hello(&mut client, "x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = drained_at;
}

#[tokio::test]
async fn tls_with_a_certificate_made_for_the_test() {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = made.cert.pem();
    let key = made.signing_key.serialize_pem();
    let servers: Vec<GreeterServer> = ["a", "b"]
        .into_iter()
        .map(|n| GreeterServer::start_tls(n, Identity::from_pem(&cert, &key)))
        .collect();
    let registry = Registry::new();
    let _regs = register(&registry, &servers);

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cert))
        .domain_name("localhost");
    let channel = Channel::builder()
        .strategy(RoundRobin)
        .template(EndpointTemplate::new().tls(tls))
        .build(registry.watch("greeter").unwrap());
    let mut client = GreeterClient::new(channel);
    for _ in 0..20 {
        hello(&mut client, "x").await.unwrap();
    }
    // Round robin over both: each serves about half. Exact halves are not
    // guaranteed, since a connection still in its handshake is skipped.
    let served = calls(&servers);
    assert_eq!(served.iter().sum::<u64>(), 20, "{served:?}");
    assert!(
        served.iter().all(|&n| n >= 5),
        "both servers answer over TLS: {served:?}"
    );

    // Without the certificate's root the handshake fails: UNAVAILABLE.
    let untrusting = Channel::builder()
        .template(EndpointTemplate::new().tls(ClientTlsConfig::new().domain_name("localhost")))
        .build(registry.watch("greeter").unwrap());
    let mut client = GreeterClient::new(untrusting);
    let status = hello(&mut client, "x").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(calls(&servers), served, "no call got through without trust");
}
