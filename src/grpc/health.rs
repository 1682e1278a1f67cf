//! Active health checks over the standard `grpc.health.v1` service.

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus::Serving;
use tonic_health::pb::health_client::HealthClient;

use super::EndpointTemplate;
use crate::endpoint::Endpoint;
use crate::failover::HealthCheck;

/// An active health check that asks each endpoint's `grpc.health.v1.Health`
/// service (what `tonic-health` serves) for `service`'s status: `""` for
/// the server as a whole, or a fully qualified service name such as
/// `"greeter.Greeter"`.
///
/// SERVING passes; NOT_SERVING, SERVICE_UNKNOWN, an error or no answer
/// within the check's timeout fails, so an endpoint that reports
/// NOT_SERVING (draining before a shutdown) leaves rotation after the
/// check's `unhealthy_threshold` rounds, and comes back after
/// `healthy_threshold` rounds of SERVING. Each probe opens a connection
/// of its own from `template` (TLS included) and closes it.
///
/// The check has [`HealthCheck`]'s defaults (every 5 s, 1 s timeout,
/// 3 failures out, 2 passes back); change them on the result, and give it
/// to [`ChannelBuilder::health_check`](super::ChannelBuilder::health_check)
/// or [`FailoverConfig::health_check`](crate::failover::FailoverConfig::health_check).
/// gRPC's clients check health only when asked to (gRFC A17), and so does
/// this channel.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::grpc::{health_check, EndpointTemplate};
///
/// let check = health_check(&EndpointTemplate::new(), "greeter.Greeter")
///     .interval(Duration::from_secs(2))
///     .unhealthy_threshold(2);
/// # let _ = check;
/// ```
pub fn health_check(template: &EndpointTemplate, service: impl Into<String>) -> HealthCheck {
    let template = template.clone();
    let service: String = service.into();
    HealthCheck::custom(move |endpoint: Endpoint| {
        let template = template.clone();
        let service = service.clone();
        async move { serving(&template, &endpoint, service).await }
    })
}

/// Whether `endpoint` reports `service` as SERVING.
async fn serving(template: &EndpointTemplate, endpoint: &Endpoint, service: String) -> bool {
    let Ok(tonic_endpoint) = template.endpoint_for(endpoint) else {
        return false;
    };
    let Ok(channel) = tonic_endpoint.connect().await else {
        return false;
    };
    let mut client = HealthClient::new(channel);
    match client.check(HealthCheckRequest { service }).await {
        Ok(answer) => answer.into_inner().status() == Serving,
        Err(_) => false,
    }
}
