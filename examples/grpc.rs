//! A tonic greeter client over three tonic servers through
//! `tower_lb::grpc::Channel`, with one server killed mid-run and brought
//! back.
//!
//! Starts three greeter servers on 127.0.0.1 and registers them in the
//! in-process [`Registry`]. The client sends 3 000 sequential `SayHello`
//! calls. At call 1 000 the busiest server is killed (its listener and
//! every connection close at once, as a crashed process's do); at call
//! 2 000 it starts again on the same port. The example prints the calls
//! each server answered in each phase and every failed call.
//!
//! ```text
//! cargo run --example grpc --features grpc
//! ```
//!
//! Everything here is the channel's defaults: UNAVAILABLE and connect
//! failures are retried on another endpoint within the retry budget, and
//! a server that refuses connections is ejected and probed back.

#[path = "../tests/grpc_support/mod.rs"]
mod grpc_support;

use grpc_support::greeter::HelloRequest;
use grpc_support::{GreeterClient, GreeterServer};
use tower_lb::discover::Registry;
use tower_lb::grpc::Channel;

const CALLS: usize = 3000;
const KILL_AT: usize = 1000;
const RESTART_AT: usize = 2000;

#[tokio::main]
async fn main() {
    let mut servers: Vec<GreeterServer> = ["a", "b", "c"]
        .iter()
        .map(|name| GreeterServer::start(name))
        .collect();
    let registry = Registry::new();
    let _registrations: Vec<_> = servers
        .iter()
        .map(|s| {
            registry
                .register("greeter", s.endpoint())
                .expect("a valid endpoint")
        })
        .collect();

    // The whole client: a balanced channel that the generated client
    // takes as its transport.
    let channel: Channel = Channel::builder().build(registry.watch("greeter").expect("a name"));
    let mut client = GreeterClient::new(channel);

    let mut failures = 0;
    let mut killed = 0;
    let mut phase_start = vec![0; servers.len()];
    for i in 0..CALLS {
        if i == KILL_AT || i == RESTART_AT {
            print_phase(&servers, &mut phase_start, i);
        }
        if i == KILL_AT {
            killed = (0..servers.len())
                .max_by_key(|&s| servers[s].calls())
                .expect("three servers");
            println!("killing {}", servers[killed].name());
            servers[killed].kill();
        }
        if i == RESTART_AT {
            println!("restarting {}", servers[killed].name());
            servers[killed].restart();
        }
        let call = client.say_hello(HelloRequest {
            name: format!("call {i}"),
        });
        if let Err(status) = call.await {
            failures += 1;
            println!("call {i} failed: {:?}: {}", status.code(), status.message());
        }
    }
    print_phase(&servers, &mut phase_start, CALLS);
    println!("{failures} of {CALLS} calls failed");
}

/// Prints the calls each server answered since the last phase ended.
fn print_phase(servers: &[GreeterServer], start: &mut [u64], upto: usize) {
    let counts: Vec<String> = servers
        .iter()
        .zip(start.iter_mut())
        .map(|(s, start)| {
            let now = s.calls();
            let line = format!("{}={}", s.name(), now - *start);
            *start = now;
            line
        })
        .collect();
    println!("calls up to {upto}: {}", counts.join(" "));
}
