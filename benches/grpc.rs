//! A unary gRPC call through `grpc::Channel` against tonic's own
//! `Channel::balance_channel`, over the same three in-process tonic
//! greeter servers on loopback (HTTP/2, connections warm). Each row is one
//! `SayHello`, sent and its reply decoded. `tonic_single` is one plain
//! tonic channel to one server, the floor both balancers add to.
//!
//! Client and servers share one current-thread runtime: no call waits on
//! another thread's wake-up, which keeps the spread small on a shared
//! machine.
//!
//! `target/criterion/grpc/<implementation>/3`.

#[path = "../tests/grpc_support/greeter.rs"]
mod greeter;

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use greeter::greeter_client::GreeterClient;
use greeter::greeter_server::{Greeter, GreeterServer};
use greeter::{HelloReply, HelloRequest};
use tokio::runtime::Runtime;
use tonic::transport::channel::Change;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tower_lb::Endpoint;
use tower_lb::discover::{Registration, Registry};
use tower_lb::grpc::Channel;

const SERVICE: &str = "greeter";
const SERVERS: usize = 3;

struct Hello;

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            message: req.into_inner().name,
            server: String::new(),
        }))
    }
}

/// Three greeter servers, spawned on the bench's runtime.
async fn servers() -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    for _ in 0..SERVERS {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        addrs.push(listener.local_addr().expect("addr"));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GreeterServer::new(Hello))
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
    }
    addrs
}

fn bench_one<T>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    name: &str,
    mut client: GreeterClient<T>,
) where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tower_lb::BoxError>,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tower_lb::BoxError> + Send,
{
    let request = || HelloRequest {
        name: "bench".to_owned(),
    };
    rt.block_on(async {
        for _ in 0..100 {
            client.say_hello(request()).await.expect("warm-up call");
        }
    });
    g.bench_with_input(BenchmarkId::new(name, SERVERS), &SERVERS, |b, _| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = tokio::time::Instant::now();
                for _ in 0..iters {
                    client.say_hello(request()).await.expect("call");
                }
                start.elapsed()
            })
        })
    });
}

/// Does the balanced channel cost at most what tonic's own balancer costs
/// (target: at most 1.0×)?
fn grpc_group(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addrs = rt.block_on(servers());
    let registry = Registry::new();
    let _registrations: Vec<Registration> = addrs
        .iter()
        .map(|a| {
            registry
                .register(SERVICE, Endpoint::new(*a))
                .expect("register")
        })
        .collect();
    let revision = registry.revision_of(SERVICE);
    let uri = |a: &SocketAddr| {
        tonic::transport::Endpoint::from_shared(format!("http://{a}")).expect("uri")
    };

    let (ours, tonics, single) = rt.block_on(async {
        let ours: Channel = Channel::builder().build(registry.watch(SERVICE).expect("watch"));
        assert!(ours.balance().upstream().applied(revision).await);
        let (tonics, changes) = tonic::transport::Channel::balance_channel::<usize>(16);
        for (i, a) in addrs.iter().enumerate() {
            changes
                .send(Change::Insert(i, uri(a)))
                .await
                .expect("insert");
        }
        let single = uri(&addrs[0]).connect().await.expect("connect");
        (ours, (tonics, changes), single)
    });
    // tonic's balancer keeps its endpoints while the sender lives.
    let (tonics, _changes) = tonics;

    let mut g = c.benchmark_group("grpc");
    bench_one(
        &mut g,
        &rt,
        "tonic_balance_channel",
        GreeterClient::new(tonics),
    );
    bench_one(&mut g, &rt, "tower_lb_channel", GreeterClient::new(ours));
    bench_one(&mut g, &rt, "tonic_single", GreeterClient::new(single));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = grpc_group
}
criterion_main!(benches);
