//! The gRPC status a failure reaches the caller as, and which responses
//! count against an endpoint.

use std::error::Error as StdError;
use std::sync::Arc;

use http::{Response, StatusCode};
use tonic::{Code, Status};

use super::policy::code_of_http;
use crate::balance::Classify;
use crate::error::{Error, render_chain};

/// The gRPC code of a failed call, as a gRPC client reports it:
///
/// - no endpoints, none eligible, an exhausted retry budget, a discovery
///   failure, and any transport failure (refused, reset, closed, a failed
///   TLS handshake): UNAVAILABLE;
/// - the call's deadline (`grpc-timeout`, the retry layer's deadline, the
///   template's per-attempt timeout): DEADLINE_EXCEEDED;
/// - a [`Status`] anywhere in the error's `source()` chain: its code.
pub fn code_of(error: &(dyn StdError + 'static)) -> Code {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(ours) = e.downcast_ref::<Error>() {
            match ours {
                Error::DeadlineExceeded { .. } => return Code::DeadlineExceeded,
                Error::Inner(_) => {}
                _ => return Code::Unavailable,
            }
        }
        if let Some(status) = e.downcast_ref::<Status>() {
            return status.code();
        }
        if e.is::<tonic::TimeoutExpired>() {
            return Code::DeadlineExceeded;
        }
        next = e.source();
    }
    Code::Unavailable
}

/// `error` as the [`Status`] a gRPC caller gets: the code from
/// [`code_of`], the whole cause chain as its message, and `error` itself
/// as its `source()`.
///
/// ```
/// use tonic::Code;
/// use tower_lb::grpc::status_from_error;
/// use tower_lb::Error;
///
/// let status = status_from_error(Error::NoEndpoints);
/// assert_eq!(status.code(), Code::Unavailable);
/// assert_eq!(status.message(), "no endpoints are available");
/// ```
pub fn status_from_error(error: Error) -> Status {
    // A status carried as an error is the answer as it is.
    let error = match error {
        Error::Inner(inner) => match inner.downcast::<Status>() {
            Ok(status) => return *status,
            Err(other) => Error::Inner(other),
        },
        other => other,
    };
    let code = code_of(&error);
    let mut status = Status::new(code, render_chain(&error));
    status.set_source(Arc::new(error));
    status
}

/// The gRPC classifier: which outcomes count against an endpoint's health.
///
/// A transport error is a failure. So is a response whose status code,
/// from a trailers-only `grpc-status` or from the HTTP status, is
/// UNAVAILABLE, INTERNAL, UNKNOWN or DATA_LOSS: the server's own faults,
/// as Envoy's outlier detection counts gRPC (its 5xx). INVALID_ARGUMENT,
/// NOT_FOUND and the other codes about the call are successes of the
/// endpoint. A status that arrives in trailers, after the response
/// headers, is not seen: the classifier judges the response head.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcFailures;

/// Codes that are the server's fault.
const FAULTS: super::Codes = super::Codes::NONE
    .with(Code::Unavailable)
    .with(Code::Internal)
    .with(Code::Unknown)
    .with(Code::DataLoss);

impl<B, E> Classify<Response<B>, E> for GrpcFailures {
    #[inline]
    fn is_failure(&self, outcome: Result<&Response<B>, &E>) -> bool {
        let Ok(res) = outcome else { return true };
        let code = match res.headers().get("grpc-status") {
            Some(v) => Code::from_bytes(v.as_bytes()),
            None if res.status() == StatusCode::OK => return false,
            None => code_of_http(res.status()),
        };
        FAULTS.contains(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_what_a_grpc_client_reports() {
        assert_eq!(code_of(&Error::NoEndpoints), Code::Unavailable);
        let none = Error::NoneEligible {
            total: 3,
            why: Default::default(),
        };
        assert_eq!(code_of(&none), Code::Unavailable);
        let refused = Error::Inner(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(code_of(&refused), Code::Unavailable);
        let budget = Error::BudgetExhausted {
            attempts: 2,
            last: Box::new(Error::Inner(Box::new(Status::internal("boom")))),
        };
        assert_eq!(code_of(&budget), Code::Unavailable);
        let deadline = Error::DeadlineExceeded {
            deadline: std::time::Duration::from_millis(5),
            attempts: 1,
            last: None,
        };
        assert_eq!(code_of(&deadline), Code::DeadlineExceeded);
        let carried = Error::Inner(Box::new(Status::permission_denied("no")));
        assert_eq!(code_of(&carried), Code::PermissionDenied);
        assert_eq!(
            code_of(&Error::Inner(Box::new(tonic::TimeoutExpired(())))),
            Code::DeadlineExceeded
        );
    }

    #[test]
    fn a_status_keeps_the_chain_in_its_message_and_source() {
        let refused = Error::Inner(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )));
        let status = status_from_error(refused);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "endpoint service failed: connection refused"
        );
        let source = StdError::source(&status).expect("the error is the source");
        assert!(source.downcast_ref::<Error>().is_some());
        let carried = status_from_error(Error::Inner(Box::new(Status::not_found("gone"))));
        assert_eq!(
            (carried.code(), carried.message()),
            (Code::NotFound, "gone")
        );
    }

    #[test]
    fn server_faults_count_and_call_errors_do_not() {
        let c = GrpcFailures;
        let res = |status: u16, grpc: Option<&str>| {
            let mut b = Response::builder().status(status);
            if let Some(code) = grpc {
                b = b.header("grpc-status", code);
            }
            b.body(()).unwrap()
        };
        let judge = |r: &Response<()>| Classify::<_, Error>::is_failure(&c, Ok(r));
        assert!(!judge(&res(200, None)));
        assert!(!judge(&res(200, Some("0"))));
        assert!(
            !judge(&res(200, Some("3"))),
            "INVALID_ARGUMENT is the call's"
        );
        assert!(!judge(&res(200, Some("5"))));
        assert!(judge(&res(200, Some("14"))));
        assert!(judge(&res(200, Some("13"))));
        assert!(judge(&res(503, None)));
        assert!(judge(&res(500, None)), "500 is UNKNOWN");
        assert!(!judge(&res(404, None)));
        assert!(Classify::<Response<()>, Error>::is_failure(
            &c,
            Err(&Error::NoEndpoints)
        ));
    }
}
