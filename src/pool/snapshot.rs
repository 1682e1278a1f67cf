use tokio::time::Instant;

use super::StatsHandle;
use super::members::{MemberList, Members};
use crate::endpoint::Endpoint;

/// An immutable view of a pool's endpoints at one revision.
///
/// Snapshots are published whole through `arc_swap`; a request that loaded
/// one keeps using it even if a newer one is published meanwhile.
#[derive(Debug)]
pub struct Snapshot<S> {
    revision: u64,
    epoch: Instant,
    members: MemberList<S>,
    /// Whether discovery had delivered an update when this was published.
    discovered: bool,
}

/// One endpoint in a [`Snapshot`]: its metadata, its service and its stats.
#[derive(Debug)]
pub struct Member<S> {
    endpoint: Endpoint,
    service: S,
    stats: StatsHandle,
}

impl<S> Snapshot<S> {
    /// A set discovery delivered.
    pub(crate) fn new(revision: u64, epoch: Instant, members: impl Into<MemberList<S>>) -> Self {
        Snapshot {
            revision,
            epoch,
            members: members.into(),
            discovered: true,
        }
    }

    /// The empty set of a pool that has not heard from discovery yet.
    pub(crate) fn initial(epoch: Instant) -> Self {
        Snapshot {
            discovered: false,
            ..Snapshot::new(0, epoch, MemberList::default())
        }
    }

    /// Some of `of`'s members, at another revision: what a stage that
    /// filters a pool publishes.
    pub(crate) fn subset(revision: u64, of: &Snapshot<S>, members: MemberList<S>) -> Self {
        Snapshot {
            revision,
            epoch: of.epoch,
            members,
            discovered: of.discovered,
        }
    }

    /// Whether discovery had delivered at least one update (possibly an
    /// empty one) when this snapshot was published: an empty snapshot
    /// that is not discovered is a pool still starting.
    pub fn discovered(&self) -> bool {
        self.discovered
    }

    /// The revision of the last discovery update that changed this set
    /// (0 before any).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The members. A member keeps its place while it stays, except that
    /// a removed member's place goes to the last one.
    pub fn members(&self) -> &MemberList<S> {
        &self.members
    }

    /// The members as the view a picker takes.
    pub fn view(&self) -> Members<'_, S> {
        self.members.view()
    }

    /// How many endpoints.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no endpoints.
    pub fn is_empty(&self) -> bool {
        self.members.len() == 0
    }

    /// The member with this key.
    pub fn get(&self, key: &str) -> Option<&Member<S>> {
        self.members.iter().find(|m| m.endpoint.key() == key)
    }

    /// The instant latency stamps in this pool are measured from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// A plain-data report of every endpoint and its counters.
    pub fn report(&self) -> Vec<EndpointReport> {
        self.members.iter().map(Member::report).collect()
    }
}

impl<S: Clone> Clone for Member<S> {
    fn clone(&self) -> Self {
        Member {
            endpoint: self.endpoint.clone(),
            service: self.service.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<S: Clone> Member<S> {
    /// A copy with another effective weight (the endpoint's metadata is
    /// otherwise unchanged).
    pub(crate) fn reweighted(&self, weight: u32) -> Self {
        Member {
            endpoint: self.endpoint.clone().with_weight(weight),
            service: self.service.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<S> Member<S> {
    pub(crate) fn new(endpoint: Endpoint, service: S, stats: StatsHandle) -> Self {
        Member {
            endpoint,
            service,
            stats,
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The service the connector built for it.
    pub fn service(&self) -> &S {
        &self.service
    }

    /// Its live counters.
    pub fn stats(&self) -> &StatsHandle {
        &self.stats
    }

    /// A plain-data copy of its counters.
    pub fn report(&self) -> EndpointReport {
        EndpointReport {
            endpoint: self.endpoint.clone(),
            in_flight: self.stats.in_flight(),
            successes: self.stats.successes(),
            failures: self.stats.failures(),
            consecutive_failures: self.stats.consecutive_failures(),
            ewma_latency: self.stats.ewma_latency(),
        }
    }
}

/// A copy of one endpoint's counters at the time of the report.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EndpointReport {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Requests in flight.
    pub in_flight: u64,
    /// Successful requests.
    pub successes: u64,
    /// Failed requests.
    pub failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Peak-EWMA latency as of the last sample.
    pub ewma_latency: Option<std::time::Duration>,
}
